"""``freeze_after`` (epochs) in the experiments: config checks, the conversion to steps, and exact resume
across the freeze. Runs use scikit-learn's digits (1437 training samples) with a small MLP on CPU."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from ncguide.experiments import (
    TrainConfig,
    build_run_head,
    head_kwargs,
    load_data,
    make_loaders,
    steps_per_epoch,
    train,
)
from ncguide.experiments.checkpoint import check_same_config, load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from train_script import build_probe  # noqa: E402

BASE = dict(dataset="digits", model="mlp", model_kwargs={"widths": [64, 64]}, epochs=3, batch_size=64,
            optimizer="sgd", lr=0.05, device="cpu", seed=0, method="nearest-etf")
SPE = math.ceil(1437 / 64)  # 23


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def cfg_of(**kw) -> TrainConfig:
    return TrainConfig.from_dict({**BASE, **kw})


def records(out: Path) -> list[str]:
    """metrics.jsonl as JSON text without ``wall_s``."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [json.dumps({k: v for k, v in r.items() if k != "wall_s"}, sort_keys=True) for r in lines]


def test_config_checks_freeze_after():
    assert cfg_of().freeze_after is None
    assert cfg_of(freeze_after="1.5").freeze_after == 1.5
    assert cfg_of(method="nearest-etf-nograd", freeze_after=0).freeze_after == 0
    for bad, match in [
        (dict(freeze_after=-0.5), "freeze_after must be None or a number of epochs >= 0"),
        (dict(freeze_after="inf"), "freeze_after must be a finite number"),
        (dict(freeze_after=True), "config key 'freeze_after'"),
        (dict(freeze_after=1, method="standard"), "freeze_after applies to nearest-etf and nearest-etf-nograd only"),
        (dict(freeze_after=1, method="fixed-etf"), "freeze_after applies to"),
        (dict(head_kwargs={"freeze_after": 3}), "not head_kwargs.freeze_after"),
    ]:
        with pytest.raises(ValueError, match=match):
            cfg_of(**bad)


def test_freeze_after_is_part_of_the_run_identity(tmp_path):
    check_same_config(cfg_of().to_dict(), cfg_of(), tmp_path)
    old = {k: v for k, v in cfg_of().to_dict().items() if k != "freeze_after"}  # saved before the field existed
    check_same_config(old, cfg_of(), tmp_path)
    with pytest.raises(ValueError, match="differs in: freeze_after"):
        check_same_config(cfg_of(freeze_after=1).to_dict(), cfg_of(freeze_after=2), tmp_path)
    with pytest.raises(ValueError, match="differs in: freeze_after"):
        check_same_config(old, cfg_of(freeze_after=1), tmp_path)


def test_epochs_become_steps_of_the_actual_loader():
    cfg = cfg_of(freeze_after=1.5)
    ds = load_data(cfg)
    assert steps_per_epoch(cfg, ds) == SPE
    assert head_kwargs(cfg, SPE)["freeze_after"] == round(1.5 * SPE) == 34
    assert build_run_head(cfg, 64, 10, SPE).freeze_after == 34
    assert "freeze_after" not in head_kwargs(cfg_of())
    with pytest.raises(ValueError, match="needs the steps per epoch"):
        head_kwargs(cfg)
    # the loader's own length, including its drop-last rules (1437 = 2·718 + 1)
    for batch_size, world, batch_norm in [(64, 1, False), (64, 2, True), (718, 1, False), (718, 1, True),
                                          (718, 2, False)]:
        c = cfg_of(batch_size=batch_size)
        loader, _ = make_loaders(c, ds, torch.device("cpu"), 0, world, batch_norm=batch_norm)
        assert steps_per_epoch(c, ds, world, batch_norm) == len(loader), (batch_size, world, batch_norm)


def test_freeze_after_zero_trains_the_fixed_initial_etf(tmp_path):
    train(cfg_of(epochs=1, freeze_after=0), tmp_path, progress="none")
    head = load_checkpoint(tmp_path / "checkpoint.pt")["head"]
    assert torch.equal(head["U"], torch.eye(64, 10)) and bool(head["frozen"]) and int(head["updates"]) == SPE
    assert int(head["means.steps"][:10].max()) == 0  # the class means never moved


def test_interrupted_runs_resume_exactly_across_the_freeze(tmp_path):
    """freeze at 1.5 epochs (step 34): Ctrl-C at step 30 (before), resume, Ctrl-C at step 40 (after), resume;
    metrics and final weights equal an uninterrupted run's bitwise."""
    cfg = cfg_of(freeze_after=1.5)
    ref = tmp_path / "ref"
    train(cfg, ref, progress="none", model=build_probe(cfg))
    out = tmp_path / "int"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress="none", model=build_probe(cfg, sigint_at=30))
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["step"] == 30 and int(ck["head"]["updates"]) == 30 and not bool(ck["head"]["frozen"])
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress="none", model=build_probe(cfg, sigint_at=10))
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["step"] == 40 and int(ck["head"]["updates"]) == 40 and bool(ck["head"]["frozen"])
    with pytest.raises(ValueError, match="differs in: freeze_after"):  # another freeze is another run
        train(cfg_of(freeze_after=2), out, progress="none", model=build_probe(cfg))
    train(cfg, out, progress="none", model=build_probe(cfg))
    assert records(out) == records(ref)
    a, b = load_checkpoint(ref / "checkpoint.pt"), load_checkpoint(out / "checkpoint.pt")
    for part in ("model", "head"):
        assert a[part].keys() == b[part].keys()
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    head = a["head"]
    assert int(head["updates"]) == 3 * SPE and bool(head["frozen"])
    assert int(head["means.steps"][:10].max()) <= 34 < int(head["means.steps"][10]) == 3 * SPE
