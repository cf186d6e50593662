"""The source distribution holds what a clone holds: every file git tracks except the CI entry point
(``.ci/``), ``.gitignore`` and the studies' figures (MANIFEST.in says why), and nothing a run left behind.

Built offline from a copy of the tracked files with this environment's setuptools (``build_meta.build_sdist``,
what ``python -m build --sdist`` calls), so that the checkout gets no ``dist/`` or egg-info."""

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import ncguide

ROOT = Path(__file__).resolve().parents[1]
# what setuptools adds to every sdist
GENERATED = {"PKG-INFO", "setup.cfg"}


def left_out(path: str) -> bool:
    return path.startswith(".ci/") or path == ".gitignore" or (path.startswith("studies/results/")
                                                               and path.endswith(".png"))


def tracked() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"git does not run here ({e})")
    if out.returncode != 0 or not out.stdout:
        pytest.skip("not a git checkout (an unpacked sdist has no list of tracked files to compare with)")
    return [p for p in out.stdout.decode().split("\0") if p]


def test_the_sdist_holds_every_tracked_file_and_nothing_else(tmp_path):
    files = [p for p in tracked() if (ROOT / p).is_file()]  # not a file deleted in the worktree, not yet in git
    src = tmp_path / "src-copy"
    for path in files:
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, src / path)
    (src / "runs").mkdir()  # what a run leaves in a checkout: never shipped
    (src / "studies/results/x/runs/standard").mkdir(parents=True)
    (src / "studies/results/x/runs/standard/metrics.jsonl").write_text("{}\n")
    (src / "tests/__pycache__").mkdir(exist_ok=True)
    (src / "tests/__pycache__/conftest.cpython-311.pyc").write_bytes(b"\0")
    (src / "docs/.lock").write_text("")
    code = "from setuptools import build_meta as b; print(b.build_sdist('dist'))"
    build = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=300)
    if build.returncode != 0 and "No module named 'setuptools'" in build.stderr:
        pytest.skip("setuptools is not installed here: no offline sdist build")
    assert build.returncode == 0, build.stderr[-3000:]
    archive = src / "dist" / build.stdout.strip().splitlines()[-1]
    assert archive.name == f"ncguide-{ncguide.__version__}.tar.gz"
    with tarfile.open(archive) as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}
    want = {p for p in files if not left_out(p)}
    assert not want - names, f"tracked files missing from the sdist (MANIFEST.in): {sorted(want - names)[:20]}"
    extra = {n for n in names - want if n not in GENERATED and not n.startswith("src/ncguide.egg-info/")}
    assert not extra, f"files in the sdist that git does not track: {sorted(extra)[:20]}"
    # the folders the issue named are there, with the files the report and the tests point at
    for path in ("tests/conftest.py", "tests/tolerances.py", "tests/experiments/test_report.py", "docs/design.md",
                 "examples/own_backbone.py", "benchmarks/overhead.py", "CHANGELOG.md", "CITATION.cff", "LICENSE",
                 "README.md", "src/ncguide/configs/demo.yaml"):
        assert path in names
