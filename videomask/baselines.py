"""What a text task's vocabulary alone carries: a bag-of-words classifier on the same split as the models.

    r = bag_of_words(rows)   # rows as videomask.prep.adapters.dsp gives them (split train / val / test)

Logistic regression (scikit-learn) on TF-IDF word counts of the training texts, its regularisation chosen on
the dev split by macro-F1 (the models' early stopping measure), then refitted on train and read on test. A
reader of the ablation table compares the fine-tuned models with it: a task that this baseline already
solves is told apart by vocabulary, not by what continued pretraining teaches.
"""
from __future__ import annotations

import numpy as np

C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def bag_of_words(rows: list[dict], seed: int = 0) -> dict:
    """{"accuracy", "macro_f1", "n", "C", "dev_macro_f1", "features", "correct"} on the test rows; ``correct``:
    each test row's correctness in order (the items a paired comparison would read)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    part = {s: [r for r in rows if r["split"] == s] for s in ("train", "val", "test")}
    if not part["train"] or not part["test"]:
        raise ValueError("bag_of_words needs train and test rows")
    vec = TfidfVectorizer(lowercase=True, sublinear_tf=True, min_df=1)
    x = {s: (vec.fit_transform if s == "train" else vec.transform)([r["text"] for r in part[s]])
         for s in ("train", "val", "test") if part[s]}
    y = {s: [r["label"] for r in part[s]] for s in part}

    def fit(c):
        return LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x["train"], y["train"])
    dev = {c: f1_score(y["val"], fit(c).predict(x["val"]), average="macro") for c in C_GRID} if part["val"] else {1.0: np.nan}
    best = max(dev, key=lambda c: (dev[c], -abs(np.log(c))))  # ties: the C nearest 1
    pred = fit(best).predict(x["test"])
    return {"accuracy": float(accuracy_score(y["test"], pred)),
            "macro_f1": float(f1_score(y["test"], pred, average="macro")), "n": len(pred), "C": best,
            "dev_macro_f1": float(dev[best]), "features": len(vec.vocabulary_),
            "correct": [bool(p == t) for p, t in zip(pred, y["test"])]}
