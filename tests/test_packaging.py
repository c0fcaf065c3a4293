"""A non-editable install works from any directory: the wheel carries the configs and presets, and the
``videomask`` command answers. (CI installs with ``-e``, which would hide a file left outside the package.)"""
import os
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# PYTHONPATH would put another checkout ahead of the installed wheel
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.slow
def test_wheel_installs_and_runs_from_another_directory(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, env=ENV, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("videomask-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"videomask/configs/model/tiny.yaml", "videomask/configs/train_default.yaml",
            "videomask/configs/base_general.yaml"} <= set(names)
    # a virtual environment whose own videomask is the wheel; the dependencies come from the interpreter running
    # the tests (a venv's or the system's), whose site folders its .pth lists after its own: not
    # --system-site-packages, which would see the base interpreter's (no torch there when the tests run in a venv)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    own = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    ours = [p for p in dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"]]) if Path(p).is_dir()]
    # plain path lines: the folders' own .pth files (this checkout's editable install among them) are not run
    (Path(own) / "test_dependencies.pth").write_text("\n".join(ours) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
                   check=True, env=ENV)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(py), "-c", "import videomask; print(videomask.__file__)"], capture_output=True,
                           text=True, cwd=elsewhere, env=ENV).stdout
    assert str(venv) in where, where
    for cmd in ([str(venv / "bin" / "videomask"), "train", "--help"], [str(venv / "bin" / "videomask"), "finetune",
                                                                        "--help"],
                [str(venv / "bin" / "videomask"), "experiments", "--help"], [str(py), "-m", "videomask.train", "--help"],
                [str(venv / "bin" / "videomask-demo"), "--help"]):
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=elsewhere, env=ENV)
        assert r.returncode == 0 and "usage:" in r.stdout, (cmd, r.stderr[-2000:])
    # the presets are found (the error is about the data, not an unknown preset) and nothing is written
    r = subprocess.run([str(venv / "bin" / "videomask"), "train", "data.train=/nonexistent", "run.out=X"],
                       capture_output=True, text=True, cwd=elsewhere, env=ENV)
    assert r.returncode == 2 and "data.train=/nonexistent: no such folder" in r.stderr, r.stderr[-2000:]
    assert not (elsewhere / "X").exists()
