"""The Slurm launcher's decisions without a cluster: ``squeue`` answered by a fake ``job_states``, submitit by a
fake executor. Collecting a job that ended without finishing its run (reported once with its logs, then
retried, its history kept), a fresh submitit folder per submission, the local launcher refusing runs still
queued as Slurm jobs, the shortest time limit, and ``RunJob.checkpoint`` not requeueing a run that ended.
Real jobs: test_launch_slurm.py."""

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from launch_helpers import BASE, TINY_FLAGS

from ncguide.experiments import slurm as slurm_mod
from ncguide.experiments.cli import main
from ncguide.experiments.config import ConfigError, TrainConfig
from ncguide.experiments.launch import LaunchConfig, Run, RunsFailedError, drive, make_launcher
from ncguide.experiments.slurm import (
    MIN_TIME_MIN,
    SIGNAL_DELAY_S,
    SIGNAL_SLACK_S,
    STOP_GRACE_S,
    RunJob,
    SlurmLauncher,
    parse_slurm,
)


def _run(out: Path, name: str = "seed-0") -> Run:
    path = out / "runs" / "standard" / name
    path.mkdir(parents=True, exist_ok=True)
    return Run("report", "standard", {}, 0, TrainConfig.from_dict(BASE), path, order=(1, 0, 0), tag=name)


def _record(run: Run, job: str, **more) -> None:
    err = run.path.parent.parent.parent / "slurm" / "old" / f"{job}_0_log.err"
    err.parent.mkdir(parents=True, exist_ok=True)
    err.write_text("srun: error: task 0: Exited with exit code 1\n")
    (run.path / "slurm.json").write_text(json.dumps({"job_id": job, "stdout": str(err.with_suffix(".out")),
                                                     "stderr": str(err), **more}))


def _launcher(out: Path, lines: list, *, resume: bool = True, wait: bool = False) -> SlurmLauncher:
    return SlurmLauncher(parse_slurm({"slurm_time": "10"}), out_dir=out, resume=resume, threads=1, wait=wait,
                         log=lines.append, poll_s=0.01)


class FakeExecutor:
    """submitit.SlurmExecutor as far as SlurmLauncher uses it: numbered jobs, logs in its folder."""

    next_id = 100
    folders: list[Path] = []

    def __init__(self, folder, max_num_timeout):
        self.folder = Path(folder)
        FakeExecutor.folders.append(self.folder)
        assert self.folder.is_dir() and not any(self.folder.iterdir())  # made for this submission, empty

    def update_parameters(self, **params):
        self.params = params

    @contextlib.contextmanager
    def batch(self):
        yield

    def submit(self, fn):
        FakeExecutor.next_id += 1
        job = str(FakeExecutor.next_id)
        paths = SimpleNamespace(stdout=self.folder / f"{job}_0_log.out", stderr=self.folder / f"{job}_0_log.err")
        return SimpleNamespace(job_id=job, paths=paths)


@pytest.fixture
def fake_slurm(monkeypatch):
    """``states`` is what squeue says (job id -> state); submissions go to FakeExecutor."""
    submitit = pytest.importorskip("submitit")
    states: dict[str, str] = {}
    monkeypatch.setattr(slurm_mod, "job_states", lambda user=None: dict(states))
    monkeypatch.setattr(submitit, "SlurmExecutor", FakeExecutor)
    FakeExecutor.folders = []
    return states


@pytest.mark.parametrize("state,says", [(None, "left the queue"), ("CANCELLED", "cancelled"), ("FAILED", "failed")])
def test_collecting_a_job_that_ended_unfinished_reports_it_once_then_retries(tmp_path, fake_slurm, state, says):
    out = tmp_path / "out"
    run = _run(out)
    (run.path / "launch.log").write_text("==== start\nepoch 3 loss 0.5\n")
    _record(run, "7")
    if state:
        fake_slurm["7"] = state
    lines = []
    launcher = _launcher(out, lines)
    launcher.submit([run])
    assert FakeExecutor.folders == [] and not launcher.tracked  # not submitted again
    [(ended, outcome)] = launcher.wait()
    record = json.loads((run.path / "slurm.json").read_text())
    assert ended is run and outcome.status == "failed" and f"Slurm job 7 {says} before the run finished" in outcome.why
    assert outcome.logs == (run.path / "launch.log", Path(record["stderr"]))  # both logs, as in wait mode
    assert record["job_id"] == "7" and record["failed"]["why"] == outcome.why  # where its logs are: kept
    assert any("FAILED" in x and record["stderr"] in x for x in lines)

    lines = []
    again = _launcher(out, lines)
    again.submit([run])  # the next command retries it, saying so
    assert any(x == f"seed-0: retrying; Slurm job 7 failed before ({outcome.why})" for x in lines), lines
    new = json.loads((run.path / "slurm.json").read_text())
    assert new["job_id"] != "7" and list(again.tracked) == [run.path]
    assert [j["job_id"] for j in new["previous_jobs"]] == ["7"]
    assert new["previous_jobs"][0] == record  # the failed job, its logs and its failure


def test_a_collection_that_finds_a_failure_ends_with_the_runs_failed_error(tmp_path, fake_slurm):
    out = tmp_path / "out"
    failed, queued = _run(out, "seed-0"), _run(out, "seed-1")
    _record(failed, "7")
    (failed.path / "launch.log").write_text("==== start\n")
    _record(queued, "8")
    fake_slurm["8"] = "RUNNING"
    lines = []
    with pytest.raises(RunsFailedError) as e:
        drive({"standard": (stage for stage in [[failed, queued]])}, _launcher(out, lines), resume=True,
              out_dir=out, log=lines.append)
    assert "1 run failed: runs/standard/seed-0 (Slurm job 7 left the queue before the run finished" in str(e.value)
    assert str(failed.path / "launch.log") in str(e.value) and "slurm/old/7_0_log.err" in str(e.value)
    assert "seed-1: already queued as Slurm job 8 (RUNNING)" in lines and FakeExecutor.folders == []


@pytest.mark.parametrize("state", ["PENDING", "RUNNING", "TIMEOUT", "PREEMPTED"])
def test_a_job_still_queued_or_that_may_be_requeued_is_followed_not_resubmitted(tmp_path, fake_slurm, state):
    out = tmp_path / "out"
    run = _run(out)
    _record(run, "7")
    fake_slurm["7"] = state
    launcher = _launcher(out, [])
    launcher.submit([run])
    assert launcher.tracked == {run.path: (run, "7")} and FakeExecutor.folders == []
    assert launcher.wait() == []  # --no-wait: nothing ended at one look (a TIMEOUT needs two looks)
    assert json.loads((run.path / "slurm.json").read_text())["job_id"] == "7"


def test_no_resume_submits_again_keeping_the_history(tmp_path, fake_slurm):
    out = tmp_path / "out"
    run = _run(out)
    _record(run, "7")
    launcher = _launcher(out, [], resume=False)
    launcher.submit([run])
    record = json.loads((run.path / "slurm.json").read_text())
    assert record["job_id"] != "7" and [j["job_id"] for j in record["previous_jobs"]] == ["7"]


def test_each_submission_gets_a_fresh_submitit_folder(tmp_path, fake_slurm):
    out = tmp_path / "out"
    planted = out / "slurm"
    planted.mkdir(parents=True)
    (planted / "101_0_submitted.pkl").write_bytes(b"not ours")
    launcher = _launcher(out, [])
    a, b = _run(out, "seed-0"), _run(out, "seed-1")
    launcher.submit([a])
    launcher.submit([b])
    first, second = FakeExecutor.folders
    assert first != second and first.parent == second.parent == planted  # never OUT/slurm itself
    assert json.loads((a.path / "slurm.json").read_text())["stderr"].startswith(str(first) + "/")
    assert json.loads((b.path / "slurm.json").read_text())["stderr"].startswith(str(second) + "/")
    assert launcher._parameters()["signal_delay_s"] == SIGNAL_DELAY_S


# ----------------------------------------------------------------------------------------------------
# the local launcher and runs still queued as Slurm jobs


def _planned(out: Path) -> dict:
    run = _run(out)
    return {run.path: run.cfg}


def test_the_local_launcher_refuses_runs_still_queued_as_slurm_jobs(tmp_path, monkeypatch):
    out = tmp_path / "out"
    planned = _planned(out)
    [path] = planned
    states = {"7": "RUNNING"}
    monkeypatch.setattr(slurm_mod, "job_states", lambda user=None: dict(states))
    monkeypatch.setattr(slurm_mod.shutil, "which", lambda cmd: f"/usr/bin/{cmd}")
    kw = {"out_dir": out, "resume": True, "progress": "none", "log": lambda *_: None, "train_fn": None}
    make_launcher(LaunchConfig(), planned, **kw)  # no slurm.json: no question asked
    (path / "slurm.json").write_text(json.dumps({"job_id": "7"}))
    for launch in (LaunchConfig(), LaunchConfig(jobs=2)):
        with pytest.raises(ConfigError, match=rf"1 run of this comparison is still queued or running as Slurm job: "
                                              rf"{path} \(job 7\); the local launcher would train them a second "
                                              "time: wait for the jobs, collect them with --launcher slurm, or "
                                              "scancel them"):
            make_launcher(launch, planned, **kw)
    states["7"] = "CANCELLED"  # gone for good: the local launcher may finish it
    make_launcher(LaunchConfig(), planned, **kw)


def test_the_local_launcher_does_not_call_squeue_without_a_slurm_record(tmp_path, monkeypatch):
    def no_squeue(user=None):
        raise AssertionError("squeue called")

    monkeypatch.setattr(slurm_mod, "job_states", no_squeue)
    kw = {"out_dir": tmp_path, "resume": True, "progress": "none", "log": lambda *_: None, "train_fn": None}
    make_launcher(LaunchConfig(jobs=2), _planned(tmp_path / "out"), **kw)


def test_compare_with_the_local_launcher_on_a_queued_run_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    run = out / "runs/standard/seed-0"
    run.mkdir(parents=True)
    (run / "slurm.json").write_text(json.dumps({"job_id": "41"}))
    monkeypatch.setattr(slurm_mod, "job_states", lambda user=None: {"41": "PENDING"})
    monkeypatch.setattr(slurm_mod.shutil, "which", lambda cmd: f"/usr/bin/{cmd}")
    argv = ["compare", *TINY_FLAGS, "--epochs", "1", "--methods", "standard", "--seeds", "1", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ncguide: error: 1 run of this comparison is still queued"), err
    assert f"{run} (job 41)" in err and "scancel" in err
    assert sorted(p.name for p in out.rglob("*")) == ["runs", "seed-0", "slurm.json", "standard"]  # nothing written


# ----------------------------------------------------------------------------------------------------
# time limits


def test_a_slurm_time_shorter_than_the_warning_and_the_checkpoint_is_refused(capsys):
    # the minimum covers the earliest warning before the limit and the checkpoint's grace, with time to train
    assert MIN_TIME_MIN * 60 > SIGNAL_DELAY_S + SIGNAL_SLACK_S + STOP_GRACE_S
    assert parse_slurm({"slurm_time": MIN_TIME_MIN}).time_min == MIN_TIME_MIN
    for short in (MIN_TIME_MIN - 1, f"{MIN_TIME_MIN - 1}:00", "0:02:00"):
        with pytest.raises(ConfigError, match=rf"is too short: each job needs at least {MIN_TIME_MIN} minutes "
                                              rf"\(Slurm warns it up to 150 s before its limit, then its run gets "
                                              "up to 60 s to save a checkpoint"):
            parse_slurm({"slurm_time": short})
    assert main(["compare", *TINY_FLAGS, "--launcher", "slurm", "--slurm-time", "2", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"at least {MIN_TIME_MIN} minutes" in err, err


# ----------------------------------------------------------------------------------------------------
# RunJob.checkpoint: requeue only a run that was stopped


@pytest.fixture
def child(monkeypatch):
    """Set the job's child to a process running ``code``."""
    started = []

    def start(code: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
        started.append(p)
        monkeypatch.setattr(slurm_mod, "_child", p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_checkpoint_stops_a_running_child_and_requeues_its_run(tmp_path, child):
    pytest.importorskip("submitit")
    p = child("import time; time.sleep(120)")
    job = RunJob(str(tmp_path), 0, 1)
    again = job.checkpoint()
    assert again is not None and again.function is job  # requeued: the same run again
    assert p.poll() is not None  # stopped (SIGTERM)


def test_checkpoint_does_not_requeue_a_run_that_ended(tmp_path, child):
    pytest.importorskip("submitit")
    from ncguide.experiments.train import train

    p = child("pass")  # the child exited by itself ...
    p.wait()
    assert RunJob(str(tmp_path / "unfinished"), 0, 1).checkpoint() is None  # ... failed: not retried by a requeue
    done = tmp_path / "done"
    train(TrainConfig.from_dict(BASE), done, progress="none")
    assert RunJob(str(done), 0, 1).checkpoint() is None  # finished
    p = child("import time; time.sleep(120)")  # a finished run's child still exiting: stopped, not requeued
    assert RunJob(str(done), 0, 1).checkpoint() is None and p.poll() is not None


def test_a_job_cancelled_before_it_started_names_no_missing_log(tmp_path, fake_slurm):
    """scancel of a pending job: no launch.log and no job log exist; the failure says so instead of pointing at
    files that were never written (review finding)."""
    out = tmp_path / "out"
    run = _run(out)
    _record(run, "9")
    Path(json.loads((run.path / "slurm.json").read_text())["stderr"]).unlink()  # the job never ran
    lines = []
    launcher = _launcher(out, lines)
    launcher.submit([run])
    [(_, outcome)] = launcher.wait()
    assert outcome.logs == () and "it never started: no log was written" in outcome.why
    assert any("FAILED" in x and x.endswith("no log written") for x in lines), lines
    error = RunsFailedError([(run, outcome)], out)
    assert "no log written" in str(error) and "launch.log" not in str(error)
