"""GPU training throughput and model-FLOPs utilisation of the base-sized model in bf16.

    python bench/gpu_train.py [--vision ViT-B-32] [--batch 32] [--steps 30] [--frames 8] [--text 128]
                              [--compile] [--precision bf16|bf16_params] [--patch-embed conv|linear]
                              [--profile trace.txt] [--peak-tflops 989] [--json out.json]

Base-sized architecture (an open_clip ViT visual tower + a 12-layer, 768-wide joint encoder,
RoBERTa-base sized) with random weights: the GPU machine has no network, and
throughput does not depend on the weights. Synthetic batches in the collator's
format go straight to the model (no loader), with bf16 autocast, fused AdamW, and a
masked patch ratio of 0.25 / text ratio of 1/7 (about BERT's 0.15). The speed options are the trainer's own:
``--precision bf16_params`` (``run.precision``: bf16 weights, fp32 masters in the optimiser,
``videomask.precision.MasterWeights``) and ``--patch-embed linear`` (``model.patch_embed``). ``--profile FILE``
writes the top CUDA kernels of 5 profiled steps.

Model FLOPs per step (the usual 6N-per-token estimate plus attention, as in PaLM's MFU):
  joint encoder: 6 * N_joint * tokens + 12 * layers * width * seq^2 * clips  (seq = text + frames * patches)
  ViT: student forward+backward (3x) and the no-grad target pass (1x): 2 * (N_vit * tokens + 2 * layers * width
       * seq^2 * images) * 4
MFU = model FLOPs / step time / the card's dense bf16 peak (H100 SXM and H200: 989 TFLOP/s; pass
--peak-tflops for another card). tokens/s counts the joint encoder's tokens (text + visual).
Goal: >= 40% MFU on an H100.
"""
import argparse
import json
import time

import torch

from videomask.model import ModelConfig, VideoLanguageModel
from videomask.precision import MasterWeights, to_bf16

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--vision", default="ViT-B-32", help="open_clip architecture of the visual tower")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--text", type=int, default=128)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="the card's dense bf16 peak (default: by name)")
    p.add_argument("--device", default="cuda", help="cuda; cpu only to check the script (tiny sizes)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its convolution algorithms")
    p.add_argument("--json", default="", help="append the result as one JSON line to this file")
    p.add_argument("--precision", default="bf16", choices=["bf16", "bf16_params"],
                   help="bf16: autocast over fp32 weights; bf16_params: bf16 weights, fp32 masters in the optimiser")
    p.add_argument("--patch-embed", default="conv", choices=["conv", "linear"], help="model.patch_embed")
    p.add_argument("--profile", default="", help="write the top kernels of 5 profiled steps to this file")
    a = p.parse_args()
    dev = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    cfg = ModelConfig(preset="base", vision=a.vision, text="", hidden=768, layers=12, heads=12, intermediate=3072,
                      max_positions=1024, max_frames=a.frames, dropout=0.1, patch_embed=a.patch_embed)
    model = VideoLanguageModel(cfg, 50265).to(dev)
    fused = dev.type == "cuda"
    if a.precision == "bf16_params":  # what the trainer does with run.precision=bf16_params
        masters = to_bf16(model)
        opt = MasterWeights([{"params": list(model.parameters())}], masters,
                            lambda groups: torch.optim.AdamW(groups, lr=1e-4, fused=fused))
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    step_model = torch.compile(model) if a.compile else model
    B, T, L, g = a.batch, a.frames, a.text, model.grid
    batch = {"input_ids": torch.randint(5, 50000, (B, L), device=dev),
             "attention_mask": torch.ones(B, L, dtype=torch.long, device=dev),
             "labels": torch.full((B, L), -100, device=dev),
             "frames": torch.randint(0, 255, (B, T, 3, model.image_size, model.image_size), dtype=torch.uint8,
                                     device=dev),
             "frame_valid": torch.ones(B, T, dtype=torch.bool, device=dev),
             "patch_mask": torch.rand(B, T, g, g, device=dev) < 0.25}
    batch["labels"][:, 1::7] = batch["input_ids"][:, 1::7]
    n_joint = sum(p.numel() for n, p in model.named_parameters() if n.startswith("mlm.") and "embeddings" not in n)
    n_vit = sum(p.numel() for p in model.visual.parameters())
    seq_joint, seq_vit = L + T * g * g, g * g + 1
    vit_width, vit_layers = model.visual.conv1.out_channels, len(model.visual.transformer.resblocks)
    flops = (6 * n_joint * B * seq_joint + 12 * cfg.layers * cfg.hidden * seq_joint ** 2 * B
             + 4 * (2 * n_vit * B * T * seq_vit + 4 * vit_layers * vit_width * seq_vit ** 2 * B * T))
    cuda = dev.type == "cuda"

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = step_model(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t_compile = time.perf_counter()
    for i in range(a.steps + a.warmup):
        if i == a.warmup:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            t_compile = t - t_compile
        loss = step()
    if cuda:
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / a.steps
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            for _ in range(5):
                step()
            if cuda:
                torch.cuda.synchronize()
        with open(a.profile, "w") as f:
            f.write(prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=40))
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = a.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), float("nan"))
    row = {"device": name, "vision": a.vision, "batch": B, "frames": T, "text": L, "compile": a.compile,
           "cudnn_benchmark": a.cudnn_benchmark, "precision": a.precision, "patch_embed": a.patch_embed,
           "joint_seq": seq_joint, "samples_s": B / dt, "tokens_s": B * seq_joint / dt, "ms_step": dt * 1e3,
           "tflops": flops / dt / 1e12, "mfu": flops / dt / (peak * 1e12), "peak_tflops": peak,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan"),
           "warmup_s": t_compile, "params_joint_m": n_joint / 1e6, "params_vit_m": n_vit / 1e6,
           "loss": loss.item()}
    print(f"{name} {a.vision} batch {B} {'compiled' if a.compile else 'eager'} {a.precision} {a.patch_embed}: "
          f"{B / dt:.1f} samples/s, "
          f"{B * seq_joint / dt:,.0f} tokens/s, {dt * 1e3:.0f} ms/step, {flops / dt / 1e12:.1f} TFLOP/s, "
          f"MFU {100 * row['mfu']:.1f}% of {peak:.0f}, peak memory {row['peak_mem_gib']:.1f} GiB "
          f"(warm-up {t_compile:.0f} s; goal >= 40% MFU)", flush=True)
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
