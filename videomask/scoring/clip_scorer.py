"""CLIP for scoring: words and image patches embedded in open_clip's joint space.

``load_clip(name, pretrained)`` accepts what open_clip accepts: a model name with
a pretrained tag (``"ViT-B-32", "laion2b_s34b_b79k"``), a model name with a
checkpoint path, or ``"local-dir:/path"`` (``open_clip_config.json`` +
weights, the layout ``videomask.demo.tiny_clip`` saves).

Dense patch features (``ClipScorer.dense``), two ways, chosen by the model:

- ``maskclip`` (ViTs pooled by their class token, i.e. every released CLIP): the
  last block's query-key attention mixes global context into every token, which
  blurs localisation. Following MaskCLIP (Zhou et al., ECCV 2022) the last block is
  replaced by its value path only: ``out_proj(v(ln_1(x)))``, then ``ln_post`` and
  ``proj``, giving one joint-space vector per patch.
- ``tokens`` (ViTs with ``pool_type='avg'``, such as the tiny scorer): the image
  embedding *is* the mean of the projected patch tokens, so each projected token is
  already that patch's share of the image embedding.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ConfigError


def pick_device(device: str = "auto") -> torch.device:
    return torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                        "cpu" if device == "auto" else device)


def model_identity(name: str, pretrained: str | None) -> str:
    """A string that names the weights: model + tag, or + the checkpoint's sha256 prefix for files."""
    path = None
    if name.startswith("local-dir:"):
        d = Path(name.split(":", 1)[1])
        path = next((p for p in sorted(d.glob("*.safetensors")) + sorted(d.glob("*.bin"))), None)
    elif pretrained and Path(pretrained).is_file():
        path = Path(pretrained)
    if path is None:
        return f"{name}|{pretrained}"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{name}|{path.name}|sha256:{h.hexdigest()[:16]}"


class WordCache:
    """``encode_words`` over a subclass's ``encode_texts``: each word embedded alone (lowercased, never truncated
    by the context of a whole transcript), cached per (prompt, word). Subclasses set ``dim``."""

    dim: int

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def encode_words(self, words: list[str], prompt: str = "{}") -> torch.Tensor:
        """[n, D] embeddings of single words."""
        if not hasattr(self, "_cache"):
            self._cache: dict[tuple[str, str], torch.Tensor] = {}
            self.cache_hits = self.cache_misses = 0
        keys = [(prompt, w.lower()) for w in words]
        new = sorted({k for k in keys if k not in self._cache})
        self.cache_misses += len(new)
        self.cache_hits += len(keys) - len(new)
        if new:
            for k, e in zip(new, self.encode_texts([p.format(w) for p, w in new])):
                self._cache[k] = e
        if not keys:
            return torch.empty(0, self.dim)
        return torch.stack([self._cache[k] for k in keys])

    def encode_batch(self, words: tuple[str, ...], prompt: str = "{}") -> torch.Tensor:
        """[n, D] embeddings of ``words`` embedded together as one batch, kept per (prompt, batch): the same batch
        asked again (a loaded scorer scoring another folder of the same input) gives the same tensor, computed
        once. Unlike ``encode_words``, a word's bits then depend only on the batch it is given in."""
        memo = self.__dict__.setdefault("_batches", {})
        key = (prompt, tuple(words))
        if key not in memo:
            memo[key] = self.encode_texts([prompt.format(w) for w in words])
        return memo[key]


class ClipScorer(WordCache):
    """Word and patch embeddings of one open_clip model, L2-normalised, with a per-word cache."""

    def __init__(self, name: str, pretrained: str | None = None, device: str = "auto", dense: str = "auto"):
        import open_clip

        self.device = pick_device(device)
        self.name, self.pretrained = name, pretrained
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained)
        except Exception as e:  # open_clip raises RuntimeError / FileNotFoundError / ValueError
            raise ConfigError(f"cannot load CLIP model {name!r} (pretrained={pretrained!r}): {e}") from None
        self.model = model.to(self.device).eval()
        self.tokenizer = open_clip.get_tokenizer(name)
        visual = model.visual
        if not hasattr(visual, "transformer") or not hasattr(visual, "_embeds"):
            raise ConfigError(f"{name}: dense patch scores need a ViT image tower (open_clip VisionTransformer)")
        self.identity = model_identity(name, pretrained)
        size = visual.image_size
        self.image_size = size[0] if isinstance(size, (tuple, list)) else size
        patch = visual.patch_size
        self.patch_size = patch[0] if isinstance(patch, (tuple, list)) else patch
        self.grid = self.image_size // self.patch_size
        self.mean = torch.tensor(visual.image_mean or (0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
        self.std = torch.tensor(visual.image_std or (0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
        self.dense_mode = ("tokens" if getattr(visual, "pool_type", "tok") == "avg" else "maskclip") \
            if dense == "auto" else dense
        if self.dense_mode == "maskclip" and not isinstance(visual.transformer.resblocks[-1].attn,
                                                           torch.nn.MultiheadAttention):
            raise ConfigError(f"{name}: MaskCLIP dense features need a standard attention block in the last layer")
        self.dim = getattr(visual, "output_dim", None) or model.text_projection.shape[-1]  # the joint space
        self._cache: dict[tuple[str, str], torch.Tensor] = {}
        self.cache_hits = self.cache_misses = 0

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else torch.autocast(
            "cpu", enabled=False)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """[n, D] normalised text embeddings (no cache)."""
        out = []
        for i in range(0, len(texts), 256):
            tok = self.tokenizer(texts[i:i + 256]).to(self.device)
            with self._autocast():
                out.append(F.normalize(self.model.encode_text(tok).float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, self.dim)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, S, S] -> normalised float [N, 3, image_size, image_size] on the device."""
        x = frames.to(self.device, non_blocking=True).float().div_(255)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return (x - self.mean.to(self.device)) / self.std.to(self.device)

    @torch.inference_mode()
    def dense(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames [N, 3, S, S] -> normalised patch features [N, grid, grid, D]."""
        visual = self.model.visual
        with self._autocast():
            x = visual._embeds(self.preprocess(frames))  # [N, 1 + P, W]
            if self.dense_mode == "tokens":
                _, tokens = visual._pool(visual.transformer(x))
            else:
                blocks = visual.transformer.resblocks
                for blk in blocks[:-1]:
                    x = blk(x)
                last = blocks[-1]
                attn, width = last.attn, last.attn.embed_dim
                v = F.linear(last.ln_1(x), attn.in_proj_weight[2 * width:], attn.in_proj_bias[2 * width:])
                tokens = visual.ln_post(attn.out_proj(v))[:, -self.grid * self.grid:]
            feats = tokens[:, -self.grid * self.grid:] @ visual.proj  # [N, P, D]
        feats = F.normalize(feats.float(), dim=-1)
        return feats.view(feats.shape[0], self.grid, self.grid, -1)


def aggregate(sims: torch.Tensor, how: str) -> torch.Tensor:
    """Reduce cosine similarities ``[..., A]`` over the anchors: max (default), mean or min."""
    if how == "max":
        return sims.max(dim=-1).values
    if how == "mean":
        return sims.mean(dim=-1)
    if how == "min":
        return sims.min(dim=-1).values
    raise ConfigError(f"unknown aggregation {how!r}: choose max, mean or min")
