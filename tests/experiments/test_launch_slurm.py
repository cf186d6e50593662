"""``compare --launcher slurm`` on a real Slurm (``scripts/local-slurm.sh up``; skipped without one): the
results of a local comparison, ``--no-wait`` then a later compare collecting without submitting twice, a
job cancelled mid-run reported and resumed by a rerun, a requeued job resuming from its checkpoint, bad
options refused before anything is submitted."""

import json
import re
import shutil
import subprocess
import time

import pytest
from launch_helpers import (
    BASE,
    GRID,
    LONG,
    LONG_FLAGS,
    METHODS,
    holder_pid,
    quiet,
    records,
    results,
    run_cli,
    start_compare,
    wait_for,
)

from ncguide.experiments import slurm as slurm_mod
from ncguide.experiments.cli import main
from ncguide.experiments.compare import run_compare


def _slurm_up() -> str | None:
    """Why the Slurm tests cannot run here, or None."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no Slurm here (sinfo/sbatch not found; scripts/local-slurm.sh up starts a one-node cluster)"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30).stdout.split()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"Slurm does not answer ({e})"
    if not any(s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for s in states):
        return f"no Slurm node is up (sinfo: {states or 'nothing'}; scripts/local-slurm.sh up)"
    return None


pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.skipif(_slurm_up() is not None, reason=str(_slurm_up()))]

# one CPU and a little memory per job, so that both cores of a small node run jobs at once
SLURM = {"launcher": "slurm", "slurm_time": "10", "slurm_cpus_per_run": 1, "slurm_mem": "300M"}
SLURM_FLAGS = ["--launcher", "slurm", "--slurm-time", "10", "--slurm-cpus-per-run", "1", "--slurm-mem", "300M"]


def _jobs() -> set[str]:
    return set(subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout.split())


def _job(run) -> str:
    return json.loads((run / "slurm.json").read_text())["job_id"]


def _state(job: str) -> str:
    return slurm_mod.job_states().get(job, "")


def test_slurm_gives_the_local_results_and_no_wait_collects_later(tmp_path, monkeypatch):
    monkeypatch.setattr(slurm_mod, "POLL_S", 1.0)
    ref = tmp_path / "ref"
    run_compare(BASE, METHODS, [0], ref, grid=GRID, selection_seeds=1, progress="none", log=quiet,
                launch={"threads_per_run": 1})

    out = tmp_path / "out"

    def compare(wait: bool, log=quiet):
        return run_compare(BASE, METHODS, [0], out, grid=GRID, selection_seeds=1, progress="none", log=log,
                           launch={**SLURM, "wait": wait})

    assert compare(wait=False) == {}  # submitted, not waited for
    first = {p.parent: json.loads(p.read_text())["job_id"] for p in out.glob("runs/**/slurm.json")}
    assert len(first) == 4 and not (out / "summary.json").exists()
    lines = []
    compare(wait=False, log=lines.append)  # collects what finished; submits nothing twice
    assert {p: _job(p) for p in first} == first
    assert not any("submitted" in x and str(p) in x for x in lines for p in first)
    assert compare(wait=True)["methods"]
    assert results(out) == results(ref)
    assert {p: _job(p) for p in first} == first


@pytest.mark.parametrize("wait", [True, False])
def test_a_cancelled_job_is_reported_and_a_rerun_resumes_its_run(tmp_path, wait):
    """Whether the compare waits for the job or a later one collects it (``--no-wait``): the cancelled job is
    reported as a failed run with its logs, not submitted again by that command, and kept in slurm.json; the
    next command submits the run again, saying which job failed before, and it resumes from its checkpoint."""
    args = [*LONG_FLAGS, "--methods", "standard", "--seeds", "1", *SLURM_FLAGS, "--out", "out"]
    run = tmp_path / "out/runs/standard/seed-0"
    if wait:
        proc, log = start_compare(tmp_path, *args)
    else:
        submitted = run_cli(tmp_path, *args, "--no-wait")
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        proc, log = None, None
    wait_for(lambda: records(run) >= 2 and holder_pid(run), "the run's second record", proc=proc, log=log)
    job = _job(run)
    subprocess.run(["scancel", job], check=True)
    if wait:
        assert proc.wait(timeout=600) == 1
        error = log.read_text().strip().splitlines()[-1]
    else:
        wait_for(lambda: _state(job) in ("", "CANCELLED"), "the job to end", every=0.5)
        collect = run_cli(tmp_path, *args, "--no-wait")
        assert collect.returncode == 1 and "submitted" not in collect.stdout, collect.stdout + collect.stderr
        error = collect.stderr.strip().splitlines()[-1]
    gone = "cancelled" if wait else "(cancelled|left the queue)"
    assert re.match(rf"ncguide: error: 1 run failed: runs/standard/seed-0 \(Slurm job {job} {gone} before the run "
                    "finished", error), error
    logs = rf"; log out/runs/standard/seed-0/launch.log, \S*/out/slurm/[^/ ]+/{job}_0_log.err\)"
    assert re.search(logs, error), error
    record = json.loads((run / "slurm.json").read_text())
    assert record["job_id"] == job and record["stderr"].endswith(f"/{job}_0_log.err") and "failed" in record
    kept = (run / "metrics.jsonl").read_text().splitlines()[:2]

    rerun = run_cli(tmp_path, *args)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"standard seed 0: retrying; Slurm job {job} failed before (Slurm job {job} " in rerun.stdout, rerun.stdout
    assert _job(run) != job  # a new job
    assert json.loads((run / "slurm.json").read_text())["previous_jobs"] == [record]
    assert "resuming from its checkpoint" in (run / "launch.log").read_text().split("====")[-1]
    assert (run / "metrics.jsonl").read_text().splitlines()[:2] == kept


@pytest.mark.parametrize("how", ["scontrol requeue", "time-limit warning"])
def test_a_requeued_job_resumes_from_its_checkpoint(tmp_path, how):
    """By hand (``scontrol requeue``: Slurm stops the job, the run checkpoints on SIGTERM), or as Slurm warns
    a job of its time limit or of preemption (SIGUSR2: submitit calls RunJob.checkpoint, which stops the run,
    and requeues the job)."""
    ref = tmp_path / "ref"
    run_compare(LONG, ["standard"], [0], ref, progress="none", log=quiet, launch={"threads_per_run": 1})
    args = [*LONG_FLAGS, "--methods", "standard", "--seeds", "1", *SLURM_FLAGS, "--out", "out"]
    run = tmp_path / "out/runs/standard/seed-0"
    proc, log = start_compare(tmp_path, *args)
    wait_for(lambda: records(run) >= 2 and holder_pid(run), "the run's second record", proc=proc, log=log)
    job = _job(run)
    if how == "scontrol requeue":
        subprocess.run(["scontrol", "requeue", job], check=True)
    else:
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait_for(lambda: _state(job) == "PENDING", "the requeued job to wait", every=0.5, proc=proc, log=log)
    time.sleep(1)
    # Slurm holds a requeued job back for a while; let it start now
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    assert proc.wait(timeout=600) == 0, log.read_text()
    attempts = (run / "launch.log").read_text().split("==== ")[1:]
    assert len(attempts) == 2, attempts
    assert "ncguide: stopped" in attempts[0] and "resuming from its checkpoint" in attempts[1]
    assert _job(run) == job  # the same job, run again
    assert results(tmp_path / "out") == results(ref)  # bitwise as uninterrupted, wall-clock aside


@pytest.mark.parametrize("flags,says", [
    (["--slurm-partition", "nosuch"], "invalid partition specified: nosuch"),
    (["--slurm-extra", "foo=bar"], "unrecognized option '--foo=bar'"),
    (["--slurm-cpus-per-run", "4096"], "Slurm refuses these job options"),
])
def test_bad_slurm_options_exit_2_before_anything_is_submitted(tmp_path, capsys, flags, says):
    before = _jobs()
    out = tmp_path / "out"
    argv = ["compare", *LONG_FLAGS, "--methods", "standard", "--seeds", "1", "--launcher", "slurm", "--slurm-time", "5",
            *flags, "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ncguide: error: ") and says in err, err
    assert not out.exists() and _jobs() <= before
