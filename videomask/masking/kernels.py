"""Masking kernels: pure functions from scores to exact-budget masks.

Every kernel has the signature::

    kernel(values, valid, ratio, generator, **params) -> BoolTensor   # True = masked

- ``values``: float ``[B, N]`` that rank the units (difference scores or ground truth: higher = more
  different from the pretraining domain), or None for kernels that read none;
- ``valid``: bool ``[B, N]``, the units that may be masked (never special tokens or padding);
- ``ratio``: in (0, 1); the budget of row b is ``budget_sizes(valid[b].sum(), ratio)``, exact
  (whole-word and PMI units mask at most the budget: see ``whole_units``);
- ``generator``: a ``torch.Generator``, or one per row: a row's mask then depends on its own
  generator only, so it is the same whatever batch the sample lands in;
- ``params``: keyword-only, each kernel's own (``alpha``, ``mode``, ``word_ids`` ...); they have no
  defaults here: a strategy's defaults are declared once, in its record (``videomask.masking.strategies``).

Grid kernels (``tube``, ``block``) take ``[B, T, H, W]`` tensors instead of ``[B, N]``.

Registered (``KERNELS``): ``random``, ``difference`` (docs/method.md §4: ``mode="topk"``, the top
``floor(alpha * budget)`` by score then a uniform fill; ``mode="rank"``, sampling without
replacement with probability ``alpha * p_rank + (1 - alpha) * uniform`` where a word of ordinal
rank r among the row's N words gets weight ``N - r``), ``inverse_difference`` (the same on negated
scores: the least different first), ``whole_word``, ``span`` (SpanBERT), ``pmi`` (Levine et al.
2021), ``tube`` and ``block`` (VideoMAE). What a configured strategy runs on text and on patches is
its record in ``videomask.masking.strategies``.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import VideomaskError


class MaskingError(VideomaskError, ValueError):
    pass


@dataclass(frozen=True)
class Kernel:
    fn: Callable
    grid: bool  # takes [B, T, H, W] (a clip's patches in place) instead of rows of units
    reads_values: bool  # ranks units by the values it is given (scores or ground truth)
    params: tuple  # its keyword-only parameters, from the function's signature


KERNELS: dict[str, Kernel] = {}


def kernel(name: str, grid: bool = False, reads_values: bool = False):
    """Register ``fn`` as the kernel ``name``."""
    def deco(fn):
        params = tuple(n for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY)
        KERNELS[name] = Kernel(fn, grid, reads_values, params)
        return fn
    return deco


def get(name: str) -> Kernel:
    if name not in KERNELS:
        raise MaskingError(f"unknown masking kernel {name!r}; known: {', '.join(sorted(KERNELS))}")
    return KERNELS[name]


def check_ratio(ratio: float, alpha: float | None = None):
    if not 0 < ratio < 1:
        raise MaskingError(f"mask ratio must be in (0, 1), got {ratio}")
    if alpha is not None and not 0 <= alpha <= 1:
        raise MaskingError(f"alpha must be in [0, 1], got {alpha}")


def budget_sizes(counts, ratio: float) -> torch.Tensor:
    """The one budget rule: ``round(ratio * n)`` units for a row of n (Python's round: half to even)."""
    return torch.tensor([round(ratio * int(k)) for k in counts], dtype=torch.long)


def budgets(valid: torch.Tensor, ratio: float) -> torch.Tensor:
    """``budget_sizes`` of each row's valid units. A row with units but a budget of zero is an error: it
    would silently contribute nothing to the loss."""
    n = valid.flatten(1).sum(1)
    b = budget_sizes(n, ratio)
    short = ((n > 0) & (b == 0)).nonzero().flatten()
    if len(short):
        i = int(short[0])
        raise MaskingError(f"row {i} has {int(n[i])} maskable units: a ratio of {ratio} masks none of them "
                           f"(need at least {math.ceil(0.5 / ratio)}); raise the ratio or drop such short samples")
    return b


def uniform(shape, generator) -> torch.Tensor:
    """U(0, 1) noise of ``shape`` ([B, ...]); row b drawn from ``generator[b]`` when a list is given."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([torch.rand(shape[1:], generator=g) for g in generator])
    return torch.rand(shape, generator=generator)


def _take_top(keys: torch.Tensor, valid: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """Mask the ``budget[b]`` valid units of row b with the largest keys."""
    mask = torch.zeros_like(valid)
    k = int(budget.max()) if len(budget) else 0
    if k == 0:
        return mask
    idx = keys.masked_fill(~valid, float("-inf")).topk(k, dim=1).indices
    return mask.scatter_(1, idx, torch.arange(k)[None] < budget[:, None])


def _check_values(values, valid, name):
    if values is None:
        raise MaskingError(f"kernel {name!r} ranks units by scores or ground truth, and got none")
    if (torch.isnan(values) & valid).any():
        raise MaskingError(f"kernel {name!r}: its scores contain NaN at maskable positions")


@kernel("random")
def random_mask(values, valid, ratio, generator):
    """Uniform: ``budget`` valid units drawn without replacement."""
    check_ratio(ratio)
    return _take_top(uniform(valid.shape, generator), valid, budgets(valid, ratio))


def _ordinal_weights(scores: torch.Tensor, ranked: torch.Tensor, unit_ids: torch.Tensor | None) -> torch.Tensor:
    """The authors' text weights: the row's N ranked units get ordinal ranks 1..N by decreasing score
    (ties broken by position: no flattening when many units share a score), unit weight ``N - rank``,
    copied to every position of the unit. ``unit_ids`` [B, L] (a word per token, -1 = none): units are
    words; None: every position is its own unit. Unranked positions weigh 0. Returns float [B, L]."""
    B, L = ranked.shape
    ids = torch.arange(L).expand(B, L) if unit_ids is None else unit_ids
    ids = torch.where(ranked, ids, torch.full_like(ids, -1))
    n_units = int(ids.max()) + 1 if ids.numel() and int(ids.max()) >= 0 else 0
    if n_units == 0:
        return torch.zeros(B, L)
    # one score per unit: the positions of a word share its score, so any of them may write it
    unit_score = torch.full((B, n_units + 1), float("-inf"))
    present = torch.zeros(B, n_units + 1, dtype=torch.bool)
    slot = torch.where(ids >= 0, ids, torch.full_like(ids, n_units))  # unranked positions: a spare slot
    unit_score.scatter_(1, slot, scores.float())
    present.scatter_(1, slot, torch.ones_like(slot, dtype=torch.bool))
    present[:, n_units] = False
    unit_score = unit_score.masked_fill(~present, float("-inf"))
    order = unit_score.argsort(dim=1, descending=True, stable=True)  # [B, U + 1]
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(1, n_units + 2).expand(B, -1).contiguous())  # 1 = most different
    n = present.sum(1, keepdim=True)
    weight = (n - rank).clamp(min=0).float() * present
    return torch.where(ids >= 0, torch.gather(weight, 1, slot), torch.zeros(B, L))


@kernel("difference", reads_values=True)
def difference(scores, valid, ratio, generator, *, alpha: float, mode: str, word_ids=None, ranked=None):
    """Difference-masking (docs/method.md §4).

    ``mode="topk"`` (patches): the top ``floor(alpha * budget)`` ranked units by score, then the rest
    of the budget uniformly from the remaining units. alpha=1: exactly the top-scoring units; alpha=0:
    uniform random masking.
    ``mode="rank"`` (text): ordinal word ranks, weight ``N - rank`` per word copied to its tokens
    (``word_ids`` [B, L]; None: every unit its own word), mixed with uniform by alpha, sampled without
    replacement (Gumbel top-k, i.e. sequential sampling proportional to the weights). ``ranked``
    [B, L]: the units that take part in the ranking (default: those with a word); the others
    (punctuation) weigh 0 in ``p_rank``, so neither difference nor its inverse masks them first. If the
    weighted units cannot fill the budget, the rest is drawn uniformly: the budget stays exact.
    """
    check_ratio(ratio, alpha)
    _check_values(scores, valid, "difference")
    flat_valid, flat_scores = valid.flatten(1), scores.flatten(1).float()
    budget = budgets(flat_valid, ratio)
    u = uniform(flat_valid.shape, generator)
    if ranked is None:
        ranked = flat_valid if word_ids is None else flat_valid & (word_ids.flatten(1) >= 0)
    ranked = ranked.flatten(1) & flat_valid
    if mode == "topk":
        n_top = torch.minimum(torch.floor(alpha * budget.double() + 1e-9).long(), ranked.sum(1))
        # the noise only orders exactly equal scores (float16 grids have many): a random tie-break
        top = _take_top(flat_scores.double().add_(u.double(), alpha=1e-9), ranked, n_top)
        rest = _take_top(u, flat_valid & ~top, budget - n_top)
        return (top | rest).view_as(valid)
    if mode == "rank":
        w = _ordinal_weights(flat_scores, ranked, None if word_ids is None else word_ids.flatten(1))
        p = w / w.sum(1, keepdim=True).clamp(min=1e-12)
        if alpha < 1:
            p = alpha * p + (1 - alpha) * flat_valid.float() / flat_valid.sum(1, keepdim=True).clamp(min=1)
        # Gumbel top-k: keys log p + Gumbel noise; the largest `budget` are a sample without replacement
        keys = torch.log(p).sub_(torch.log(-torch.log(u.clamp(1e-12, 1 - 1e-7))))
        chosen = _take_top(keys, flat_valid & (p > 0), budget)
        rest = _take_top(u, flat_valid & ~chosen, budget - chosen.sum(1))
        return (chosen | rest).view_as(valid)
    raise MaskingError(f"difference: mode must be 'topk' or 'rank', got {mode!r}")


@kernel("inverse_difference", reads_values=True)
def inverse_difference(scores, valid, ratio, generator, *, alpha: float, mode: str, word_ids=None, ranked=None):
    """The paper's control: difference-masking of the *least* different units (words only, in rank mode)."""
    _check_values(scores, valid, "inverse_difference")
    return difference(-scores, valid, ratio, generator, alpha=alpha, mode=mode, word_ids=word_ids, ranked=ranked)


def whole_units(unit_ids: torch.Tensor, valid: torch.Tensor, ratio: float, unit_keys: torch.Tensor,
                budget: torch.Tensor | None = None) -> torch.Tensor:
    """Mask whole units (words, n-grams): units in decreasing ``unit_keys`` order, each taken if all
    its positions fit in what is left of the budget. Positions with ``unit_ids < 0`` are their own unit.

    ``unit_ids``: long [B, N]; ``unit_keys``: float [B, N] priority per *position* (read at each unit's
    first position). The count is at most the budget, and equals it unless only units longer than
    the remainder are left. ``budget`` overrides ``round(ratio * valid units)`` per row.
    """
    budget = budgets(valid, ratio) if budget is None else budget
    mask = torch.zeros_like(valid)
    for b in range(valid.shape[0]):
        ids, ok = unit_ids[b], valid[b]
        units: dict[int, list[int]] = {}
        for pos in ok.nonzero().flatten().tolist():
            u = int(ids[pos])
            units.setdefault(u if u >= 0 else -1 - pos, []).append(pos)
        order = sorted(units, key=lambda u: -float(unit_keys[b, units[u][0]]))
        left = int(budget[b])
        for u in order:
            if left == 0:
                break
            if len(units[u]) <= left:
                mask[b, units[u]] = True
                left -= len(units[u])
    return mask


@kernel("whole_word")
def whole_word(values, valid, ratio, generator, *, word_ids):
    """Random words, all sub-tokens of a chosen word together (``word_ids``: long [B, N], -1 = no word)."""
    check_ratio(ratio)
    if word_ids is None:
        raise MaskingError("whole_word needs word_ids (the word each token belongs to)")
    return whole_units(word_ids, valid, ratio, uniform(valid.shape, generator))


@kernel("span")
def span(values, valid, ratio, generator, *, p: float, max_span: int):
    """SpanBERT: spans of Geometric(p) length (clipped to ``max_span``) at uniform starts over the
    valid units, until the budget is reached exactly (the last span is cut to fit)."""
    check_ratio(ratio)
    budget = budgets(valid, ratio)
    mask = torch.zeros_like(valid)
    gens = generator if isinstance(generator, (list, tuple)) else [generator] * valid.shape[0]
    for b in range(valid.shape[0]):
        pos = valid[b].nonzero().flatten()
        left, n = int(budget[b]), len(pos)
        free = torch.ones(n, dtype=torch.bool)
        while left > 0:
            u = torch.rand(2, generator=gens[b])
            length = min(max_span, 1 + int(math.log(max(float(u[0]), 1e-12)) / math.log(1 - p)), left)
            starts = free.nonzero().flatten()
            start = int(starts[int(float(u[1]) * len(starts))])
            run = [i for i in range(start, min(n, start + length)) if free[i]]
            free[run] = False
            mask[b, pos[run]] = True
            left -= len(run)
    return mask


@kernel("pmi")
def pmi(values, valid, ratio, generator, *, word_ids, words, ngrams):
    """PMI-masking: occurrences of high-PMI n-grams (``ngrams``: set of word tuples, lowercased;
    see ``videomask.scoring.pmi``) are masked as one unit, other words as whole words; random unit order.
    ``words``: per row, the list of words that ``word_ids`` index."""
    check_ratio(ratio)
    if word_ids is None or words is None or ngrams is None:
        raise MaskingError("pmi needs word_ids, words and an n-gram vocabulary (python -m videomask.scoring.pmi CORPUS)")
    unit_ids = word_ids.clone()
    max_n = max((len(g) for g in ngrams), default=1)
    for b, ws in enumerate(words):
        lw, merged, i = [w.lower() for w in ws], {}, 0
        while i < len(lw):
            for n in range(max_n, 1, -1):  # the longest n-gram starting here wins
                if tuple(lw[i:i + n]) in ngrams:
                    merged.update({j: i for j in range(i, i + n)})
                    i += n
                    break
            else:
                i += 1
        for j, first in merged.items():
            unit_ids[b][word_ids[b] == j] = first
    keys = uniform(valid.shape, generator)
    mask = whole_units(unit_ids, valid, ratio, keys)
    # an n-gram longer than what is left of the budget gives way to single words
    rest = budgets(valid, ratio) - mask.sum(1)
    return mask | whole_units(word_ids, valid & ~mask, ratio, keys, budget=rest)


@kernel("tube", grid=True)
def tube(values, valid, ratio, generator):
    """VideoMAE tube masking: one random spatial pattern, the same in every frame.
    ``valid``: [B, T, H, W]; the budget is ``round(ratio * H * W)`` per frame."""
    check_ratio(ratio)
    spatial = valid.all(dim=1)  # [B, H, W]
    pattern = random_mask(None, spatial.flatten(1), ratio, generator).view_as(spatial)
    return pattern[:, None].expand_as(valid) & valid


@kernel("block", grid=True)
def block(values, valid, ratio, generator, *, min_area: float, max_aspect: float):
    """Block masking over (time, height, width): random cuboids (random aspect ratio, spatial area
    from ``min_area`` of the grid up to the budget) until the exact budget; the last block is cut to
    fit at random. ``valid``: [B, T, H, W]."""
    check_ratio(ratio)
    B, T, H, W = valid.shape
    budget = budgets(valid.flatten(1), ratio)
    mask = torch.zeros_like(valid)
    gens = generator if isinstance(generator, (list, tuple)) else [generator] * B
    for b in range(B):
        left = int(budget[b])
        while left > 0:
            u = torch.rand(6, generator=gens[b])
            area = max(1.0, (min_area + float(u[0]) * (1 - min_area)) * H * W * ratio)
            aspect = math.exp(math.log(1 / max_aspect) + float(u[1]) * 2 * math.log(max_aspect))
            h = max(1, min(H, round(math.sqrt(area * aspect))))
            w = max(1, min(W, round(math.sqrt(area / aspect))))
            t = max(1, min(T, 1 + int(float(u[2]) * T)))
            t0, y0, x0 = int(float(u[3]) * (T - t + 1)), int(float(u[4]) * (H - h + 1)), int(float(u[5]) * (W - w + 1))
            new = torch.zeros_like(valid[b])
            new[t0:t0 + t, y0:y0 + h, x0:x0 + w] = True
            new &= valid[b] & ~mask[b]
            idx = new.nonzero()
            if len(idx) > left:  # cut the last block to the exact budget
                keep = torch.randperm(len(idx), generator=gens[b])[:left]
                new = torch.zeros_like(new)
                new[tuple(idx[keep].T)] = True
            mask[b] |= new
            left -= int(new.sum())
    return mask


def select(name: str, values, valid, ratio, generator, **params) -> torch.Tensor:
    """Run the kernel ``name`` with exactly its own ``params`` (see the module docstring): a parameter it
    does not take, or one it needs and was not given, is an error naming both."""
    k = get(name)
    unknown, missing = sorted(set(params) - set(k.params)), [p for p in k.params if p not in params and
                                                               p not in OPTIONAL]
    if unknown or missing:
        raise MaskingError(f"kernel {name!r} takes {', '.join(k.params) or 'no parameters'}"
                           + (f"; got unknown {', '.join(unknown)}" if unknown else "")
                           + (f"; missing {', '.join(missing)}" if missing else ""))
    if k.reads_values:
        _check_values(values, valid, name)
    if k.grid:
        if valid.dim() != 4:
            raise MaskingError(f"kernel {name!r} masks video patches: valid must be [B, T, H, W]")
        return k.fn(values, valid, ratio, generator, **params)
    if valid.dim() > 2:  # patches of [B, T, H, W] as one row of units per sample
        flat = k.fn(None if values is None else values.flatten(1), valid.flatten(1), ratio, generator, **params)
        return flat.view_as(valid)
    return k.fn(values, valid, ratio, generator, **params)


#: context a kernel may go without (None: every position its own word, every word ranked)
OPTIONAL = ("word_ids", "ranked")


def context_for(name: str, **context) -> dict:
    """The entries of ``context`` (word_ids, words, ngrams: what the collator knows) that kernel ``name`` takes."""
    return {k: v for k, v in context.items() if k in get(name).params}
