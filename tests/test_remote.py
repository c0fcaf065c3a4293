"""Shards where users keep them (issue 24): read from a real HTTP server and a real S3-compatible server (moto in
server mode), both started here on 127.0.0.1, and from ``pipe:`` commands; outputs published to the S3 server."""
import functools
import http.server
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from videomask import data, urls

import moto.server  # noqa: E402,F401  (the test extra installs both: a missing one is a failure, not a skip)
import s3fs  # noqa: E402,F401


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """The folder as it is, and three broken servers: /short/NAME announces NAME's length and sends half of it,
    /chunked/NAME sends its first half chunked and closes without the last chunk, /forbidden/ answers 403."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        kind, _, name = self.path.lstrip("/").partition("/")
        if kind == "forbidden":
            return self.send_error(403)
        if kind not in ("short", "chunked"):
            return super().do_GET()
        body = (Path(self.directory) / name).read_bytes()
        self.send_response(200)
        if kind == "short":  # the connection drops halfway through a body of the length it announced
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
        else:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = body[: len(body) // 2]
            self.wfile.write(f"{len(half):x}\r\n".encode() + half + b"\r\n")
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture(scope="session")
def http_root(tmp_path_factory):
    """A real HTTP server (the standard library's) over a folder; yields (folder, base URL)."""
    root = tmp_path_factory.mktemp("http")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A local S3-compatible server (``moto.server``, its own process); the environment every tool reads
    (``AWS_ENDPOINT_URL``, keys) is set for this process and the commands it starts."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            break
        except OSError:
            time.sleep(0.1)
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("bucket")
    yield fs
    proc.terminate()
    proc.wait(10)
    for k, v in old.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="session")
def remote_shards(scored_shards, http_root, s3):
    """The scored shards on disk, on the HTTP server and in the bucket."""
    root, base = http_root
    shutil.copytree(scored_shards, root / "scored", ignore=shutil.ignore_patterns(".*"))
    s3.put(str(scored_shards) + "/", "bucket/scored/", recursive=True)
    return {"disk": str(scored_shards), "http": f"{base}/scored", "s3": "s3://bucket/scored",
            "pipe": f"pipe:cat {scored_shards}/{{}}"}  # a folder through a command: {} is each file's name


def env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def videomask(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "videomask", *map(str, args)], capture_output=True, text=True,
                          env=env(), timeout=timeout)


def keys_and_frames(where, split=None):
    return [(s["key"], s["frames"].numpy().tobytes(), s["meta"]["word_scores"])
            for s in data.dataset(where, split, split_by_node=False)]


def test_every_url_reads_the_same_samples_as_disk(remote_shards, scored_shards):
    disk = keys_and_frames(remote_shards["disk"])
    assert len(disk) > 4
    names = [s["name"] for s in json.loads((scored_shards / "manifest.json").read_text())["shards"]]
    first, n_train = names[0], sum(n.startswith("train-") for n in names)
    assert n_train >= 2 and len(names) > n_train
    brace = f"{remote_shards['http']}/train-{{000000..{n_train - 1:06d}}}.tar"
    pipes = [f"pipe:cat {scored_shards / n}" for n in names]
    for where in (remote_shards["http"], remote_shards["s3"], remote_shards["pipe"], pipes,
                  [f"file://{scored_shards / n}" for n in names]):
        assert keys_and_frames(where) == disk, where
    train = keys_and_frames(remote_shards["disk"], "train")
    assert keys_and_frames(remote_shards["s3"], "train") == train
    assert keys_and_frames(brace) == train
    for where in (remote_shards["http"], remote_shards["s3"], remote_shards["pipe"], f"pipe:cat {scored_shards / first}"):
        r = videomask("check", where)
        expected = len(disk) if "{}" in where or not where.startswith("pipe:") else len(
            keys_and_frames(str(scored_shards / first)))
        assert r.returncode == 0 and f"{expected} samples read: {expected} usable, 0 skipped" in r.stdout, r


def test_training_from_a_bucket_and_a_server_matches_disk(remote_shards, tiny_anchors, tmp_path):
    losses = {}
    for name in ("disk", "s3", "http", "pipe"):
        out = tmp_path / name
        r = videomask("train", f"data.train={remote_shards[name]}", f"data.anchors={tiny_anchors}", f"run.out={out}",
                      "data.batch_size=4", "optim.max_steps=3", "run.log_every=1", "model.dropout=0.0")
        assert r.returncode == 0, r.stderr[-2000:]
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [x["loss"] for x in lines if "loss" in x]
    assert losses["disk"] and all(losses[name] == losses["disk"] for name in losses), losses


def test_scoring_reads_a_bucket_and_publishes_to_one(tiny_shards, tiny_anchors, tiny_scorer, s3, http_root, tmp_path):
    from videomask.scoring import score

    s3.put(str(tiny_shards["target"]) + "/", "bucket/built/", recursive=True)
    root, base = http_root
    shutil.copytree(tiny_shards["target"], root / "built", ignore=shutil.ignore_patterns(".*"))
    common = dict(image_prompt="{}", progress=False, workers=0)
    local = score.score_shards(tiny_shards["target"], tmp_path / "local", tiny_anchors,
                               f"local-dir:{tiny_scorer}", **common)
    for name, src in (("http", f"{base}/built"), ("pipe", f"pipe:cat {tiny_shards['target']}/{{}}")):
        streamed = score.score_shards(src, tmp_path / name, tiny_anchors, f"local-dir:{tiny_scorer}", **common)
        assert [s["sha256"] for s in streamed["shards"]] == [s["sha256"] for s in local["shards"]], name
    os.environ["VIDEOMASK_STAGING"] = str(tmp_path / "staging")
    try:
        remote = score.score_shards("s3://bucket/built", "s3://bucket/scored-out", tiny_anchors,
                                    f"local-dir:{tiny_scorer}", **common)
    finally:
        del os.environ["VIDEOMASK_STAGING"]
    assert [s["sha256"] for s in remote["shards"]] == [s["sha256"] for s in local["shards"]]
    listed = json.loads(s3.cat_file("bucket/scored-out/manifest.json"))
    assert [s["sha256"] for s in listed["shards"]] == [s["sha256"] for s in local["shards"]]
    for s in local["shards"]:
        assert s3.cat_file(f"bucket/scored-out/{s['name']}") == (tmp_path / "local" / s["name"]).read_bytes()
    assert keys_and_frames("s3://bucket/scored-out") == keys_and_frames(str(tmp_path / "local"))


@pytest.mark.parametrize("job", ["build", "score"])
def test_a_killed_upload_leaves_no_manifest_and_no_partial_shard(job, tiny_world, tiny_shards, tiny_anchors,
                                                                 tiny_scorer, s3, tmp_path):
    """kill -9 while a build or a scoring publishes: every object there is a complete shard, and the manifest only
    appears once all of them are; the rerun completes it."""
    out = f"s3://bucket/killed-{job}"
    e = {**env(), "VIDEOMASK_STAGING": str(tmp_path / "staging")}
    if job == "build":
        cmd = [sys.executable, "-m", "videomask", "build", str(tiny_world / "target.jsonl"), out, "--frames", "4",
               "--size", "64", "--clip-seconds", "3", "--max-samples", "1", "--quiet"]
    else:
        s3.put(str(tiny_shards["target"]) + "/", "bucket/to-score/", recursive=True)
        cmd = [sys.executable, "-m", "videomask", "score", "s3://bucket/to-score", out, "--anchors", str(tiny_anchors),
               "--clip", f"local-dir:{tiny_scorer}", "--image-prompt", "{}", "--workers", "0", "--quiet"]
    where = out[len("s3://"):]
    p = subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while p.poll() is None:
        seen = [x for x in s3.ls(where, refresh=True)] if s3.exists(where) else []
        s3.invalidate_cache()
        if any(x.endswith(".tar") for x in seen):
            p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    p.wait(60)
    staged = tmp_path / "staging" / urls.staging(out).name
    after_kill = s3.ls(where, refresh=True) if s3.exists(where) else []
    if any(x.endswith("manifest.json") for x in after_kill):  # the upload had finished before the kill landed
        manifest = json.loads(s3.cat_file(f"{where}/manifest.json"))
        assert {f"{where}/{s['name']}" for s in manifest["shards"]} <= set(after_kill)
    for x in after_kill:
        if x.endswith(".tar"):  # complete: the same bytes as the staged shard
            assert s3.cat_file(x) == (staged / Path(x).name).read_bytes()
    r = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    s3.invalidate_cache()  # this process's listing of the bucket is from before the rerun
    manifest = json.loads(s3.cat_file(f"{where}/manifest.json"))
    assert len(manifest["shards"]) >= 2
    assert sum(1 for _ in data.dataset(out, split_by_node=False)) == sum(s["samples"] for s in manifest["shards"])


def test_a_stream_that_breaks_off_keeps_what_came_before(scored_shards, http_root, tmp_path):
    root, base = http_root
    name = json.loads((scored_shards / "manifest.json").read_text())["shards"][0]["name"]
    whole = (scored_shards / name).read_bytes()
    (root / "cut.tar").write_bytes(whole[: len(whole) // 2])
    complete = len(keys_and_frames(str(scored_shards / name)))
    (root / name).write_bytes(whole)
    with tarfile.open(scored_shards / name) as t:  # where the third sample's first header starts: a clean cut
        keys = [m.name.split(".")[0] for m in t.getmembers()]
        order = list(dict.fromkeys(keys))
        first, boundary = order[0], t.getmembers()[keys.index(order[2])].offset
    for where in (f"{base}/cut.tar", f"pipe:head -c {len(whole) // 2} {scored_shards / name}",
                  f"pipe:head -c {boundary} {scored_shards / name}", f"pipe:head -c {boundary} {scored_shards / name}"
                  "; exit 1", f"{base}/short/{name}", f"{base}/chunked/{name}",
                  f"pipe:cat {scored_shards / name}; exit 3", f"{base}/missing.tar"):
        counter = data.ErrorCounter(verbose=False)
        kept = list(data.dataset(where, handler=counter, split_by_node=False))
        assert "unreadable_shard" in counter.counts, where  # never silent, never a crash
        if "missing" not in where and "exit 3" not in where:
            assert 0 < len(kept) < complete, where
            assert all("json" in s["meta"] or s["meta"] for s in kept)
        if f"-c {boundary}" in where:  # cut between two samples: whether the second was whole cannot be known
            assert [s["key"] for s in kept] == [first], (where, [s["key"] for s in kept])
        if "exit 3" in where:  # every sample arrived, then the command failed: reported, nothing counted as lost
            assert len(kept) == complete and "status 3" in counter.examples["unreadable_shard"]
            assert counter.seen == complete and counter.skipped == 0


def test_messages_name_the_place_without_its_secrets(http_root, s3, scored_shards):
    root, base = http_root
    host = base.split("://")[1]
    for signed in (f"http://user:hunter2@{host}/nothing/x.tar?X-Amz-Signature=deadbeef",
                   "https://user:p@ss-hunter2@nowhere.invalid/x.tar?sig=deadbeef",  # no port, an @ in the password
                   f"pipe:curl -sf 'https://nowhere.invalid/x.tar?X-Amz-Signature=deadbeef'"):
        counter = data.ErrorCounter(verbose=False)
        assert list(data.dataset(signed, handler=counter, split_by_node=False)) == []
        message = counter.examples["unreadable_shard"]
        assert "x.tar" in message and "hunter2" not in message and "deadbeef" not in message, message
    name = json.loads((scored_shards / "manifest.json").read_text())["shards"][0]["name"]
    shutil.copy(scored_shards / name, root / "private.tar")
    pipe = f"pipe:cat {root / 'private.tar'} # https://x.org/?X-Amz-Signature=deadbeef"
    assert all("deadbeef" not in s["url"] for s in data.dataset(pipe, split_by_node=False))
    r = videomask("check", f"{base}/forbidden/")
    assert r.returncode == 2 and "403" in r.stderr and "brace pattern" not in r.stderr, r.stderr
    r = videomask("check", f"{base}/nothing")
    assert r.returncode == 2 and "brace pattern" in r.stderr, r
    r = videomask("check", "s3://bucket/no-such-folder")
    assert r.returncode == 2 and "no shards found at s3://bucket/no-such-folder" in r.stderr, r
    assert "testing-secret-key" not in r.stdout + r.stderr
    r = videomask("check", "gs://bucket/shards")
    assert r.returncode == 2 and "gs://bucket/shards" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_manifest_in_a_bucket_is_checked_like_a_local_one(s3, scored_shards):
    manifest = json.loads((scored_shards / "manifest.json").read_text())
    for bad in ("../elsewhere.tar", "s3://other/x.tar", "/abs.tar"):
        m = {**manifest, "shards": [{**manifest["shards"][0], "name": bad}]}
        s3.pipe_file("bucket/badmanifest/manifest.json", json.dumps(m).encode())
        r = videomask("check", "s3://bucket/badmanifest")
        assert r.returncode == 2 and "refused" in r.stderr, (bad, r.stderr)


def test_video2dataset_shards_build_from_a_bucket_and_a_server(s3, http_root, tmp_path):
    """The real video2dataset 1.3.0 output read from s3:// and https:// (a brace pattern: a server cannot list a
    folder) gives the same shards as from disk, every sample accounted for."""
    real = Path(__file__).parent / "fixtures" / "video2dataset-1.3.0"
    root, base = http_root
    shutil.copytree(real, root / "v2d")
    s3.put(str(real) + "/", "bucket/v2d/", recursive=True)
    common = ["--frames", "2", "--size", "32", "--clip-seconds", "2", "--quiet"]
    outs = {}
    for name, src in (("disk", real), ("s3", "s3://bucket/v2d"), ("http", f"{base}/v2d/{{00000..00000}}.tar"),
                      ("pipe", f"pipe:cat {real / '00000.tar'}")):
        r = videomask("build", src, tmp_path / name, *common)
        assert r.returncode == 0 and "6 inputs = 4 written + 2 rejected" in r.stdout, (name, r.stdout + r.stderr)
        outs[name] = [(x["key"], x["frames"].numpy().tobytes(), x["text"], {k: v for k, v in x["meta"].items()
                                                                               if k != "source"})
                      for x in data.dataset(str(tmp_path / name), split_by_node=False)]
    assert len(outs["disk"]) == 9 and all(outs[name] == outs["disk"] for name in outs)  # all but where they came from
    errors = (tmp_path / "s3" / "errors.jsonl").read_text()
    assert "s3://bucket/v2d/00000.tar#00000004" in errors and "failed_to_download" in errors


def test_a_folder_through_a_command_refuses_names_that_would_be_shell_words(scored_shards, tmp_path):
    folder = tmp_path / "shards"
    shutil.copytree(scored_shards, folder, ignore=shutil.ignore_patterns(".*"))
    manifest = json.loads((folder / "manifest.json").read_text())
    planted = tmp_path / "PWNED"
    for bad in (f"a$(touch {planted}).tar", "a;touch x.tar", "a b.tar", "a`id`.tar"):
        m = {**manifest, "shards": [{**manifest["shards"][0], "name": bad}]}
        (folder / "manifest.json").write_text(json.dumps(m))
        r = videomask("check", f"pipe:cat {folder}/{{}}")
        assert r.returncode == 2 and "refused" in r.stderr, (bad, r.stderr)
    assert not planted.exists()


def test_publishing_again_replaces_changed_shards_of_the_same_size(s3, tmp_path):
    """A rebuilt output whose shard changed but kept its size (tar sizes are multiples of 10240) is uploaded
    again, and the old manifest is gone before any shard changes."""
    folder = tmp_path / "out"
    folder.mkdir()
    for text in (b"old caption", b"new caption"):
        with open(folder / "train-000000.tar", "wb") as f, tarfile.open(fileobj=f, mode="w") as t:
            info = tarfile.TarInfo("k.txt")
            info.size = len(text)
            t.addfile(info, io.BytesIO(text))
        import hashlib

        sha = hashlib.sha256((folder / "train-000000.tar").read_bytes()).hexdigest()
        manifest = {"shards": [{"name": "train-000000.tar", "split": "train", "samples": 1, "sha256": sha}]}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        urls.publish(folder, "s3://bucket/republished", manifest)
        s3.invalidate_cache()
        assert s3.cat_file("bucket/republished/train-000000.tar") == (folder / "train-000000.tar").read_bytes()
        assert json.loads(s3.cat_file("bucket/republished/manifest.json"))["shards"][0]["sha256"] == sha
