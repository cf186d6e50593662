"""The training loop (train.py), its config (config.py) and optimisers/schedules (optim.py).

Runs use scikit-learn's digits (1437 training samples) with a small MLP on CPU.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from ncguide.experiments.checkpoint import is_finished, load_checkpoint
from ncguide.experiments.compare import run_compare
from ncguide.experiments.config import TrainConfig
from ncguide.experiments.optim import agd_scale
from ncguide.experiments.train import NonFiniteLossError, train

sys.path.insert(0, str(Path(__file__).parent))
from train_script import build_probe  # noqa: E402

SCRIPT = Path(__file__).parent / "train_script.py"
BASE = dict(dataset="digits", model="mlp", model_kwargs={"widths": [64, 64]}, epochs=3, batch_size=64,
            optimizer="sgd", lr=0.05, device="cpu", seed=0)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def cfg_of(**kw) -> TrainConfig:
    return TrainConfig.from_dict({**BASE, **kw})


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def without_wall(recs: list[dict]) -> list[str]:
    """Records as JSON text without ``wall_s`` (text: NaN compares equal to NaN)."""
    return [json.dumps({k: v for k, v in r.items() if k != "wall_s"}, sort_keys=True) for r in recs]


def run_script(out: Path, cfg: TrainConfig, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(SCRIPT), str(out), json.dumps(cfg.to_dict()), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ---------------------------------------------------------------------------- schedules and AGD


def test_recorded_lr_follows_the_schedule(tmp_path):
    cfg = cfg_of(epochs=2, schedule="cosine", warmup_epochs=1.0, lr=0.1)
    train(cfg, tmp_path, progress="none")
    spe = math.ceil(1437 / 64)
    recs = records(tmp_path)
    # record e holds the lr of the latest step (step index e·spe - 1); epoch 0 that of the first step
    assert recs[0]["lr"] == pytest.approx(0.1 / spe)
    assert recs[1]["lr"] == pytest.approx(0.1)  # last warm-up step: (spe)/spe
    assert recs[2]["lr"] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * (spe - 1) / spe)))


@pytest.mark.parametrize("kwargs", [{"bias": True, "batch_norm": False}, {"bias": False, "batch_norm": True}])
def test_agd_rejects_biases_and_batch_norm(tmp_path, kwargs):
    cfg = cfg_of(optimizer="agd", weight_decay=0.0, model_kwargs={"widths": [32], **kwargs})
    with pytest.raises(ValueError, match="AGD supports bias-free"):
        train(cfg, tmp_path, progress="none")


def test_the_loop_starts_agd_from_its_own_initialisation(tmp_path):
    """AGD's optimiser leaves the weights alone; the training loop applies agd_init_ (Algorithm 1)."""
    cfg = cfg_of(optimizer="agd", weight_decay=0.0, method="nearest-etf", epochs=0,
                 model_kwargs={"widths": [32, 16], "bias": False, "batch_norm": False})
    train(cfg, tmp_path, progress="none")
    weights = load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    assert len(weights) == 2
    for w in weights.values():
        sv = torch.linalg.svdvals(w.double())
        assert torch.allclose(sv, torch.full_like(sv, agd_scale(w.shape)), rtol=1e-5)


def test_agd_trains_a_bias_free_mlp(tmp_path):
    cfg = cfg_of(optimizer="agd", weight_decay=0.0, method="nearest-etf", schedule="constant", epochs=4,
                 model_kwargs={"widths": [128, 128], "bias": False, "batch_norm": False})
    rec = train(cfg, tmp_path, progress="none")
    assert rec["train_acc"] > 0.8 and rec["test_acc"] > 0.8  # chance is 0.1


# ------------------------------------------------------------------------------------- methods


@pytest.mark.parametrize("method", ["standard", "fixed-etf", "nearest-etf", "nearest-etf-nograd", "standard-plain"])
def test_every_method_trains(tmp_path, method):
    rec = train(cfg_of(method=method, epochs=4), tmp_path, progress="none")
    recs = records(tmp_path)
    assert [r["epoch"] for r in recs] == [0, 1, 2, 3, 4]
    assert recs[0]["train_acc"] < 0.5 and rec["train_acc"] > 0.9
    assert rec["step"] == 4 * math.ceil(1437 / 64)
    for key in ("train_loss", "test_loss", "test_acc", "nc1", "nc2_w", "nc2_h", "nc3", "nc4", "lr", "wall_s"):
        assert isinstance(rec[key], float), key
    assert rec["nc1"] < recs[0]["nc1"]  # training reduces within-class variability
    assert is_finished(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads(json.dumps(cfg_of(method=method,
                                                                                             epochs=4).to_dict()))


def test_ufm_has_no_test_set(tmp_path):
    cfg = TrainConfig.from_dict(dict(dataset="ufm", model="ufm", num_classes=4, samples_per_class=8, feature_dim=6,
                                     epochs=2, batch_size=32, lr=0.5, weight_decay=0.0, device="cpu"))
    rec = train(cfg, tmp_path, progress="none")
    assert rec["test_acc"] is None and rec["test_loss"] is None
    assert rec["train_acc"] >= 0 and math.isfinite(rec["nc1"])


# ------------------------------------------------------------------------------- resume, failures


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    cfg = cfg_of(method="nearest-etf", epochs=4, stratified=True)
    ref = tmp_path / "ref"
    train(cfg, ref, progress="none", model=build_probe(cfg))

    out = tmp_path / "killed"
    out.mkdir()
    spe = math.ceil(1437 / 64)
    proc = run_script(out, cfg, "--sleep", "0.05", "--sleep-after", str(spe + 2))  # slow from epoch 2 on
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until epoch 2 is under way
        calls = (out / "calls.txt").read_text() if (out / "calls.txt").exists() else ""
        if calls and int(calls) >= spe + 5:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["epoch"] == 1 and not ck["finished"] and len(records(out)) == 2
    walls = [r["wall_s"] for r in records(out)]
    with (out / "metrics.jsonl").open("a") as f:  # a line a dying run might have half-written
        f.write('{"epoch": 2, "st')

    train(cfg, out, progress="none", model=build_probe(cfg))  # resume
    assert without_wall(records(out)) == without_wall(records(ref))
    resumed = [r["wall_s"] for r in records(out)]
    assert resumed[:2] == walls and resumed[2] > walls[1] == ck["wall_s"]  # wall_s carries over


def test_ctrl_c_mid_epoch_checkpoints_and_resumes_exactly(tmp_path):
    cfg = cfg_of(method="nearest-etf", epochs=3)
    ref = tmp_path / "ref"
    train(cfg, ref, progress="none", model=build_probe(cfg))
    out = tmp_path / "int"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress="none", model=build_probe(cfg, sigint_at=30))  # epoch 2, batch 7
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["mid_epoch"] and ck["epoch"] == 1 and ck["step"] == 30 and ck["loader"]["position"] == 7
    train(cfg, out, progress="none", model=build_probe(cfg))
    assert without_wall(records(out)) == without_wall(records(ref))


def test_ctrl_c_on_the_last_step_of_an_epoch_resumes_without_an_extra_pass(tmp_path):
    cfg = cfg_of(method="standard", epochs=3)
    spe = math.ceil(1437 / 64)
    ref = tmp_path / "ref"
    train(cfg, ref, progress="none", model=build_probe(cfg))
    out = tmp_path / "int"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress="none", model=build_probe(cfg, sigint_at=2 * spe))  # last step of epoch 2
    ck = load_checkpoint(out / "checkpoint.pt")
    assert not ck["mid_epoch"] and ck["epoch"] == 2 and ck["step"] == 2 * spe
    train(cfg, out, progress="none", model=build_probe(cfg))
    assert without_wall(records(out)) == without_wall(records(ref))
    assert records(out)[-1]["step"] == 3 * spe


UFM_ARGS = ["--dataset", "ufm", "--model", "ufm", "--set", "num_classes=4", "--set", "feature_dim=8", "--set",
            "samples_per_class=5", "--epochs", "2", "--batch-size", "10", "--device", "cpu"]


@pytest.mark.slow  # two processes that import torch
@pytest.mark.parametrize("command", ["train", "compare"])
def test_sigterm_during_the_first_evaluation_checkpoints_and_resumes(tmp_path, monkeypatch, command, one_thread):
    """A scheduler's SIGTERM to ``ncguide train`` / ``compare`` (in-process) while the evaluation before training
    runs: exit 130 like Ctrl-C, with a checkpoint at epoch 0 (no run folder left without one); the same command
    then finishes it, equal to an uninterrupted run."""
    from ncguide.experiments.cli import main

    def argv(out):
        head = ["train", "--method", "standard"] if command == "train" else ["compare", "--methods", "standard",
                                                                             "--seeds", "1"]
        return [*head, *UFM_ARGS, "--out", str(out)]

    out, marker = tmp_path / "stopped", tmp_path / "evaluating"
    run = out if command == "train" else out / "runs" / "standard" / "seed-0"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "cli", "--eval-sleep", "3", "--marker", str(marker), "--",
                             *argv(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not marker.exists():  # the probe is inside the epoch-0 evaluation, sleeping 3 s per call
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "ncguide: interrupted" in err, err
    ck = load_checkpoint(run / "checkpoint.pt")
    assert (ck["epoch"], ck["step"], ck["finished"]) == (0, 0, False)
    assert [r["epoch"] for r in records(run)] == [0]

    import importlib

    from train_script import Probe

    from ncguide.experiments import report as report_mod

    train_mod = importlib.import_module("ncguide.experiments.train")  # the same backbone (a probe) to resume
    real = train_mod.build_backbone
    monkeypatch.setattr(train_mod, "build_backbone", lambda cfg, ds: Probe(real(cfg, ds)))
    monkeypatch.setattr(report_mod, "plot_figures", lambda runs, out: ["none.png"])  # not what this checks
    assert main(argv(out)) == 0  # the same command resumes it
    assert main(argv(tmp_path / "ref")) == 0  # uninterrupted
    ref = tmp_path / "ref" if command == "train" else tmp_path / "ref" / "runs" / "standard" / "seed-0"
    assert [r["epoch"] for r in records(run)] == [0, 1, 2]
    assert without_wall(records(run)) == without_wall(records(ref))


@pytest.mark.parametrize("method", ["standard", "nearest-etf"])
def test_nan_features_stop_the_run_cleanly(tmp_path, method):
    cfg = cfg_of(method=method, epochs=3)
    spe = math.ceil(1437 / 64)
    bad_step = spe + 5  # epoch 2
    # standard: the loop's loss check; ETF heads reject the batch (NonFiniteFeaturesError): the same stop
    with pytest.raises(NonFiniteLossError, match=rf"epoch 2, step {bad_step}\b"):
        train(cfg, tmp_path, progress="none", model=build_probe(cfg, nan_at=bad_step))
    ck = load_checkpoint(tmp_path / "checkpoint.pt")  # intact and loadable
    assert ck["epoch"] == 1 and ck["step"] == spe and not ck["finished"]
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert [r["epoch"] for r in records(tmp_path)] == [0, 1]
    # resuming without the fault finishes the run
    rec = train(cfg, tmp_path, progress="none", model=build_probe(cfg))
    assert rec["epoch"] == 3 and math.isfinite(rec["train_loss"])


def test_finished_run_is_not_retrained_and_other_config_is_refused(tmp_path):
    cfg = cfg_of(epochs=1)
    rec = train(cfg, tmp_path, progress="none")
    before = (tmp_path / "metrics.jsonl").read_text()
    assert train(cfg, tmp_path, progress="none") == rec
    assert (tmp_path / "metrics.jsonl").read_text() == before
    with pytest.raises(ValueError, match="different config.*lr"):
        train(cfg_of(epochs=1, lr=0.1), tmp_path, progress="none")
    train(cfg_of(epochs=1, lr=0.1), tmp_path, resume=False, progress="none")  # explicit restart
    assert len(records(tmp_path)) == 2 and records(tmp_path)[-1] != rec


class _RaiseAt(nn.Module):
    """A backbone that raises ``exc`` at its ``at``-th training forward."""

    def __init__(self, inner: nn.Module, at: int, exc: BaseException):
        super().__init__()
        self.inner, self.feature_dim, self.at, self.exc, self.calls = inner, inner.feature_dim, at, exc, 0

    def forward(self, x):
        self.calls += self.training
        if self.training and self.calls == self.at:
            raise self.exc
        return self.inner(x)


@pytest.mark.parametrize("exc", [torch.OutOfMemoryError("CUDA out of memory (simulated)"), ValueError("bad batch")])
def test_an_error_inside_a_step_keeps_its_type_and_says_where(tmp_path, exc):
    cfg = cfg_of(epochs=1)
    model = _RaiseAt(build_probe(cfg), at=3, exc=exc)
    with pytest.raises(type(exc)) as info:
        train(cfg, tmp_path, progress="none", model=model)
    assert info.value is exc and not isinstance(exc, NonFiniteLossError)
    where = "training failed at epoch 1, step 3"
    assert where in (getattr(exc, "__notes__", None) or [str(exc)])[0]


def test_a_failure_after_the_lock_is_taken_releases_it_for_the_rerun(tmp_path, monkeypatch):
    """An allocation that fails while the run is built (inside the folder's lock): ``.lock`` stays as an empty file,
    which is how a released lock looks (locks.py), and the rerun into the same folder is not blocked."""
    train_module = sys.modules["ncguide.experiments.train"]  # the package's attribute `train` is the function

    def fail(*_args, **_kw):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory (simulated)")

    cfg = cfg_of(epochs=1)
    with monkeypatch.context() as m:
        m.setattr(train_module, "build_backbone", fail)
        with pytest.raises(RuntimeError, match="allocate"):
            train(cfg, tmp_path, progress="none")
    assert (tmp_path / ".lock").read_text() == ""
    train(cfg, tmp_path, progress="none")  # in this same process: a lock still held would conflict
    assert is_finished(tmp_path)


def test_train_restores_every_global_setting_it_changes(tmp_path):
    import random

    import numpy as np

    def snapshot():
        return dict(env=os.environ.get("CUBLAS_WORKSPACE_CONFIG"), det=torch.are_deterministic_algorithms_enabled(),
                    warn=torch.is_deterministic_algorithms_warn_only_enabled(), bench=torch.backends.cudnn.benchmark,
                    cudnn_det=torch.backends.cudnn.deterministic, threads=torch.get_num_threads(),
                    torch_rng=torch.get_rng_state(), np_rng=np.random.get_state()[1].copy(),  # noqa: NPY002
                    py_rng=random.getstate())

    torch.manual_seed(123)
    before = snapshot()
    train(cfg_of(epochs=1, deterministic=True, seed=7), tmp_path, progress="none")
    after = snapshot()
    for key in before:
        same = (torch.equal(before[key], after[key]) if isinstance(before[key], torch.Tensor)
                else np.array_equal(before[key], after[key]) if isinstance(before[key], np.ndarray)
                else before[key] == after[key])
        assert same, key
    torch.use_deterministic_algorithms(True)
    try:
        train(cfg_of(epochs=1, deterministic=False), tmp_path / "b", progress="none")
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_a_given_head_is_the_one_trained(tmp_path):
    """``train(..., head=...)``: a subclass (a probe) replaces the method's head, and is checkpointed."""
    from ncguide import NearestETFHead

    class CountingHead(NearestETFHead):
        solves = 0

        def solve(self, Hbar):
            CountingHead.solves += 1
            return super().solve(Hbar)

    cfg = cfg_of(method="nearest-etf", epochs=1)
    head = CountingHead(64, 10)
    train(cfg, tmp_path, progress="none", head=head)
    assert CountingHead.solves == math.ceil(1437 / 64)
    saved = load_checkpoint(tmp_path / "checkpoint.pt")["head"]
    assert torch.equal(saved["U"], head.U.cpu())


def test_table_progress_prints_one_line_per_epoch(tmp_path, capsys):
    train(cfg_of(epochs=2, eval_every=2), tmp_path, progress="table")
    settings, *lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert settings.startswith("settings (differing from the defaults") and " epochs=2 " in settings
    assert lines[0].split() == ["epoch", "train_loss", "train_acc", "test_acc", "nc1", "time_s"]
    assert [ln.split()[0] for ln in lines[1:]] == ["0", "1", "2"]
    assert lines[2].split()[3:5] == ["-", "-"]  # epoch 1: no evaluation
    assert len({len(ln) for ln in lines}) == 1  # fixed width


# ------------------------------------------------------------------------------------- torchrun


@pytest.mark.parametrize("method", ["standard", "nearest-etf"])
def test_torchrun_two_processes_match_one(tmp_path, method):
    """2 ranks (gloo) vs 1 process, same global batch (64; the last batch of 29 splits 15/14).

    The per-rank losses are rescaled so the averaged gradient is the global batch's mean loss and
    the heads all-reduce their statistics, so both runs follow the same trajectory up to float32
    rounding (a different summation order in the gradient all-reduce): measured relative differences
    ~1e-7 (standard) and ~1e-6 (nearest-etf) after 3 epochs, no accuracy difference; the tolerances
    leave a wide margin. The MLP has no batch norm (its statistics would be per rank)."""
    cfg = cfg_of(method=method, epochs=3, model_kwargs={"widths": [64, 64], "batch_norm": False})
    single = train(cfg, tmp_path / "one", progress="none", model=build_probe(cfg))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
           str(tmp_path / "two"), json.dumps(cfg.to_dict())]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert [r["epoch"] for r in two] == [0, 1, 2, 3] and two[-1]["step"] == single["step"]
    for a, b in zip(one, two):
        for split, n in (("train", 1437), ("test", 360)):
            assert abs(a[f"{split}_acc"] - b[f"{split}_acc"]) * n <= 2  # at most 2 samples differ
            assert b[f"{split}_loss"] == pytest.approx(a[f"{split}_loss"], rel=1e-4)
        for key in ("nc1", "nc2_h", "nc3"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-6), key


# ---------------------------------------------------------------------------------- building


def test_etf_head_wider_than_features_is_refused(tmp_path):
    cfg = cfg_of(method="nearest-etf", model_kwargs={"widths": [64, 8]})  # d = 8 < K = 10
    with pytest.raises(ValueError, match="widen the model"):
        train(cfg, tmp_path, progress="none")
    train(cfg_of(method="standard", epochs=1, model_kwargs={"widths": [64, 8]}), tmp_path, progress="none")


def test_file_backed_dataset_trains_like_in_memory(tmp_path, monkeypatch):
    """A lazy data set (``train_set``/``test_set``, as ``imagenet`` gives) goes through a DataLoader with
    the same batch order as the in-memory TensorLoader: the run is identical."""
    import dataclasses

    import ncguide.experiments.build

    cfg = cfg_of(method="nearest-etf", epochs=2, num_workers=0)
    train(cfg, tmp_path / "mem", progress="none")
    real = ncguide.experiments.build.load_dataset

    def lazy(*args, **kwargs):
        ds = real(*args, **kwargs)
        sets = {s: torch.utils.data.TensorDataset(getattr(ds, f"x_{s}"), getattr(ds, f"y_{s}"))
                for s in ("train", "test")}
        return dataclasses.replace(ds, x_train=None, y_train=None, x_test=None, y_test=None,
                                   train_set=sets["train"], test_set=sets["test"])

    monkeypatch.setattr(ncguide.experiments.build, "load_dataset", lazy)
    train(cfg, tmp_path / "lazy", progress="none")
    assert without_wall(records(tmp_path / "lazy")) == without_wall(records(tmp_path / "mem"))
    with pytest.raises(ValueError, match="file-backed"):
        train(cfg_of(stratified=True), tmp_path / "strat", progress="none")


# ------------------------------------------------------------------------------------------- CUDA

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("amp,compile", [("none", False), ("bf16", False), ("bf16", True)])
def test_cuda_training_with_amp_and_compile(tmp_path, amp, compile):
    cfg = cfg_of(method="nearest-etf", epochs=4, device="cuda", amp=amp, compile=compile)
    rec = train(cfg, tmp_path, progress="none")
    assert rec["train_acc"] > 0.9 and math.isfinite(rec["nc1"])
    assert load_checkpoint(tmp_path / "checkpoint.pt")["finished"]


@pytest.mark.cuda
@needs_cuda
def test_cuda_nan_is_found_at_its_step_without_per_step_sync(tmp_path):
    cfg = cfg_of(method="standard", epochs=3, device="cuda", check_every=4)
    spe = math.ceil(1437 / 64)
    bad_step = spe + 5  # found at the next multiple of check_every, reported as the step it happened at
    with pytest.raises(RuntimeError, match=rf"epoch 2, step {bad_step}\b"):
        train(cfg, tmp_path, progress="none", model=build_probe(cfg, nan_at=bad_step))
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1


@pytest.mark.cuda
@needs_cuda
def test_cuda_ctrl_c_resume_matches_uninterrupted_run(tmp_path):
    """On CUDA the class sums use atomic adds (not bitwise reproducible): equal to float32 rounding."""
    cfg = cfg_of(method="nearest-etf", epochs=3, device="cuda")
    train(cfg, tmp_path / "ref", progress="none", model=build_probe(cfg))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "int", progress="none", model=build_probe(cfg, sigint_at=30))
    train(cfg, tmp_path / "int", progress="none", model=build_probe(cfg))
    for a, b in zip(records(tmp_path / "ref"), records(tmp_path / "int"), strict=True):
        assert a["step"] == b["step"]
        for key in ("train_loss", "test_loss", "nc1", "nc3"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-6), key
        assert abs(a["train_acc"] - b["train_acc"]) * 1437 <= 2


def test_ema_alpha_reaches_the_heads_that_take_it_and_a_mixed_compare_runs(tmp_path):
    """``ema_alpha`` is a config field: a comparison of ``standard`` (no running means) with nearest-ETF
    under ``mean_schedule=ema`` builds both heads (it used to need head_kwargs, which standard refuses)."""
    from ncguide.experiments.build import head_kwargs

    assert "ema_alpha" not in head_kwargs(cfg_of(method="standard", ema_alpha=0.5))
    assert head_kwargs(cfg_of(method="nearest-etf", ema_alpha=0.5))["ema_alpha"] == 0.5
    base = cfg_of(epochs=1, mean_schedule="ema", ema_alpha=0.5)
    run_compare(base, ["standard", "nearest-etf"], [0], tmp_path, progress="none", log=lambda _: None, report=False)
    saved = json.loads((tmp_path / "runs/nearest-etf/seed-0/config.json").read_text())
    assert saved["ema_alpha"] == 0.5 and saved["mean_schedule"] == "ema"
    with pytest.raises(ValueError, match="ema_alpha"):
        cfg_of(ema_alpha=0.0)


def test_a_run_saved_before_a_config_field_existed_is_still_reused(tmp_path):
    """A config written by an older version lacks newer fields; their defaults reproduce the old
    behaviour, so the finished run is reused (and resumable), not refused as a different config."""
    cfg = cfg_of(epochs=1)
    rec = train(cfg, tmp_path, progress="none")
    path = tmp_path / "config.json"
    old = json.loads(path.read_text())
    del old["ema_alpha"]
    path.write_text(json.dumps(old))
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del ckpt["config"]["ema_alpha"]
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    assert train(cfg, tmp_path, progress="none") == rec
    from ncguide.experiments.checkpoint import config_diff

    assert config_diff(old, cfg.to_dict()) == {}  # compare's reuse check agrees
    with pytest.raises(ValueError, match="different config.*ema_alpha"):
        train(cfg_of(epochs=2, ema_alpha=0.5), tmp_path, progress="none")


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "not-a-dict"])
def test_unreadable_checkpoint_is_a_one_line_value_error(tmp_path, damage):
    cfg = cfg_of(epochs=1)
    train(cfg, tmp_path, progress="none")
    path = tmp_path / "checkpoint.pt"
    raw = path.read_bytes()
    if damage == "not-a-dict":
        torch.save([1, 2, 3], path)
    else:
        path.write_bytes({"empty": b"", "truncated": raw[: len(raw) // 2], "garbage": b"\x00junk" * 50}[damage])
    for call in (lambda: train(cfg, tmp_path, progress="none"), lambda: is_finished(tmp_path)):
        with pytest.raises(ValueError, match="unreadable") as info:
            call()
        msg = str(info.value)
        assert str(path) in msg and "\n" not in msg and "resume=False" in msg
    rec = train(cfg, tmp_path, resume=False, progress="none")  # the advice works
    assert rec["epoch"] == 1 and is_finished(tmp_path)


def test_results_without_checkpoint_are_not_overwritten_by_another_config(tmp_path):
    """checkpoint.pt gone: another config must not silently replace metrics.jsonl and config.json."""
    train(cfg_of(epochs=1), tmp_path, progress="none")
    (tmp_path / "checkpoint.pt").unlink()
    before = {n: (tmp_path / n).read_text() for n in ("metrics.jsonl", "config.json")}
    with pytest.raises(ValueError, match=r"metrics.jsonl holds the results.*missing.*differs in: lr.*resume=False"):
        train(cfg_of(epochs=1, lr=0.1), tmp_path, progress="none")
    assert {n: (tmp_path / n).read_text() for n in before} == before
    (tmp_path / "config.json").unlink()  # identity unknown: refused too
    with pytest.raises(ValueError, match="config.json is missing"):
        train(cfg_of(epochs=1), tmp_path, progress="none")
    assert (tmp_path / "metrics.jsonl").read_text() == before["metrics.jsonl"]
    rec = train(cfg_of(epochs=1, lr=0.1), tmp_path, resume=False, progress="none")  # explicit overwrite
    assert rec["epoch"] == 1 and json.loads((tmp_path / "config.json").read_text())["lr"] == 0.1
    (tmp_path / "checkpoint.pt").unlink()  # same config: retraining reproduces the results, so it is allowed
    assert train(cfg_of(epochs=1, lr=0.1), tmp_path, progress="none")["epoch"] == 1


def test_last_batch_of_one_sample_with_batch_norm(tmp_path):
    """50 samples in batches of 7 leave a last batch of 1, on which batch norm cannot train: it is dropped
    (every epoch, and a resume agrees); batches of 1 throughout are refused up front."""
    cfg = cfg_of(epochs=2, batch_size=7, train_per_class=5)
    rec = train(cfg, tmp_path, progress="none")
    assert rec["epoch"] == 2 and rec["step"] == 2 * 7 and math.isfinite(rec["train_loss"])
    with pytest.raises(ValueError, match=r"batch_size=1 .*batch norm.*batch_size >= 2"):
        train(cfg_of(epochs=1, batch_size=1, train_per_class=5), tmp_path / "one", progress="none")
    # no batch norm: nothing is dropped
    rec = train(cfg_of(epochs=1, batch_size=7, model="ufm", dataset="ufm", model_kwargs={}, num_classes=5,
                       samples_per_class=10), tmp_path / "ufm", progress="none")
    assert rec["step"] == 8
