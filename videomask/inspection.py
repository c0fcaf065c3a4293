"""See what difference-masking will mask before spending GPU hours on it.

    python -m videomask.inspection SCORED_SHARDS --out sample.png [--key KEY | --index N] [--anchors anchors.json]
    python -m videomask.inspection --anchors-chart anchors.json --out anchors.png

The sample picture has: the clip's frames; the same frames under the patch-score
heat map (scores share one colour scale across the clip); the transcript with
every word shaded by its score; the anchors with their TF-ICF scores. With
``--strategy`` (see ``videomask.masking``) the patches and words that strategy
would mask are outlined.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import numpy as np

from . import urls
from .errors import DataError, VideomaskError


def _figure(**kw):
    """A matplotlib ``Figure`` that pyplot never sees: no global backend switch, nothing left open."""
    from matplotlib.figure import Figure

    return Figure(**kw)


def find_sample(shards, key: str | None = None, index: int = 0) -> dict:
    from .data import dataset

    for i, s in enumerate(dataset(shards)):
        if (key is not None and s["key"] == key) or (key is None and i == index):
            return s
    raise DataError(f"{shards}: no sample {key!r}" if key else f"{shards}: fewer than {index + 1} samples")


def draw_words(ax, words, scores, cmap, masked=None, width=70):
    """Words in reading order, wrapped at ``width`` monospace characters, each on a box shaded by its score."""
    ax.axis("off")
    if not words:
        ax.text(0, 1, "(no transcript)", va="top", family="monospace", fontsize=9, transform=ax.transAxes)
        return
    lo, hi = (min(scores), max(scores)) if scores else (0, 1)
    col = row = 0
    lines = max(1, sum(len(w["w"]) + 1 for w in words) // width + 2)
    for i, w in enumerate(words):
        if col + len(w["w"]) > width:
            col, row = 0, row + 1
        s = scores[i] if scores else 0.0
        colour = cmap((s - lo) / (hi - lo) if hi > lo else 0.5)
        edge = "cyan" if masked is not None and masked[i] else "none"
        ax.text(col / width, 1 - (row + 0.5) / lines, w["w"], family="monospace", fontsize=9, va="center",
                transform=ax.transAxes, bbox=dict(facecolor=colour, edgecolor=edge, linewidth=1.5, pad=1.5))
        col += len(w["w"]) + 1


def sample_figure(sample: dict, anchors: dict | None = None, patch_mask=None, word_mask=None, title: str = ""):
    """The inspection figure of one scored sample (see the module docstring)."""
    frames = sample["frames"]
    scores = sample.get("patch_scores")
    t = 0 if frames is None else frames.shape[0]
    cols = max(t, 1)
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    fig = _figure(figsize=(1.8 * cols + 2.5, 7.5), layout="constrained")
    grid = fig.add_gridspec(4, cols + 1, height_ratios=[1, 1, 0.9, 0.02], width_ratios=[1] * cols + [1.3])
    cmap = colormaps["inferno"]
    if frames is not None:
        lo, hi = (float(scores.min()), float(scores.max())) if scores is not None else (0, 1)
        for i in range(t):
            img = frames[i].permute(1, 2, 0).numpy()
            ax = fig.add_subplot(grid[0, i])
            ax.imshow(img)
            ax.set_title(f"t={sample['meta']['frame_times'][i]:.1f}s", fontsize=8)
            ax.axis("off")
            ax = fig.add_subplot(grid[1, i])
            ax.imshow(img)
            if scores is not None:
                s = scores[i].astype(np.float32)
                h, w = img.shape[:2]
                ax.imshow(s, cmap=cmap, alpha=0.6, vmin=lo, vmax=hi, extent=(0, w, h, 0), interpolation="nearest")
                if patch_mask is not None:
                    m = np.asarray(patch_mask[i])
                    ph, pw = h / m.shape[0], w / m.shape[1]
                    for y, x in zip(*np.nonzero(m)):
                        ax.add_patch(Rectangle((x * pw, y * ph), pw, ph, fill=False, edgecolor="cyan", lw=1.2))
            ax.axis("off")
        fig.axes[-1].set_title("patch scores" + (" + mask" if patch_mask is not None else ""), fontsize=8)
    ax = fig.add_subplot(grid[2, :cols])
    chars = int((fig.get_figwidth() * cols / (cols + 1.3)) * 72 / (9 * 0.62))  # monospace 9 pt per line
    draw_words(ax, sample["words"], sample["meta"].get("word_scores", []), colormaps["YlOrRd"], word_mask, chars)
    ax.set_title("transcript, shaded by word score" + (" (masked outlined)" if word_mask is not None else ""),
                 fontsize=9, loc="left")
    ax = fig.add_subplot(grid[:3, cols])
    ax.axis("off")
    if anchors:
        rows = [f"{i + 1:>2} {a['word']:<14} {a['score']:.3f}" if a.get("score") is not None else
                f"{i + 1:>2} {a['word']:<14}  user" for i, a in enumerate(anchors["anchors"])]
        ax.text(0, 1, "anchors (TF-ICF)\n" + "\n".join(rows), va="top", family="monospace", fontsize=8,
                transform=ax.transAxes)
    fig.suptitle(title or f"{sample['key']}: " + textwrap.shorten(sample["text"], 90), fontsize=10)
    return fig


def sample_masks(sample: dict, config) -> tuple:
    """The patches ([T, gh, gw], at the scorer's grid) and words that the ``MaskingConfig`` would mask in
    this sample, drawn as the collator draws them (words as units, so no tokenizer is needed)."""
    import torch

    from .collate import sample_generator
    from .masking import budget_sizes, plan
    from .masking.strategies import VALUE_KEYS

    p = plan(config)
    patch_mask = None
    patch_values = sample.get(VALUE_KEYS[p.patches.reads or "scores"][1])
    if patch_values is not None:
        ps = torch.from_numpy(patch_values.astype(np.float32))[None]
        patch_mask = p.patches.draw(ps, torch.ones_like(ps, dtype=torch.bool),
                                    [sample_generator(config.seed, 0, sample["key"], "patch")])[0]
    word_mask = None
    ws = sample["meta"].get(VALUE_KEYS[p.text_words.reads or "scores"][0])
    if ws and int(budget_sizes([len(ws)], config.text_ratio)[0]) > 0:
        scores = torch.tensor(ws, dtype=torch.float)[None]
        word_mask = p.text_words.draw(scores, torch.ones_like(scores, dtype=torch.bool),
                                      [sample_generator(config.seed, 0, sample["key"], "text")])[0].tolist()
    return patch_mask, word_mask


def masking_config(strategy: str, overrides=()):
    """The ``MaskingConfig`` of ``strategy`` and ``key=value`` overrides, validated like a training config's."""
    from .config import load_config
    from .masking import MaskingConfig

    return load_config([], [f"strategy={strategy}", *overrides], schema=MaskingConfig)


def anchors_chart(anchors: dict):
    rows = [a for a in anchors["anchors"] if a.get("score") is not None]
    fig = _figure(figsize=(7, 0.3 * len(rows) + 1.2), layout="constrained")
    ax = fig.subplots()
    ax.barh([a["word"] for a in rows][::-1], [a["score"] for a in rows][::-1], color="tab:purple")
    ax.set_xlabel(f"{anchors['options']['method']} score")
    ax.set_title(f"{len(rows)} difference anchors (hash {anchors['hash']})", fontsize=10)
    return fig


def main(argv=None) -> int:
    from . import anchors as anchors_mod

    p = argparse.ArgumentParser(prog="python -m videomask.inspection", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards", nargs="?", type=urls.location, help="scored shards (python -m videomask.scoring.score's output; a folder "
                   "or a URL: videomask.urls)")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--key", help="sample key (default: the --index-th sample)")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--anchors", type=Path, help="anchors.json, listed beside the sample")
    p.add_argument("--anchors-chart", type=Path, metavar="ANCHORS_JSON", help="draw a bar chart of these anchors")
    p.add_argument("--strategy", help="outline what this masking strategy would mask (difference, random, ...)")
    p.add_argument("--masking", nargs="*", default=[], metavar="KEY=VALUE",
                   help="other masking keys, as in a training config (text_ratio=0.15 alpha=0.5 seed=0 ...)")
    a = p.parse_args(argv)
    try:
        if a.anchors_chart:
            fig = anchors_chart(anchors_mod.load(a.anchors_chart))
        elif a.shards:
            sample = find_sample(a.shards, a.key, a.index)
            masks = sample_masks(sample, masking_config(a.strategy, a.masking)) if a.strategy else (None, None)
            fig = sample_figure(sample, anchors_mod.load(a.anchors) if a.anchors else None, *masks,
                                title=f"{sample['key']}: {a.strategy} masking" if a.strategy else "")
        else:
            p.error("give SHARDS or --anchors-chart")
    except VideomaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
