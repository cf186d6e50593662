"""Files that load as plain data but are not what ncguide writes: a checkpoint whose keys hold the wrong types
or an invalid config, a ``config.json`` that the config schema refuses. ``load_checkpoint`` refuses such a
checkpoint with one line (``NotACheckpointError``), so ``train``, ``compare`` and ``report`` all say it; a
report leaves such a run out and says why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ncguide.experiments.checkpoint import CHECKPOINT, NotACheckpointError, load_checkpoint
from ncguide.experiments.cli import main
from ncguide.experiments.config import TrainConfig
from ncguide.experiments.runlog import check_run_log, expected_epochs
from ncguide.experiments.train import train

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

BASE = dict(dataset="digits", model="mlp", model_kwargs={"widths": [16]}, epochs=1, batch_size=128, device="cpu",
            seed=0, method="standard")
TINY = ["--dataset", "digits", "--model", "mlp", "--set", "model_kwargs.widths=[16]", "--set", "batch_size=128",
        "--set", "device=cpu", "--epochs", "1"]


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref")
    train(TrainConfig.from_dict(BASE), out, progress="none")
    return out


def _copy(ref: Path, dst: Path) -> Path:
    shutil.copytree(ref, dst)
    return dst


# (what to change, the words of the problem): every case loads under weights_only=True
CRAFTED = [
    ({"metrics_lines": [1, 2]}, "metrics_lines is not a list of text"),
    ({"metrics_lines": {}}, "metrics_lines is not a list of text"),
    ({"finished": torch.tensor([1, 2])}, "finished is not true or false"),
    ({"finished": 1}, "finished is not true or false"),
    ({"config": "str"}, "config is not a mapping"),
    ({"epoch": "x"}, "epoch is not an integer"),
    ({"epoch": -1}, "epoch is not an integer >= 0"),
    ({"step": True}, "step is not an integer"),
    ({"rng": {"torch": 5}}, "rng is not the torch, numpy and python generator states"),
    ({"model": None}, "model is not a state dict"),
    ({"head": {"U": 5}}, "head is not a state dict"),
    ({"loader": [1]}, "loader is not a mapping"),
    ({"optimizer": {"state": 5}}, "optimizer is not an optimizer state dict"),
    ({"metrics_bytes": "12"}, "metrics_bytes is not an integer"),
    ({"config": {"epochs": -1}}, "its config is invalid: epochs"),
    ({"config": {"nc1_threshold": "abc"}}, "'nc1_threshold' (expected a number)"),
    ({"config": {"nope": 1}}, "'nope'"),
    ({"wall_s": None}, "wall_s is not a number"),
]


def _craft(run: Path, change: dict) -> None:
    ckpt = torch.load(run / CHECKPOINT, weights_only=True)
    for key, value in change.items():
        ckpt[key] = {**ckpt["config"], **value} if key == "config" and isinstance(value, dict) else value
    torch.save(ckpt, run / CHECKPOINT)
    torch.load(run / CHECKPOINT, weights_only=True)  # still plain data


@pytest.mark.parametrize(("change", "words"), CRAFTED, ids=[next(iter(c)) + ":" + w for c, w in CRAFTED])
def test_a_crafted_checkpoint_is_one_line_and_its_run_is_left_out(ref, tmp_path, change, words):
    run = _copy(ref, tmp_path / "run")
    _craft(run, change)
    with pytest.raises(NotACheckpointError) as info:
        load_checkpoint(run / CHECKPOINT)
    msg = str(info.value)
    assert "not an ncguide checkpoint" in msg and words in msg and str(run / CHECKPOINT) in msg and "\n" not in msg
    if "config" in change and isinstance(change["config"], dict):
        assert "its config is invalid" in msg
    why = check_run_log(run)  # the report's check: left out with the reason, not judged from config.json
    assert why is not None and "not an ncguide checkpoint" in why and words in why


def test_the_real_checkpoint_passes(ref):
    assert load_checkpoint(ref / CHECKPOINT)["finished"] is True and check_run_log(ref) is None


def test_train_compare_and_report_say_it_in_one_line(ref, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NCGUIDE_TRACEBACK", raising=False)
    run = _copy(ref, tmp_path / "run")
    _craft(run, {"finished": torch.tensor([1, 2])})
    capsys.readouterr()
    assert main(["train", *TINY, "--method", "standard", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ncguide: error: ") and err.count("\n") == 1 and "not an ncguide checkpoint" in err, err
    assert "--no-resume" in err
    # a state that has the right types but does not fit the model: one line when the run is restored
    run = _copy(ref, tmp_path / "misfit")
    ckpt = torch.load(run / CHECKPOINT, weights_only=True)
    name = next(iter(ckpt["model"]))
    ckpt["model"][name] = torch.zeros(3)
    ckpt["finished"] = False
    torch.save(ckpt, run / CHECKPOINT)
    with pytest.raises(NotACheckpointError, match=f"its model state does not fit the run: .*{name}"):
        train(TrainConfig.from_dict(BASE), run, progress="none")
    # compare and report over a comparison with one crafted run
    cmp = tmp_path / "cmp"
    argv = ["compare", *TINY, "--methods", "standard", "--seeds", "2", "--out", str(cmp)]
    assert main(argv) == 0
    _craft(cmp / "runs/standard/seed-1", {"loader": [1]})
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "seed-1" in err and "loader is not a mapping" in err, err
    assert main(["report", str(cmp)]) == 0
    err = capsys.readouterr().err
    assert "runs/standard/seed-1 left out of the report" in err and "loader is not a mapping" in err, err
    assert [x["run"] for x in json.loads((cmp / "summary.json").read_text())["excluded"]] == ["runs/standard/seed-1"]


@pytest.mark.parametrize(("saved", "words"), [
    ([1], "holds a list, not a mapping"),
    ({**BASE, "epochs": 10**30}, "epochs"),
    ({**BASE, "nc1_threshold": "abc"}, "nc1_threshold"),
    ({**BASE, "lr": -1}, "lr"),
])
def test_without_a_checkpoint_an_invalid_config_json_leaves_the_run_out(ref, tmp_path, saved, words):
    """The log is judged from config.json only once the schema has read it: no float() of text, no schedule
    of 10**30 epochs."""
    run = _copy(ref, tmp_path / "run")
    (run / CHECKPOINT).unlink()
    (run / "config.json").write_text(json.dumps(saved))
    why = check_run_log(run)
    assert why is not None and "config.json" in why and words in why and "checkpoint.pt missing" in why, why
    assert "\n" not in why


def test_a_valid_schedule_of_many_epochs_is_judged_without_building_it(ref, tmp_path):
    """epochs = 10**18 is a valid config (below 2**63); the log of its first epochs is judged from the first
    records of the schedule (a list of the whole schedule would never be built)."""
    run = _copy(ref, tmp_path / "run")
    (run / CHECKPOINT).unlink()
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "epochs": 10**18}))
    why = check_run_log(run)
    assert why == "the log ends at epoch 1, of 1000000000000000000 epochs (checkpoint.pt missing, judged from " \
                  "config.json)", why
    assert expected_epochs(10**18, 7, limit=3) == [0, 7, 14]
