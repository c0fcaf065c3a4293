"""Ground truth of the synthetic world for the ``oracle`` control: ``python -m videomask.demo.truth SHARDS OUT``.

The world knows what makes its target domain different: the planted words and the
target objects (``videomask.demo.world``). This stage copies a folder of shards and adds
to every sample built from the world

- ``meta["word_truth"]``: 1.0 for each planted word of the transcript, else 0.0 (aligned
  with ``meta["words"]``, like ``word_scores``);
- ``patch_truth.npy``: float16 ``[T, grid, grid]``, the share of each patch that a target
  object covers in that frame, drawn from the objects' shapes and motion at the frame's
  time (``meta["objects"]``, ``frame_indices``, ``frames_per_cue``).

The masking collator ranks by these for ``oracle`` exactly as it ranks by scores for
``difference`` (docs/method.md §10: the upper control). Samples without the world's
metadata are an error naming the sample: the oracle exists only where ground truth does.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError, VideomaskError
from ..files import loads_json, sha256_of, write_manifest
from ..scoring.score import read_samples, write_tar
from .world import PLANTED_WORDS, is_target, object_mask

PLANTED = frozenset(PLANTED_WORDS)


class TruthError(DataError):
    pass


def word_truth(words: list[dict]) -> list[float]:
    return [1.0 if w["w"].lower() in PLANTED else 0.0 for w in words]


def patch_truth(meta: dict, grid: int) -> np.ndarray:
    """float16 [T, grid, grid]: the share of each patch covered by target objects, frame by frame."""
    size, fps, per_cue = int(meta["width"]), float(meta["fps"]), int(meta["frames_per_cue"])
    out = np.zeros((len(meta["frame_indices"]), size, size), dtype=np.float32)
    for t, i in enumerate(meta["frame_indices"]):
        cue = min(i // per_cue, len(meta["objects"]) - 1)
        for obj in meta["objects"][cue]:
            if is_target(obj):
                out[t] = np.maximum(out[t], object_mask(obj, (i - cue * per_cue) / fps, size))
    cover = F.interpolate(torch.from_numpy(out)[:, None], size=(grid, grid), mode="area")[:, 0]
    return cover.numpy().astype(np.float16)


def annotate_sample(key: str, members: list, grid: int) -> list:
    d = dict(members)
    meta = loads_json(d["json"])
    missing = [k for k in ("objects", "frames_per_cue", "frame_indices", "fps", "width") if k not in meta]
    if missing:
        raise TruthError(f"sample {key} has no ground truth ({', '.join(missing)} missing from its metadata): "
                         "only the synthetic world's samples have it")
    meta["word_truth"] = word_truth(meta.get("words", []))
    kept = [(s, v) for s, v in members if s not in ("json", "patch_truth.npy")]
    kept.append(("json", json.dumps(meta).encode()))
    if meta["frame_indices"]:
        buf = io.BytesIO()
        np.save(buf, patch_truth(meta, grid), allow_pickle=False)
        kept.append(("patch_truth.npy", buf.getvalue()))
    return kept


def annotate(src: Path, out: Path, grid: int = 4) -> dict:
    """Copy the shards of ``src`` to ``out`` with ground truth added; skipped when ``out`` is complete."""
    src, out = Path(src), Path(out)
    manifest = json.loads((src / "manifest.json").read_text())
    if (out / "manifest.json").exists() and json.loads((out / "manifest.json").read_text()).get("truth_from") == [
            s["sha256"] for s in manifest["shards"]]:
        return json.loads((out / "manifest.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for s in manifest["shards"]:
        dst = out / s["name"]
        tmp = dst.with_name(dst.name + ".tmp")
        write_tar(tmp, [(k, annotate_sample(k, m, grid)) for k, m in read_samples(src / s["name"])])
        os.replace(tmp, dst)
        shards.append({**s, "bytes": dst.stat().st_size, "sha256": sha256_of(dst)})
    return write_manifest(out, {**manifest, "shards": shards, "truth_grid": grid,
                                "truth_from": [s["sha256"] for s in manifest["shards"]]})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m videomask.demo.truth", description=__doc__.split("\n\n")[0])
    p.add_argument("shards", type=Path, help="shards built from the synthetic world (scored or not)")
    p.add_argument("out", type=Path)
    p.add_argument("--grid", type=int, default=4, help="patches per side of the truth grid (default 4)")
    a = p.parse_args(argv)
    try:
        r = annotate(a.shards, a.out, a.grid)
    except VideomaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{sum(s['samples'] for s in r['shards'])} samples with ground truth -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
