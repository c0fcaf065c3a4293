"""Loader throughput: clips/s from shards (T=8, S=224) / plain JPEG decoding of the same frames.

    python bench/bench_loader.py [--clips 64]

Both sides decode the same JPEG bytes with the same decoder in one process (a
clip's frames in one call of torchvision's libjpeg-turbo decoder,
``videomask.data.decode_frames``); the baseline has the bytes in memory already,
ours reads the tar shards, groups, checks and decodes members and builds
tensors. Goal: ratio >= 0.85. Also printed: Pillow decoding frame by frame (the
loader's decoder before), against the same baseline.
"""
import argparse
import shutil
import tarfile

from common import best_of, make_shards, report

from videomask import data


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--clips", type=int, default=64)
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
    shutil.rmtree(w)


if __name__ == "__main__":
    main()
