"""``build.check_buildable``'s size checks: the memory bound (a UFM's table and samples, any model's parameters)
at its exact boundary, and per-class subsets against the smallest class of the loaded data set."""

import numpy as np
import pytest
import torch

from ncguide.experiments import build
from ncguide.experiments.config import ConfigError, TrainConfig
from ncguide.experiments.data import load_dataset
from ncguide.experiments.models import build_model


def _cfg(**kw) -> TrainConfig:
    return TrainConfig.from_dict({"device": "cpu", "method": "standard", **kw})


def test_the_ufm_must_fit_in_memory_to_the_byte(monkeypatch):
    """2 classes × 10 samples: 20 float32 rows of feature_dim 50, plus an int64 index and label per sample."""
    cfg = _cfg(dataset="ufm", model="ufm", num_classes=2, samples_per_class=10, feature_dim=50)
    need = 20 * 50 * 4 + 20 * 2 * 8
    monkeypatch.setattr(build, "_memory_bytes", lambda: need)
    build.check_buildable(cfg)
    monkeypatch.setattr(build, "_memory_bytes", lambda: need - 1)
    with pytest.raises(ConfigError, match="feature_dim=50") as e:
        build.check_buildable(cfg)
    assert e.value.key == "feature_dim"  # the largest factor
    with pytest.raises(ConfigError) as e:
        build.check_buildable(_cfg(dataset="ufm", model="ufm", num_classes=2, samples_per_class=100, feature_dim=4))
    assert e.value.key == "samples_per_class"


def test_without_a_known_memory_size_a_ufm_beyond_int64_is_still_refused(monkeypatch):
    monkeypatch.setattr(build, "_memory_bytes", lambda: None)
    build.check_buildable(_cfg(dataset="ufm", model="ufm", num_classes=2, samples_per_class=10, feature_dim=50))
    with pytest.raises(ConfigError, match="torch can index") as e:
        build.check_buildable(_cfg(dataset="ufm", model="ufm", num_classes=2, samples_per_class=2**62, feature_dim=4))
    assert e.value.key == "samples_per_class"


def test_a_models_parameters_must_fit_in_memory(monkeypatch):
    """The bound is the parameters of the model the run would build (counted here on a real CPU build)."""
    cfg = _cfg(dataset="digits", model="mlp", model_kwargs={"widths": [32]})
    real = build_model("mlp", (1, 8, 8), 10, widths=[32])
    need = sum(p.numel() * p.element_size() for p in real.parameters())
    monkeypatch.setattr(build, "_memory_bytes", lambda: need)
    build.check_buildable(cfg)
    monkeypatch.setattr(build, "_memory_bytes", lambda: need - 1)
    with pytest.raises(ConfigError, match="parameters") as e:
        build.check_buildable(cfg)
    assert e.value.key == "model_kwargs"


@pytest.mark.parametrize("key,split", [("train_per_class", "y_train"), ("test_per_class", "y_test")])
def test_subsets_up_to_the_smallest_class_of_the_loaded_data(key, split):
    smallest = int(torch.bincount(getattr(load_dataset("digits", seed=3), split)).min())
    build.check_buildable(_cfg(dataset="digits", model="mlp", seed=3, **{key: smallest}))
    with pytest.raises(ConfigError, match=f"has {smallest} in") as e:
        build.check_buildable(_cfg(dataset="digits", model="mlp", seed=3, **{key: smallest + 1}))
    assert e.value.key == key


def test_subsets_of_an_npz_file_count_its_labels(tmp_path):
    """Class 2 has 3 training samples and class 0 one test sample (labels stored as float, integral)."""
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((12, 4), np.float32), y_train=np.array([0] * 5 + [1] * 4 + [2] * 3, float),
             x_test=np.zeros((4, 4), np.float32), y_test=np.array([0, 1, 1, 2]))
    base = {"dataset": f"npz:{path}", "model": "mlp", "model_kwargs": {"widths": [8]}}
    build.check_buildable(_cfg(**base, train_per_class=3, test_per_class=1))
    for key, value, smallest in (("train_per_class", 4, 3), ("test_per_class", 2, 1)):
        with pytest.raises(ConfigError, match=f"has {smallest} in") as e:
            build.check_buildable(_cfg(**base, **{key: value}))
        assert e.value.key == key
