"""The two layers: the package root is the library (torch and numpy only), the experiments live in
``ncguide.experiments`` and are never imported by the library."""

import subprocess
import sys
from pathlib import Path

import ncguide
import ncguide.experiments

SRC = Path(__file__).resolve().parents[1] / "src"
LIBRARY = ["etf", "solve", "polar_iteration", "means", "heads", "metrics", "features", "wrap"]


def test_the_root_exports_the_library_surface_only():
    for name in ncguide.__all__:
        assert not getattr(getattr(ncguide, name), "__module__", "ncguide").startswith("ncguide.experiments"), name
    for name in ("nearest_etf", "etf_weight", "NearestETFHead", "build_head", "METHODS", "SOLVERS", "nc_metrics",
                 "nc_metrics_streaming", "NCAccumulator", "extract_features", "polar_factor", "inner_objective"):
        assert name in ncguide.__all__
    for name in ("train", "run_compare", "TrainConfig", "load_config"):
        assert name not in ncguide.__all__ and name in ncguide.experiments.__all__


def test_the_library_imports_without_the_experiments_or_their_extras():
    """``import ncguide`` and its use on a head work where yaml, matplotlib and tqdm are missing, and load
    nothing from ``ncguide.experiments``."""
    code = (
        "import sys\n"
        "for m in ('yaml', 'matplotlib', 'tqdm', 'sklearn', 'mnist1d'): sys.modules[m] = None\n"
        "import torch, ncguide\n"
        "head = ncguide.build_head('nearest-etf', 8, 4)\n"
        "h, y = torch.randn(16, 8, requires_grad=True), torch.arange(16) % 4\n"
        "head(h, y).sum().backward()\n"
        "print(sorted(ncguide.nc_metrics(head.transform(h).detach(), y, head.weight, head.bias))[:2])\n"
        "assert not [m for m in sys.modules if m.startswith('ncguide.experiments')], 'experiments imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(SRC)}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_library_modules_do_not_import_the_experiments():
    for name in LIBRARY:
        text = (SRC / "ncguide" / f"{name}.py").read_text()
        assert "from .experiments" not in text and "ncguide.experiments" not in text, name


def test_version_is_the_installed_metadata(capsys):
    """``ncguide --version`` prints the installed distribution's version, which is ``ncguide.__version__``
    (pyproject.toml reads it from there) — unless this checkout is not the one installed."""
    from importlib.metadata import PackageNotFoundError, version

    from ncguide.experiments.cli import main

    assert main(["--version"]) == 0
    printed = capsys.readouterr().out.strip()
    try:
        installed = version("ncguide")
    except PackageNotFoundError:
        assert printed == f"ncguide {ncguide.__version__} (not installed)"
        return
    assert printed == f"ncguide {installed}"
    assert installed == ncguide.__version__


def test_release_files_carry_the_version_and_the_paper():
    """CITATION.cff, the README's BibTeX and CHANGELOG.md name the package's version; both citations name the
    paper's authors in its order."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    cff = yaml.safe_load((root / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and str(cff["version"]) == ncguide.__version__
    paper = cff["preferred-citation"]
    assert [a["family-names"] for a in paper["authors"]] == ["Markou", "Ajanthan", "Gould"] and paper["year"] == 2024
    readme = (root / "README.md").read_text()
    assert f"version = {{{ncguide.__version__}}}" in readme
    assert "author        = {Markou, Evan and Ajanthan, Thalaiyasingam and Gould, Stephen}" in readme
    assert f"\n## {ncguide.__version__}\n" in (root / "CHANGELOG.md").read_text()
