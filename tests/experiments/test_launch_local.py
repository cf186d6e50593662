"""``compare --jobs N`` with real child processes: the same results as one run after another, a killed
run reported with its log while the others finish (and a rerun retries only it), Ctrl-C stopping every
child and a rerun ending bitwise as an uninterrupted comparison."""

import json
import os
import signal

import pytest
import torch
from launch_helpers import (
    BASE,
    LONG,
    LONG_FLAGS,
    METHODS,
    alive,
    hold_env,
    holder_pid,
    quiet,
    records,
    results,
    run_cli,
    start_compare,
    wait_for,
)

from ncguide.experiments import launch as launch_mod
from ncguide.experiments.checkpoint import load_checkpoint
from ncguide.experiments.compare import run_compare
from ncguide.experiments.machine import read_starts

pytestmark = pytest.mark.slow


# log-spaced, so that the winner (0.01, at the low edge) is extended one step beyond (1e-22); lr 1e38
# diverges: its runs end with DIVERGED (written by the child)
DIVERGING = {"lr": [1e-2, 1e18, 1e38]}


def test_jobs_2_gives_the_results_of_jobs_1(tmp_path, monkeypatch):
    one_by_one = tmp_path / "jobs1"
    # extend_edges: a method whose winner sits at an edge gets another selection stage of its own
    run_compare(BASE, METHODS, [0], one_by_one, grid=DIVERGING, selection_seeds=1, extend_edges=1, progress="none",
                log=quiet, launch={"threads_per_run": 1})
    monkeypatch.setattr(launch_mod, "available_cores", lambda: 2)  # two at once, whatever this machine has
    out, lines = tmp_path / "out", []
    run_compare(BASE, METHODS, [0], out, grid=DIVERGING, selection_seeds=1, extend_edges=1, progress="none",
                log=lines.append, launch={"jobs": 2})
    assert results(out) == results(one_by_one)
    assert len(json.loads((out / "selection.json").read_text())["extensions"]) == 2  # each method grew its grid
    for m in METHODS:
        why = [(d / f"runs/{m}/lr=1e+38/seed-1000/DIVERGED").read_text().replace(str(d), "OUT")
               for d in (out, one_by_one)]
        assert why[0] == why[1] and why[0].startswith("non-finite")
    assert any(" 2 running" in x for x in lines), lines  # two runs did train at once
    assert any(x.startswith("runs: ") and "; ETA ~ " in x for x in lines), lines
    at_once = {d: {s["concurrent_runs"] for p in d.glob("runs/**/machine.json") for s in read_starts(p.parent)}
               for d in (out, one_by_one)}
    assert at_once == {out: {2}, one_by_one: {1}}  # what each run recorded, and the report says
    assert "up to 2 runs trained at once" in (out / "report.md").read_text()
    assert all((p / "launch.log").is_file() for p in out.glob("runs/*/*/seed-*"))  # each child's output


def test_a_killed_run_is_reported_the_others_finish_and_a_rerun_retries_only_it(tmp_path):
    args = [*LONG_FLAGS, "--methods", "standard,slow", "--variant", "slow:method=nearest-etf", "--seeds", "1",
            "--jobs", "2", "--out", "out"]
    slow, fast = tmp_path / "out/runs/slow/seed-0", tmp_path / "out/runs/standard/seed-0"
    # the slow run stops after its second record until killed: the kill cannot come after its end
    proc, log = start_compare(tmp_path, *args, env=hold_env(tmp_path / "hold", ["slow/seed-0"]))
    wait_for(lambda: records(slow) >= 2 and holder_pid(slow), "the slow run's second record", proc=proc, log=log)
    pid = holder_pid(slow)
    os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=600) == 1
    out = log.read_text()
    error = out.strip().splitlines()[-1]
    assert error.startswith("ncguide: error: 1 run failed: runs/slow/seed-0 (killed by SIGKILL")
    assert "; log out/runs/slow/seed-0/launch.log)" in error
    assert "FAILED (killed by SIGKILL" in out
    assert load_checkpoint(fast / "checkpoint.pt")["finished"]  # the other run went on to the end
    assert not load_checkpoint(slow / "checkpoint.pt")["finished"]
    assert not (tmp_path / "out/summary.json").exists()  # no report from an incomplete comparison
    kept = (slow / "metrics.jsonl").read_text().splitlines()[:2]

    rerun = run_cli(tmp_path, *args)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "reused finished run in out/runs/standard/seed-0" in rerun.stdout
    assert "slow seed 0: resuming in out/runs/slow/seed-0" in rerun.stdout
    assert "standard seed 0: training" not in rerun.stdout and "standard seed 0: resuming" not in rerun.stdout
    assert (slow / "metrics.jsonl").read_text().splitlines()[:2] == kept  # resumed, not restarted
    assert json.loads((tmp_path / "out/summary.json").read_text())["methods"]["slow"]["seeds"] == [0]


def test_ctrl_c_stops_every_child_and_a_rerun_ends_bitwise_as_uninterrupted(tmp_path):
    ref = tmp_path / "ref"
    run_compare(LONG, METHODS, [0], ref, progress="none", log=quiet, launch={"threads_per_run": 1})

    args = [*LONG_FLAGS, "--methods", ",".join(METHODS), "--seeds", "1", "--jobs", "2", "--threads-per-run", "1",
            "--out", "out"]
    runs = [tmp_path / f"out/runs/{m}/seed-0" for m in METHODS]
    # each run stops after its second record until Ctrl-C reaches it: Ctrl-C cannot come after their end
    proc, log = start_compare(tmp_path, *args, env=hold_env(tmp_path / "hold", ["seed-0"]))
    wait_for(lambda: all(records(r) >= 2 and holder_pid(r) for r in runs), "both runs' second record", proc=proc,
             log=log)
    children = [holder_pid(r) for r in runs]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=600) == 130
    out = log.read_text()
    assert out.count("stopped (exit code 130); rerunning resumes it") == 2, out  # each saved its checkpoint
    assert not any(alive(pid) for pid in children)
    assert not any(load_checkpoint(r / "checkpoint.pt")["finished"] for r in runs)

    rerun = run_cli(tmp_path, *args)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert rerun.stdout.count(": resuming in out/runs/") == 2
    assert results(tmp_path / "out") == results(ref)


def test_a_run_through_torchrun_in_its_child(tmp_path):
    """What --gpus-per-run G > 1 starts, here on CPU (gloo): torchrun with two processes of run_one, rank 0
    writing the run folder; the threads of the run are split between them."""
    from ncguide.experiments.config import TrainConfig
    from ncguide.experiments.launch import LAUNCH_LOG, Run, child_env, start_child, write_spec

    run = Run("report", "standard", {}, 0, TrainConfig(method="standard", dataset="digits", model="mlp", epochs=1,
                                                         batch_size=64, device="cpu"), tmp_path / "run")
    write_spec(run, resume=True, threads=2)
    child = start_child(run.path, 2, child_env(2))
    assert child.wait(timeout=600) == 0, (run.path / LAUNCH_LOG).read_text()
    assert load_checkpoint(run.path / "checkpoint.pt")["finished"]
    log = (run.path / LAUNCH_LOG).read_text()
    assert "--nproc_per_node=2" in log and log.count("ncguide: done:") == 1  # rank 0 speaks for the run
    assert "(1 thread)" in log  # 2 threads over 2 processes


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@needs_cuda
def test_four_runs_share_one_gpu(tmp_path):
    """--runs-per-gpu 4 on one GPU: four children at once on the same device, results as one after another
    (CUDA's atomic adds are not bitwise reproducible: equal to float32 rounding)."""
    base = {**BASE, "device": "cuda"}
    run_compare(base, METHODS, [0, 1], tmp_path / "one", progress="none", log=quiet)
    lines = []
    run_compare(base, METHODS, [0, 1], tmp_path / "four", progress="none", log=lines.append,
                launch={"jobs": 4, "runs_per_gpu": 4})
    first_done = next(i for i, x in enumerate(lines) if ": done in " in x)
    started = [x for x in lines[:first_done] if ": training in " in x]
    assert len(started) == 4 and len({x.split("(GPU ")[1].split(";")[0] for x in started}) == 1, lines
    a, b = results(tmp_path / "one")["runs"], results(tmp_path / "four")["runs"]
    assert a.keys() == b.keys()
    for run in a:
        x, y = a[run][-1], b[run][-1]
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-3, abs=1e-6)
        assert abs(y["train_acc"] - x["train_acc"]) <= 1 / 20 + 1e-12
