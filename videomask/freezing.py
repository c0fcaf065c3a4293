"""Which parameters train (``optim.train``, ``optim.freeze``): everything, the masked-LM head alone, or named
parts. Restoring a head on a frozen encoder, linear probing and adapting a large model's top layers need it.

Entries are ``head`` or parameter-name prefixes, matched on whole dotted parts (``mlm.bert.encoder.layer.1`` is
not a prefix of ``...layer.10``). ``head`` is the masked-LM head's own parameters: where its output layer is tied
to the input embeddings (BERT, RoBERTa), that shared matrix belongs to the encoder and is not part of it.
An entry that names no parameter is an error listing the model's top-level parts.
"""
from __future__ import annotations

from torch import nn

from .config import ConfigError
from .model import mlm_head


def head_parameters(model: nn.Module) -> set[int]:
    """ids of the masked-LM head's parameters that the encoder does not share."""
    mlm = model.mlm
    head = mlm_head(mlm)
    if isinstance(head, nn.Module):
        params = set(map(id, head.parameters()))
    else:  # a head spread over several children (DistilBERT, ELECTRA, ModernBERT): what the base model lacks
        params = {id(p) for p in mlm.parameters()} - {id(p) for p in mlm.base_model.parameters()}
    return params - {id(p) for p in mlm.base_model.parameters()}


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def select(model: nn.Module, entries: list[str], key: str) -> set[int]:
    """ids of the parameters ``entries`` name; a ConfigError naming ``key`` and the entry that names none."""
    named = list(model.named_parameters())  # each parameter under its first name: a tied one belongs to the encoder
    chosen = set()
    for entry in entries:
        found = head_parameters(model) if entry == "head" else {id(p) for n, p in named if _matches(n, entry)}
        if not found:
            parts = sorted({n.split(".")[0] for n, _ in named} | {".".join(n.split(".")[:2]) for n, _ in named})
            raise ConfigError(f"{key}: {entry!r} names no parameter of this model; its parts: {', '.join(parts[:20])}"
                              " (or 'head')")
        chosen |= found
    return chosen


def apply(model: nn.Module, train: list[str], freeze: list[str]) -> tuple[int, int]:
    """Set ``requires_grad``: the parameters ``train`` names (all when empty), less those ``freeze`` names. Returns
    (trainable, total) parameter counts; nothing left to train is an error."""
    params = list(model.parameters())
    trainable = select(model, train, "optim.train") if train else set(map(id, params))
    trainable -= select(model, freeze, "optim.freeze") if freeze else set()
    if not trainable:
        raise ConfigError(f"optim.train={train} and optim.freeze={freeze} leave no parameter to train")
    for p in params:
        p.requires_grad_(id(p) in trainable)
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
