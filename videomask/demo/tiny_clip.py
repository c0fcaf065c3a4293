"""A tiny CLIP fitted on the synthetic world: the scorer of the embedded default.

No pretrained CLIP weights can be downloaded on an offline machine, and random
weights give meaningless scores. So the demo and the tests fit a small open_clip
model (avg-pooled ViT + text transformer, open_clip's own BPE tokenizer) on the
world's frames and captions, save it in open_clip's ``local-dir:`` layout
(``open_clip_config.json`` + ``open_clip_model.safetensors``) and load it back
through the same code path as a real checkpoint
(``videomask.clip.ClipScorer("local-dir:PATH")``).

Two contrastive losses:

- region-phrase (as in phrase-grounding pre-training, e.g. GLIP): a short phrase
  naming an object on screen ("violet hexagon", "hexagon", "violet") must pick
  out that object's patches among all patches of the batch. The world knows
  where it drew each object, so these pairs come for free.
- sentence (FILIP's token-wise similarity): the transcript cue on screen matches
  its frame through the frame's best-matching patch.

Why not plain CLIP: we measured it. Image-level contrastive training for a few
CPU-minutes gave patch features that don't localise (object patches above the
background in 31-66% of frames, against the 90% we require): every token can
carry the whole image's content, and an image-level loss never asks which does.

    python -m videomask.demo.tiny_clip WORLD OUT [--steps 300 --image-size 128]
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..prep.transcripts import read_transcript
from ..prep.video import open_video, resize_crop

logger = logging.getLogger(__spec__.name if __spec__ else __name__)  # its dotted name under -m too


MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def model_cfg(image_size: int, patch_size: int = 16, width: int = 128, layers: int = 3, embed_dim: int = 64) -> dict:
    return {"embed_dim": embed_dim,
            "vision_cfg": {"image_size": image_size, "patch_size": patch_size, "width": width, "layers": layers,
                           "head_width": 32, "pool_type": "avg"},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": width, "heads": 4, "layers": layers}}


def world_pairs(world_dir: Path, image_size: int, patch_size: int, frames_per_cue: int = 3):
    """From a world folder's train split (the scorer never sees a held-out clip): frames (uint8
    [N, 3, S, S]), the cue text on screen, and per frame the objects on screen as ``(colour, shape, patches
    covered >= 30%: bool [grid * grid])``."""
    from .world import object_mask

    world_dir, grid = Path(world_dir), image_size // patch_size
    frames, cue_texts, objects = [], [], []
    for domain in ("general", "target"):
        for line in (world_dir / f"{domain}.jsonl").read_text().splitlines():
            row = json.loads(line)
            if row["split"] != "train":  # the scorer never sees a held-out clip
                continue
            cues, _ = read_transcript(world_dir / row["transcript"])
            reader = open_video(world_dir / row["video"])
            fps, idx, owners = reader.info.fps, [], []
            for k, cue in enumerate(cues):
                for j in range(frames_per_cue):
                    t = cue.start + (j + 0.5) * (cue.end - cue.start) / frames_per_cue
                    idx.append(min(int(t * fps), reader.info.num_frames - 1))
                    owners.append(k)
            for f, i, k in zip(reader.frames(idx), idx, owners):
                frames.append(np.asarray(resize_crop(f, image_size)))
                cue_texts.append(cues[k].text)
                on_screen = []
                for o in row["objects"][k]:
                    m = Image.fromarray(object_mask(o, i / fps - cues[k].start, reader.info.width))
                    m = np.asarray(m.resize((image_size, image_size)), dtype=bool)
                    cover = m.reshape(grid, patch_size, grid, patch_size).mean((1, 3)) >= 0.3
                    on_screen.append((o["colour"], o["shape"], torch.from_numpy(cover.ravel())))
                objects.append(on_screen)
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous(), cue_texts, objects


def patch_embeddings(model, images: torch.Tensor) -> torch.Tensor:
    """Normalised projected patch tokens [B, P, D] of an avg-pooled open_clip ViT: the scorer's dense features."""
    visual = model.visual
    _, tokens = visual._pool(visual.transformer(visual._embeds(images)))
    return F.normalize(tokens @ visual.proj, dim=-1)


def region_phrases(rng: np.random.Generator, objects: list[list], n_patches: int):
    """One phrase per frame about one of its objects, and which patches of the batch it names: [B, B * P]."""
    phrases, named = [], []
    for on_screen in objects:
        colour, shape, _ = on_screen[rng.integers(len(on_screen))]
        kind = int(rng.integers(3))
        phrases.append([f"{colour} {shape}", shape, colour][kind])
        named.append((colour if kind != 1 else None, shape if kind != 2 else None))
    pos = torch.zeros(len(objects), len(objects) * n_patches)
    for c, (colour, shape) in enumerate(named):
        for b, on_screen in enumerate(objects):
            for oc, osh, cover in on_screen:
                if colour in (None, oc) and shape in (None, osh):
                    pos[c, b * n_patches:(b + 1) * n_patches] += cover
    return phrases, (pos > 0).float()


def soft_cross_entropy(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """InfoNCE with several positives per row: the target spreads evenly over them."""
    keep = positives.sum(1) > 0
    return F.cross_entropy(logits[keep], positives[keep] / positives[keep].sum(1, keepdim=True))


def fit(world_dir: Path, out: Path, image_size: int = 128, steps: int = 300, batch_size: int = 64, lr: float = 1e-3,
        seed: int = 0, log_every: int = 50, device: str = "cpu") -> Path:
    """Fit and save the tiny CLIP; returns ``out`` (load it as ``local-dir:{out}``). ``device``: where it trains
    (the sampling of batches and phrases stays on the CPU's generator, so the data are the same anywhere)."""
    import open_clip

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = model_cfg(image_size)
    model = open_clip.CLIP(**cfg).to(device)
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=cfg["text_cfg"]["context_length"])
    frames, cues, objects = world_pairs(world_dir, image_size, cfg["vision_cfg"]["patch_size"])
    mean, std = torch.tensor(MEAN, device=device).view(1, 3, 1, 1), torch.tensor(STD, device=device).view(1, 3, 1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    t0 = time.perf_counter()
    for step in range(steps):
        idx = rng.choice(len(frames), size=min(batch_size, len(frames)), replace=False)
        patches = patch_embeddings(model, (frames[idx].to(device).float() / 255 - mean) / std)  # [B, P, D]
        scale = model.logit_scale.exp()
        # region-phrase: each phrase against every patch of the batch; its positives are the named objects' patches
        phrases, pos = region_phrases(rng, [objects[i] for i in idx], patches.shape[1])
        txt = F.normalize(model.encode_text(tokenizer(phrases).to(device)), dim=-1)  # [B, D]
        loss_region = soft_cross_entropy(scale * txt @ patches.flatten(0, 1).T, pos.to(device))  # [B, B * P]
        # sentence: a frame matches its cue through its best patch; equal cues are all positives
        texts = [cues[i] for i in idx]
        sent = F.normalize(model.encode_text(tokenizer(texts).to(device)), dim=-1)
        logits = scale * torch.einsum("bpd,cd->bcp", patches, sent).max(-1).values  # [B, B]
        same = torch.tensor([[a == b for b in texts] for a in texts], dtype=torch.float, device=device)
        loss_sentence = (soft_cross_entropy(logits, same) + soft_cross_entropy(logits.T, same)) / 2
        loss = loss_region + 0.5 * loss_sentence
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            logger.info(f"tiny_clip step {step:4d} region {loss_region.item():.3f} sentence {loss_sentence.item():.3f} "
                  f"({time.perf_counter() - t0:.0f}s)")
    return save(model, cfg, out, {"fitted_on": str(world_dir), "steps": steps, "seed": seed})


def save(model, cfg: dict, out: Path, about: dict | None = None) -> Path:
    """An open_clip ``model`` built from ``cfg`` -> ``out`` in the layout open_clip's ``local-dir:`` loads
    (``about``: what made it, kept in the config); returns ``out``."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.cpu() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")
    (out / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": cfg, "preprocess_cfg": {"mean": MEAN, "std": STD}, **({"videomask": about} if about else {})},
        indent=1))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m videomask.demo.tiny_clip", description=__doc__.split("\n\n")[0])
    p.add_argument("world", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    a = p.parse_args(argv)
    fit(a.world, a.out, a.image_size, a.steps, a.batch_size, seed=a.seed, device=a.device)
    logger.info(f"saved: local-dir:{a.out}")


if __name__ == "__main__":
    main()
