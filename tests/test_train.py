import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from videomask import anchors, data, train
from videomask.collate import MaskingCollator, MaskingConfig
from videomask.config import ConfigError, load_config
from videomask.model import ModelConfig, VideoLanguageModel, load_tokenizer
from videomask.prep import build
from videomask.scoring import score
from videomask.train import main as train_main

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def common(scored, anchors, out, *extra):
    return [f"data.train={scored}", f"data.anchors={anchors}", f"run.out={out}", "data.batch_size=4",
            "run.log_every=1", "model.dropout=0.0", *extra]


def metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "loss" in x]


def test_tiny_model_overfits_one_batch(scored_shards):
    cfg = ModelConfig()
    tok = load_tokenizer(cfg)
    torch.manual_seed(0)
    model = VideoLanguageModel(cfg, len(tok))
    batch = MaskingCollator(tok, MaskingConfig(), 64, (model.grid, model.grid))(list(data.dataset(scored_shards))[:4])
    batch.pop("keys")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(50):
        r = model(batch)
        first = first or {k: float(r[k]) for k in ("loss_text", "loss_patch")}
        opt.zero_grad()
        r["loss"].backward()
        opt.step()
    assert float(r["loss_text"]) < 0.3 * first["loss_text"] and float(r["acc_text"]) > 0.8
    assert float(r["loss_patch"]) < 0.7 * first["loss_patch"]


@pytest.mark.parametrize("dropout", ["0.0", "0.1"])
def test_resume_gives_the_same_weights(scored_shards, tiny_anchors, tmp_path, dropout):
    # at the default dropout (0.1) too: a resume restores the RNG, and nothing may draw from it before the step
    args = ["optim.max_steps=6", "optim.warmup_steps=2", f"model.dropout={dropout}"]
    assert train_main(common(scored_shards, tiny_anchors, tmp_path / "a", *args)) == 0
    assert train_main(common(scored_shards, tiny_anchors, tmp_path / "b", *args, "run.stop_after=3")) == 0
    assert json.loads((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
    assert not (tmp_path / "b" / "model.safetensors").exists()  # not finished yet
    assert train_main(common(scored_shards, tiny_anchors, tmp_path / "b", *args, "run.resume=auto")) == 0
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    la, lb = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [round(x["loss"], 4) for x in la] == [round(x["loss"], 4) for x in lb]  # the same masks, the same losses
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 6 and "optimizer" in ckpt and "scheduler" in ckpt


def one_and_two_processes(scored, anchors, tmp_path, args, port: int):
    """The same run in one process (batch 4, ``tmp_path/one``) and in two under torchrun (batch 2 each,
    ``tmp_path/two``)."""
    one = common(scored, anchors, tmp_path / "one", *args)
    two = common(scored, anchors, tmp_path / "two", *args)
    two[two.index("data.batch_size=4")] = "data.batch_size=2"
    assert train_main(one) == 0
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(port), "-m", "videomask.train", *two], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow
def test_torchrun_two_processes_match_one_with_the_doubled_batch(scored_shards, tiny_anchors, tmp_path):
    one_and_two_processes(scored_shards, tiny_anchors, tmp_path, ["optim.max_steps=4", "data.split_by=samples"], 29517)
    l1, l2 = [x["loss"] for x in metrics(tmp_path / "one")], [x["loss"] for x in metrics(tmp_path / "two")]
    assert len(l1) == len(l2) == 4
    # the losses agree up to how masked tokens are averaged (per process, then over processes)
    assert all(abs(a - b) / a < 0.03 for a, b in zip(l1, l2)), (l1, l2)
    w1, w2 = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 5e-3


@pytest.mark.slow
def test_fsdp_matches_one_process_and_resumes(scored_shards, tiny_anchors, tmp_path):
    args = ["optim.max_steps=4", "data.split_by=samples"]
    one = common(scored_shards, tiny_anchors, tmp_path / "one", *args)
    assert train_main(one) == 0
    two = common(scored_shards, tiny_anchors, tmp_path / "fsdp", *args, "run.parallel=fsdp")
    two[two.index("data.batch_size=4")] = "data.batch_size=2"
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29518",
              "-m", "videomask.train"]
    for extra in (["run.stop_after=2"], ["run.resume=auto"]):  # interrupted half way, then resumed
        r = subprocess.run([*launch, *two, *extra], capture_output=True, text=True, env=ENV, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    l1, l2 = [x["loss"] for x in metrics(tmp_path / "one")], [x["loss"] for x in metrics(tmp_path / "fsdp")]
    assert len(l2) == 4 and all(abs(a - b) / a < 0.03 for a, b in zip(l1, l2)), (l1, l2)
    w1, w2 = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "fsdp" / "model.safetensors")
    assert w1.keys() <= w2.keys() and max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 5e-3


def test_text_only_training_with_a_hugging_face_masked_lm(tmp_path, tiny_anchors, tiny_scorer):
    docs = [f"the magenta hexagon {i} forms a lattice near the glyph and the red circle." for i in range(12)]
    (tmp_path / "corpus.txt").write_text("\n".join(docs))
    build.build(tmp_path / "corpus.txt", tmp_path / "shards", build.BuildOptions(), progress=False)
    score.score_shards(tmp_path / "shards", tmp_path / "scored", tiny_anchors, f"local-dir:{tiny_scorer}",
                       progress=False)
    out = tmp_path / "run"
    assert train_main(common(tmp_path / "scored", tiny_anchors, out, "model.kind=text", "optim.max_steps=8",
                             "optim.lr=2e-3")) == 0
    losses = [x["loss"] for x in metrics(out)]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert "mlm.bert.embeddings.word_embeddings.weight" in load_file(out / "model.safetensors")


def test_config_errors_name_the_key(tmp_path):
    for override, match in [("optim.lrr=1", "optim.lrr"), ("optim.lr=abc", "optim.lr"),
                            ("model.preset=huge", "unknown model preset 'huge'"),
                            ("masking.strategy=nope", "unknown masking strategy 'nope'"),
                            ("optim.schedule=step", "optim.schedule"), ("run.log_every=0", "run.log_every=0"),
                            ("run.device=banana", "run.device"), ("run.save_every=-1", "run.save_every=-1"),
                            ("optim.clip=-1", "optim.clip"), ("run.val_batches=-1", "run.val_batches=-1")]:
        with pytest.raises(ConfigError, match=match):
            load_config([], [override])
    (tmp_path / "x.yaml").write_text("model:\n  layerz: 3\n")
    with pytest.raises(ConfigError, match="model.layerz"):
        load_config([tmp_path / "x.yaml"])
    r = subprocess.run([sys.executable, "-m", "videomask.train", "data.train=x", "optim.lrr=1"], capture_output=True,
                       text=True, env=ENV)
    assert r.returncode == 2 and "optim.lrr" in r.stderr


def test_bad_inputs(scored_shards, tiny_shards, tiny_anchors, tmp_path):
    other = tmp_path / "other.json"
    from videomask import anchors

    other.write_text(json.dumps(anchors.build_anchors([tiny_shards["target"]], "wordfreq:en", k=2, min_count=2)))
    cases = [
        (common(scored_shards, other, tmp_path / "r1", "optim.max_steps=1"), "configured anchors are"),
        (common(tiny_shards["target"], tiny_anchors, tmp_path / "r2", "optim.max_steps=1"), "needs scores"),
        (common(tmp_path / "empty", tiny_anchors, tmp_path / "r3", "optim.max_steps=1"), "no shards found"),
        # the tiny preset has 256 text positions: named, not an index error deep in the embeddings
        (common(scored_shards, tiny_anchors, tmp_path / "r4", "data.max_text_len=300"), "more than the model's 255"),
    ]
    (tmp_path / "empty").mkdir()
    for argv, match in cases:
        with pytest.raises(Exception, match=match):
            from videomask.train import train
            train(load_config([], argv))
    # a finished run is not overwritten by another configuration, nor resumed with one
    assert train_main(common(scored_shards, tiny_anchors, tmp_path / "run", "optim.max_steps=2")) == 0
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    assert train_main(common(scored_shards, tiny_anchors, tmp_path / "run", "optim.max_steps=3")) == 2
    assert train_main(common(scored_shards, tiny_anchors, tmp_path / "run", "optim.max_steps=3",
                             "run.resume=auto")) == 2
    assert train_main(common(scored_shards, tiny_anchors, tmp_path / "run", "optim.max_steps=2", "model.layers=3",
                             "run.resume=auto")) == 2
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before
    shutil.rmtree(tmp_path / "run")


def test_sigterm_saves_a_checkpoint_and_resume_finishes(scored_shards, tiny_anchors, tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "videomask.train",
                          *common(scored_shards, tiny_anchors, out, "optim.max_steps=100000")],
                         env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "metrics.jsonl").exists() and  # 3 steps logged (not epoch lines)
                                          (out / "metrics.jsonl").read_text().count('"loss"') >= 3):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr[-2000:]
    assert "stopped at step" in stdout + stderr and "signal" in stdout + stderr
    step = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert step >= 3
    assert train_main(common(scored_shards, tiny_anchors, out, "optim.max_steps=100000", "run.resume=auto",
                             "run.stop_after=2")) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == step + 2


def test_non_finite_loss_stops_with_the_last_good_state(scored_shards, tiny_anchors, tmp_path):
    from videomask.train import train

    out = tmp_path / "run"
    cfg = load_config([], common(scored_shards, tiny_anchors, out, "optim.max_steps=50", "optim.lr=1e12",
                                 "optim.clip=0", "optim.warmup_steps=0"))
    with pytest.raises(FloatingPointError, match="non-finite loss .* the last good state is in"):
        train(cfg)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_pmi_trains_with_its_ngram_vocabulary(scored_shards, tiny_anchors, tmp_path):
    from videomask.scoring import pmi

    ngrams = tmp_path / "ngrams.json"
    rows = pmi.pmi_vocabulary(anchors.read_texts(scored_shards, "train"), max_n=2, min_count=2, top=20)
    assert rows
    ngrams.write_text(json.dumps({"ngrams": rows}))
    out = tmp_path / "pmi"
    assert train_main(common(scored_shards, tiny_anchors, out, "masking.strategy=pmi", f"data.ngrams={ngrams}",
                             "optim.max_steps=2")) == 0
    assert len(metrics(out)) == 2 and (out / "model.safetensors").exists()
    with pytest.raises(ConfigError, match="masking.strategy=pmi needs data.ngrams"):
        train.train(load_config([], common(scored_shards, tiny_anchors, tmp_path / "p2", "masking.strategy=pmi")))
    assert not (tmp_path / "p2").exists()


def test_refused_starts_are_fast_and_leave_nothing(scored_shards, tiny_shards, tiny_anchors, tmp_path):
    cases = [(["data.train=/nonexistent"], "data.train=/nonexistent: no such folder"),
             ([f"data.train={tiny_shards['target']}", "masking.strategy=difference"], "needs scores"),
             ([f"data.train={scored_shards}", "data.train_split=nope"], "for split 'nope'"),
             ([f"data.train={scored_shards}", "masking.strategy=oracle"], "needs ground truth"),
             ([f"data.train={scored_shards}", "data.anchors=/nope.json"], "data.anchors=/nope.json: no such file")]
    for extra, match in cases:
        out = tmp_path / "x"
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "videomask", "train", f"data.anchors={tiny_anchors}",
                            f"run.out={out}", *extra], capture_output=True, text=True, env=ENV)
        assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr, (extra, r.stderr[-2000:])
        assert not out.exists(), extra
        assert time.perf_counter() - t < 60  # refused at once (the limit is loose: a busy CI machine)


def test_train_returns_a_result_and_restores_signal_handlers(scored_shards, tiny_anchors, tmp_path):
    import signal

    def mine(*_):
        pass

    before = signal.signal(signal.SIGTERM, mine)
    sigint = signal.getsignal(signal.SIGINT)  # whatever this process inherited (SIG_IGN under nohup or `&`)
    try:
        r = train.train(load_config([], common(scored_shards, tiny_anchors, tmp_path / "r", "optim.max_steps=1")))
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) is sigint
    finally:
        signal.signal(signal.SIGTERM, before)
    assert r["finished"] and r["step"] == 1 and Path(r["model"]).exists() and "loss" in r["last"]


def test_help_and_print_config_do_no_work(tmp_path):
    for cmd in (["-m", "videomask", "train", "--help"], ["-m", "videomask.train", "-h"],
                ["-m", "videomask", "finetune", "--help"], ["-m", "videomask", "experiments", "--help"]):
        r = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env=ENV, cwd=tmp_path)
        assert r.returncode == 0 and "usage:" in r.stdout, (cmd, r.stderr[-1000:])
        assert "Config keys" in r.stdout and not list(tmp_path.iterdir())
    r = subprocess.run([sys.executable, "-m", "videomask", "train", "--help"], capture_output=True, text=True, env=ENV)
    keys = [line.split()[0] for line in r.stdout.split("Config keys")[1].splitlines()[1:] if line.strip()]
    assert {"model.init", "data.ngrams", "masking.strategy", "optim.lr", "run.out"} <= set(keys)
    assert all(len(line.split(None, 3)) == 4 for line in r.stdout.split("Config keys")[1].splitlines()[1:]
               if line.strip()), "a key without its one-line help"
    r = subprocess.run([sys.executable, "-m", "videomask", "train", "data.train=x", "optim.lr=0.25", "--print-config"],
                       capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert r.returncode == 0 and "lr: 0.25" in r.stdout and not list(tmp_path.iterdir())
    r = subprocess.run([sys.executable, "-m", "videomask", "--version"], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0 and r.stdout.startswith("videomask ")
    r = subprocess.run([sys.executable, "-m", "videomask", "nope"], capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and "unknown command 'nope'" in r.stderr


def test_no_hugging_face_load_report_by_default(scored_shards, tiny_anchors, tmp_path):
    args = [sys.executable, "-m", "videomask", "train", *common(scored_shards, tiny_anchors, tmp_path / "s",
                                                                 "model.preset=small", "optim.max_steps=1")]
    r = subprocess.run(args, capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    for noise in ("MISSING", "UNEXPECTED", "were not initialized", "newly initialized"):
        assert noise not in r.stderr + r.stdout, noise


def test_cached_samples_train_the_same_weights(scored_shards, tiny_anchors, tmp_path):
    # several epochs (the split is a few clips): the cache replays epoch 1's samples, masks are drawn per epoch
    args = ["optim.max_steps=6", "data.batch_size=2"]
    assert train_main(common(scored_shards, tiny_anchors, tmp_path / "plain", *args)) == 0
    assert train_main(common(scored_shards, tiny_anchors, tmp_path / "cached", *args, "data.cache=true")) == 0
    a, b = load_file(tmp_path / "plain" / "model.safetensors"), load_file(tmp_path / "cached" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert max(x["epoch"] for x in metrics(tmp_path / "cached")) >= 1
    with pytest.raises(ConfigError, match="data.cache"):
        load_config([], ["data.cache=true", "data.workers=1"])
