"""Text continued pretraining: one training step of ours against transformers.Trainer's.

    python bench/bench_text_train.py [--batch 16] [--length 128] [--steps 6] [--rounds 2]

Same model (the offline MiniLM as a masked-LM, 30,522-word vocabulary), same batch size and sequence
length, same optimizer (AdamW) and gradient clipping (1.0), one process on CPU:

- ours: ``videomask.collate.MaskingCollator`` (difference masking, text only, tokenising raw text) +
  ``videomask.model.TextMLM`` (the vocabulary projection at masked positions only);
- baseline: ``transformers.Trainer`` + ``DataCollatorForLanguageModeling`` on pre-tokenised text
  (the masked-LM's own dense head over every position);
- for the record, our loop with the dense head (the masked-LM's own ``labels=`` loss).

A step is the time between two consecutive step ends (data, forward, backward, clipping, update), the
median over ``--steps`` steps after one warm-up, best of ``--rounds`` rounds taken in turns. Goal:
ours / Trainer <= 0.8.
"""
import argparse
import statistics
import time

import numpy as np
import torch
from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from videomask.collate import MaskingCollator, MaskingConfig
from videomask.model import OFFLINE_TEXT, ModelConfig, TextMLM, resolve_hf
from videomask.prep.transcripts import text_words

WORDS = ("the configuration file sets the default mode of the daemon and every option overrides a key in the "
         "systemd unit while git writes the submodule diff to standard output").split()


def documents(n, length, rng):
    out = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS, size=length))  # more words than tokens: every sample fills the length
        words = text_words(text)
        out.append({"key": f"doc{i:05d}", "text": text, "words": words, "frames": None,
                    "meta": {"words": words, "word_scores": rng.random(len(words)).round(4).tolist()}})
    return out


def our_steps(model, collate, docs, batch, steps, dense=False):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    times, last = [], time.perf_counter()
    for i in range(steps + 1):
        b = collate(docs[i * batch:(i + 1) * batch])
        if dense:
            loss = model.mlm(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        else:
            loss = model(b)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        now = time.perf_counter()
        if i:  # the first step warms up
            times.append(now - last)
        last = now
    return statistics.median(times)


class StepTimes(TrainerCallback):
    def __init__(self):
        self.ends = []

    def on_step_end(self, args, state, control, **kw):
        self.ends.append(time.perf_counter())


def trainer_steps(model, tok, docs, batch, length, steps, out):
    data = [tok(d["text"], truncation=True, max_length=length) for d in docs[:(steps + 1) * batch]]
    clock = StepTimes()
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch, max_steps=steps + 1, learning_rate=1e-5,
                             max_grad_norm=1.0, report_to=[], save_strategy="no", logging_steps=10 ** 6, use_cpu=True,
                             dataloader_num_workers=0, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[clock],
            data_collator=DataCollatorForLanguageModeling(tok, mlm_probability=0.15)).train()
    return statistics.median(np.diff(clock.ends))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    import tempfile

    from videomask.logs import quiet_third_party

    quiet_third_party()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    path = resolve_hf(OFFLINE_TEXT)
    tok = AutoTokenizer.from_pretrained(path)
    docs = documents((a.steps + 1) * a.batch, a.length, rng)
    collate = MaskingCollator(tok, MaskingConfig(strategy="difference"), max_length=a.length, text_only=True)
    ours_model = TextMLM(ModelConfig(kind="text", text=OFFLINE_TEXT), len(tok))
    hf_model = AutoModelForMaskedLM.from_pretrained(path)
    hf_model.load_state_dict(ours_model.mlm.state_dict())  # the same weights
    ours, dense, theirs = [], [], []
    with tempfile.TemporaryDirectory() as out:
        for _ in range(a.rounds):
            ours.append(our_steps(ours_model, collate, docs, a.batch, a.steps))
            theirs.append(trainer_steps(hf_model, tok, docs, a.batch, a.length, a.steps, out))
            dense.append(our_steps(ours_model, collate, docs, a.batch, a.steps, dense=True))
    o, t, d = min(ours), min(theirs), min(dense)
    print(f"text continued pretraining, MiniLM-L6 masked-LM, batch {a.batch} x {a.length} tokens, "
          f"{torch.get_num_threads()} threads")
    print(f"ours (sparse head, difference masking): {o:.2f} s/step; transformers.Trainer + "
          f"DataCollatorForLanguageModeling: {t:.2f} s/step; ratio {o / t:.3f} (goal <= 0.8)")
    print(f"our loop with the dense head: {d:.2f} s/step; sparse / dense {o / d:.3f}")


if __name__ == "__main__":
    main()
