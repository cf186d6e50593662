"""Every script of examples/ runs (tiny data, 1-2 epochs) and shows what it claims: accuracy above chance,
NC metrics that fall, reloaded logits equal to the saved model's. Examples that need an optional package
skip, saying why, where it does not import."""

import importlib
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example(name: str):
    """The module of ``examples/<name>.py`` (its ``main(argv)`` returns what it printed)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def needs(module: str) -> None:
    """Skip unless ``module`` imports (torchvision and timm do not beside the CPU build of torch we pin)."""
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 (ImportError, or torchvision's RuntimeError on a mismatched torch)
        pytest.skip(f"{module} does not import here: {type(e).__name__}: {str(e).strip().splitlines()[0][:150]}")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_every_example_is_tested():
    tested = {"own_backbone", "replace_last_layer", "lightning_module", "measure_nc", "save_and_load"}
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested


def test_own_backbone_learns_and_collapses(capsys):
    history = example("own_backbone").main(["--epochs", "2"])["history"]
    k = 5
    assert [r["epoch"] for r in history] == [0, 1, 2]
    assert history[-1]["accuracy"] > 2 / k  # twice chance
    assert history[0]["nc1"] > history[1]["nc1"] > history[2]["nc1"]  # NC1 falls as the features collapse
    assert history[-1]["nc2_w"] < 1e-5  # the head's classifier is a simplex ETF up to rounding
    assert "NC1" in capsys.readouterr().out


@pytest.mark.parametrize("source", ["ncguide", "torchvision", "timm"])
def test_replace_last_layer(source):
    if source != "ncguide":
        needs(source)
    result = example("replace_last_layer").main(["--source", source, "--epochs", "1"])
    assert result["replaced"] == "fc" and result["accuracy"] > 2 / result["num_classes"]
    assert result["feature_dim"] == (128 if source == "ncguide" else 512)


class _Missing:
    """A meta path finder under which ``names`` (and their submodules) are not installed."""

    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named '{fullname}'", name=fullname)
        return None


def not_installed(monkeypatch, *names: str) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] in names]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_Missing(names), *sys.meta_path])


@pytest.mark.parametrize("source,missing", [("torchvision", "torchvision"), ("timm", "timm"),
                                            ("timm", "torchvision")])  # timm installed, torchvision not
def test_a_missing_package_is_one_line_and_exit_2(source, missing, monkeypatch, capsys, tmp_path):
    not_installed(monkeypatch, missing)
    if source != missing:
        (tmp_path / "timm.py").write_text("import torchvision\n")  # as timm's own import does
        monkeypatch.delitem(sys.modules, "timm", raising=False)
        monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit) as e:
        example("replace_last_layer").main(["--source", source, "--epochs", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"No module named '{missing}'" in err
    assert f"--source {source} needs {source}" in err and "pip install torch torchvision --index-url" in err
    assert ("then pip install timm" in err) == (source == "timm")


def test_lightning_missing_is_one_line_and_exit_2(monkeypatch, capsys):
    not_installed(monkeypatch, "lightning", "pytorch_lightning")
    with pytest.raises(SystemExit) as e:
        example("lightning_module")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "needs PyTorch Lightning" in err and "pip install lightning" in err


def test_a_missing_package_as_a_script_exits_2_without_a_traceback(tmp_path):
    (tmp_path / "timm.py").write_text("raise ModuleNotFoundError(\"No module named 'timm'\", name='timm')\n")
    src = Path(__file__).resolve().parents[1] / "src"
    out = subprocess.run([sys.executable, str(EXAMPLES / "replace_last_layer.py"), "--source", "timm"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(src)])})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and "--source timm needs timm" in out.stderr


@pytest.mark.slow
def test_lightning_module_trains_and_logs_nc_metrics():
    try:
        importlib.import_module("lightning.pytorch")
    except ImportError:
        needs("pytorch_lightning")
    results = example("lightning_module").main(["--epochs", "2"])
    assert results["val_acc"] > 2 / 5
    assert all(math.isfinite(results[k]) for k in ("nc1", "nc2_w", "nc3", "train_loss"))
    assert results["nc2_w"] < 1e-5


def test_measure_nc_on_a_plain_model():
    result = example("measure_nc").main(["--epochs", "2"])
    before, after = result["before"], result["after"]
    assert all(math.isfinite(v) for v in (*before.values(), *after.values()))
    assert after["accuracy"] > 2 / 5 and after["nc1"] < before["nc1"] and after["nc4"] < before["nc4"]


def test_save_and_load_gives_equal_logits(tmp_path):
    result = example("save_and_load").main(["--out", str(tmp_path / "model.pt"), "--steps", "3"])
    assert result["equal"] and torch.equal(result["logits"], result["reloaded"])
    assert {"U", "means.means", "means.global_mean"} <= set(result["head_keys"])
    assert torch.load(tmp_path / "model.pt", weights_only=True).keys() == {"backbone", "head"}


@pytest.mark.slow
def test_an_example_runs_as_a_script():
    out = subprocess.run([sys.executable, str(EXAMPLES / "save_and_load.py"), "--steps", "2"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "logits equal: True" in out.stdout
