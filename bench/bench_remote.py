"""Shards streamed from a local HTTP server / the same shards read from disk, through the whole loader.

    python bench/bench_remote.py [--clips 128]

Both sides run ``videomask.data.dataset`` to the end (tar parsing, checks, JPEG decoding, tensors) over the
same shards (T=8, S=224); one reads ``/path/shards`` (its manifest), the other
``http://127.0.0.1:PORT/shards`` (the same manifest, each shard one streamed GET from the standard library's
threaded server in its own process). The two take turns in each round. Both decode with one thread, as each
DataLoader worker of training does: on this 2-core machine the server then has the other core, as it would
have another machine, instead of taking it from the JPEG decoder. Goal: ratio >= 0.9.
"""
import argparse
import shutil
import socket
import subprocess
import sys
import time

import torch
from common import best_of, make_shards, report

from videomask import data


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--clips", type=int, default=128)
    a = p.parse_args()
    w, shards = make_shards(a.clips)
    torch.set_num_threads(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "-d", str(w)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
                break
            except OSError:
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/shards"
        n_disk = sum(1 for _ in data.dataset(str(shards), split_by_node=False))

        def read(where):
            def go():
                n = sum(1 for _ in data.dataset(where, handler=data.ErrorCounter(strict=True), split_by_node=False))
                assert n == n_disk, (where, n, n_disk)
            return go

        t_http, t_disk = best_of(read(url), read(str(shards)))
        report("shards over HTTP / from disk, clips/s", n_disk / t_http, n_disk / t_disk, "clips/s", "goal >= 0.9")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(w)


if __name__ == "__main__":
    main()
