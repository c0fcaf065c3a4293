"""An experiment's results compared: each cell's per-item scores read back from its folder, the paired
differences between conditions with bootstrap confidence intervals, the pre-registered decision rules (the
upper-control gate and claim, ``verdict``; the text ablation's gate run first, ``gate_check`` and
``gated_claim``), and the table and bar chart of ``results.md`` and ``results.png``.

A cell's folder (``OUT/cells/<cell>``, written by ``videomask.experiments``) holds ``finetune`` (and
``finetune_1`` ...) with ``metrics.json`` (its ``test_predictions``: gold and predicted label per test item) and
``probe.json`` (``videomask.probe``: one record per probe item). Conditions are paired seed by seed and item by
item; the statistics are ``videomask.metrics.paired_bootstrap``. ``videomask.experiments.report`` writes
``results.md``, ``results.csv``, ``paired.json`` and ``verdict.json`` with these functions.
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import metrics
from .errors import VideomaskError

if TYPE_CHECKING:
    from .experiments import ExperimentConfig

logger = logging.getLogger(__name__)

METRICS = ("accuracy", "macro_f1", "micro_f1")
#: the probe's columns (probe.json's summary): kind -> the accuracies reported
PROBE = {"mlm": ("accuracy", "anchor_accuracy", "other_accuracy"),
         "cloze_in_group": ("accuracy", "target_accuracy", "general_accuracy"),
         "cloze": ("accuracy", "target_accuracy", "general_accuracy")}
PROBE_COLUMNS = tuple(f"{k}_{m}" for k, ms in PROBE.items() for m in ms)
#: diagnostics of each continued-pretraining run (its metrics.jsonl, where the data has ground truth):
#: the share of truly domain-specific tokens and patch area masked, and masked-token accuracy on them vs the rest
DIAGNOSTICS = ("masked_truth_text", "masked_truth_patch", "acc_text_truth", "acc_text_other")
BASELINE = "no continued pretraining"  # the condition of the cells without continued pretraining


def finetune_dirs(cfg: ExperimentConfig, folder: Path) -> list[Path]:
    """The cell's fine-tuning runs: ``finetune`` and, with ``finetune_seeds`` K > 1, ``finetune_1`` ..."""
    return [folder / ("finetune" if j == 0 else f"finetune_{j}") for j in range(cfg.finetune_seeds)]


def finished_runs(cfg: ExperimentConfig, folder: Path) -> list[dict]:
    """The metrics.json of each of the cell's fine-tuning runs; [] unless all are finished."""
    paths = [d / "metrics.json" for d in finetune_dirs(cfg, folder)]
    return [json.loads(m.read_text()) for m in paths] if all(m.exists() for m in paths) else []


def item_scores(cfg: ExperimentConfig, out: Path, cell: str, measure: str) -> list[float] | None:
    """Per-item scores of one cell, in a fixed item order: ``test`` (the fine-tuned models' test questions,
    correctness averaged over the fine-tuning seeds), ``test:GROUP`` (those of one ``group_by`` value) or a
    probe kind (``cloze``, ``mlm``, ``cloze_in_group``) or ``KIND:GROUP``, its items of one group (``mlm:anchor``: the
    masked tokens of anchor words)."""
    folder = out / "cells" / cell
    if measure.startswith("test"):
        runs = finished_runs(cfg, folder)
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
    r = lambda x: round(x, 3) + 0.0  # noqa: E731 (+ 0.0: a value that rounds to zero reads +0.000, never -0.000)
    return f"{r(p['mean']):+.3f} [{r(p['lo']):+.3f}, {r(p['hi']):+.3f}]"


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
    base = BASELINE
    found, parts = {}, []
    for m in cfg.gate_measures:
        p = _pair(pairs, base, m)
        if p is None:  # not a negative result: the run cannot read its gate
            raise VideomaskError(f"the gate cannot be read: no paired {m!r} of {base} − {cfg.reference} (measured: "
                                 f"{sorted({q['measure'] for q in pairs})})")
        flipped = {**p, "condition": p["reference"], "reference": p["condition"],  # the labels follow the sign
                   "mean": -p["mean"], "lo": -p["hi"], "hi": -p["lo"]}
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


