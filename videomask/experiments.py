"""The masking-strategy ablation: ``python -m videomask.experiments CONFIG.yaml [key=value ...]``.

Every cell of strategies x alphas x anchor counts x seeds runs continued pretraining
(``videomask.train``) and then fine-tuning and evaluation (``videomask.finetune``);
``baseline: true`` adds, per seed, the base model fine-tuned without continued pretraining.
A cell whose ``metrics.json`` exists is skipped, and a cell stopped half-way resumes its
pretraining and fine-tuning runs (``run.resume=auto``): rerunning the command after an
interruption finishes the table. Outputs in ``out``:

- ``cells/<cell>/pretrain`` and ``cells/<cell>/finetune``: the runs;
- ``results.csv``: one row per cell (strategy, alpha, anchors, seed, test metrics);
- ``results.md``: mean +- std over seeds per condition, the best mean of each column in bold;
- ``results.png``: a bar chart of ``metric`` with the std over seeds as error bars.

``anchor_counts`` (e.g. ``[5, 10, 20]``) takes the top-K words of the pretraining config's
``data.anchors`` and re-scores ``shards`` (unscored) with ``scorer`` for each K; empty: the
anchors and scored shards of the pretraining config as they are. ``alphas`` and
``anchor_counts`` vary only the strategies that use scores (difference, inverse_difference).
"""
from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from . import anchors as anchors_mod
from . import finetune as ft
from . import train
from .config import ConfigError
from .config import load_config as _load_layered

SCORED = ("difference", "inverse_difference")
METRICS = ("accuracy", "macro_f1", "micro_f1")


@dataclass
class ExperimentConfig:
    out: str = "runs/experiments"
    strategies: list = field(default_factory=lambda: ["random", "difference"])
    alphas: list = field(default_factory=lambda: [1.0])
    anchor_counts: list = field(default_factory=list)
    seeds: list = field(default_factory=lambda: [0])
    baseline: bool = True  # also: the base model, fine-tuned without continued pretraining
    pretrain_files: list = field(default_factory=lambda: [train.DEFAULT_CONFIG])
    pretrain: list = field(default_factory=list)  # key=value overrides of the pretraining config
    finetune_files: list = field(default_factory=list)
    finetune: list = field(default_factory=list)  # key=value overrides of the fine-tuning config
    metric: str = "accuracy"  # of the bar chart
    shards: str = ""  # unscored shards, re-scored per anchor count
    scorer: str = ""  # the open_clip model that scores them (name, checkpoint or local-dir:PATH)
    image_prompt: str = "a photo of a {}."
    word_prompt: str = "{}"

    def __post_init__(self):
        if not self.strategies or not self.seeds:
            raise ConfigError("strategies and seeds must not be empty")
        if self.metric not in METRICS:
            raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.anchor_counts and not (self.shards and self.scorer):
            raise ConfigError("anchor_counts needs shards (unscored) and scorer to re-score them for each count")
        if any(int(k) < 1 for k in self.anchor_counts):
            raise ConfigError("anchor_counts must be >= 1")


def load_config(files=(), overrides=()) -> ExperimentConfig:
    return _load_layered(files, overrides, schema=ExperimentConfig)


def cells(cfg: ExperimentConfig) -> list[dict]:
    """Every (condition, seed): strategy, alpha, anchors (K or None), seed, and names."""
    out = []
    for seed in cfg.seeds:
        if cfg.baseline:
            out.append({"condition": "no continued pretraining", "strategy": "none", "alpha": None, "anchors": None,
                        "seed": int(seed)})
        for strategy in cfg.strategies:
            scored = strategy in SCORED
            for alpha in (cfg.alphas if scored else [None]):
                for k in (cfg.anchor_counts or [None]) if scored else [None]:
                    label = strategy + (f" a={alpha:g}" if alpha is not None and len(cfg.alphas) > 1 else "") + (
                        f" k={k}" if k is not None else "")
                    out.append({"condition": label, "strategy": strategy, "alpha": alpha, "anchors": k,
                                "seed": int(seed)})
    for c in out:
        c["name"] = c["condition"].replace(" ", "_").replace("=", "") + f"_s{c['seed']}"
    return out


def anchors_for(cfg: ExperimentConfig, base_anchors: str, k: int, out: Path) -> tuple[Path, Path]:
    """(anchors.json of the top-k words, shards scored against them), made once per k."""
    from .scoring import score

    a = anchors_mod.load(base_anchors)
    if k > len(a["anchors"]):
        raise ConfigError(f"anchor count {k} > the {len(a['anchors'])} anchors in {base_anchors}")
    path, scored = out / "anchors" / f"anchors_k{k}.json", out / "anchors" / f"scored_k{k}"
    if not path.exists():
        rows = a["anchors"][:k]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**a, "anchors": rows, "hash": anchors_mod.anchor_hash(r["word"] for r in rows),
                                    "top_k_of": str(base_anchors)}, indent=1))
    score.score_shards(Path(cfg.shards), scored, path, cfg.scorer, image_prompt=cfg.image_prompt,
                       word_prompt=cfg.word_prompt, progress=False)  # resumable: skips what is done
    return path, scored


def run_cell(cfg: ExperimentConfig, cell: dict, out: Path) -> dict:
    folder = out / "cells" / cell["name"]
    done = folder / "finetune" / "metrics.json"
    if done.exists():
        print(f"[{cell['name']}] finished earlier: skipped")
        return json.loads(done.read_text())
    t = time.perf_counter()
    seed = cell["seed"]

    def pretrain_config(*extra):
        return train.load_config(cfg.pretrain_files, [*cfg.pretrain, *extra, f"run.seed={seed}", f"masking.seed={seed}",
                                                      f"run.out={folder / 'pretrain'}", "run.resume=auto"])

    pre = pretrain_config()
    ft_overrides = [*cfg.finetune, f"run.seed={seed}", f"run.out={folder / 'finetune'}", "run.resume=auto"]
    if cell["strategy"] == "none":  # the base model, described by the pretraining config
        fcfg = replace(ft.load_config(cfg.finetune_files, ft_overrides), model=pre.model)
    else:
        extra = [f"masking.strategy={cell['strategy']}"]
        if cell["alpha"] is not None:
            extra.append(f"masking.alpha={cell['alpha']}")
        if cell["anchors"] is not None:
            a, scored = anchors_for(cfg, pre.data.anchors, int(cell["anchors"]), out)
            extra += [f"data.anchors={a}", f"data.train={scored}"]
        pre = pretrain_config(*extra)
        print(f"[{cell['name']}] continued pretraining ({pre.masking.strategy}, {pre.optim.max_steps} steps)",
              flush=True)
        if not (folder / "pretrain" / "model.safetensors").exists():
            train.train(pre)
        fcfg = ft.load_config(cfg.finetune_files, [*ft_overrides, f"init={folder / 'pretrain'}"])
    print(f"[{cell['name']}] fine-tuning ({fcfg.task}, {fcfg.mode})", flush=True)
    r = ft.finetune(fcfg)
    print(f"[{cell['name']}] test accuracy {r['test']['accuracy']:.4f} ({time.perf_counter() - t:.0f}s)", flush=True)
    return r


def collect(cfg: ExperimentConfig, out: Path) -> list[dict]:
    """One row per finished cell, read back from the cells' metrics.json."""
    rows = []
    for c in cells(cfg):
        m = out / "cells" / c["name"] / "finetune" / "metrics.json"
        if m.exists():
            r = json.loads(m.read_text())
            rows.append({**{k: c[k] for k in ("condition", "strategy", "alpha", "anchors", "seed")},
                         **{f"test_{k}": r["test"][k] for k in METRICS}, "test_n": r["test"]["n"],
                         "chance": 1 / len(r["labels"]) if r["task"] == "mcqa" else None, "cell": c["name"]})
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds per condition, in the order the conditions first appear."""
    groups = {}
    for r in rows:
        groups.setdefault(r["condition"], []).append(r)
    out = []
    for cond, rs in groups.items():
        s = {"condition": cond, "seeds": len(rs)}
        for k in METRICS:
            v = np.array([r[f"test_{k}"] for r in rs])
            s[k] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
        out.append(s)
    return out


def markdown(summary: list[dict]) -> str:
    best = {k: max(s[k][0] for s in summary) for k in METRICS}
    lines = ["| condition | seeds | accuracy | macro-F1 | micro-F1 |", "|---|---|---|---|---|"]
    for s in summary:
        cells_ = []
        for k in METRICS:
            m, sd = s[k]
            text = f"{m:.3f} ± {sd:.3f}" if s["seeds"] > 1 else f"{m:.3f}"
            cells_.append(f"**{text}**" if np.isclose(m, best[k]) else text)
        lines.append(f"| {s['condition']} | {s['seeds']} | " + " | ".join(cells_) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(summary: list[dict], metric: str, path: Path, chance: float | None, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(summary), 3.6))
    means = [s[metric][0] for s in summary]
    stds = [s[metric][1] for s in summary]
    x = np.arange(len(summary))
    ax.bar(x, means, yerr=stds, capsize=6, color=["#999999" if s["condition"].startswith("no ") else "#3b75af"
                                                  for s in summary])
    for xi, m in zip(x, means):
        ax.text(xi, m + 0.01, f"{m:.3f}", ha="center", va="bottom", fontsize=9)
    if chance is not None:
        ax.axhline(chance, ls="--", color="k", lw=1)
        ax.text(len(summary) - 0.5, chance, "chance", va="bottom", ha="right", fontsize=8)
    ax.set_xticks(x, [s["condition"].replace(" ", "\n", 1) if len(s["condition"]) > 14 else s["condition"]
                      for s in summary], fontsize=9)
    ax.set_ylabel(f"test {metric.replace('_', '-')}")
    ax.set_ylim(0, min(1.0, max(m + s for m, s in zip(means, stds)) + 0.12))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(cfg: ExperimentConfig, out: Path) -> list[dict]:
    rows = collect(cfg, out)
    if not rows:
        return rows
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = summarise(rows)
    seeds = len(cfg.seeds)
    (out / "results.md").write_text(markdown(summary))
    bar_chart(summary, cfg.metric, out / "results.png", rows[0]["chance"],
              f"{rows[0]['test_n']} test samples, mean ± std over {seeds} seed{'s' if seeds > 1 else ''}")
    return rows


def run(cfg: ExperimentConfig) -> list[dict]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    todo = cells(cfg)
    for i, c in enumerate(todo, 1):
        print(f"\n== cell {i}/{len(todo)}: {c['name']} ==", flush=True)
        run_cell(cfg, c, out)
        report(cfg, out)  # the table grows cell by cell: an interrupted run still leaves one
    rows = report(cfg, out)
    print(f"\n{markdown(summarise(rows))}\n{out / 'results.csv'}, {out / 'results.md'}, {out / 'results.png'}")
    return rows


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    files = [a for a in argv if a.endswith((".yaml", ".yml"))]
    try:
        run(load_config(files, [a for a in argv if a not in files]))
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
