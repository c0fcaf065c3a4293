"""optim.train / optim.freeze (issue 23): the head alone on a frozen encoder, named parts frozen, names checked
on the model before the run folder exists."""
import torch
from safetensors.torch import load_file
from test_train import common

from videomask.train import main as train_main

STEPS = ["optim.max_steps=2", "optim.warmup_steps=1", "optim.lr=1e-2"]


def changed(a, b):
    return {k for k in a if not torch.equal(a[k], b[k])}


def test_head_only_and_named_parts_frozen(scored_shards, tiny_anchors, tmp_path):
    assert train_main(common(scored_shards, tiny_anchors, tmp_path / "base", *STEPS)) == 0
    base = load_file(tmp_path / "base" / "model.safetensors")
    init = f"model.init={tmp_path / 'base'}"
    assert train_main(common(scored_shards, tiny_anchors, tmp_path / "head", *STEPS, init, "optim.train=[head]")) == 0
    head = changed(base, load_file(tmp_path / "head" / "model.safetensors"))
    assert head and all(".cls." in k for k in head), head  # BERT's head: its transform and bias
    assert not any("word_embeddings" in k or "decoder.weight" in k for k in head)  # tied to the encoder: frozen
    assert train_main(common(scored_shards, tiny_anchors, tmp_path / "novis", *STEPS, init,
                             "optim.freeze=[visual,mlm.bert.encoder.layer.0]")) == 0
    novis = changed(base, load_file(tmp_path / "novis" / "model.safetensors"))
    assert novis and not any(k.startswith("visual.") or ".encoder.layer.0." in k for k in novis)
    assert any(".encoder.layer.1." in k for k in novis)  # prefixes match whole dotted parts


def test_names_are_checked_before_anything_is_written(scored_shards, tiny_anchors, tmp_path, capsys):
    assert train_main(common(scored_shards, tiny_anchors, tmp_path / "x", *STEPS, "optim.train=[mlm.nothing]")) == 2
    err = capsys.readouterr().err
    assert "optim.train: 'mlm.nothing' names no parameter" in err and "visual" in err
    assert not (tmp_path / "x" / "config.yaml").exists()  # nothing that would block the corrected rerun
    assert train_main(common(scored_shards, tiny_anchors, tmp_path / "y", *STEPS, "optim.train=[head]",
                             "optim.freeze=[head]")) == 2
    assert "leave no parameter to train" in capsys.readouterr().err
    assert not (tmp_path / "y" / "config.yaml").exists()
