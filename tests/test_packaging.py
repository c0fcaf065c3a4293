"""A non-editable install works from any directory: the wheel carries the configs and presets, and the
``videomask`` command answers. (CI installs with ``-e``, which would hide a file left outside the package.)"""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.slow
def test_wheel_installs_and_runs_from_another_directory(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, env=ENV, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("videomask-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"videomask/configs/model/tiny.yaml", "videomask/configs/train_default.yaml",
            "videomask/configs/base_general.yaml"} <= set(names)
    # a virtual environment whose own videomask is the wheel (the dependencies come from this Python's)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, env=ENV)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(py), "-c", "import videomask; print(videomask.__file__)"], capture_output=True,
                           text=True, cwd=elsewhere, env=ENV).stdout
    assert str(venv) in where, where
    for cmd in ([str(venv / "bin" / "videomask"), "train", "--help"], [str(venv / "bin" / "videomask"), "finetune",
                                                                        "--help"],
                [str(venv / "bin" / "videomask"), "experiments", "--help"], [str(py), "-m", "videomask.train", "--help"]):
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=elsewhere, env=ENV)
        assert r.returncode == 0 and "usage:" in r.stdout, (cmd, r.stderr[-2000:])
    # the presets are found (the error is about the data, not an unknown preset) and nothing is written
    r = subprocess.run([str(venv / "bin" / "videomask"), "train", "data.train=/nonexistent", "run.out=X"],
                       capture_output=True, text=True, cwd=elsewhere, env=ENV)
    assert r.returncode == 2 and "data.train=/nonexistent: no such folder" in r.stderr, r.stderr[-2000:]
    assert not (elsewhere / "X").exists()
