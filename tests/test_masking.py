"""Invariants of every masking strategy (property-based), and statistics of difference-masking."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from videomask import masking
from videomask.masking import MaskingConfig, MaskingError, select

FLAT = ["random", "difference", "inverse_difference", "span"]
WHOLE = ["whole_word", "pmi"]
SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def batches(draw, max_b=4, max_n=40):
    """(scores, valid, word_ids, words, ratio, seed): rows with distinct scores and a few words."""
    b, n = draw(st.integers(1, max_b)), draw(st.integers(4, max_n))
    seed = draw(st.integers(0, 2 ** 31))
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(b, n, generator=g)
    lengths = [draw(st.integers(4, n)) for _ in range(b)]
    valid = torch.zeros(b, n, dtype=torch.bool)
    for i, k in enumerate(lengths):
        valid[i, 1:k] = True  # position 0 plays the [CLS] token; the tail is padding
    word_ids = torch.full((b, n), -1, dtype=torch.long)
    words = []
    for i in range(b):
        w, pos = 0, 1
        while pos < lengths[i]:
            span = int(torch.randint(1, 4, (1,), generator=g))  # words of 1-3 sub-tokens
            word_ids[i, pos:min(pos + span, lengths[i])] = w
            pos, w = pos + span, w + 1
        words.append([f"w{j % 5}" for j in range(w)])
    ratio = draw(st.floats(0.15, 0.85))
    valid_n = valid.sum(1)
    if any(round(ratio * int(k)) == 0 for k in valid_n):
        ratio = 0.5
    return scores, valid, word_ids, words, ratio, seed


def gens(seed, b):
    return [torch.Generator().manual_seed(seed + i) for i in range(b)]


def run(name, scores, valid, word_ids, words, ratio, seed, mode=None, alpha=None):
    """The text side of strategy ``name`` as its record configures it (alpha and mode where it takes them)."""
    takes = masking.get(name).takes("alpha")
    cfg = MaskingConfig(name, text_ratio=ratio, alpha=alpha if takes else None, text_mode=mode if takes else None)
    return masking.plan(cfg).text.draw(scores, valid, gens(seed, valid.shape[0]), word_ids=word_ids, words=words,
                                       ngrams={("w0", "w1"), ("w2", "w3", "w4")})


@SETTINGS
@given(batches(), st.sampled_from(FLAT + WHOLE), st.sampled_from(["topk", "rank"]), st.floats(0, 1))
def test_budget_validity_determinism(batch, name, mode, alpha):
    scores, valid, word_ids, words, ratio, seed = batch
    m = run(name, scores, valid, word_ids, words, ratio, seed, mode=mode, alpha=alpha)
    budget = torch.tensor([round(ratio * int(k)) for k in valid.sum(1)])
    assert not (m & ~valid).any()  # never special tokens or padding
    if name in WHOLE:
        assert (m.sum(1) <= budget).all() and (m.sum(1) >= budget - 2).all()  # words of <= 3 sub-tokens
        for b in range(m.shape[0]):  # whole words: all sub-tokens of a word or none
            for w in word_ids[b][word_ids[b] >= 0].unique():
                assert m[b][word_ids[b] == w].unique().numel() == 1
    else:
        assert torch.equal(m.sum(1), budget)  # exact budget
    again = run(name, scores, valid, word_ids, words, ratio, seed, mode=mode, alpha=alpha)
    assert torch.equal(m, again)  # a function of the generator
    # a row's mask depends on its own generator only, not on the rest of the batch
    alone = run(name, scores[:1], valid[:1], word_ids[:1], words[:1], ratio, seed, mode=mode, alpha=alpha)
    assert torch.equal(alone[0], m[0])


@SETTINGS
@given(batches())
def test_alpha_one_takes_exactly_the_top_scores(batch):
    scores, valid, word_ids, words, ratio, seed = batch
    m = run("difference", scores, valid, word_ids, words, ratio, seed, alpha=1.0, mode="topk")
    for b in range(m.shape[0]):
        k = int(m[b].sum())
        top = scores[b].masked_fill(~valid[b], -1).topk(k).indices
        assert set(top.tolist()) == set(m[b].nonzero().flatten().tolist())
    inv = run("inverse_difference", scores, valid, word_ids, words, ratio, seed, alpha=1.0, mode="topk")
    for b in range(m.shape[0]):
        bottom = scores[b].masked_fill(~valid[b], 2).topk(int(inv[b].sum()), largest=False).indices
        assert set(bottom.tolist()) == set(inv[b].nonzero().flatten().tolist())


@SETTINGS
@given(batches())
def test_alpha_zero_is_random_masking(batch):
    scores, valid, word_ids, words, ratio, seed = batch
    diff = run("difference", scores, valid, word_ids, words, ratio, seed, alpha=0.0, mode="topk")
    assert torch.equal(diff, run("random", None, valid, word_ids, words, ratio, seed))
    assert torch.equal(diff, select("random", None, valid, ratio, gens(seed, valid.shape[0])))


def _frequencies(name, scores, valid, trials, **kw):
    counts = torch.zeros(valid.shape[1])
    for seed in range(trials):
        counts += select(name, scores, valid, 0.25, torch.Generator().manual_seed(seed), **kw)[0].float()
    return counts


def test_statistics_alpha_zero_matches_random_and_rank_mode_prefers_high_scores():
    n, trials = 20, 2000
    scores = torch.linspace(1, 0, n)[None]  # strongly ordered scores
    valid = torch.ones(1, n, dtype=torch.bool)
    expected = trials * 5 / n  # 5 of 20 masked per draw
    for mode in ("topk", "rank"):
        freq = _frequencies("difference", scores, valid, trials, alpha=0.0, mode=mode)
        chi2 = float(((freq - expected) ** 2 / expected).sum())
        assert chi2 < 43.8, (mode, chi2)  # chi-square, 19 degrees of freedom, p = 0.001: uniform like random
    rand = _frequencies("random", None, valid, trials)
    assert float(((rand - expected) ** 2 / expected).sum()) < 43.8
    ranked = _frequencies("difference", scores, valid, trials, alpha=1.0, mode="rank")
    # rank weights N - r: the top unit is masked far more often than the bottom one, monotone on average
    assert ranked[0] > 3 * ranked[-1] and ranked[:5].sum() > ranked[-5:].sum() * 2
    half = _frequencies("difference", scores, valid, trials, alpha=0.5, mode="rank")
    assert rand[:5].sum() < half[:5].sum() < ranked[:5].sum()


@st.composite
def videos(draw):
    b, t, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(2, 6)), draw(st.integers(2, 6))
    valid = torch.ones(b, t, h, w, dtype=torch.bool)
    ratio = draw(st.floats(0.2, 0.8))
    return valid, ratio, draw(st.integers(0, 2 ** 31))


@SETTINGS
@given(videos(), st.sampled_from(["tube", "block", "random", "difference"]))
def test_video_strategies(video, name):
    valid, ratio, seed = video
    scores = torch.rand(valid.shape, generator=torch.Generator().manual_seed(seed))
    side = masking.plan(MaskingConfig(name, patch_ratio=ratio, alpha=0.5 if name == "difference" else None)).patches
    m = side.draw(scores, valid, gens(seed, valid.shape[0]))
    assert m.shape == valid.shape
    b, t, h, w = valid.shape
    if name == "tube":
        assert (m == m[:, :1]).all()  # the same spatial pattern in every frame
        assert (m[:, 0].flatten(1).sum(1) == round(ratio * h * w)).all()
    else:
        assert (m.flatten(1).sum(1) == round(ratio * t * h * w)).all()
    assert torch.equal(m, side.draw(scores, valid, gens(seed, b)))


def test_block_masks_are_contiguous_blocks():
    valid = torch.ones(1, 1, 14, 14, dtype=torch.bool)
    m = select("block", None, valid, 0.25, torch.Generator().manual_seed(0), min_area=0.1, max_aspect=3.0)[0, 0]
    # far fewer connected boundaries than a random mask of the same size: the mask is made of blocks
    edges = lambda x: int((x[1:] != x[:-1]).sum() + (x[:, 1:] != x[:, :-1]).sum())  # noqa: E731
    r = select("random", None, valid, 0.25, torch.Generator().manual_seed(0))[0, 0]
    assert edges(m) < edges(r) / 2


def test_span_lengths_are_geometric():
    valid = torch.ones(1, 400, dtype=torch.bool)
    m = select("span", None, valid, 0.15, torch.Generator().manual_seed(0), p=0.2, max_span=10)[0].int().tolist()
    runs = [len(r) for r in "".join(map(str, m)).split("0") if r]
    assert sum(runs) == 60 and 2.5 < sum(runs) / len(runs) < 10  # mean span ~ 1/p = 5, clipped at 10


@pytest.mark.parametrize("kwargs,match", [
    (dict(ratio=0.0), r"ratio must be in \(0, 1\)"),
    (dict(ratio=1.0), r"ratio must be in \(0, 1\)"),
    (dict(alpha=1.5), r"alpha must be in \[0, 1\]"),
    (dict(scores=None), "ranks units by scores or ground truth, and got none"),
    (dict(scores=torch.tensor([[0.1, float("nan"), 0.3, 0.4, 0.5]])), "NaN"),
    (dict(valid=torch.tensor([[True, True, False, False, False]]), ratio=0.2), "masks none of them"),
    (dict(name="nope"), "unknown masking kernel 'nope'"),
    (dict(name="block", min_area=0.1, max_aspect=3.0, alpha=None, mode=None), r"valid must be \[B, T, H, W\]"),
    (dict(p=0.2), "got unknown p"),  # a parameter the kernel does not take is refused, not swallowed
    (dict(mode=None), "missing mode"),
])
def test_bad_input(kwargs, match):
    args = dict(name="difference", scores=torch.rand(1, 5), valid=torch.ones(1, 5, dtype=torch.bool), ratio=0.3,
                alpha=1.0, mode="topk")
    args.update(kwargs)
    args = {k: v for k, v in args.items() if v is not None or k == "scores"}
    with pytest.raises(MaskingError, match=match):
        select(args.pop("name"), args.pop("scores"), args.pop("valid"), args.pop("ratio"),
               torch.Generator().manual_seed(0), **args)


def test_registry_lists_the_paper_strategies():
    assert set(masking.KERNELS) == {"random", "difference", "inverse_difference", "whole_word", "span", "pmi", "tube",
                                    "block"}
    assert {n for n, s in masking.STRATEGIES.items() if "scores" in s.needs} == {
        f"{k}{side}" for k in ("difference", "inverse_difference") for side in ("", "_text", "_patches")}
    # the paper's video setting drives the patches only; text-only and both are named apart
    p = masking.plan(MaskingConfig("difference_patches"))
    assert (p.text.kernel, p.patches.kernel, p.patches.params) == ("random", "difference", {"alpha": 1.0, "mode": "topk"})
    p = masking.plan(MaskingConfig("difference_text"))
    assert (p.text.kernel, p.text.params, p.patches.kernel) == ("difference", {"alpha": 1.0, "mode": "rank"}, "random")
    assert masking.get("oracle").needs == {"truth"} and masking.get("random").needs == set()
    assert masking.get("pmi").needs == {"ngrams"}
    with pytest.raises(MaskingError, match="unknown masking strategy 'nope'"):
        masking.get("nope")


@pytest.mark.parametrize("kwargs,match", [
    (dict(strategy="random", alpha=0.5), "masking.alpha=0.5: strategy 'random' takes no alpha"),
    (dict(strategy="oracle_topk", alpha=0.5), "strategy 'oracle_topk' takes no alpha"),
    (dict(strategy="difference_patches", text_mode="topk"), "does not rank text by score"),
    (dict(strategy="tube", patch_mode="rank"), "does not rank patches by score"),
    (dict(strategy="pmi", whole_word=True), "chooses its own text units"),
    (dict(strategy="difference", text_mode="nope"), "mode must be 'rank' or 'topk'"),
    (dict(strategy="difference", alpha=-0.1), r"alpha must be in \[0, 1\]"),
    (dict(strategy="difference", patch_ratio=1.0), r"ratio must be in \(0, 1\)"),
    (dict(strategy="random", mask_prob=0.95, random_prob=0.1), "mask_prob \\+ random_prob"),
])
def test_a_key_the_strategy_does_not_take_is_refused(kwargs, match):
    with pytest.raises(MaskingError, match=match):
        MaskingConfig(**kwargs)


def test_defaults_are_declared_once_in_the_records():
    # unset alpha and modes take the strategy's own; a set alpha reaches every side that takes one
    p = masking.plan(MaskingConfig("difference", alpha=0.3))
    assert p.text.params == {"alpha": 0.3, "mode": "rank"} and p.patches.params == {"alpha": 0.3, "mode": "topk"}
    assert masking.plan(MaskingConfig("span")).text.params == {"p": 0.2, "max_span": 10}
    # whole words: the word kernel of the record, the budget counted in words
    p = masking.plan(MaskingConfig("whole_word", whole_word=True))
    assert p.text.kernel == "random" and p.text.words


def test_a_strategy_registered_once_is_known_everywhere(tmp_path):
    """One record drives the collator, the inspector, the training config and the experiment harness."""
    from videomask import experiments, inspection, train
    from videomask.collate import MaskingCollator, text_sample
    from videomask.masking.strategies import STRATEGIES, Side, Strategy, register
    from videomask.model import ModelConfig, load_tokenizer

    register(Strategy("first_words", Side("span", fixed={"p": 0.5, "max_span": 1}), Side("tube", unit="tube"),
                      "test: spans of one word"))
    try:
        # collate
        tok = load_tokenizer(ModelConfig())
        b = MaskingCollator(tok, MaskingConfig("first_words", text_ratio=0.5))([text_sample("one two three four")])
        assert int(b["text_mask"].sum()) == 2
        # inspection
        s = {"key": "k", "meta": {"word_scores": [0.0] * 4}, "words": [{"w": "x", "s": 0, "e": 1}] * 4,
             "patch_scores": torch.rand(2, 3, 3).numpy()}
        patches, words = inspection.sample_masks(s, inspection.masking_config("first_words", ["text_ratio=0.5"]))
        assert sum(words) == 2 and (patches[0] == patches[1]).all()
        # training config (the masking section validated against the record) and experiments
        cfg = train.load_config([], ["masking.strategy=first_words"])
        assert masking.plan(cfg.masking).patches.kernel == "tube"
        with pytest.raises(Exception, match="takes no alpha"):
            train.load_config([], ["masking.strategy=first_words", "masking.alpha=0.5"])
        e = experiments.load_config([], ["strategies=[random,first_words]"])
        assert [c["strategy"] for c in experiments.cells(e)] == ["none", "random", "first_words"]
    finally:
        del STRATEGIES["first_words"]


def test_ordinal_ranks_weigh_words_not_distinct_scores():
    # 10 words, 9 of which tie: dense ranks would give the top word weight 2 against 1 (a 2x preference);
    # ordinal ranks give N - rank: 9 for the top word against a mean of 4 for the tied ones.
    scores = torch.tensor([[1.0] + [0.0] * 9])
    w = masking.kernels._ordinal_weights(scores, torch.ones(1, 10, dtype=torch.bool), None)
    assert w[0, 0] == 9 and sorted(w[0, 1:].tolist()) == list(map(float, range(9)))
    # sub-tokens share their word's weight; unranked positions (punctuation) weigh 0
    word_ids = torch.tensor([[0, 0, -1, 1, 2, 2, -1]])
    tok = torch.tensor([[0.9, 0.9, 0.0, 0.1, 0.5, 0.5, 0.0]])
    w = masking.kernels._ordinal_weights(tok, word_ids >= 0, word_ids)
    assert w.tolist() == [[2.0, 2.0, 0.0, 0.0, 1.0, 1.0, 0.0]]


def test_inverse_difference_never_masks_punctuation_before_words():
    # 20 tokens: 10 words and 10 punctuation marks; the budget (3) fits in the words, so neither difference
    # nor its inverse may choose a punctuation mark (the inverse once turned into punctuation masking)
    word_ids = torch.tensor([[i // 2 if i % 2 == 0 else -1 for i in range(20)]])
    scores = torch.where(word_ids >= 0, torch.rand(1, 20, generator=torch.Generator().manual_seed(1)), 0.0)
    valid = torch.ones(1, 20, dtype=torch.bool)
    for name in ("difference", "inverse_difference"):
        for mode in ("rank", "topk"):
            for seed in range(50):
                m = select(name, scores, valid, 0.15, torch.Generator().manual_seed(seed), alpha=1.0, mode=mode,
                           word_ids=word_ids)
                assert int(m.sum()) == 3 and not (m & (word_ids < 0)).any(), (name, mode, seed)
    # the inverse ranks the least different words first (top-k: exactly the three lowest words)
    m = select("inverse_difference", scores, valid, 0.15, torch.Generator().manual_seed(0), alpha=1.0, mode="topk",
               word_ids=word_ids)
    words = scores[0, ::2]
    assert set(m[0].nonzero().flatten().tolist()) == {2 * int(i) for i in words.argsort()[:3]}


@pytest.mark.parametrize("side", ["", "_text", "_patches"])
@pytest.mark.parametrize("alpha", [None, 0.5])
def test_oracle_is_difference_masking_with_ground_truth_as_its_scores(side, alpha):
    # the upper control differs from difference-masking only in what it ranks by: same kernels, samplers,
    # alpha and budget, so the same values and generators give the same masks
    cfg = dict(text_ratio=0.25, patch_ratio=0.5, alpha=alpha)
    o, d = masking.plan(MaskingConfig(f"oracle{side}", **cfg)), masking.plan(MaskingConfig(f"difference{side}", **cfg))
    for a, b in ((o.text, d.text), (o.patches, d.patches)):
        assert (a.kernel, a.params, a.ratio) == (b.kernel, b.params, b.ratio)
        assert a.reads == ("truth" if b.reads == "scores" else b.reads)
        values = torch.rand(3, 40, generator=torch.Generator().manual_seed(1))
        valid = torch.ones(3, 40, dtype=torch.bool)
        gens = lambda: [torch.Generator().manual_seed(s) for s in range(3)]
        assert torch.equal(a.draw(values, valid, gens()), b.draw(values, valid, gens()))
    assert masking.get(f"oracle{side}").needs == {"truth"}


def test_oracle_topk_masks_ground_truth_first_with_the_same_budget():
    truth = torch.zeros(2, 40)
    truth[0, :5] = 1  # 5 truly specific units, budget 10: all 5, then 5 uniform
    truth[1, 10:30] = 1  # 20 of them, budget 10: 10 of those
    valid = torch.ones(2, 40, dtype=torch.bool)
    side = masking.plan(MaskingConfig("oracle_topk", text_ratio=0.25)).text
    assert side.reads == "truth"
    m = side.draw(truth, valid, [torch.Generator().manual_seed(s) for s in (0, 1)])
    assert m.sum(1).tolist() == [10, 10]
    assert m[0, :5].all() and m[1, 10:30].sum() == 10
    with pytest.raises(MaskingError, match="ranks units by scores or ground truth"):
        side.draw(None, valid, torch.Generator())
