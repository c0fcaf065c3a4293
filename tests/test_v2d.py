"""video2dataset shards as build input (issue 24): the real release's output (tests/fixtures/video2dataset-1.3.0),
and shards written member for member as video2dataset 1.3.0 writes them (subtitles need YouTube, unreachable here)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import webdataset as wds

from conftest import make_video
from videomask import data
from videomask.prep import build
from videomask.prep.v2d_shards import detect, sniff

REAL = Path(__file__).parent / "fixtures" / "video2dataset-1.3.0"
OPTS = build.BuildOptions(frames=2, size=32, clip_seconds=2.0)


def v2d_meta(key, url, caption, status="success", error=None, subtitles=None):
    """The metadata video2dataset 1.3.0's download worker writes (its ``meta`` dict, ``json.dumps(indent=4)``)."""
    yt = None if subtitles is None else {"info": {"title": "t"}, "subtitles": {"en": subtitles}}
    return {"caption": caption, "url": url, "key": key, "status": status, "error_message": error, "yt_meta_dict": yt}


def write_v2d_shard(path: Path, samples):
    """``samples``: [(key, video bytes or None, meta)] written as ``WebDatasetSampleWriter.write`` does."""
    with open(path, "wb") as f, wds.TarWriter(f) as tar:
        for key, video, meta in samples:
            sample = {"__key__": key}
            if video is not None:
                sample["mp4"] = video
            sample["txt"] = str(meta["caption"])
            sample["json"] = json.dumps(meta, indent=4)
            tar.write(sample)
    (path.parent / f"{path.stem}_stats.json").write_text(json.dumps({"count": len(samples)}))


@pytest.fixture(scope="module")
def v2d_folder(tmp_path_factory):
    """Two shards: captions, subtitles (VTT times, two cues), a failed download, success without a video member,
    and a shard whose second sample's video is truncated."""
    root = tmp_path_factory.mktemp("v2d")
    videos = root / "videos"
    videos.mkdir()
    clip = [make_video(videos / f"{k}.mp4", seconds=4.0, seed=k).read_bytes() for k in range(3)]
    subs = [{"start": "00:00:00.500", "end": "00:00:01.500", "lines": ["the lattice glows"]},
            {"start": "00:00:02.200", "end": "00:00:03.600", "lines": ["a violet", "hexagon"]}]
    write_v2d_shard(root / "00000.tar", [
        ("00000000", clip[0], v2d_meta("00000000", "https://x/0.mp4", "a caption for the whole video")),
        ("00000001", None, v2d_meta("00000001", "https://x/1.mp4", "gone", "failed_to_download", "HTTP 404")),
        ("00000002", clip[1], v2d_meta("00000002", "https://youtu.be/abc", "", subtitles=subs)),
    ])
    write_v2d_shard(root / "00001.tar", [
        ("00010000", None, v2d_meta("00010000", "https://x/3.mp4", "no video member")),
        ("00010001", clip[2][: len(clip[2]) // 3], v2d_meta("00010001", "https://x/4.mp4", "cut short")),
        ("00010002", clip[2], v2d_meta("00010002", "https://x/5.mp4", "the last one")),
    ])
    return root


def samples_of(folder):
    return {s["key"]: s for s in data.dataset(str(folder), split_by_node=False)}


def test_the_real_release_builds_with_every_sample_accounted_for(tmp_path):
    assert detect(REAL) and detect(REAL / "00000.tar")
    m = build.build(REAL, tmp_path / "out", OPTS, progress=False)
    assert m["inputs"] == {"total": 6, "written": 4, "rejected": 2, "partial": 0, "clips_rejected": 0}
    errors = [json.loads(x) for x in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    by_source = {e["source"].rsplit("#", 1)[1]: e for e in errors}
    assert by_source["00000004"]["status"] == "failed_to_download"
    assert "Connection refused" in by_source["00000004"]["error_message"]
    assert "not a video container" in by_source["00000003"]["reason"]  # the 404 page video2dataset kept as .mp4
    got = samples_of(tmp_path / "out")
    metas = {s["meta"]["video2dataset"]["key"]: s["meta"] for s in got.values()}
    assert set(metas) == {"00000000", "00000001", "00000002", "00000005"}
    webm = metas["00000005"]
    assert webm["video2dataset"]["container"] == "mkv"  # WebM under an .mp4 name, sniffed
    assert webm["url"] == "http://127.0.0.1:8765/webm_as.mp4" and webm["video2dataset"]["shard"] == "00000.tar"
    for s in got.values():
        assert s["frames"].shape == (2, 3, 32, 32)
        assert s["text"] == s["meta"]["video2dataset"]["caption"] and s["meta"]["timing"] == "caption"
        assert s["meta"]["source"].endswith("#" + s["meta"]["video2dataset"]["key"])


def test_subtitles_captions_and_rejections(v2d_folder, tmp_path):
    m = build.build(v2d_folder, tmp_path / "out", OPTS, progress=False)
    assert m["inputs"]["total"] == 6 and m["inputs"]["written"] == 3 and m["inputs"]["rejected"] == 3
    errors = {e["source"].rsplit("#", 1)[1]: e for e in
              map(json.loads, (tmp_path / "out" / "errors.jsonl").read_text().splitlines())}
    assert errors["00000001"]["status"] == "failed_to_download" and errors["00000001"]["error_message"] == "HTTP 404"
    assert "no video member" in errors["00010000"]["reason"]
    assert "00010001.mp4" in errors["00010001"]["reason"] and "/tmp" not in errors["00010001"]["reason"]
    got = samples_of(tmp_path / "out")
    captioned = sorted(k for k in got if k.startswith("00000_00000000"))
    assert len(captioned) == 2  # 4 s at 2 s a clip: both clips carry the whole caption
    assert all(got[k]["text"] == "a caption for the whole video" for k in captioned)
    subtitled = [got[k] for k in sorted(got) if k.startswith("00000_00000002")]
    assert [s["text"] for s in subtitled] == ["the lattice glows", "a violet hexagon"]
    assert subtitled[1]["meta"]["timing"] == "cues" and subtitled[1]["meta"]["video2dataset"]["transcript"] == "subtitles"
    w = subtitled[1]["meta"]["words"]
    assert [x["w"] for x in w] == ["a", "violet", "hexagon"] and 2.2 <= w[0]["t0"] < w[-1]["t1"] <= 3.6


def test_job_array_partitions_give_the_same_samples(v2d_folder, tmp_path):
    whole = build.build(v2d_folder, tmp_path / "whole", OPTS, progress=False)
    for part in range(2):
        build.build(v2d_folder, tmp_path / "parts", OPTS, num_partitions=2, partition=part, progress=False)
    merged = build.merge(tmp_path / "parts")
    assert merged["inputs"] == whole["inputs"]
    for part in range(2):  # a task takes whole shards: each shard is read by one task only
        folder = tmp_path / "parts" / f"part-{part:05d}"
        if not json.loads((folder / "manifest.json").read_text())["shards"]:
            continue  # both input shards may fall to one task
        got = {s["meta"]["video2dataset"]["shard"] for s in data.dataset(str(folder), frames=False,
                                                                          split_by_node=False)}
        assert all(build.partition_of(name, 2) == part for name in got), (part, got)
    a, b = samples_of(tmp_path / "whole"), samples_of(tmp_path / "parts")
    assert set(a) == set(b) and all(a[k]["frames"].equal(b[k]["frames"]) for k in a)


def test_build_shards_sh_reads_a_v2d_tar_and_workers_give_the_same_bytes(v2d_folder, tmp_path):
    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run(["bash", str(repo / "data_prep" / "build_shards.sh"), str(v2d_folder / "00000.tar"),
                        str(tmp_path / "one"), "--frames", "2", "--size", "32", "--clip-seconds", "2", "--quiet",
                        "--workers", "2"], capture_output=True, text=True, env={"PYTHON": sys.executable,
                                                                                "PATH": "/usr/bin:/bin"}, timeout=300)
    assert r.returncode == 0 and "3 inputs = 2 written + 1 rejected" in r.stdout, r.stdout + r.stderr
    build.build(v2d_folder / "00000.tar", tmp_path / "two", OPTS, progress=False)
    assert (tmp_path / "one" / "train-000000.tar").read_bytes() == (tmp_path / "two" / "train-000000.tar").read_bytes()


def test_not_v2d_and_sniffing(tmp_path, tiny_world):
    assert not detect(tiny_world)  # a folder of videos and transcripts is a folder build
    other = tmp_path / "other"
    other.mkdir()
    with open(other / "x.tar", "wb") as f, wds.TarWriter(f) as tar:
        tar.write({"__key__": "a", "json": json.dumps({"hello": 1})})
    assert not detect(other)
    shutil.copy(REAL / "00000.tar", tmp_path / "copy.tar")
    assert detect(tmp_path / "copy.tar")
    assert sniff(b"\x00\x00\x00\x20ftypisom") == ".mp4" and sniff(b"\x1a\x45\xdf\xa3...") == ".mkv"
    assert sniff(b"RIFF\x00\x00\x00\x00AVI LIST") == ".avi" and sniff(b"<!DOCTYPE html>") is None
