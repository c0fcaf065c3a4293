"""Shared bench helpers: a synthetic world made once per bench run, timing, ratio printing."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from videomask.demo import world


def make_world(clips: int, size: int = 224, seconds_per_cue: float = 2.0) -> Path:
    out = Path(tempfile.mkdtemp(prefix="videomask-bench-"))
    world.make_world(out, world.WorldConfig(general=0, target=clips, size=size, segment_seconds=seconds_per_cue))
    return out


def make_shards(clips: int) -> tuple[Path, Path]:
    """A world of ``clips`` target clips built into shards (T=8, S=224, 32 a shard): (world folder, shards)."""
    from videomask.prep import build

    w = make_world(clips)
    build.build(w / "target.jsonl", w / "shards", build.BuildOptions(frames=8, size=224, clip_seconds=6,
                                                                      max_samples=32), workers=2, progress=False)
    return w, w / "shards"


def best_of(*fns, repeats: int = 5) -> list[float]:
    """Fastest wall time of each function over ``repeats`` rounds. The functions take turns within a
    round, so that a slow spell of a noisy machine hits all of them alike."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [min(ts) for ts in times]


def report(name: str, ours: float, baseline: float, unit: str, goal: str):
    print(f"{name}: ours {ours:.1f} {unit}, baseline {baseline:.1f} {unit}, ratio {ours / baseline:.3f} ({goal})")
