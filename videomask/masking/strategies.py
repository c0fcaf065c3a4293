"""What each masking strategy does, one record per strategy, and the plan a ``MaskingConfig`` becomes.

A strategy (``masking.strategy`` in a config) names what happens to each modality: a ``Side`` for the
transcript's tokens and one for the clip's patches. A side says which kernel draws the mask
(``videomask.masking.kernels``), what stored values it ranks by (difference ``scores``, the world's
ground ``truth``, or none), its tunable parameters with their defaults (the only place they are
declared) and the parameters the strategy fixes. The collator, the inspector, the trainer's checks
and the experiment harness all read these records through ``plan``: a strategy registered here is
known to all of them.

    plan(MaskingConfig(strategy="difference_patches", alpha=0.5))
    # Plan(text=SidePlan(kernel="random", ...), patches=SidePlan(kernel="difference", reads="scores",
    #      params={"alpha": 0.5, "mode": "topk"}, ...), needs={"scores"})

A configured parameter that the strategy does not take (``masking.alpha`` with ``random``) is
refused with a message naming it, never ignored.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from . import kernels
from .kernels import MaskingError

#: where a sample stores the values a side reads: (per word, per patch)
VALUE_KEYS = {"scores": ("word_scores", "patch_scores"), "truth": ("word_truth", "patch_truth")}

#: what a strategy may need beyond the sample's text and frames, and how to get it
HOW_TO_GET = {
    "scores": "run `videomask score SHARDS OUT --anchors anchors.json --clip ...` and train on OUT (or pick a "
              "strategy that needs none: random, whole_word, span, tube, block, pmi)",
    "truth": "only the synthetic world provides it (videomask.demo.truth)",
    "ngrams": "an n-gram vocabulary: `python -m videomask.scoring.pmi TRAIN_SHARDS --out ngrams.json`",
}
WHAT = {"scores": "scores", "truth": "ground truth", "ngrams": "an n-gram vocabulary"}

#: the checks of the tunable parameters (a value outside them is refused when the plan is made)
PARAM_RULES = {"alpha": (lambda v: 0 <= v <= 1, "in [0, 1]"), "mode": (lambda v: v in ("rank", "topk"),
                                                                     "'rank' or 'topk'")}


@dataclass(frozen=True)
class Side:
    """What a strategy does to one modality."""

    kernel: str  # the kernel that draws the mask (a key of kernels.KERNELS)
    reads: Optional[str] = None  # the stored values it ranks by: "scores", "truth" or None
    params: dict = field(default_factory=dict)  # tunable parameters -> their defaults
    fixed: dict = field(default_factory=dict)  # parameters the strategy sets and a config may not
    unit: str = "token"  # what it masks: token, word, span, n-gram, patch, tube, block
    word_kernel: str = ""  # the kernel on whole-word units (masking.whole_word, the inspector); "": the same
    whole_word: bool = True  # masking.whole_word may make words its units

    def on_words(self) -> "Side":
        """This side with whole words as units (the budget then counts words)."""
        if not self.word_kernel or self.word_kernel == self.kernel:
            return Side(self.kernel, self.reads, self.params, self.fixed, "word")
        return Side(self.word_kernel, None, unit="word")


@dataclass(frozen=True)
class Strategy:
    name: str
    text: Side
    patches: Side
    about: str  # one line: what it is for

    @property
    def needs(self) -> frozenset:
        """What it reads beyond text and frames: a subset of {"scores", "truth", "ngrams"}."""
        reads = {s.reads for s in (self.text, self.patches) if s.reads}
        return frozenset(reads | ({"ngrams"} if "ngrams" in kernels.get(self.text.kernel).params else set()))

    def takes(self, param: str) -> bool:
        return any(param in s.params for s in (self.text, self.patches))


STRATEGIES: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    """Add ``strategy`` (checked against its kernels: every parameter one the kernel takes, values read only
    by kernels that rank by them). Returns it."""
    for side in (strategy.text, strategy.patches, strategy.text.on_words()):
        k = kernels.get(side.kernel)
        context = {"word_ids", "words", "ngrams", "ranked"}
        wrong = sorted((set(side.params) | set(side.fixed)) - set(k.params))
        missing = sorted(set(k.params) - set(side.params) - set(side.fixed) - context)
        if wrong or missing or bool(side.reads) != k.reads_values or (side.reads and side.reads not in VALUE_KEYS):
            raise MaskingError(f"strategy {strategy.name!r}: its side with kernel {side.kernel!r} does not fit it "
                               f"(kernel takes {', '.join(k.params) or 'nothing'}; unknown {wrong}, unset {missing}, "
                               f"reads {side.reads!r})")
    if kernels.get(strategy.text.kernel).grid:
        raise MaskingError(f"strategy {strategy.name!r}: kernel {strategy.text.kernel!r} masks patches, not text")
    STRATEGIES[strategy.name] = strategy
    return strategy


def get(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise MaskingError(f"unknown masking strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


# -- the registered strategies (docs/method.md §4, §6) -----------------------------------------------
#: difference-masking's share of the budget: 1 is the paper's pure difference-masking, 0 random masking
ALPHA = 1.0
RANDOM = Side("random")
RANDOM_PATCHES = Side("random", unit="patch")


def _text(kernel: str, reads: str) -> Side:  # the authors' text code: rank-weighted sampling of words
    return Side(kernel, reads, params={"alpha": ALPHA, "mode": "rank"})


def _patches(kernel: str, reads: str) -> Side:  # the authors' video code: the top floor(alpha * budget), then uniform
    return Side(kernel, reads, params={"alpha": ALPHA, "mode": "topk"}, unit="patch")


register(Strategy("random", RANDOM, RANDOM_PATCHES, "uniform on both modalities"))
for _kernel, _what in (("difference", "the most different units first"),
                       ("inverse_difference", "the least different units first (the paper's lower control)")):
    register(Strategy(_kernel, _text(_kernel, "scores"), _patches(_kernel, "scores"), f"{_what}, text and patches"))
    register(Strategy(f"{_kernel}_text", _text(_kernel, "scores"), RANDOM_PATCHES, f"{_what}, text only"))
    register(Strategy(f"{_kernel}_patches", RANDOM, _patches(_kernel, "scores"),
                      f"{_what}, patches only" + (" (the authors' video setting)" if _kernel == "difference" else "")))
# the upper control: the world's ground truth through difference-masking's own samplers and alpha, so that
# oracle vs difference isolates the quality of the scores (docs/method.md §10)
register(Strategy("oracle", _text("difference", "truth"), _patches("difference", "truth"),
                  "ground truth as scores, difference-masking's samplers (upper control)"))
register(Strategy("oracle_text", _text("difference", "truth"), RANDOM_PATCHES, "the same, text only"))
register(Strategy("oracle_patches", RANDOM, _patches("difference", "truth"), "the same, patches only"))
# the hard version: ground-truth units strictly first (top-k on text too), then uniform
_TOPK = {"alpha": 1.0, "mode": "topk"}
_topk_text, _topk_patches = Side("difference", "truth", fixed=_TOPK), Side("difference", "truth", fixed=_TOPK,
                                                                           unit="patch")
register(Strategy("oracle_topk", _topk_text, _topk_patches, "ground-truth units strictly first, then uniform"))
register(Strategy("oracle_topk_text", _topk_text, RANDOM_PATCHES, "the same, text only"))
register(Strategy("oracle_topk_patches", RANDOM, _topk_patches, "the same, patches only"))
register(Strategy("whole_word", Side("whole_word", unit="word", word_kernel="random"), RANDOM_PATCHES,
                  "random whole words (budget in tokens)"))
register(Strategy("span", Side("span", fixed={"p": 0.2, "max_span": 10}, unit="span"), RANDOM_PATCHES,
                  "SpanBERT geometric spans"))
register(Strategy("pmi", Side("pmi", unit="n-gram", word_kernel="random", whole_word=False), RANDOM_PATCHES,
                  "high-PMI n-grams as units (Levine et al. 2021)"))
register(Strategy("tube", RANDOM, Side("tube", unit="tube"), "VideoMAE tubes: one spatial pattern in every frame"))
register(Strategy("block", RANDOM, Side("block", fixed={"min_area": 0.1, "max_aspect": 3.0}, unit="block"),
                  "VideoMAE-style 3-D blocks"))


# -- a configuration and its plan ---------------------------------------------------------------------
@dataclass
class MaskingConfig:
    """The ``masking`` section of a training config: which strategy, what budgets, the 80/10/10 rule.
    ``alpha``, ``text_mode`` and ``patch_mode`` left unset (None) take the strategy's defaults."""

    strategy: str = "difference"  # a key of masking.STRATEGIES
    text_ratio: float = 0.15  # share of a sample's text tokens masked (exact budget)
    patch_ratio: float = 0.25  # share of a clip's patches masked (exact budget)
    alpha: Optional[float] = None  # difference-masking's share of the budget (1: pure, 0: random); unset: 1
    text_mode: Optional[str] = None  # rank or topk, for strategies that rank text; unset: rank
    patch_mode: Optional[str] = None  # rank or topk, for strategies that rank patches; unset: topk
    whole_word: bool = False  # choose words (all their sub-tokens), budget counted in words
    mask_prob: float = 0.8  # of the chosen tokens: replaced by the mask token ...
    random_prob: float = 0.1  # ... by a random token; the rest stay unchanged
    seed: int = 0  # masks are drawn from (seed, epoch, sample key)

    def __post_init__(self):
        plan(self)  # every key checked against the strategy's record


@dataclass(frozen=True)
class SidePlan:
    """One modality's masking as configured: a kernel with all its parameters and the budget ratio."""

    kernel: str
    reads: Optional[str]
    ratio: float
    params: dict
    words: bool  # whole words are the units (the budget counts words)

    def draw(self, values, valid, generators, **context):
        """The mask (True = masked) of ``valid`` units; ``context``: word_ids, words, ngrams, of which the
        kernel gets those it takes."""
        return kernels.select(self.kernel, values, valid, self.ratio, generators, **self.params,
                              **kernels.context_for(self.kernel, **context))


@dataclass(frozen=True)
class Plan:
    strategy: str
    text: SidePlan
    patches: SidePlan
    needs: frozenset
    text_words: SidePlan  # the text side on whole-word units (what the inspector draws without a tokenizer)


def _side_plan(strategy: str, side: Side, ratio: float, given: dict, words: bool) -> SidePlan:
    params = {**side.params, **{k: v for k, v in given.items() if v is not None and k in side.params}, **side.fixed}
    for k, v in params.items():
        rule = PARAM_RULES.get(k)
        if rule and not rule[0](v):
            raise MaskingError(f"masking: {k} must be {rule[1]}, got {v!r} (strategy {strategy!r})")
    return SidePlan(side.kernel, side.reads, ratio, params, words)


def plan(cfg: MaskingConfig) -> Plan:
    """Check ``cfg`` against its strategy's record and resolve every parameter (see the module docstring)."""
    s = get(cfg.strategy)
    kernels.check_ratio(cfg.text_ratio)
    kernels.check_ratio(cfg.patch_ratio)
    if cfg.mask_prob < 0 or cfg.random_prob < 0 or cfg.mask_prob + cfg.random_prob > 1:
        raise MaskingError(f"mask_prob + random_prob must be in [0, 1], got {cfg.mask_prob} + {cfg.random_prob}")
    if cfg.alpha is not None and not s.takes("alpha"):
        takers = [n for n, x in STRATEGIES.items() if x.takes("alpha")]
        raise MaskingError(f"masking.alpha={cfg.alpha}: strategy {s.name!r} takes no alpha (it mixes "
                           f"difference-masking with uniform: {', '.join(takers)})")
    for key, side in (("text_mode", s.text), ("patch_mode", s.patches)):
        if getattr(cfg, key) is not None and "mode" not in side.params:
            raise MaskingError(f"masking.{key}={getattr(cfg, key)}: strategy {s.name!r} does not rank "
                               f"{'text' if side is s.text else 'patches'} by score (its kernel there: {side.kernel}"
                               f"{', fixed ' + str(side.fixed) if side.fixed else ''})")
    if cfg.whole_word and not s.text.whole_word:
        raise MaskingError(f"masking.whole_word: strategy {s.name!r} chooses its own text units ({s.text.unit})")
    words = s.text.on_words()
    text_given, patch_given = {"alpha": cfg.alpha, "mode": cfg.text_mode}, {"alpha": cfg.alpha, "mode": cfg.patch_mode}
    text_words = _side_plan(s.name, words, cfg.text_ratio, text_given, True)
    text = text_words if cfg.whole_word else _side_plan(s.name, s.text, cfg.text_ratio, text_given, False)
    return Plan(s.name, text, _side_plan(s.name, s.patches, cfg.patch_ratio, patch_given, False), s.needs, text_words)


def missing(strategy: str, need: str, where: str) -> MaskingError:
    """The error of a strategy that needs ``need`` (scores, truth, ngrams) and finds none at ``where``."""
    return MaskingError(f"strategy {strategy!r} needs {WHAT[need]}, and {where} has none: {HOW_TO_GET[need]}")
