import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_BUILD, make_srt, make_video

from videomask import data
from videomask.prep import build
from videomask.prep.cutting import BuildOptions
from videomask.prep.transcripts import read_transcript, timed_words
from videomask.prep.video import (
    _torchvision_encodes_as_pillow,
    encode_jpeg,
    encode_jpegs,
    open_video,
    resize_crop,
)


def samples_of(folder, split=None):
    return list(data.dataset(folder, split, handler=data.ErrorCounter(strict=True)))


def shard_digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).glob("*.tar"))}


def test_round_trip_frames_and_words(tiny_world, tiny_shards):
    rows = {json.loads(line)["id"]: json.loads(line) for line in (tiny_world / "target.jsonl").read_text().splitlines()}
    got = samples_of(tiny_shards["target"])
    assert sorted(s["meta"]["video_id"] for s in got) == sorted(rows)
    for s in got:
        meta, row = s["meta"], rows[s["meta"]["video_id"]]
        assert s["frames"].shape == (TINY_BUILD.frames, 3, TINY_BUILD.size, TINY_BUILD.size)
        src = open_video(tiny_world / row["video"]).frames(meta["frame_indices"])
        ref = np.stack([np.asarray(resize_crop(f, TINY_BUILD.size)) for f in src]).transpose(0, 3, 1, 2)
        psnr = lambda a, b: 10 * np.log10(255 ** 2 / ((a.astype(float) - b) ** 2).mean())  # noqa: E731
        assert psnr(s["frames"].numpy(), ref) > 30  # dB: JPEG q90 of the source frames (noisy background)
        assert psnr(s["frames"].numpy(), ref) > psnr(s["frames"].numpy()[::-1], ref) + 3  # and in the right order
        # the clip holds the whole transcript, word for word, with offsets into its text
        cues, _ = read_transcript(tiny_world / row["transcript"])
        assert [w["w"] for w in s["words"]] == [cues[w.cue].text[w.start:w.end] for w in timed_words(cues, 3.0)]
        assert all(s["text"][w["s"]:w["e"]] == w["w"] for w in s["words"])
        assert meta["split"] == row["split"] and meta["label"] == row["label"]
        assert meta["answers"] == row["answers"] and meta["answer_idx"] == row["answer_idx"]
        assert (meta["start"], meta["end"], meta["fps"], meta["width"]) == (0.0, 3.0, 8.0, 64)


def test_manifest_counts_and_checksums(tiny_shards):
    m = json.loads((tiny_shards["target"] / "manifest.json").read_text())
    assert m["inputs"] == {"total": 8, "written": 8, "rejected": 0, "partial": 0, "clips_rejected": 0}
    assert sum(v["samples"] for v in m["splits"].values()) == 8
    for s in m["shards"]:
        p = tiny_shards["target"] / s["name"]
        assert hashlib.sha256(p.read_bytes()).hexdigest() == s["sha256"] and s["samples"] <= TINY_BUILD.max_samples
        assert s["name"].startswith(s["split"] + "-") and len(s["name"]) == len("train-000000.tar") + len(s["split"]) - 5
    assert m["options"]["frames"] == TINY_BUILD.frames


def test_several_clips_per_video_cover_every_word_once(tmp_path):
    make_video(tmp_path / "v.mp4", 5.0)
    make_srt(tmp_path / "v.srt", [(0, 1.5, "one two three."), (1.5, 3.2, "four five"), (3.2, 5.0, "six seven eight")])
    build.build(tmp_path, tmp_path / "out", BuildOptions(frames=2, size=32, clip_seconds=2.0), progress=False)
    got = samples_of(tmp_path / "out")
    # 5 s in clips of 2 s: [0,2) [2,4) and the 1 s rest (>= half a clip) becomes a clip of its own
    assert [(s["meta"]["start"], s["meta"]["end"]) for s in got] == [(0, 2), (2, 4), (4, 5)]
    assert [w["w"] for s in got for w in s["words"]] == "one two three four five six seven eight".split()
    for s in got:
        assert all(s["meta"]["start"] <= (w["t0"] + w["t1"]) / 2 < s["meta"]["end"] for w in s["words"])
    build.build(tmp_path, tmp_path / "seg", BuildOptions(frames=2, size=32, clip_seconds=2.0, clip_mode="segments"),
                progress=False)
    got = samples_of(tmp_path / "seg")
    assert [(s["meta"]["start"], s["meta"]["end"]) for s in got] == [(0, 3.2), (3.2, 5.0)]
    assert [s["text"] for s in got] == ["one two three. four five", "six seven eight"]


def test_text_corpora(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("The agonist binds akt.\n\nCaspase cleaves it.\n")
    (tmp_path / "corpus" / "b.jsonl").write_text(
        json.dumps({"text": "Treebank parsers.", "label": "USES"}) + "\n" + json.dumps({"txt": "no text field"}) + "\n")
    m = build.build(tmp_path / "corpus", tmp_path / "out", BuildOptions(), progress=False)
    got = samples_of(tmp_path / "out")
    assert [s["text"] for s in got] == ["The agonist binds akt.", "Caspase cleaves it.", "Treebank parsers."]
    assert all(s["frames"] is None for s in got) and got[2]["meta"]["label"] == "USES"
    assert [w["w"] for w in got[0]["words"]] == ["The", "agonist", "binds", "akt"]
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 1 and errors[0]["source"].endswith("b.jsonl:2") and "'text'" in errors[0]["reason"]
    assert m["inputs"]["total"] == 4 and m["inputs"]["written"] == 3 and m["inputs"]["rejected"] == 1


def test_corpus_lines_in_another_encoding(tmp_path):
    (tmp_path / "c").mkdir()
    # UTF-8, but line 2 pasted from a Latin-1 file: reported with its line, the rest kept as UTF-8
    (tmp_path / "c" / "mixed.txt").write_bytes("naïve kinase\n".encode() + "café au lait\n".encode("latin-1")
                                             + "the agonist binds\n".encode())
    # a whole file in cp1252: decoded with the detected encoding, nothing lost
    (tmp_path / "c" / "legacy.txt").write_bytes("it’s a “quoted” déjà vu\nsecond line here\n".encode("cp1252"))
    m = build.build(tmp_path / "c", tmp_path / "out", BuildOptions(), progress=False)
    texts = sorted(s["text"] for s in samples_of(tmp_path / "out"))
    assert texts == sorted(["naïve kinase", "the agonist binds", "it’s a “quoted” déjà vu", "second line here"])
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert [e["source"].rsplit("/", 1)[1] for e in errors] == ["mixed.txt:2"] and "not UTF-8" in errors[0]["reason"]
    assert m["inputs"]["written"] == 4 and m["inputs"]["rejected"] == 1


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    ok_srt = [(0, 1, "a fine hexagon"), (1, 2, "and a crescent")]
    make_video(d / "good.mp4", 2.0)
    make_srt(d / "good.srt", ok_srt)
    (d / "empty.mp4").write_bytes(b"")
    make_srt(d / "empty.srt", ok_srt)
    (d / "text.mp4").write_text("this is not a video at all\n" * 50)
    make_srt(d / "text.srt", ok_srt)
    make_video(d / "full.mp4", 2.0, seed=1)
    raw = (d / "full.mp4").read_bytes()
    (d / "full.mp4").unlink()
    (d / "trunc.mp4").write_bytes(raw[: len(raw) // 2])
    make_srt(d / "trunc.srt", ok_srt)
    make_video(d / "corrupt.mp4", 6.0, seed=2, options={"g": "8"})  # a key frame every second
    raw = bytearray((d / "corrupt.mp4").read_bytes())
    mid = len(raw) // 3
    raw[mid:mid + 2000] = bytes((b * 7 + 13) % 256 for b in raw[mid:mid + 2000])
    (d / "corrupt.mp4").write_bytes(bytes(raw))
    make_srt(d / "corrupt.srt", [(0, 6, "long clip")])
    make_video(d / "short.mp4", 0.5)
    make_srt(d / "short.srt", [(0, 0.5, "tiny")])
    make_video(d / "notrans.mp4", 2.0)
    make_video(d / "badsrt.mp4", 2.0)
    (d / "badsrt.srt").write_text("1\n00:00:00,000 -> 00:00:01,000\nbroken arrow\n")
    make_video(d / "badvtt.mp4", 2.0)
    (d / "badvtt.vtt").write_text("00:00.000 --> 00:01.000\nmissing header\n")
    make_video(d / "latin.mp4", 2.0)
    (d / "latin.srt").write_bytes("1\n00:00:00,000 --> 00:00:01,000\nun café crème, très léger\n".encode("latin-1"))
    (d / "emptynotrans.mp4").write_bytes(b"")  # two faults: both are reported
    make_video(d / "late.mp4", 2.0)
    make_srt(d / "late.srt", [(0, 1, "ok"), (50, 60, "from another video")])
    make_video(d / "dup.mp4", 2.0)
    make_video(d / "dup.mkv", 2.0)
    make_srt(d / "dup.srt", ok_srt)
    make_srt(d / "orphan.srt", ok_srt)
    (d / "notes.md").write_text("not an input")
    return d


EXPECTED = {  # file -> a fragment of its reason
    "empty.mp4": "file is empty (0 bytes)",
    "text.mp4": "cannot be opened as a video",
    "trunc.mp4": "cannot be opened as a video: not a video file, or truncated",
    "short.mp4": "shorter than one clip",
    "notrans.mp4": "no transcript with the same stem",
    "badsrt.mp4": "badsrt.srt:2: malformed SRT",
    "badvtt.mp4": "badvtt.vtt:1: malformed VTT",
    "emptynotrans.mp4": "no transcript with the same stem",
    "late.mp4": "past the end of the video",
    "dup.mp4": "duplicate stem 'dup'",
    "dup.mkv": "duplicate stem 'dup'",
    "dup.srt": "duplicate stem 'dup'",
    "orphan.srt": "transcript without a video",
    "notes.md": "unsupported file type",
}


def test_bad_inputs_each_get_a_reason_and_nothing_is_lost(bad_folder, tmp_path):
    opts = BuildOptions(frames=2, size=32, clip_seconds=2.0)
    r = subprocess.run([sys.executable, "-m", "videomask.prep.build", str(bad_folder), str(tmp_path / "out"),
                        "--frames", "2", "--size", "32", "--clip-seconds", "2", "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr  # something was written
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    by_file = {}
    for e in errors:
        by_file.setdefault(Path(e["source"]).name, []).append(e)
    for name, fragment in EXPECTED.items():
        assert name in by_file, f"{name} missing from errors.jsonl"
        assert any(fragment in e["reason"] for e in by_file[name]), (name, by_file[name])
        assert all(str(bad_folder) in e["source"] for e in by_file[name])  # the file is named
    # the video with corrupt bytes in the middle: its undecodable clips are reported, the others written
    (corrupt,) = by_file["corrupt.mp4"]
    assert corrupt["clip"] == 1 and "frames 20..28 cannot be decoded" in corrupt["reason"]
    assert "file is empty (0 bytes)" in by_file["emptynotrans.mp4"][0]["reason"]
    samples = samples_of(tmp_path / "out")
    assert [s["key"] for s in samples] == ["corrupt_0000", "corrupt_0002", "good_0000", "latin_0000"]
    # a Latin-1 transcript is kept: decoded, and its encoding recorded
    latin = samples[-1]
    assert latin["text"] == "un café crème, très léger" and latin["meta"]["transcript_encoding"] in (
        "latin_1", "cp1252", "iso8859_15", "cp1250")
    assert "transcript_encoding" not in samples[0]["meta"]  # UTF-8 is the unremarked default
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    c = m["inputs"]
    assert c["total"] == c["written"] + c["rejected"] == 17  # 12 videos, dup.{mp4,mkv,srt}, orphan.srt, notes.md
    assert c["written"] == 3 and c["partial"] == 1 and c["clips_rejected"] == 1
    assert "17 inputs = " in r.stdout
    # --strict fails the build when anything was rejected
    r = subprocess.run([sys.executable, "-m", "videomask.prep.build", str(bad_folder), str(tmp_path / "strict"),
                        "--frames", "2", "--size", "32", "--clip-seconds", "2", "--quiet", "--strict"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "--strict" in r.stderr
    del opts


def test_missing_transcript_can_be_kept(bad_folder, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(bad_folder / "notrans.mp4", src)
    build.build(src, tmp_path / "out", BuildOptions(frames=2, size=32, clip_seconds=2.0,
                                                    missing_transcript="keep"), progress=False)
    (s,) = samples_of(tmp_path / "out")
    assert s["text"] == "" and s["words"] == [] and s["meta"]["timing"] == "none"


def test_nothing_written_exits_nonzero(bad_folder, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(bad_folder / "empty.mp4", src)
    r = subprocess.run([sys.executable, "-m", "videomask.prep.build", str(src), str(tmp_path / "out"), "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "nothing was written" in r.stderr


def test_unreadable_directory_is_reported(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    make_video(root / "ok.mp4", 2.0)
    make_srt(root / "ok.srt", [(0, 2, "fine")])
    (root / "locked").mkdir()
    make_video(root / "locked" / "hidden.mp4", 2.0)
    os.chmod(root / "locked", 0o000)
    cmd = [sys.executable, "-m", "videomask.prep.build", str(root), str(tmp_path / "out"), "--clip-seconds", "2",
           "--size", "32", "--frames", "2", "--quiet"]
    if os.geteuid() == 0:  # root reads any directory: drop the capabilities that let it
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot make a directory unreadable")
        caps = "-dac_override,-dac_read_search"
        cmd = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *cmd]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        os.chmod(root / "locked", 0o755)
    assert r.returncode == 0, r.stderr
    (e,) = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert e["source"] == str(root / "locked") and "cannot read directory: Permission denied" in e["reason"]
    assert "2 inputs = 1 written + 1 rejected" in r.stdout


def test_same_shards_for_one_and_two_workers(tiny_world, tmp_path):
    opts = BuildOptions(frames=3, size=48, clip_seconds=1.0, max_samples=4)
    build.build(tiny_world / "target.jsonl", tmp_path / "w1", opts, workers=1, progress=False)
    build.build(tiny_world / "target.jsonl", tmp_path / "w2", opts, workers=2, progress=False)
    d1 = shard_digests(tmp_path / "w1")
    assert len(d1) >= 4 and d1 == shard_digests(tmp_path / "w2")


def test_batched_encoder_gives_pillows_bytes():
    # the build's one-process path encodes a clip's frames in one call (it releases the GIL); its bytes must be
    # Pillow's, or the shards would depend on --workers. Crops (views into a larger frame), resized frames
    # (read-only arrays) and odd sizes, at the default and extreme qualities.
    g = np.random.default_rng(1)
    big = (g.random((3, 90, 131, 3)) * 255).astype(np.uint8)
    frames = [resize_crop(f, 48) for f in big] + [big[0], big[1, 3:40, 5:58], np.zeros((8, 8, 3), np.uint8)]
    assert not frames[0].flags.writeable and not frames[-2].flags.c_contiguous  # the awkward cases are there
    assert _torchvision_encodes_as_pillow(90)  # this install's torchvision: the fast path is what is tested
    for q in (90, 1, 100):
        assert encode_jpegs(frames, q) == [encode_jpeg(f, q) for f in frames]
    assert encode_jpegs([], 90) == []


def test_build_workers_do_not_import_torch():
    # the spawned build workers import what ``process`` needs; torch (4 s and 800 MB a process on a CPU box)
    # is imported only by the one-process path's batched encoder
    code = "import sys, videomask.prep.cutting; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def test_resize_crop_short_side_and_centre():
    f = np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3)
    assert resize_crop(f, 40).shape == (40, 40, 3) and np.array_equal(resize_crop(f, 40), f[:, 10:50])  # crop only
    assert np.shares_memory(resize_crop(f[:, :40], 40), f)  # already at the size: no copy
    assert resize_crop(f, 20).shape == (20, 20, 3) and resize_crop(f.transpose(1, 0, 2), 32).shape == (32, 32, 3)


def test_rerun_is_a_no_op_and_other_options_are_refused(tiny_world, tiny_shards, tmp_path):
    def stamps():  # the lock file is rewritten by every job that takes it: not part of the output
        return {p.name: p.stat().st_mtime_ns for p in tiny_shards["target"].iterdir() if p.name != ".videomask.lock"}

    before = stamps()
    build.build(tiny_world / "target.jsonl", tiny_shards["target"], TINY_BUILD, progress=False)
    assert stamps() == before
    (tiny_shards["target"] / "manifest.json").rename(tmp_path / "m.json")  # as if killed before the manifest
    try:
        with pytest.raises(SystemExit, match="other options.*size"):
            build.build(tiny_world / "target.jsonl", tiny_shards["target"], BuildOptions(**{**TINY_BUILD.__dict__,
                                                                                             "size": 32}))
    finally:
        (tmp_path / "m.json").rename(tiny_shards["target"] / "manifest.json")


@pytest.mark.slow
def test_resume_after_kill_9(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for k in range(24):
        make_video(src / f"v{k:02d}.mp4", 2.0, seed=k)
        make_srt(src / f"v{k:02d}.srt", [(0, 1, f"clip {k} first"), (1, 2, "second")])
    (src / "broken.mp4").write_bytes(b"")  # an error before the kill must not be duplicated after it
    make_srt(src / "broken.srt", [(0, 1, "x")])
    args = ["--frames", "8", "--size", "320", "--clip-seconds", "1", "--max-samples", "3", "--quiet"]
    subprocess.run([sys.executable, "-m", "videomask.prep.build", str(src), str(tmp_path / "ref"), *args], check=True,
                   capture_output=True)
    out = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-m", "videomask.prep.build", str(src), str(out), *args])
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.glob("*.tar"))) < 3:
        time.sleep(0.002)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (out / "manifest.json").exists(), "the build finished before it could be killed"
    assert 3 <= len(list(out.glob("*.tar"))) < len(shard_digests(tmp_path / "ref"))
    r = subprocess.run([sys.executable, "-m", "videomask.prep.build", str(src), str(out), *args], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert not list(out.glob("*.tmp"))
    assert shard_digests(out) == shard_digests(tmp_path / "ref")
    ref_m = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    m = json.loads((out / "manifest.json").read_text())
    assert m["shards"] == ref_m["shards"] and m["inputs"] == ref_m["inputs"]
    assert [json.loads(x)["source"] for x in (out / "errors.jsonl").read_text().splitlines()] == [str(src / "broken.mp4")]
    keys = [s["key"] for s in samples_of(out)]
    assert len(keys) == len(set(keys)) == 48


def test_partitions_and_merge(tiny_world, tmp_path):
    opts = BuildOptions(frames=2, size=32, clip_seconds=3.0, max_samples=2)
    full = build.build(tiny_world / "target.jsonl", tmp_path / "full", opts, progress=False)
    for part in range(3):
        build.build(tiny_world / "target.jsonl", tmp_path / "parts", opts, num_partitions=3, partition=part,
                    progress=False)
    r = subprocess.run([sys.executable, "-m", "videomask.prep.build", "merge", str(tmp_path / "parts")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    merged = json.loads((tmp_path / "parts" / "manifest.json").read_text())
    assert merged["inputs"] == full["inputs"]
    assert {k: v["samples"] for k, v in merged["splits"].items()} == {k: v["samples"] for k, v in full["splits"].items()}
    assert sorted(s["key"] for s in samples_of(tmp_path / "parts")) == sorted(s["key"] for s in samples_of(tmp_path / "full"))
    with pytest.raises(ValueError, match="--partition 3"):
        build.build(tiny_world / "target.jsonl", tmp_path / "parts", opts, num_partitions=3, partition=3)


def test_cli_help_and_wrapper():
    r = subprocess.run(["bash", "data_prep/build_shards.sh", "--help"], capture_output=True, text=True,
                       cwd=Path(__file__).parents[1], env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 0 and "--workers" in r.stdout and "errors.jsonl" in r.stdout


def test_pyav_backend_decodes_the_same_frames(tiny_world, tmp_path):
    from videomask.prep.video import DecordReader, PyAVReader

    video = next((tiny_world / "target").glob("*.mp4"))
    idx = [0, 5, 13, 23]
    assert (PyAVReader(video).frames(idx) == DecordReader(video).frames(idx)).all()
    opts = BuildOptions(frames=3, size=48, clip_seconds=3.0)
    build.build(tiny_world / "general.jsonl", tmp_path / "decord", opts, progress=False)
    build.build(tiny_world / "general.jsonl", tmp_path / "pyav", BuildOptions(**{**opts.__dict__, "backend": "pyav"}),
                progress=False)
    a, b = samples_of(tmp_path / "decord"), samples_of(tmp_path / "pyav")
    assert [s["key"] for s in a] == [s["key"] for s in b]
    assert all((x["frames"] == y["frames"]).all() for x, y in zip(a, b))


def test_csv_manifest_with_annotations_and_bad_rows(tiny_world, tmp_path):
    rows = [json.loads(x) for x in (tiny_world / "target.jsonl").read_text().splitlines()][:2]
    lines = ["video,transcript,split,label,question,answers,answer_idx"]
    lines.append(f"{tiny_world / rows[0]['video']},{tiny_world / rows[0]['transcript']},test,hexagon,Which?,"
                 f"red|blue|green|cyan,2")
    lines.append(f"{tiny_world / rows[1]['video']},,train,x,Which?,\"[\"\"a\"\",\"\"b\"\"]\",one")
    lines.append(",,train,,,,")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    m = build.build(tmp_path / "m.csv", tmp_path / "out", BuildOptions(frames=2, size=32, clip_seconds=3.0),
                    progress=False)
    (s,) = samples_of(tmp_path / "out")
    assert s["meta"]["answers"] == ["red", "blue", "green", "cyan"] and s["meta"]["answer_idx"] == 2
    assert s["meta"]["split"] == "test" and s["meta"]["label"] == "hexagon"
    errors = (tmp_path / "out" / "errors.jsonl").read_text()
    assert "m.csv:3" in errors and "answer_idx 'one' is not an integer" in errors
    assert "m.csv:4" in errors and "neither a 'video' path" in errors
    assert m["inputs"]["total"] == 3 and m["inputs"]["written"] == 1


def test_unicode_file_names_keep_distinct_keys(tmp_path):
    (tmp_path / "c").mkdir()
    for name in ("视频", "音频", "café"):
        (tmp_path / "c" / f"{name}.txt").write_text(f"the {name} document\n")
    m = build.build(tmp_path / "c", tmp_path / "out", BuildOptions(), progress=False)
    keys = sorted(s["key"] for s in samples_of(tmp_path / "out"))
    assert m["inputs"]["written"] == 3 and m["inputs"]["rejected"] == 0
    assert len(set(keys)) == 3 and any(k.startswith("视频") for k in keys) and any(k.startswith("音频") for k in keys)
