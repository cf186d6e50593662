"""The package as a pip user gets it: ``pip wheel .``, the wheel installed in a fresh virtual environment,
then ``ncguide compare --config demo`` run there, away from the source tree.

No download: the wheel is built without build isolation (this environment's setuptools), and the fresh
environment sees this one's site-packages through a ``.pth`` path line (which does not run the editable
install's own ``.pth``), after its own site-packages, where the wheel goes.
"""

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import ncguide
from ncguide.experiments.shipped_configs import CONFIG_DIR, shipped_configs

ROOT = Path(__file__).resolve().parents[1]


def run(*cmd, **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kwargs)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out


@pytest.mark.slow
def test_the_wheel_ships_its_configs_and_runs_a_compare(tmp_path):
    src = tmp_path / "src-copy"  # build from a copy: the checkout gets no build/ or egg-info
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    run(sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist")
    (wheel,) = (tmp_path / "dist").glob("ncguide-*.whl")
    assert wheel.name.startswith(f"ncguide-{ncguide.__version__}-")

    names = set(zipfile.ZipFile(wheel).namelist())
    assert "ncguide/py.typed" in names
    assert {f"ncguide/configs/{n}.yaml" for n in shipped_configs(CONFIG_DIR)} <= names
    metadata = zipfile.ZipFile(wheel).read(f"ncguide-{ncguide.__version__}.dist-info/METADATA").decode()
    assert "Project-URL: Homepage, https://github.com/ncguide/ncguide" in metadata
    assert "Provides-Extra: tensorboard" in metadata

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    py = venv / "bin" / "python"
    own_site = Path(run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (own_site / "deps.pth").write_text("".join(p + "\n" for p in site.getsitepackages()))
    run(py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)

    work = tmp_path / "elsewhere"  # no configs/ folder or source tree around
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(NCGUIDE_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1", PATH=f"{venv / 'bin'}:{env['PATH']}")
    where = run(py, "-c", "import ncguide; print(ncguide.__file__)", cwd=work, env=env).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the wheel's copy, not the checkout
    assert run(venv / "bin" / "ncguide", "--version", cwd=work, env=env).stdout.strip() == \
        f"ncguide {ncguide.__version__}"
    run(venv / "bin" / "ncguide", "compare", "--config", "demo", "--set", "epochs=1", "--seeds", "1",
        "--set", "device=cpu", "--out", work / "demo-out", cwd=work, env=env)
    summary = json.loads((work / "demo-out" / "summary.json").read_text())
    assert sorted(summary["methods"]) == ["fixed-etf", "nearest-etf", "standard"]
    assert (work / "demo-out" / "report.md").is_file()
