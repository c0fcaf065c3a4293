import json
import math
import subprocess
import sys

import pytest

from videomask import anchors, errors
from videomask.demo import world


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_tficf_known_answer(tmp_path):
    # target: zorp x3, blick x2, the x2 (N_T = 7); reference: blick x1, the x3 (N_R = 4); V = |{zorp, blick, the}| = 3
    t = write(tmp_path, "target.txt", "Zorp zorp ZORP blick, blick! the the\n")
    r = write(tmp_path, "ref.txt", "blick the the the\n")
    out = anchors.build_anchors([t], [r], k=5, min_count=2)
    got = {a["word"]: a for a in out["anchors"]}
    assert list(got) == ["zorp", "blick"]  # 'the' is a stop word
    assert got["zorp"]["score"] == pytest.approx(3 / 7 * math.log(7 / 1))  # p_R = (0 + 1) / (4 + 3)
    assert got["blick"]["score"] == pytest.approx(2 / 7 * math.log(7 / 2))  # p_R = (1 + 1) / (4 + 3)
    assert got["zorp"]["target_count"] == 3 and got["zorp"]["target_freq"] == pytest.approx(3 / 7)
    assert got["blick"]["reference_freq"] == pytest.approx(2 / 7)
    assert out["target_tokens"] == 7 and out["vocab_size"] == 3
    # smoothing is an option: alpha = 0.5
    out = anchors.build_anchors([t], [r], k=5, min_count=2, smoothing=0.5)
    assert out["anchors"][0]["score"] == pytest.approx(3 / 7 * math.log((4 + 1.5) / 0.5))


def test_filters_min_count_length_stopwords_non_alphabetic(tmp_path):
    t = write(tmp_path, "t.txt", "ab ab ab 42 42 42 x-ray x-ray x-ray don't don't don't kinase kinase rare\n")
    out = anchors.build_anchors([t], "wordfreq:en", k=10, min_count=2)
    words = [a["word"] for a in out["anchors"]]
    assert "ab" not in words  # 2 letters
    assert "42" not in words  # not alphabetic
    assert "don't" not in words  # stop word
    assert "rare" not in words  # seen once
    assert set(words) == {"x-ray", "kinase"}


def test_ties_rank_by_count_then_alphabetically(tmp_path):
    t = write(tmp_path, "t.txt", "zeta gamma alpha zeta gamma alpha beta beta beta\n")
    r = write(tmp_path, "r.txt", "something else entirely\n")
    out = anchors.build_anchors([t], [r], k=4, min_count=1)
    # beta: 3 occurrences; alpha, gamma, zeta: 2 each with the same reference probability -> alphabetical
    assert [a["word"] for a in out["anchors"]] == ["beta", "alpha", "gamma", "zeta"]
    out = anchors.build_anchors([t], [r], k=4, min_count=1, method="freq")
    assert [a["word"] for a in out["anchors"]] == ["beta", "alpha", "gamma", "zeta"]


def test_icf_changes_the_ranking_and_controls(tmp_path):
    t = write(tmp_path, "t.txt", "water water water water adrenoceptor adrenoceptor caspase caspase\n")
    tficf = [a["word"] for a in anchors.build_anchors([t], "wordfreq:en", k=3, min_count=1)["anchors"]]
    freq = [a["word"] for a in anchors.build_anchors([t], "wordfreq:en", k=3, min_count=1, method="freq")["anchors"]]
    assert freq[0] == "water" and tficf[0] == "adrenoceptor"  # common English is pushed down by the ICF
    r1 = anchors.build_anchors([t], "wordfreq:en", k=2, min_count=1, method="random", seed=1)
    r2 = anchors.build_anchors([t], "wordfreq:en", k=2, min_count=1, method="random", seed=1)
    assert r1["anchors"] == r2["anchors"] and len(r1["anchors"]) == 2


def test_k_larger_than_vocabulary_and_empty_corpus(tmp_path):
    t = write(tmp_path, "t.txt", "kinase kinase kinase\n")
    out = anchors.build_anchors([t], "wordfreq:en", k=50)
    assert len(out["anchors"]) == 1 and "only 1 candidate" in out["warning"]
    empty = write(tmp_path, "empty.txt", "\n\n")
    with pytest.raises(ValueError, match="holds no words"):
        anchors.build_anchors([empty], "wordfreq:en")
    stops = write(tmp_path, "stops.txt", "the the the and and and\n")
    with pytest.raises(ValueError, match="no candidate words"):
        anchors.build_anchors([stops], "wordfreq:en")


def test_user_anchor_lists(tmp_path):
    t = write(tmp_path, "t.txt", "kinase kinase kinase agonist agonist agonist\n")
    user = write(tmp_path, "mine.txt", "# my anchors\nTreebank\nkinase\n")
    ext = anchors.build_anchors([t], "wordfreq:en", k=1, anchors_file=user)
    assert [a["word"] for a in ext["anchors"]] == ["agonist", "treebank", "kinase"]
    rep = anchors.build_anchors([t], "wordfreq:en", k=1, anchors_file=user, anchors_mode="replace")
    assert [a["word"] for a in rep["anchors"]] == ["treebank", "kinase"] and rep["anchors"][1]["target_count"] == 3
    assert rep["hash"] == anchors.anchor_hash(["kinase", "treebank"]) != ext["hash"]
    bad = write(tmp_path, "bad.txt", "two words\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1: 'two words' is not one word"):
        anchors.build_anchors([t], "wordfreq:en", anchors_file=bad)


def test_cli_show_and_tampered_file(tmp_path):
    t = write(tmp_path, "t.txt", "kinase kinase kinase agonist agonist agonist\n")
    out = tmp_path / "a.json"
    r = subprocess.run([sys.executable, "-m", "videomask.anchors", str(t), "--out", str(out), "--show"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "kinase" in r.stdout and "reference" in r.stdout and "hash" in r.stdout
    r = subprocess.run([sys.executable, "-m", "videomask.anchors", "--show", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and "agonist" in r.stdout
    a = json.loads(out.read_text())
    a["anchors"][0]["word"] = "edited"
    out.write_text(json.dumps(a))
    with pytest.raises(ValueError, match="hash does not match"):
        anchors.load(out)
    r = subprocess.run([sys.executable, "-m", "videomask.anchors", str(tmp_path / "missing")], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "missing: no such file" in r.stderr


def test_planted_words_are_recovered_from_the_synthetic_world(text_world, tiny_shards):
    # shards and text files are both targets; the tiny shards hold too few clips to rank, so check they are read
    assert anchors.read_texts(tiny_shards["target"]) and len(anchors.read_texts(tiny_shards["target"])) == 8
    out = anchors.build_anchors([text_world / "target"], "wordfreq:en", k=20)
    top = [a["word"] for a in out["anchors"]]
    found = [w for w in world.PLANTED_WORDS if w in top]
    assert len(found) >= 0.8 * len(world.PLANTED_WORDS), (found, top)
    # and the planted words lead: most of the top |planted| are planted words
    assert len(set(top[: len(world.PLANTED_WORDS)]) & set(world.PLANTED_WORDS)) >= 6


def test_log_odds_known_answer():
    # Monroe et al. (2008) eq. 22/24 by hand: y_T=10 of n_T=100, y_R=5 of n_R=1000, a_w=1, a_0=10
    # delta = ln(11/99) - ln(6/1004) = 2.92277; var = 1/11 + 1/6; z = 5.7590
    assert anchors.log_odds_z(10, 100, 5, 1000, 1, 10) == pytest.approx(5.7590, abs=1e-4)
    assert anchors.log_odds_z(5, 1000, 10, 100, 1, 10) < 0  # under-represented: negative


def test_log_odds_prefers_sure_differences_over_frequent_general_words(tmp_path):
    # "set" is frequent in both corpora (a little more in the target); "lattice" is the target's own word
    t = write(tmp_path, "t.txt", "\n".join(["set the value"] * 30 + ["lattice glyph forms"] * 8 + ["other words"] * 60))
    r = write(tmp_path, "r.txt", "\n".join(["set the table"] * 200 + ["other words here"] * 800 + ["glyph"]))
    lo = [a["word"] for a in anchors.build_anchors([t], [r], k=3, min_count=3, method="logodds")["anchors"]]
    tf = [a["word"] for a in anchors.build_anchors([t], [r], k=3, min_count=3, method="tficf")["anchors"]]
    assert set(lo) == {"lattice", "glyph", "forms"}  # the target's own words; "set" is not sure enough
    assert "set" in tf  # TF-ICF lets the frequent general word in
    with pytest.raises(errors.DataError, match="unknown anchor method"):
        anchors.compute(anchors.count(["lattice lattice lattice"]), anchors.Reference([r]), method="tf-idf")
