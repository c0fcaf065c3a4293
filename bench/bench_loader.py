"""Loader throughput: clips/s from shards (T=8, S=224) / plain JPEG decoding of the same frames.

    python bench/bench_loader.py [--clips 64]

Both sides decode the same JPEG bytes with the same decoder in one process (a
clip's frames in one call of torchvision's libjpeg-turbo decoder,
``videomask.data.decode_frames``); the baseline has the bytes in memory already,
ours reads the tar shards, groups, checks and decodes members and builds
tensors. Goal: ratio >= 0.85. Also printed: Pillow decoding frame by frame (the
loader's decoder before), against the same baseline.

``--breakdown`` also times the loader's pipeline cut after each of its stages (tar reading, safe member
decoding, ``Validate``, ``to_sample`` with its JPEG decoding) and prints each stage's share of the whole:
where the time goes on a processor where the ratio falls short (issue 25: 0.73-0.79 on a 2-core AMD EPYC,
0.85-0.87 on an Intel Xeon).
"""
import argparse
import shutil
import tarfile
from functools import partial

import webdataset as wds
from common import best_of, make_shards, report

from videomask import data


def breakdown(shards, n_clips: int):
    """Time the pipeline cut after each stage; print each stage's increment as a share of the whole."""
    urls = data.shard_urls(shards)

    def upto(k):
        def run():
            h = data.ErrorCounter(strict=True)
            stages = [wds.SimpleShardList(urls), partial(data.tar_samples, handler=h,
                                                         expected=data.expected_samples(shards, urls)),
                      wds.map(data.safe_decode, handler=h), data.Validate(data.stated_frame_size(shards), h, True),
                      wds.map(data.to_sample, handler=h)][:k]
            assert sum(1 for _ in wds.DataPipeline(*stages)) == n_clips
        return run
    names = ["tar reading", "safe member decoding", "Validate (headers, shapes)", "to_sample (JPEG decoding)"]
    times = best_of(*[upto(k) for k in range(2, 6)])
    prev = 0.0
    for name, t in zip(names, times):
        print(f"  {name}: {1000 * (t - prev) / n_clips:.2f} ms/clip, {100 * (t - prev) / times[-1]:.1f}% of the loader")
        prev = t


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--breakdown", action="store_true", help="also each pipeline stage's share of the loader's time")
    a = p.parse_args()
    w, shards = make_shards(a.clips)
    jpegs = []
    for path in sorted(shards.glob("*.tar")):
        with tarfile.open(path) as t:
            jpegs += [t.extractfile(m).read() for m in t.getmembers() if m.name.endswith(".jpg")]
    n_clips = len(jpegs) // 8
    clips = [jpegs[i:i + 8] for i in range(0, len(jpegs), 8)]

    def ours():
        n = sum(1 for _ in data.dataset(shards, handler=data.ErrorCounter(strict=True)))
        assert n == n_clips

    def baseline():
        for c in clips:
            data.decode_frames(c)

    def pillow():
        for b in jpegs:
            data.decode_jpeg(b)

    t_ours, t_base, t_pil = best_of(ours, baseline, pillow)
    report("loader clips/s", n_clips / t_ours, n_clips / t_base, "clips/s", "goal >= 0.85")
    report("Pillow frame by frame, clips/s", n_clips / t_pil, n_clips / t_base, "clips/s", "for reference")
    if a.breakdown:
        print(f"plain decoding alone: {1000 * t_base / n_clips:.2f} ms/clip; the loader, stage by stage:")
        breakdown(shards, n_clips)
    shutil.rmtree(w)


if __name__ == "__main__":
    main()
