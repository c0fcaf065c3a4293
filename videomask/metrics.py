"""Classification metrics, written out the way the paper's tasks report them.

- accuracy: TVQA and Social-IQ (multiple-choice QA);
- micro-F1: ChemProt (for single-label multi-class data it equals accuracy);
- macro-F1: ACL-ARC (the unweighted mean of per-class F1, over the classes that occur in the
  gold labels or the predictions, as scikit-learn's default).
"""
from __future__ import annotations

import numpy as np


def confusion(gold, pred, n_classes: int) -> np.ndarray:
    """[n_classes, n_classes] counts; rows: gold, columns: predicted."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(gold), np.asarray(pred)), 1)
    return cm


def scores(gold, pred, n_classes: int) -> dict:
    gold, pred = np.asarray(gold), np.asarray(pred)
    if len(gold) == 0:
        raise ValueError("no examples to score")
    cm = confusion(gold, pred, n_classes)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(1), cm.sum(0)
    present = (support + predicted) > 0
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros(n_classes), where=present)
    return {"accuracy": float(tp.sum() / len(gold)), "micro_f1": float(tp.sum() / len(gold)),
            "macro_f1": float(f1[present].mean()), "per_class_f1": f1.round(6).tolist(), "n": int(len(gold)),
            "confusion": cm.tolist()}


def confusion_png(cm, labels: list[str], path, title: str = ""):
    from matplotlib.figure import (
        Figure,  # not pyplot: the global backend and figure list stay as they were
    )

    cm = np.asarray(cm)
    fig = Figure(figsize=(1.0 + 0.6 * len(labels), 0.8 + 0.6 * len(labels)), layout="constrained")
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_title(title, fontsize=10)
    fig.savefig(path, dpi=110)


def paired_bootstrap(a, b, n_boot: int = 4000, seed: int = 0, level: float = 0.95) -> dict:
    """The mean paired difference ``a - b`` and its bootstrap confidence interval.

    ``a``, ``b``: per-item scores (1/0 for right/wrong) ``[seeds, items]`` of two conditions, paired:
    row s of both comes from the same seed (same data order, same probe), column q from the same
    question. Each bootstrap replicate resamples seeds and questions with replacement, so the
    interval carries both sources of noise (training seeds and the finite test set).
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.ndim != 2 or d.size == 0:
        raise ValueError(f"paired scores must be [seeds, items] and non-empty, got shape {d.shape}")
    S, Q = d.shape
    rng = np.random.default_rng(seed)
    # a replicate's mean is c_s . d . c_q / (S Q), with c the resampling counts: no copy of d per replicate
    cs = np.stack([np.bincount(r, minlength=S) for r in rng.integers(S, size=(n_boot, S))])
    cq = np.stack([np.bincount(r, minlength=Q) for r in rng.integers(Q, size=(n_boot, Q))])
    boots = np.einsum("bs,sq,bq->b", cs, d, cq) / (S * Q)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return {"mean": float(d.mean()), "lo": float(lo), "hi": float(hi), "seeds": S, "items": Q, "level": level}
