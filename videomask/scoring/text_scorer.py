"""Word scores from a text encoder (the paper's text half): a Hugging Face model or a sentence-transformers one.

The authors scored a word by the cosine between a BERT embedding of the word alone and of each
anchor (docs/method.md §3, §11). ``TextEncoderScorer`` embeds each word alone (lowercased, cached,
with an optional prompt) and L2-normalises it; ``Scorer`` in ``videomask.scoring.score`` takes the
max (or mean, min) cosine over the anchors, exactly as for CLIP words.

Pooling of the word's tokens (``pooling``):

- ``pooler``: BERT's pooled output (the [CLS] state through the trained dense + tanh layer), the
  authors' choice; refused when the checkpoint carries no trained pooler (it would be random);
- ``mean``: the attention-masked mean of the last hidden states (sentence-transformers' recipe);
- ``cls``: the [CLS] state;
- ``auto`` (default): the pooling a sentence-transformers folder declares (``modules.json`` +
  ``1_Pooling/config.json``: ``mean`` for all-MiniLM-L6-v2, the offline default), else ``pooler``
  when the checkpoint has trained pooler weights, else ``mean``.

Each word is embedded alone, so the tokenizer needs no word-boundary information here; the
collator, which maps word scores onto sub-tokens, needs a fast tokenizer's offsets and says so.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..model import OFFLINE_TEXT, resolve_hf
from .clip_scorer import WordCache, pick_device

POOLINGS = ("auto", "pooler", "mean", "cls")


def sentence_transformers_layout(path: Path) -> tuple[Path, str | None]:
    """(folder of the transformer's weights, the declared pooling or None) of a sentence-transformers folder;
    (path, None) for a plain Hugging Face folder or hub id."""
    modules = path / "modules.json"
    if not modules.is_file():
        return path, None
    mods = json.loads(modules.read_text())
    transformer = next((m for m in mods if m.get("type", "").endswith("Transformer")), None)
    pooling = next((m for m in mods if m.get("type", "").endswith("Pooling")), None)
    folder = path / transformer["path"] if transformer and transformer.get("path") else path
    mode = None
    if pooling:
        cfg = json.loads((path / pooling["path"] / "config.json").read_text())
        mode = ("mean" if cfg.get("pooling_mode_mean_tokens") else "cls" if cfg.get("pooling_mode_cls_token")
                else None)
    return folder, mode


class TextEncoderScorer(WordCache):
    """Single-word embeddings of one text encoder, L2-normalised, with a per-word cache."""

    def __init__(self, name: str = OFFLINE_TEXT, pooling: str = "auto", device: str = "auto", max_length: int = 32):
        from transformers import AutoModel, AutoTokenizer

        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}: choose one of {', '.join(POOLINGS)}")
        self.device = pick_device(device)
        self.name, self.max_length = name, max_length
        path = Path(resolve_hf(name))
        folder, declared = sentence_transformers_layout(path) if path.is_dir() else (path, None)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
            model, info = AutoModel.from_pretrained(str(folder), output_loading_info=True)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot load text encoder {name!r}: {' '.join(str(e).split())[:300]}") from None
        if getattr(model.config, "is_encoder_decoder", False) or getattr(model.config, "is_decoder", False):
            raise ConfigError(f"text encoder {name!r} is not an encoder-only model")
        trained_pooler = getattr(model, "pooler", None) is not None and not any(
            "pooler" in k for k in info.get("missing_keys", []))
        if pooling == "auto":
            pooling = declared or ("pooler" if trained_pooler else "mean")
        if pooling == "pooler" and not trained_pooler:
            raise ConfigError(f"text encoder {name!r} has no trained pooler (its weights would be random): "
                              "use --pooling mean or cls")
        self.pooling = pooling
        self.model = model.to(self.device).eval()
        self.identity = f"{name}|{_weights_id(folder)}|{pooling}"
        self.dim = model.config.hidden_size
        self._cache: dict[tuple[str, str], torch.Tensor] = {}
        self.cache_hits = self.cache_misses = 0

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """[n, D] normalised embeddings (no cache)."""
        out = []
        for i in range(0, len(texts), 256):
            enc = self.tokenizer(texts[i:i + 256], padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            o = self.model(**enc)
            if self.pooling == "pooler":
                e = o.pooler_output
            elif self.pooling == "cls":
                e = o.last_hidden_state[:, 0]
            else:
                m = enc["attention_mask"][..., None].to(o.last_hidden_state.dtype)
                e = (o.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1)
            out.append(F.normalize(e.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, self.dim)


def _weights_id(folder: Path) -> str:
    """sha256 prefix of a local folder's weights (which checkpoint scored the words); the id for hub names."""
    from ..files import sha256_of

    if not folder.is_dir():
        return "hub"
    weights = next(iter(sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))), None)
    return f"{weights.name}|sha256:{sha256_of(weights)[:16]}" if weights else "no-weights"
