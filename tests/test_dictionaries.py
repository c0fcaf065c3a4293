"""The text ablation's offline data and base stage: general English from WordNet's glosses, the computing domain
from FOLDOC (a task labelled by subject, an unlabelled corpus without the task's entries) and the Jargon File, read
from excerpts of the real Debian files (tests/fixtures/dictionaries/SOURCES); then the base stage of
``videomask experiments`` (the masked-LM head restored with the encoder frozen, then a full stage) feeding every cell."""
import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_bert

from videomask import experiments, results
from videomask.config import ConfigError
from videomask.errors import UNFINISHED_EXIT, DataError, VideomaskError
from videomask.prep import dictionaries

FIX = Path(__file__).parent / "fixtures" / "dictionaries"


def test_wordnet_glosses_split_by_synset(tmp_path):
    m = dictionaries.prepare_wordnet(FIX, tmp_path / "g", test_share=0.2)
    train = (tmp_path / "g" / "train" / "wordnet.txt").read_text().splitlines()
    test = (tmp_path / "g" / "test" / "wordnet.txt").read_text().splitlines()
    assert len(train) + len(test) == 48 and test and m["counts"] == {"train": len(train), "test": len(test)}
    assert not any("Princeton" in x or "|" in x for x in train + test)  # the licence header is not text
    assert any('"' in x for x in train + test)  # example sentences stay with their gloss
    again = dictionaries.prepare_wordnet(FIX, tmp_path / "again", test_share=0.2)
    assert again["counts"] == m["counts"]
    assert (tmp_path / "again" / "test" / "wordnet.txt").read_text() == "\n".join(test) + "\n"
    with pytest.raises(DataError, match="data.noun"):
        dictionaries.prepare_wordnet(tmp_path, tmp_path / "none")


def test_foldoc_task_and_a_corpus_without_its_entries(tmp_path):
    m = dictionaries.prepare_foldoc(FIX, tmp_path / "f", classes=("language", "networking"), per_class=2)
    rows = {s: [json.loads(x) for x in (tmp_path / "f" / "task" / f"{s}.jsonl").read_text().splitlines()]
            for s in ("train", "dev", "test")}
    corpus = [json.loads(x) for x in (tmp_path / "f" / "corpus" / "corpus.jsonl").read_text().splitlines()]
    assert m["counts"]["train"] == m["counts"]["dev"] == {"language": 2, "networking": 2}
    assert m["counts"]["test"] == {"language": 3, "networking": 3}
    assert m["counts"]["corpus"] == {"foldoc": 4, "jargon": 3} and m["counts"]["too_short"] == 1
    task_terms = {r["term"] for split in rows.values() for r in split}
    assert len(task_terms) == 14 and not task_terms & {r["term"] for r in corpus}  # the alias is not a 15th entry
    for r in [r for split in rows.values() for r in split] + corpus:
        assert not any(c in r["text"] for c in "{}<>") and "http" not in r["text"], r["text"]
        assert not r["text"].rstrip().endswith(")") or not r["text"][-11:-1].replace("-", "").isdigit()
    errors = [json.loads(x) for x in (tmp_path / "f" / "errors.jsonl").read_text().splitlines()]
    assert errors[0]["reason"] == "too_short"
    dictionaries.prepare_foldoc(FIX, tmp_path / "again", classes=("language", "networking"), per_class=2)
    assert (tmp_path / "again" / "task" / "test.jsonl").read_text() == (tmp_path / "f" / "task" / "test.jsonl").read_text()
    with pytest.raises(DataError, match="too few single-tag entries"):
        dictionaries.prepare_foldoc(FIX, tmp_path / "x", classes=("language", "networking"), per_class=3)
    assert dictionaries.main(["foldoc", str(tmp_path / "y"), "--dictd", str(tmp_path)]) == 2


def test_the_base_stage_restores_the_head_and_every_cell_starts_from_it(tmp_path, capsys):
    general = tmp_path / "general"
    dictionaries.prepare_wordnet(FIX, general, test_share=0.25)
    dictionaries.prepare_foldoc(FIX, tmp_path / "foldoc", classes=("language", "networking"), per_class=2)
    bert = tiny_bert(tmp_path / "bert")
    out = tmp_path / "abl"
    small = f"model.text={bert},data.batch_size=4,data.max_text_len=32"
    args = ["configs/ablation_text.yaml", f"task={tmp_path / 'foldoc' / 'task'}",
            f"corpus={tmp_path / 'foldoc' / 'corpus'}", f"out={out}", "seeds=[0]", "strategies=[difference,random]",
            "optim.max_steps=2", "optim.warmup_steps=0", "anchor_k=5", f"base_corpus={general}",
            f"base=[{small},optim.max_steps=3,optim.warmup_steps=0,data.shuffle=0]", "base_full_steps=2", "base_full=[optim.lr=1e-4]",
            f"pretrain=[{small}]", "finetune=[epochs=1,max_text_len=16]"]
    assert experiments.main(args) == 0
    head, full = out / "base" / "head", out / "base" / "full"
    # the head stage trained the head's own parameters and nothing else (the decoder stays tied to the embeddings)
    before = {k: v for k, v in load_file(bert / "model.safetensors").items()}
    after = load_file(head / "model.safetensors")
    changed = {k for k, v in after.items() if k.startswith("mlm.") and k[4:] in before and not torch.equal(v, before[k[4:]])}
    assert changed and all(k.startswith("mlm.cls.") for k in changed), changed
    assert any(not torch.equal(v, after[k]) for k, v in load_file(full / "model.safetensors").items()
               if k.startswith("mlm.bert.encoder."))  # the full stage trains the encoder too
    report = json.loads((out / "base" / "report.json").read_text())
    assert list(report) == ["before", "head", "full"]
    assert all(0 <= report[k][w]["accuracy"] <= 1 and report[k][w]["n"] > 0 for k in report for w in ("general", "domain"))
    # every cell starts from the base stage's last run: continued pretraining and the no-pretraining baseline
    assert f"init: {full}" in (out / "cells" / "random_s0" / "pretrain" / "config.yaml").read_text()
    assert f"  init: {full}\n" in (out / "cells" / "no_continued_pretraining_s0" / "finetune" / "config.yaml").read_text()
    # the gate ran first (baseline and random before difference, whatever the order of strategies) and decided
    # whether difference ran at all
    gate = json.loads((out / "gate.json").read_text())
    assert set(gate["measures"]) == {"test accuracy", "mlm accuracy"}
    assert gate["passes"] == all(m["lo"] > 0 for m in gate["measures"].values())
    assert (out / "cells" / "difference_s0").exists() == gate["passes"]
    assert gate["text"] in (out / "results.md").read_text()
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["condition"] for r in rows][:2] == ["no continued pretraining", "random"]
    bow = json.loads((out / "data" / "bag_of_words.json").read_text())
    assert bow["n"] == 6 and len(bow["correct"]) == 6 and "Vocabulary alone" in (out / "results.md").read_text()
    # rerun: nothing is trained again; with other base settings, refused (not silently the old base)
    stamp = (head / "model.safetensors").stat().st_mtime_ns
    assert experiments.main(args) == 0 and (head / "model.safetensors").stat().st_mtime_ns == stamp
    changed = [a.replace("optim.max_steps=3", "optim.max_steps=4") if a.startswith("base=") else a for a in args]
    assert experiments.main(changed) == 2 and "made with other settings" in capsys.readouterr().err
    shutil.rmtree(out)
    with pytest.raises(ConfigError, match="base_files"):
        experiments.load_config([], [f"task={tmp_path}", f"corpus={tmp_path}", f"base_corpus={general}"])
    with pytest.raises(ConfigError, match="base_corpus is the base stage of a text task"):
        experiments.load_config([], [f"base_corpus={general}"])


def test_a_base_built_from_scratch_is_pretrained_whole_on_general_text(tmp_path, capsys):
    """The shipped BERT-Tiny base files (configs/text_bert_tiny_base.yaml): no head to restore, so the one base stage
    ("general") trains every parameter of a BERT built from the config's fields, and every cell starts from it."""
    general = tmp_path / "general"
    dictionaries.prepare_wordnet(FIX, general, test_share=0.25)
    dictionaries.prepare_foldoc(FIX, tmp_path / "foldoc", classes=("language", "networking"), per_class=2)
    out = tmp_path / "abl"
    short = "optim.max_steps=2,optim.warmup_steps=0,data.batch_size=4,data.max_text_len=32"
    args = ["configs/ablation_text.yaml", f"task={tmp_path / 'foldoc' / 'task'}",
            f"corpus={tmp_path / 'foldoc' / 'corpus'}", f"out={out}", "seeds=[0]", "strategies=[random]", "anchor_k=5",
            f"base_corpus={general}", "base_files=[configs/text_bert_tiny_base.yaml]", "base_full_steps=0",
            f"base=[{short},data.shuffle=0]", "pretrain_files=[configs/text_bert_tiny.yaml]", f"pretrain=[{short}]",
            "finetune=[epochs=1,max_text_len=16]"]
    # a base stage stopped early stops the command (no report of a model that was not made); rerun, it continues
    stopped = [f"base=[{short},data.shuffle=0,run.stop_after=1]" if a.startswith("base=") else a for a in args]
    assert experiments.main(stopped) == UNFINISHED_EXIT
    assert "general stopped at step 1 of 2" in capsys.readouterr().err and not (out / "base" / "report.json").exists()
    assert experiments.main(args) == 0
    base = out / "base" / "general"
    assert not (out / "base" / "head").exists() and not (out / "base" / "full").exists()
    saved = json.loads((base / "model_config.json").read_text())
    assert (saved["text"], saved["hidden"], saved["layers"]) == ("", 128, 2)
    # the model as the stage built it (its config and seed): the encoder's and the embeddings' weights all moved
    from videomask.probe import released
    from videomask.train import load_config

    stage = load_config([base / "config.yaml"])
    built = released(stage.model, init_seed=stage.run.seed)[0].state_dict()
    trained = load_file(base / "model.safetensors")
    moved = {k for k, v in built.items() if k in trained and not torch.equal(v, trained[k])}  # (tied decoder: not saved)
    assert {"mlm.bert.embeddings.word_embeddings.weight", "mlm.bert.encoder.layer.0.attention.self.query.weight",
            "mlm.bert.encoder.layer.1.output.dense.weight", "mlm.cls.predictions.transform.dense.weight"} <= moved
    report = json.loads((out / "base" / "report.json").read_text())
    assert list(report) == ["before", "general"]
    # a base made again in the same folder (another model, say) is measured again, "before" row included
    (out / "base" / "report.json").write_text(json.dumps({**report, "before": {"general": {"accuracy": 2.0}}}))
    shutil.rmtree(base)
    assert experiments.main(args) == 0
    assert json.loads((out / "base" / "report.json").read_text())["before"] == report["before"]
    assert f"init: {base}" in (out / "cells" / "random_s0" / "pretrain" / "config.yaml").read_text()
    assert f"  init: {base}\n" in (out / "cells" / "no_continued_pretraining_s0" / "finetune" / "config.yaml").read_text()


def test_a_gate_on_the_probe_needs_a_trained_head(tmp_path, capsys):
    """The offline MiniLM has no masked-LM head: without the base stage its baseline's masked-token accuracy is ~0
    whatever the domain, so the probe half of the gate would pass trivially. Refused before anything is written."""
    out = tmp_path / "abl"
    args = ["configs/ablation_text.yaml", f"task={tmp_path / 't'}", f"corpus={tmp_path / 'c'}", f"out={out}"]
    assert experiments.main(args) == 2
    err = capsys.readouterr().err
    assert "cls.predictions" in err and "base_corpus" in err and not out.exists()


def test_bag_of_words_reads_what_vocabulary_tells():
    from videomask.baselines import bag_of_words

    words = {"net": "packet router socket", "lang": "syntax compiler grammar"}
    rows = [{"split": split, "label": label, "text": f"{w} item {i}"} for split, n in (("train", 6), ("val", 4), ("test", 4))
            for label, w in words.items() for i in range(n)]
    r = bag_of_words(rows)
    assert r["accuracy"] == r["macro_f1"] == 1.0 and r["n"] == 8 and r["C"] in (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
    flipped = [{**x, "label": "lang" if x["label"] == "net" else "net"} if x["split"] == "test" else x for x in rows]
    assert bag_of_words(flipped)["accuracy"] == 0.0  # it reads the words, not the order of the rows


def test_the_gate_reads_reference_minus_baseline_on_every_measure():
    cfg = experiments.load_config(["configs/ablation_text.yaml"], ["task=t", "corpus=c"])
    assert cfg.gate_first and cfg.strategies == ["random", "difference", "inverse_difference"]

    def pair(measure, lo, hi):  # as the paired table holds it: baseline - reference
        return {"condition": "no continued pretraining", "reference": "random", "measure": measure,
                "mean": (lo + hi) / 2, "lo": lo, "hi": hi}
    good = results.gate_check(cfg, [pair("test accuracy", -0.05, -0.01), pair("mlm accuracy", -0.07, -0.06)])
    assert good["passes"] and good["measures"]["test accuracy"]["lo"] == 0.01
    # gate.json's labels follow its sign: reference - baseline
    assert good["measures"]["test accuracy"]["condition"] == "random"
    assert good["measures"]["test accuracy"]["reference"] == "no continued pretraining"
    bad = results.gate_check(cfg, [pair("test accuracy", 0.016, 0.048), pair("mlm accuracy", -0.07, -0.06)])
    assert not bad["passes"] and "-0.048" in bad["text"] and "fails" in bad["text"]
    tie = results.gate_check(cfg, [pair("test accuracy", 0.0, 0.0), pair("mlm accuracy", -0.07, -0.06)])
    assert "test accuracy +0.000 [+0.000, +0.000]" in tie["text"] and not tie["passes"]  # a tie is no "-0.000"
    tiny = results.gate_check(cfg, [pair("test accuracy", 0.0001, 0.0003), pair("mlm accuracy", -0.07, -0.06)])
    assert "test accuracy +0.000 [+0.000, +0.000]" in tiny["text"]  # nor is a value that rounds to zero
    # after a passing gate, difference - random on the first gate measure is the claim (the registered rule)
    diff = {"condition": "difference", "reference": "random", "measure": "test accuracy", "mean": -0.02,
            "lo": -0.03, "hi": -0.01}
    claim = results.gated_claim(cfg, good, [diff])
    assert claim["claim"] == "worse" and "random beats difference" in claim["text"]
    assert results.gated_claim(cfg, bad, [diff])["claim"] is None  # a failed gate: the claim is not read
    with pytest.raises(VideomaskError, match="cannot be read"):  # a measure missing is no negative result
        results.gate_check(cfg, [pair("mlm accuracy", -0.07, -0.06)])
    with pytest.raises(ConfigError, match="not measures of the paired table"):
        experiments.load_config(["configs/ablation_text.yaml"], ["task=t", "corpus=c", "gate_measures=[test_accuracy]"])
    with pytest.raises(ConfigError, match="gate_first"):
        experiments.load_config(["configs/ablation_text.yaml"], ["task=t", "corpus=c", "strategies=[difference]"])
    with pytest.raises(ConfigError, match="probe must be true"):
        experiments.load_config(["configs/ablation_text.yaml"], ["task=t", "corpus=c", "probe=false"])


def test_every_sense_tag_counts_and_leaves_the_text():
    # two FOLDOC entries as dict-foldoc 20230119-1 has them: one tag per sense, capitals inside a group
    nss = "NSS\n\n   1. <networking> {Nodal Switching System}.\n\n   2. <operating system> {New Storage System}.\n\n   (1997-01-29)\n\n"
    repl = ("REPL\n\n   1. <language, LISP, programming> {read-eval-print loop}.\n\n   2. <language> {Restricted EPL}.\n\n"
            "   (2003-06-23)\n\n")
    assert dictionaries.foldoc_entry(nss) == (["networking", "operating system"],
                                              "1. Nodal Switching System. 2. New Storage System.")
    tags, text = dictionaries.foldoc_entry(repl)
    assert tags == ["language", "lisp", "programming"] and "<" not in text  # several subjects: never a task row


def test_the_corpus_holds_no_copy_of_a_task_entry(tmp_path):
    for f in FIX.iterdir():
        shutil.copy(f, tmp_path / f.name)
    task_entry = next((w, e) for w, e in dictionaries.dictd_entries(FIX / "foldoc")
                      if dictionaries.foldoc_entry(e)[0] == ["networking"])
    jargon = list(dictionaries.dictd_entries(FIX / "jargon"))
    # the Jargon File and FOLDOC share terms: an entry under a task entry's headword, and a near-copy of one
    copy = f"{task_entry[0]}\n" + task_entry[1].partition("\n\n")[2]
    other = "some other term\n" + task_entry[1].partition("\n\n")[2]
    body, index = b"", []
    for w, e in jargon + [(task_entry[0], copy), ("some other term", other)]:
        b = e.encode()
        index.append(f"{w}\t{enc(len(body))}\t{enc(len(b))}\n")
        body += b
    (tmp_path / "jargon.dict").write_bytes(body)
    (tmp_path / "jargon.index").write_text("".join(index))
    m = dictionaries.prepare_foldoc(tmp_path, tmp_path / "f", classes=("language", "networking"), per_class=2)
    corpus = [json.loads(x) for x in (tmp_path / "f" / "corpus" / "corpus.jsonl").read_text().splitlines()]
    assert m["counts"]["corpus"] == {"foldoc": 4, "jargon": 3} and m["counts"]["overlaps_task"] == 2
    assert not {task_entry[0], "some other term"} & {r["term"] for r in corpus}
    errors = [json.loads(x) for x in (tmp_path / "f" / "errors.jsonl").read_text().splitlines()]
    assert {e["source"] for e in errors if e["reason"] == "overlaps_task"} == {f"jargon:{task_entry[0]}",
                                                                              "jargon:some other term"}


def enc(n: int) -> str:
    s = ""
    while True:
        s, n = dictionaries.B64[n % 64] + s, n // 64
        if not n:
            return s
