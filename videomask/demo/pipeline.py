"""The embedded default, end to end: ``videomask demo [--out runs/demo]`` (``python -m videomask demo``).

Runs every stage of the pipeline on the synthetic clip world, on CPU:

1. ``world``: the two domains' videos + transcripts (``videomask.demo.world``);
2. ``shards``: WebDataset shards of both domains (``videomask.prep.build``);
3. ``anchors``: TF-ICF anchors of the target domain's *train* transcripts against the general
   domain's transcripts (``videomask.anchors``);
4. ``scorer``: the tiny CLIP fitted on the world's train clips, saved as ``local-dir:``
   (``videomask.demo.tiny_clip``);
5. ``scores``: every word and patch of the target shards (``videomask.scoring.score``), then the
   world's ground truth beside them for the oracle control (``videomask.demo.truth``);
6. ``inspect``: a scored sample with what difference- and random-masking would mask;
7. ``base``: the base model, pretrained on the general domain (``configs/base_general.yaml``),
   and its check on held-out general clips (the colour cloze of ``videomask.probe``);
8. ``ablation``: continued pretraining from the base with each strategy of
   ``configs/ablation_demo.yaml`` and several seeds, the linear probe on the world's 4-way colour
   questions (frames only), the zero-shot probe, and the table with paired confidence intervals
   (``videomask.experiments``): ``ablation/results.md``, ``results.csv`` and ``results.png``.

No held-out clip is read before evaluation: anchors, scorer and base see train splits only. Each
stage is skipped when its output is already complete, so rerunning is cheap and an interrupted
demo continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .. import anchors, inspection, train
from .. import probe as probe_mod
from ..config import CONFIG_DIR
from ..logs import setup as setup_logging
from ..masking import MaskingConfig
from ..prep import build
from ..scoring import score
from . import solvers, tiny_clip, truth, world

logger = logging.getLogger(__spec__.name if __spec__ else __name__)  # its dotted name under -m too


#: the demo's world. 720 target clips: 324 train (continued pretraining and the probe's training
#: questions), 72 val, 324 test (a standard error of at most 0.028 on a test accuracy); 240 general
#: clips, 48 of them held out to check the base model.
DEMO_WORLD = world.WorldConfig(general=240, general_test_fraction=0.2, target=720, size=64, val_fraction=0.1,
                               test_fraction=0.45, say_colour=0.75)
#: the demo's frame sampling: one 6 s clip per synthetic video, 4 frames of 64 px
DEMO_BUILD = build.BuildOptions(frames=4, size=64, clip_seconds=6.0, max_samples=128)
#: the tiny scorer was fitted on bare words and phrases, not on CLIP's "a photo of a ..." prompts
DEMO_SCORE = {"image_prompt": "{}", "word_prompt": "{}"}
#: anchors kept: the words above the elbow of the TF-ICF scores on this world (ranks 1-11 score
#: >= 0.11, rank 12 scores 0.057); within the 5-20 the authors used
DEMO_ANCHORS = 11


#: ``--smoke``: the same stages at toy sizes, to check that the command runs (its table means nothing)
SMOKE_WORLD = world.WorldConfig(general=12, general_test_fraction=0.25, target=24, size=64, val_fraction=0.25,
                                test_fraction=0.25, say_colour=0.75)
SMOKE_STEPS = ["optim.max_steps=2", "optim.warmup_steps=1", "run.log_every=1", "data.batch_size=4"]
SMOKE_ABLATION = ["seeds=[0]", "strategies=[random]", "finetune_seeds=1"]


def stage(name: str):
    logger.info(f"\n== {name} ==")
    return time.perf_counter()


def run(out: Path, workers: int = 2, world_cfg: world.WorldConfig = DEMO_WORLD,
        build_opts: build.BuildOptions = DEMO_BUILD, clip_steps: int = 200, k: int = DEMO_ANCHORS) -> dict:
    """Stages 1-6: the data of the ablation. Returns the paths."""
    out = Path(out)
    paths = {"world": out / "world", "shards": out / "shards", "anchors": out / "anchors.json",
             "clip": out / "tiny_clip", "scored": out / "scored" / "target", "truth": out / "truth" / "target",
             "pictures": out / "pictures"}
    t = stage("world: synthetic videos + transcripts")
    if not (paths["world"] / "world.json").exists():
        world.make_world(paths["world"], world_cfg)
    logger.info(f"{paths['world']} ({time.perf_counter() - t:.1f}s)")
    for domain in ("general", "target"):
        t = stage(f"shards: {domain} domain")
        dst = paths["shards"] / domain
        manifest = build.build(paths["world"] / f"{domain}.jsonl", dst, build_opts, workers=workers, progress=False)
        logger.info(f"{build.summary(manifest, dst)} ({time.perf_counter() - t:.1f}s)")

    t = stage("anchors: TF-ICF of the target's train transcripts against the general domain's")
    result = anchors.build_anchors([paths["shards"] / "target"], [paths["shards"] / "general"], k=k, split="train")
    paths["anchors"].write_text(json.dumps(result, indent=1))
    logger.info(anchors.show(result))
    found = [w for w in world.PLANTED_WORDS if w in {a["word"] for a in result["anchors"]}]
    logger.info(f"planted target words recovered: {len(found)}/{len(world.PLANTED_WORDS)} ({time.perf_counter() - t:.1f}s)")

    t = stage("scorer: fit the tiny CLIP on the world's train clips (no pretrained weights offline)")
    if not (paths["clip"] / "open_clip_config.json").exists():
        tiny_clip.fit(paths["world"], paths["clip"], image_size=build_opts.size, steps=clip_steps)
    logger.info(f"local-dir:{paths['clip']} ({time.perf_counter() - t:.1f}s)")

    t = stage("scores: every word and patch of the target shards, and the world's ground truth")
    r = score.score_shards(paths["shards"] / "target", paths["scored"], paths["anchors"], f"local-dir:{paths['clip']}",
                           progress=False, **DEMO_SCORE)
    truth.annotate(paths["scored"], paths["truth"], grid=r["scores"]["grid"][0])
    logger.info(f"{sum(s['samples'] for s in r['shards'])} samples scored -> {paths['scored']}, with ground truth -> "
          f"{paths['truth']} ({time.perf_counter() - t:.1f}s)")

    t = stage("the test questions: what the inputs alone give away (videomask.demo.solvers)")
    r = solvers.solve(paths["truth"], "test")
    logger.info(f"{r['n']} test questions, 4 candidates: " + ", ".join(
        f"{k} {v:.3f}" for k, v in r.items() if k not in ("n", "split")) + " (the downstream question is read "
        f"with the frames only) ({time.perf_counter() - t:.1f}s)")

    t = stage("inspect: what difference-masking will see")
    paths["pictures"].mkdir(parents=True, exist_ok=True)
    anchors_json = anchors.load(paths["anchors"])
    sample = inspection.find_sample(paths["truth"], index=1)
    for strategy in ("difference", "random", "oracle"):
        inspection.sample_figure(sample, anchors_json, *inspection.sample_masks(sample, MaskingConfig(strategy)),
                                 title=f"{sample['key']}: {strategy} masking").savefig(
            paths["pictures"] / f"sample_{strategy}.png", dpi=110)
    inspection.anchors_chart(anchors_json).savefig(paths["pictures"] / "anchors.png", dpi=110)
    logger.info(f"{paths['pictures']}/sample_difference.png, sample_random.png, sample_oracle.png, anchors.png "
          f"({time.perf_counter() - t:.1f}s)")
    return paths


def base(out: Path, overrides=()) -> dict:
    """Stage 7: the base model pretrained on the general domain (built once), and its check: the colour
    cloze on held-out general clips (chance: 1/6)."""
    t = stage("base: pretraining on the general domain (random masking), then a check on held-out general clips")
    cfg = train.load_config([CONFIG_DIR / "base_general.yaml"], [f"data.train={out / 'shards' / 'general'}",
                                                                  f"run.out={out / 'base'}", *overrides])
    if not (out / "base" / "model.safetensors").exists():
        train.train_to_end(cfg)
    check = out / "base" / "probe_test.json"
    r = json.loads(check.read_text()) if check.exists() else probe_mod.probe(out / "base", out / "shards" / "general",
                                                                             "test")
    logger.info(f"base model on {r['cloze']['n']} held-out general clips: colour cloze {r['cloze']['accuracy']:.3f} "
          f"(chance {1 / 6:.3f}), masked words {r['mlm']['accuracy']:.3f} ({time.perf_counter() - t:.1f}s)")
    return r


def ablation(out: Path, overrides=(), pretrain=(), finetune=()) -> list[dict]:
    """Stage 8: continued pretraining from the base with each strategy and seed, fine-tuning, the zero-shot
    probe and the table (``configs/ablation_demo.yaml`` with this run's paths) in ``out/ablation``."""
    from .. import experiments

    stage("ablation: continued pretraining per strategy and seed -> MC-QA linear probe + zero-shot probe -> table")
    cfg = experiments.load_config([CONFIG_DIR / "ablation_demo.yaml"], [
        f"out={out / 'ablation'}", f"pretrain_files=[{CONFIG_DIR / 'train_default.yaml'}]",
        f"finetune_files=[{CONFIG_DIR / 'finetune_demo.yaml'}]",
        f"pretrain=[data.train={out / 'truth' / 'target'},data.anchors={out / 'anchors.json'},"
        f"model.init={out / 'base'}{''.join(',' + x for x in pretrain)}]",
        f"finetune=[shards={out / 'truth' / 'target'}{''.join(',' + x for x in finetune)}]", *overrides])
    return experiments.run(cfg)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="videomask demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="where everything is written")
    p.add_argument("--workers", type=int, default=2, help="processes for the shard build")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the ablation (seeds=[0,1,2,3,4])")
    p.add_argument("-v", "--verbose", action="count", default=0, help="show third-party load reports and warnings")
    p.add_argument("--smoke", action="store_true", help="toy sizes: checks that every stage runs (no result)")
    a = p.parse_args(argv)
    setup_logging(a.verbose)
    t0 = time.perf_counter()
    if a.smoke:
        run(a.out, a.workers, SMOKE_WORLD, clip_steps=5)
        base(a.out, SMOKE_STEPS)
        ablation(a.out, [*SMOKE_ABLATION, *a.overrides], SMOKE_STEPS, ["epochs=2", "batch_size=4"])
    else:
        run(a.out, a.workers)
        base(a.out)
        ablation(a.out, a.overrides)
    logger.info(f"\ndemo finished in {time.perf_counter() - t0:.0f}s; outputs in {a.out}")
    return 0


if __name__ == "__main__":  # as `videomask demo`: the CLI turns errors (videomask.errors) into messages
    from videomask.cli import demo

    sys.exit(demo())
