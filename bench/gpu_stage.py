"""Run one `python -m MODULE ARGS` and record what it did with the GPU (used by bench/gpu_pipeline.py).

    python bench/gpu_stage.py REPORT.json -m videomask train key=value ...
    torchrun --nproc_per_node 2 bench/gpu_stage.py REPORT.json -m videomask.train ...   # REPORT.json.rank1 ...

The module runs in this process (``runpy``, as ``python -m`` would run it); afterwards REPORT.json (one file per
rank under torchrun) holds its exit status, wall time, whether it initialised CUDA at all and its peak GPU memory:
a stage meant for the GPU that never initialised CUDA ran on the CPU.
"""
import json
import os
import runpy
import sys
import time


def main():
    report, flag, module, *args = sys.argv[1:]
    if flag != "-m":
        sys.exit("usage: gpu_stage.py REPORT.json -m MODULE [ARGS ...]")
    rank = int(os.environ.get("RANK", "0"))
    if rank:
        report = f"{report}.rank{rank}"
    sys.argv = [module, *args]
    t, code = time.perf_counter(), 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # recorded, then raised: the traceback goes to the stage's log
        code = 1
        raise
    finally:
        import torch

        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        with open(report, "w") as f:
            json.dump({"exit": code, "seconds": round(time.perf_counter() - t, 2), "cuda_initialised": cuda,
                       "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 3) if cuda else 0.0,
                       "device_name": torch.cuda.get_device_name() if cuda else "cpu"}, f)
    sys.exit(code)


if __name__ == "__main__":
    main()
