"""Training throughput on CPU, and the data-wait fraction of the step time.

    python bench/bench_train.py SCORED_SHARDS ANCHORS_JSON [--steps 20]

Runs the real trainer (``videomask.train``) for a few steps of the ``tiny`` and the
``small`` preset on the same scored shards (e.g. ``runs/demo/scored/target`` after
``python -m videomask demo``) and prints samples/s and the fraction of step time spent
waiting for data, from the trainer's own metrics (the first logged window, which
holds start-up, is dropped). Goal: data wait < 10% with the default worker count.
"""
import argparse
import json
import shutil
import tempfile
from pathlib import Path

from videomask.train import main as train_main


def run(preset, shards, anchors, steps, extra=()):
    out = Path(tempfile.mkdtemp(prefix=f"vm-bench-{preset}-"))
    argv = [f"data.train={shards}", f"data.anchors={anchors}", f"run.out={out / 'run'}", f"model.preset={preset}",
            f"optim.max_steps={steps}", f"run.log_every={steps // 2}", "data.batch_size=8", *extra]
    assert train_main(argv) == 0
    rows = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines() if "samples_per_s" in x]
    shutil.rmtree(out)
    return rows[-1]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("shards")
    p.add_argument("anchors")
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args()
    for preset in ("tiny", "small"):
        r = run(preset, a.shards, a.anchors, a.steps,
                ["model.image_size=128"] if preset == "tiny" else [])
        print(f"{preset}: {r['samples_per_s']:.1f} samples/s, data wait {100 * r['data_wait']:.1f}% of step time "
              "(goal < 10%)")


if __name__ == "__main__":
    main()
