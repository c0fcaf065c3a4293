"""Scoring at scale: DataLoader workers, job-array partitions + merge, torchrun ranks, kill -9 and rerun.

Every way of splitting the job must write the same bytes as one process (docs: videomask.scoring.score).
On CPU that holds for the same number of threads per process (a BLAS reduces in another order with more
threads), so the subprocess runs here all use one thread, as torchrun gives each rank by default."""
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest
from conftest import TINY_BUILD

from videomask.prep import build
from videomask.scoring import score

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def output(folder):
    """Everything a scoring writes that a user reads: the shards, the manifest and the error report."""
    names = sorted(p.name for p in folder.glob("*.tar")) + ["manifest.json", "errors.jsonl"]
    return {n: (folder / n).read_bytes() for n in names}


@pytest.fixture(scope="module")
def many_shards(tiny_world, tmp_path_factory):
    """The tiny target world, one sample per shard (enough shards to split), plus one shard that is cut short
    and one the manifest lists but that has vanished."""
    root = tmp_path_factory.mktemp("many")
    opts = build.BuildOptions(**{**TINY_BUILD.__dict__, "max_samples": 1})
    build.build(tiny_world / "target.jsonl", root, opts, progress=False)
    manifest = json.loads((root / "manifest.json").read_text())
    cut = root / manifest["shards"][1]["name"]
    cut.write_bytes(cut.read_bytes()[:1500])  # inside the first frame: the sample is lost, the shard reported
    manifest["shards"].append({**manifest["shards"][0], "name": "train-999999.tar"})  # listed, not there
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_workers_and_partitions_write_the_same_bytes_as_one_process(many_shards, tiny_anchors, tiny_scorer,
                                                                   tmp_path):
    clip = f"local-dir:{tiny_scorer}"
    ref = score.score_shards(many_shards, tmp_path / "one", tiny_anchors, clip, progress=False)
    one = output(tmp_path / "one")
    assert len(ref["shards"]) >= 8 and ref["word_table"] > 0
    errors = [json.loads(x) for x in one["errors.jsonl"].splitlines()]
    sources = {e["source"].rsplit("/", 1)[-1] for e in errors}
    assert {ref["shards"][1]["name"], "train-999999.tar"} <= sources  # the cut shard and the vanished one
    assert ref["shards"][-1]["samples"] == 0 and ref["score_errors"] == len(errors)
    assert sum(s["samples"] for s in ref["shards"]) == sum(s["samples"] for s in json.loads(
        (many_shards / "manifest.json").read_text())["shards"]) - 2  # the two lost samples, and no other

    score.score_shards(many_shards, tmp_path / "workers", tiny_anchors, clip, progress=False, workers=2,
                       batch_size=64)
    assert output(tmp_path / "workers") == one

    for p in range(3):  # a job array of three tasks, each in OUT/part-NNNNN
        score.score_shards(many_shards, tmp_path / "array", tiny_anchors, clip, progress=False, num_partitions=3,
                           partition=p)
    parts = [json.loads((tmp_path / "array" / f"part-{p:05d}" / "manifest.json").read_text()) for p in range(3)]
    assert all(m["shards"] for m in parts) and sum(len(m["shards"]) for m in parts) == len(ref["shards"])
    # the partitions shared one vocabulary cache in OUT: an entry per input shard read whole (by its sha256),
    # none for the cut shard (the vanished one is listed with shard 0's sha256, so it is shard 0's entry)
    listed = json.loads((many_shards / "manifest.json").read_text())["shards"]
    kept = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "array" / ".score-vocabulary").glob("*.json")}
    assert set(kept) == {s["sha256"] for k, s in enumerate(listed) if k != 1}
    with tarfile.open(many_shards / listed[0]["name"]) as tar:
        first = json.loads(tar.extractfile(next(m for m in tar if m.name.endswith(".json"))).read())
    assert kept[listed[0]["sha256"]] == sorted({w["w"].lower() for w in first["words"]})
    assert build.main(["merge", str(tmp_path / "array")]) == 0  # the build's merge knows scoring partitions
    assert output(tmp_path / "array") == one
    assert score.main(["merge", str(tmp_path / "array")]) == 0  # and merging twice changes nothing
    assert output(tmp_path / "array") == one


def test_partition_refusals(many_shards, tiny_anchors, tiny_scorer, tmp_path, capsys):
    clip = f"local-dir:{tiny_scorer}"
    with pytest.raises(score.ScoringError, match="must be in"):
        score.score_shards(many_shards, tmp_path / "x", tiny_anchors, clip, num_partitions=2, partition=2)
    with pytest.raises(SystemExit):
        score.main([str(many_shards), str(tmp_path / "x"), "--anchors", str(tiny_anchors), "--clip", clip,
                    "--num-partitions", "2", "--partition", "-1"])
    assert "must be in [0, --num-partitions 2)" in capsys.readouterr().err
    score.score_shards(many_shards, tmp_path / "half", tiny_anchors, clip, progress=False, num_partitions=2,
                       partition=1)
    assert score.main(["merge", str(tmp_path / "half")]) == 2
    assert "1 partitions of 2; run the missing ones first" in capsys.readouterr().err
    assert not (tmp_path / "half" / "manifest.json").exists()


def test_a_later_partition_reads_the_vocabulary_cache(many_shards, tiny_anchors, tiny_scorer, tmp_path):
    # a task of a job array starting after another finds each shard's words in OUT/.score-vocabulary and does
    # not read the shards' JSON again: a word planted in one entry reaches the second task's word table
    clip = f"local-dir:{tiny_scorer}"
    a = score.score_shards(many_shards, tmp_path / "out", tiny_anchors, clip, progress=False, num_partitions=2,
                           partition=0)
    entry = sorted((tmp_path / "out" / ".score-vocabulary").glob("*.json"))[0]
    entry.write_text(json.dumps(json.loads(entry.read_text()) + ["zzplantedword"]))
    b = score.score_shards(many_shards, tmp_path / "out", tiny_anchors, clip, progress=False, num_partitions=2,
                           partition=1)
    assert b["word_table"] == a["word_table"] + 1
    entry.write_text("{not json")  # a damaged entry: that shard is read again, and its entry rewritten
    c = score.score_shards(many_shards, tmp_path / "out", tiny_anchors, clip, progress=False, num_partitions=2,
                           partition=1, overwrite=True)
    assert c["word_table"] == a["word_table"] and "zzplantedword" not in json.loads(entry.read_text())
    entry.write_text('{"zz": 1}')  # JSON, but not a list of words: read again too
    d = score.score_shards(many_shards, tmp_path / "out", tiny_anchors, clip, progress=False, num_partitions=2,
                           partition=1, overwrite=True)
    assert d["word_table"] == a["word_table"] and isinstance(json.loads(entry.read_text()), list)


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


@pytest.mark.slow
def test_torchrun_ranks_match_one_process_and_a_killed_rank_is_completed_by_the_rerun(many_shards, tiny_anchors,
                                                                                       tiny_scorer, tmp_path):
    args = [str(many_shards), None, "--anchors", str(tiny_anchors), "--clip", f"local-dir:{tiny_scorer}",
            "--quiet", "--workers", "1"]
    cli = [sys.executable, "-m", "videomask.scoring.score"]
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531", "-m",
           "videomask.scoring.score"]

    def argv(out):
        return [str(out) if a is None else a for a in args]

    r = subprocess.run([*cli, *argv(tmp_path / "one")], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    one = output(tmp_path / "one")

    r = subprocess.run([*run, *argv(tmp_path / "two")], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert output(tmp_path / "two") == one

    out = tmp_path / "killed"
    job = subprocess.Popen([*run, *argv(out)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not list((out / ".score").glob("*.json")) if (out / ".score").exists() else True:
        assert job.poll() is None and time.time() < deadline, "the job ended before writing a shard"
        time.sleep(0.005)
    ranks = children(job.pid)
    for pid in ranks:  # freeze both ranks where they are, then kill one as a crash would
        os.kill(pid, signal.SIGSTOP)
    done = len(list((out / ".score").glob("*.json")))
    os.kill(ranks[-1], signal.SIGKILL)
    for pid in ranks[:-1]:
        os.kill(pid, signal.SIGCONT)
    assert job.wait(timeout=120) != 0  # torchrun stops the other rank and fails
    total = len(json.loads((many_shards / "manifest.json").read_text())["shards"])
    assert 0 < done < total and not (out / "manifest.json").exists()

    r = subprocess.run([*run, *argv(out)], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert output(out) == one  # no sample missing, none twice, the same bytes
    assert not list(out.glob("*.tmp"))

    # the output belongs to one job at a time: a second one is refused on every rank with one message
    r = subprocess.run([*run, *argv(out), "--aggregation", "mean"], env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0 and r.stderr.count("holds scores made with other settings") == 1
