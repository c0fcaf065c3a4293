"""A text experiment's inputs from raw folders, made once in ``OUT/data`` and ``OUT/base`` and reused by
every cell: the task and the unlabelled corpus as shards, what the vocabulary alone carries (a bag-of-words
baseline), the corpus's anchors and word scores (``prepare_text``); and the base stage, a masked-LM head
restored on general text and optionally a short full masked-LM run (``prepare_base``). Each returns the
experiment's config with continued pretraining and fine-tuning pointed at what it made."""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import anchors as anchors_mod
from . import probe as probe_mod
from . import train
from .baselines import bag_of_words
from .config import ConfigError

if TYPE_CHECKING:
    from .experiments import ExperimentConfig

logger = logging.getLogger(__name__)


def prepare_text(cfg: ExperimentConfig, out: Path) -> ExperimentConfig:
    """Shards of ``task`` and ``corpus``, the corpus's anchors and word scores (each made once, in
    ``OUT/data``); the config with pretraining and fine-tuning pointed at them."""
    from .prep import adapters, build
    from .scoring import score

    d = out / "data"
    task_shards, corpus_shards, scored_dir, anchors_path = (d / "task" / "shards", d / "corpus" / "shards",
                                                           d / "corpus" / "scored", d / "anchors.json")
    if not (task_shards / "manifest.json").exists() or not (d / "bag_of_words.json").exists():
        rows, errors = adapters.dsp(Path(cfg.task), cfg.dev_from_train)
        if not rows:
            raise ConfigError(f"task={cfg.task}: no usable line (see {d / 'task' / 'adapter_errors.jsonl'})")
        if not (task_shards / "manifest.json").exists():
            m = build.build(adapters.write(rows, errors, d / "task"), task_shards, build.BuildOptions(kind="text"),
                            progress=False)
            logger.info(f"task: {build.summary(m, task_shards)}; {len(errors)} lines rejected")
        if any(r["split"] == "test" for r in rows):  # what the vocabulary alone carries, on the same split
            bow = bag_of_words(rows)
            (d / "bag_of_words.json").write_text(json.dumps(bow))
            logger.info(f"bag of words (no model): test accuracy {bow['accuracy']:.3f}, macro-F1 {bow['macro_f1']:.3f}")
    if not (corpus_shards / "manifest.json").exists():
        m = build.build(Path(cfg.corpus), corpus_shards, build.BuildOptions(kind="text"), progress=False)
        logger.info(f"corpus: {build.summary(m, corpus_shards)}")
    written = sum(s["samples"] for s in json.loads((corpus_shards / "manifest.json").read_text())["shards"])
    if not written:
        raise ConfigError(f"corpus={cfg.corpus} holds no text (see {corpus_shards / 'errors.jsonl'})")
    if not anchors_path.exists():
        ref = cfg.anchor_reference
        a = anchors_mod.build_anchors([corpus_shards], ref if ref.startswith("wordfreq:") else [ref], k=cfg.anchor_k,
                                      method=cfg.anchor_method)
        anchors_path.write_text(json.dumps(a, indent=1))
        logger.info(f"anchors ({cfg.anchor_method}): " + ", ".join(r["word"] for r in a["anchors"]))
    r = score.score_shards(corpus_shards, scored_dir, anchors_path, text_encoder=cfg.text_encoder, pooling=cfg.pooling,
                           word_prompt=cfg.word_prompt, progress=False)  # resumable: skips what is done
    logger.info(f"corpus scored: {sum(s['samples'] for s in r['shards'])} documents ({cfg.text_encoder})")
    return replace(cfg, pretrain=[*cfg.pretrain, f"data.train={scored_dir}", f"data.anchors={anchors_path}"],
                   finetune=[*cfg.finetune, f"shards={task_shards}"])


def prepare_base(cfg: ExperimentConfig, out: Path) -> ExperimentConfig:
    """The base stage: ``base_corpus`` as shards, the pretrained model's masked-LM head trained on it with the
    encoder frozen (``OUT/base/head``; with base files that train the whole model, e.g. a BERT built from scratch,
    ``OUT/base/general``), then ``base_full_steps`` of full masked-LM training (``OUT/base/full``); each run made
    once. ``OUT/base/report.json``: masked-token accuracy (``videomask.probe``, the same masks for every model) on
    held-out general text (``base_corpus``'s test split) and on held-out domain text (the task's test split),
    before (the model as released, or as built) and after each run. Returns the config with every cell's
    continued pretraining (and the base cells) starting from the last run."""
    from .model import load_run, load_tokenizer
    from .prep import build

    shards = out / "data" / "base" / "shards"
    if not (shards / "manifest.json").exists():
        m = build.build(Path(cfg.base_corpus), shards, build.BuildOptions(kind="text"), progress=False)
        logger.info(f"base corpus: {build.summary(m, shards)}")
    splits = json.loads((shards / "manifest.json").read_text())["splits"]
    if "test" not in splits:
        raise ConfigError(f"base_corpus={cfg.base_corpus}: no held-out text to measure the base on (give a folder "
                          "with train/ and test/)")
    # the first stage restores a released model's head (optim.train=[head]: "head"), or pretrains the whole model
    # on general text ("general": e.g. a BERT built from the config's fields, model.text="")
    stage1 = train.load_config(cfg.base_files, cfg.base)  # the first stage (its model: as released, or as built)
    first = "head" if list(stage1.optim.train) == ["head"] else "general"
    stages = [(first, [])] + ([("full", ["optim.train=[]", "optim.freeze=[]", f"optim.max_steps={cfg.base_full_steps}",
                                           f"model.init={out / 'base' / first}", *cfg.base_full])]
                               if cfg.base_full_steps else [])
    held_out = {"general": (shards, "test"), "domain": (out / "data" / "task" / "shards", "test")}
    report_path = out / "base" / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    runs, trained = [], False
    for name, extra in stages:
        bcfg = train.load_config(cfg.base_files, [*cfg.base, f"data.train={shards}", "data.train_split=train",
                                                  f"run.out={out / 'base' / name}", "run.resume=auto", *extra])
        done = Path(bcfg.run.out)
        if (done / "model.safetensors").exists():  # made once; refused if it was made with other settings
            from .engine import config_differences

            differ = config_differences((done / "config.yaml").read_text(), bcfg)
            if differ:
                raise ConfigError(f"{done} is a base stage made with other settings ({'; '.join(differ[:4])}): give "
                                  "another out, or delete it to make it again")
        else:
            logger.info(f"[base] {name}: {bcfg.optim.max_steps} steps on {cfg.base_corpus} "
                        f"(optim.train={list(bcfg.optim.train)})")
            train.train_to_end(bcfg)
            trained = True
        runs.append((name, done))
    # the rows of this configuration's stages only ("before": the model as released, its head untrained, or as
    # built from the config's fields, all of it untrained); all measured again when a stage was made now (rows
    # kept from another model's base in the same folder would describe that model)
    report = {} if trained else {k: v for k, v in report.items() if k in ("before", *(n for n, _ in runs))}
    for name, run in [("before", None), *runs]:
        if name in report:
            continue
        if run is None:  # as released: the head's untrained parts drawn by a fixed seed (a random head: ~0)
            model, tok = probe_mod.released(stage1.model, init_seed=0)
        else:
            model, mcfg = load_run(run)
            tok = load_tokenizer(mcfg)
        report[name] = {where: probe_mod.probe_model(model, tok, shards_, split)["mlm"]
                        for where, (shards_, split) in held_out.items()}
    report_path.write_text(json.dumps(report, indent=1))
    logger.info("[base] masked-token accuracy, held-out general / domain text: " + "; ".join(
        f"{k} {v['general']['accuracy']:.3f} / {v['domain']['accuracy']:.3f}" for k, v in report.items()))
    return replace(cfg, pretrain=[*cfg.pretrain, f"model.init={runs[-1][1]}"])
