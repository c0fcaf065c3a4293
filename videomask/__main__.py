"""The embedded default, end to end: ``python -m videomask [--out runs/demo]``.

Runs every stage of the pipeline on the synthetic clip world, on CPU:

1. ``world``: generate the two domains' videos + transcripts (``videomask.world``);
2. ``shards``: build WebDataset shards of both domains (``videomask.build``).

Each stage is skipped when its output is already complete, so rerunning is cheap
and an interrupted demo continues where it stopped.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import build, world

#: the demo's frame sampling: one 6 s clip per synthetic video, 8 frames of 128 px
DEMO_BUILD = build.BuildOptions(frames=8, size=128, clip_seconds=6.0, max_samples=64)


def stage(name: str):
    print(f"\n== {name} ==", flush=True)
    return time.perf_counter()


def run(out: Path, workers: int = 2, world_cfg: world.WorldConfig = world.WorldConfig(),
        build_opts: build.BuildOptions = DEMO_BUILD) -> dict:
    out = Path(out)
    paths = {"world": out / "world", "shards": out / "shards"}
    t = stage("world: synthetic videos + transcripts")
    if not (paths["world"] / "world.json").exists():
        world.make_world(paths["world"], world_cfg)
    print(f"{paths['world']} ({time.perf_counter() - t:.1f}s)")
    for domain in ("general", "target"):
        t = stage(f"shards: {domain} domain")
        dst = paths["shards"] / domain
        manifest = build.build(paths["world"] / f"{domain}.jsonl", dst, build_opts, workers=workers, progress=False)
        print(build.summary(manifest, dst), f"({time.perf_counter() - t:.1f}s)")
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m videomask", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="where everything is written")
    p.add_argument("--workers", type=int, default=2, help="processes for the shard build")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    run(a.out, a.workers)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s; outputs in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
