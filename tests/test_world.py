import hashlib
import json

import numpy as np
from conftest import TINY_WORLD

from videomask.demo import world
from videomask.prep.transcripts import read_transcript
from videomask.prep.video import open_video


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_world(tmp_path, tiny_world):
    cfg = TINY_WORLD
    world.make_world(tmp_path / "again", cfg)
    assert _digest(tmp_path / "again") == _digest(tiny_world)
    world.make_world(tmp_path / "other", world.WorldConfig(**{**cfg.__dict__, "seed": 1}))
    assert _digest(tmp_path / "other") != _digest(tiny_world)


def test_videos_are_real_h264_with_the_configured_size(tiny_world):
    rows = [json.loads(line) for line in (tiny_world / "target.jsonl").read_text().splitlines()]
    r = open_video(tiny_world / rows[0]["video"])
    cfg = TINY_WORLD
    assert (r.info.width, r.info.height) == (cfg.size, cfg.size)
    assert r.info.num_frames == cfg.segments * cfg.segment_seconds * cfg.fps
    assert r.info.fps == cfg.fps


def test_transcripts_describe_what_is_on_screen(tiny_world):
    cfg = TINY_WORLD
    for domain in ("general", "target"):
        for row in map(json.loads, (tiny_world / f"{domain}.jsonl").read_text().splitlines()):
            cues, timed = read_transcript(tiny_world / row["transcript"])
            assert timed and len(cues) == cfg.segments
            reader = open_video(tiny_world / row["video"])
            for k, (cue, objs) in enumerate(zip(cues, row["objects"])):
                assert (cue.start, cue.end) == (k * cfg.segment_seconds, (k + 1) * cfg.segment_seconds)
                for o in objs:
                    assert o["shape"] in cue.text.lower()  # every object on screen is named in its cue
                    if domain == "general":
                        assert o["shape"] in world.GENERAL_SHAPES
                # the named objects really are drawn in the frame: object pixels have the object's colour
                t = 0.5 * cfg.segment_seconds
                frame = reader.frames([int((k * cfg.segment_seconds + t) * cfg.fps)])[0].astype(float)
                for o in objs:
                    mask = world.object_mask(o, t, cfg.size)
                    inner = mask & np.roll(mask, 2, 0) & np.roll(mask, -2, 0) & np.roll(mask, 2, 1) & np.roll(mask, -2, 1)
                    others = [world.object_mask(q, t, cfg.size) for q in objs if q is not o]
                    for m in others:
                        inner &= ~m
                    if inner.sum() > 5:
                        err = np.abs(frame[inner] - np.array(world.COLOURS[o["colour"]])).mean()
                        assert err < 30, (row["id"], k, o["shape"], err)


def test_target_annotations(tiny_world):
    rows = [json.loads(line) for line in (tiny_world / "target.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} >= {"train", "test"}
    for r in rows:
        assert r["label"] in world.TARGET_SHAPES
        assert len(r["answers"]) == 4 and len(set(r["answers"])) == 4
        key = [o for objs in r["objects"] for o in objs if o["shape"] == r["label"]]
        assert key and {o["colour"] for o in key} == {r["answers"][r["answer_idx"]]}
        assert r["question"] == f"What colour is the {r['label']}?"
        text = (tiny_world / r["transcript"]).read_text()
        assert (r["answers"][r["answer_idx"]] in text) == r["colour_said"]
    # the target domain really uses its own vocabulary, the general one never does
    target_text = " ".join((tiny_world / r["transcript"]).read_text() for r in rows).lower()
    assert sum(w in target_text for w in world.PLANTED_WORDS) >= 6
    general = " ".join(p.read_text().lower() for p in (tiny_world / "general").glob("*.srt"))
    assert not any(w in general for w in world.PLANTED_WORDS)
