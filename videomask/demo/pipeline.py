"""The embedded default, end to end: ``python -m videomask [--out runs/demo]`` (the demo pipeline).

Runs every stage of the pipeline on the synthetic clip world, on CPU:

1. ``world``: generate the two domains' videos + transcripts (``videomask.demo.world``);
2. ``shards``: build WebDataset shards of both domains (``videomask.prep.build``);
3. ``anchors``: TF-ICF anchors of the target domain against wordfreq's English (``videomask.anchors``);
4. ``scorer``: fit the tiny CLIP on the world and save it as ``local-dir:`` (``videomask.demo.tiny_clip``);
5. ``scores``: score every word and patch of the target shards (``videomask.scoring.score``);
6. ``inspect``: a scored sample with what difference- and random-masking would mask, and the
   anchors (``videomask.inspection``);
7. ``ablation``: continued pretraining of the ``small`` preset (``configs/train_default.yaml``)
   with random and with difference masking, then a linear probe on the world's 4-way colour
   questions for both and for the base model without continued pretraining
   (``videomask.experiments``, ``configs/ablation_demo.yaml``): ``ablation/results.md``,
   ``results.csv`` and ``results.png``.

Each stage is skipped when its output is already complete, so rerunning is cheap
and an interrupted demo continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .. import anchors, inspection
from ..prep import build
from ..scoring import score
from . import tiny_clip, world

#: the demo's world: 320 target clips, so that the downstream questions have 192 for training and
#: 80 for the test (fewer, and the linear probe has too little to learn from)
DEMO_WORLD = world.WorldConfig(general=24, target=320, val_fraction=0.15, test_fraction=0.25)
#: the demo's frame sampling: one 6 s clip per synthetic video, 8 frames of 128 px
DEMO_BUILD = build.BuildOptions(frames=8, size=128, clip_seconds=6.0, max_samples=64)
#: the tiny scorer was fitted on bare words and phrases, not on CLIP's "a photo of a ..." prompts
DEMO_SCORE = {"image_prompt": "{}", "word_prompt": "{}"}


def stage(name: str):
    print(f"\n== {name} ==", flush=True)
    return time.perf_counter()


def run(out: Path, workers: int = 2, world_cfg: world.WorldConfig = DEMO_WORLD,
        build_opts: build.BuildOptions = DEMO_BUILD, clip_steps: int = 200) -> dict:
    out = Path(out)
    paths = {"world": out / "world", "shards": out / "shards", "anchors": out / "anchors.json",
             "clip": out / "tiny_clip", "scored": out / "scored" / "target", "pictures": out / "pictures"}
    t = stage("world: synthetic videos + transcripts")
    if not (paths["world"] / "world.json").exists():
        world.make_world(paths["world"], world_cfg)
    print(f"{paths['world']} ({time.perf_counter() - t:.1f}s)")
    for domain in ("general", "target"):
        t = stage(f"shards: {domain} domain")
        dst = paths["shards"] / domain
        manifest = build.build(paths["world"] / f"{domain}.jsonl", dst, build_opts, workers=workers, progress=False)
        print(build.summary(manifest, dst), f"({time.perf_counter() - t:.1f}s)")

    t = stage("anchors: TF-ICF of the target transcripts against wordfreq:en")
    result = anchors.build_anchors([paths["shards"] / "target"], "wordfreq:en", k=20)
    paths["anchors"].write_text(json.dumps(result, indent=1))
    print(anchors.show(result))
    found = [w for w in world.PLANTED_WORDS if w in {a["word"] for a in result["anchors"]}]
    print(f"planted target words recovered: {len(found)}/{len(world.PLANTED_WORDS)} ({time.perf_counter() - t:.1f}s)")

    t = stage("scorer: fit the tiny CLIP on the world (no pretrained weights offline)")
    if not (paths["clip"] / "open_clip_config.json").exists():
        tiny_clip.fit(paths["world"], paths["clip"], image_size=build_opts.size, steps=clip_steps)
    print(f"local-dir:{paths['clip']} ({time.perf_counter() - t:.1f}s)")

    t = stage("scores: every word and patch of the target shards")
    r = score.score_shards(paths["shards"] / "target", paths["scored"], paths["anchors"], f"local-dir:{paths['clip']}",
                           progress=False, **DEMO_SCORE)
    print(f"{sum(s['samples'] for s in r['shards'])} samples scored -> {paths['scored']} "
          f"({time.perf_counter() - t:.1f}s)")

    t = stage("inspect: what difference-masking will see")
    paths["pictures"].mkdir(parents=True, exist_ok=True)
    anchors_json = anchors.load(paths["anchors"])
    sample = inspection.find_sample(paths["scored"], index=1)
    for strategy in ("difference", "random"):
        inspection.sample_figure(sample, anchors_json, *inspection.sample_masks(sample, strategy),
                              title=f"{sample['key']}: {strategy} masking").savefig(
            paths["pictures"] / f"sample_{strategy}.png", dpi=110)
    inspection.anchors_chart(anchors_json).savefig(paths["pictures"] / "anchors.png", dpi=110)
    print(f"{paths['pictures']}/sample_difference.png, sample_random.png, anchors.png "
          f"({time.perf_counter() - t:.1f}s)")
    return paths


def ablation(out: Path) -> list[dict]:
    """Stages 7-8: continued pretraining with random and with difference masking, then the linear
    probe on the world's colour questions for both and for the base model (``configs/ablation_demo.yaml``
    with this run's paths); the table and bar chart land in ``out/ablation``."""
    from .. import experiments
    from ..config import CONFIG_DIR

    stage("ablation: continued pretraining (random, difference) -> MC-QA linear probe -> table")
    cfg = experiments.load_config([CONFIG_DIR / "ablation_demo.yaml"], [
        f"out={out / 'ablation'}", f"pretrain_files=[{CONFIG_DIR / 'train_default.yaml'}]",
        f"finetune_files=[{CONFIG_DIR / 'finetune_demo.yaml'}]",
        f"pretrain=[data.train={out / 'scored' / 'target'},data.anchors={out / 'anchors.json'}]",
        f"finetune=[shards={out / 'scored' / 'target'}]"])
    return experiments.run(cfg)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m videomask", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="where everything is written")
    p.add_argument("--workers", type=int, default=2, help="processes for the shard build")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    run(a.out, a.workers)
    ablation(a.out)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s; outputs in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
