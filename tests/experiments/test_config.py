"""Run configuration (``experiments/config.py``): round trip, ``key=value`` overrides, refused names."""

import pytest

from ncguide.experiments.config import TrainConfig, apply_overrides, load_config

BASE = dict(dataset="digits", model="mlp", model_kwargs={"widths": [64, 64]}, epochs=3, batch_size=64,
            optimizer="sgd", lr=0.05, device="cpu", seed=0)


def cfg_of(**kw) -> TrainConfig:
    return TrainConfig.from_dict({**BASE, **kw})


def test_config_round_trip_and_unknown_key():
    cfg = cfg_of(step_milestones=[2, 5])
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown config key 'lrr'"):
        TrainConfig.from_dict({"lrr": 0.1})


def test_apply_overrides_coerces_to_field_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: standard\nepochs: 5\nmodel_kwargs: {widths: [32]}\n")
    d = apply_overrides(load_config(path), [
        "epochs=7", "lr=1e-3", "nesterov=true", "train_per_class=none", "step_milestones=3,6",
        "model_kwargs.batch_norm=false", "augment=flip", "warmup_epochs=1",
    ])
    assert d == {"method": "standard", "epochs": 7, "lr": 1e-3, "nesterov": True, "train_per_class": None,
                 "step_milestones": [3, 6], "model_kwargs": {"widths": [32], "batch_norm": False},
                 "augment": "flip", "warmup_epochs": 1.0}
    assert isinstance(d["warmup_epochs"], float) and isinstance(d["epochs"], int)
    with pytest.raises(ValueError, match="unknown config key 'foo'"):
        apply_overrides({}, ["foo=1"])
    for bad in ("epochs=2.5", "nesterov=maybe", "lr=fast", "epochs"):
        with pytest.raises(ValueError, match="bad"):
            apply_overrides({}, [bad])


@pytest.mark.parametrize("key,value,match", [
    ("method", "nearest", "unknown method 'nearest'.*nearest-etf"),
    ("dataset", "mnist2", "unknown dataset 'mnist2'.*digits"),
    ("model", "resnet7", "unknown model 'resnet7'.*resnet18"),
    ("optimizer", "lbfgs", "unknown optimizer 'lbfgs'.*agd"),
    ("schedule", "linear", "unknown schedule.*cosine"),
])
def test_unknown_names_are_refused_with_valid_names(key, value, match):
    with pytest.raises(ValueError, match=match):
        cfg_of(**{key: value})


def test_malformed_set_value_is_a_value_error():
    with pytest.raises(ValueError, match="bad value"):
        apply_overrides({}, ["model_kwargs.width=[1,"])
