"""The runs of a comparison as Slurm jobs, through submitit (``pip install 'ncguide[slurm]'``).

    ncguide compare --config cifar10-resnet18 --out out/c10 --launcher slurm \\
        --slurm-partition gpu --slurm-time 12:00:00 --slurm-gpus-per-run 1 --slurm-cpus-per-run 8

Each stage of each method's pipeline (``launch.drive``) goes out as one job array; a job runs the run's
child (``python -m ncguide.experiments.run_one RUN_DIR``, through torchrun for several GPUs) with its output
appended to ``RUN_DIR/launch.log``; submitit's own logs and pickles sit in a fresh folder per submission,
``OUT/slurm/<time>-<pid>-<random>/`` (created here, never reused: a job only unpickles what its own ``compare``
wrote there). ``RUN_DIR/slurm.json`` records the job id, its log files, a failure once reported
(``failed``) and the run's earlier jobs (``previous_jobs``).

- Settings (``--slurm-*`` flags, YAML ``slurm_*`` keys; :func:`parse_slurm`): partition, time (required:
  each job's limit, at least ``MIN_TIME_MIN`` minutes), account, GPUs and CPUs per run (a run's thread
  count is its CPUs), memory, array parallelism, setup lines run before the job (module loads, environment
  activation) and extra ``#SBATCH`` options passed through. They are checked with ``sbatch --test-only``
  before anything is written or submitted (:func:`check_cluster`).
- Preemption and time limits: Slurm warns the job with SIGUSR2 ``SIGNAL_DELAY_S`` (90) s ahead (up to 60 s
  more: Slurm's timing); submitit calls :meth:`RunJob.checkpoint`, which stops the child (it saves a
  checkpoint at its current step, within ``STOP_GRACE_S``), and requeues the job, which resumes from that
  checkpoint (up to ``MAX_TIMEOUTS`` times after time limits; any number of preemptions). A run that has
  already ended (finished, diverged, or its child exited by itself) is not requeued. A job requeued by hand
  (``scontrol requeue``) or by the cluster resumes the same way.
- What happened is read from the run folders (a finished checkpoint, ``DIVERGED``) and from ``squeue`` (is
  the job still queued or running?); ``sacct`` is not needed. A job that left the queue without finishing its
  run is a failed run, named with its logs (``launch.log`` and the job's stderr), whether the command waited
  or collects later; it is recorded as reported in ``slurm.json``, and the next ``compare`` submits the
  run again (saying so, and which job failed before).
- Waiting: the submitting ``compare`` polls every ``POLL_S`` seconds and shows runs queued / running /
  finished / failed. With ``--no-wait`` it returns after submitting; running the same ``compare`` again
  collects what finished, advances the stages, and never submits a run whose job is still queued or running.
  Ctrl-C leaves the jobs running (``scancel`` stops them). The local launcher refuses to start while runs
  of the comparison are queued or running as Slurm jobs (:func:`check_queued`).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import config_diff
from .config import ConfigError
from .files import atomic_write_text, json_text
from .launch import (
    LAUNCH_LOG,
    LAUNCH_SPEC,
    LaunchError,
    Outcome,
    Run,
    child_env,
    failure_cause,
    run_outcome,
    signal_group,
    start_child,
    where_logs,
    whole_number,
    write_spec,
)
from .report import DIVERGED

__all__ = ["SLURM_KEYS", "SLURM_RECORD", "SlurmConfig", "SlurmError", "parse_slurm", "slurm_minutes", "check_cluster",
           "check_queued", "job_states", "SlurmLauncher", "RunJob", "MIN_TIME_MIN"]

SLURM_KEYS = ("slurm_partition", "slurm_time", "slurm_account", "slurm_gpus_per_run", "slurm_cpus_per_run",
              "slurm_mem", "slurm_array_parallelism", "slurm_setup", "slurm_extra")
SLURM_RECORD = "slurm.json"
POLL_S = 5.0  # seconds between two looks at the queue (one squeue call)
MAX_TIMEOUTS = 10  # requeues after a time limit before a run's job gives up (preemptions do not count)
STOP_GRACE_S = 60.0  # a job's child gets this long to checkpoint before it is killed
SIGNAL_DELAY_S = 90  # Slurm warns a job (SIGUSR2) this long before its time limit (submitit's signal_delay_s)
SIGNAL_SLACK_S = 60  # ... or up to this much earlier (sbatch --signal: Slurm's event resolution)
# the shortest --slurm-time: the earliest warning and the checkpoint's grace, plus a minute of training
MIN_TIME_MIN = -(-(SIGNAL_DELAY_S + SIGNAL_SLACK_S + int(STOP_GRACE_S) + 60) // 60)
# states after which a job will not run again; those of the second set may still turn into a requeue
_FINAL = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "OUT_OF_MEMORY", "REVOKED"}
_MAYBE_FINAL = {"NODE_FAIL", "PREEMPTED", "TIMEOUT"}
_RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING"}
# sbatch options ncguide sets itself, or that have a flag of their own
_OWN_OPTIONS = {"array": None, "output": None, "error": None, "open-mode": None, "signal": None, "nodes": None,
                "ntasks": None, "ntasks-per-node": None, "wrap": None, "partition": "--slurm-partition",
                "time": "--slurm-time", "account": "--slurm-account", "mem": "--slurm-mem",
                "cpus-per-task": "--slurm-cpus-per-run", "gpus-per-node": "--slurm-gpus-per-run",
                "gpus": "--slurm-gpus-per-run"}


class SlurmError(LaunchError):
    """Slurm did not do what was asked (``sbatch`` failed, the queue cannot be read)."""


@dataclass(frozen=True)
class SlurmConfig:
    """The Slurm settings of a comparison's jobs (one job per run)."""

    time_min: int  # each job's time limit, minutes
    partition: str | None = None
    account: str | None = None
    gpus_per_run: int = 0
    cpus_per_run: int | None = None
    mem: str | None = None  # per job, Slurm's syntax: 16G, 4000M
    array_parallelism: int | None = None  # at most this many jobs of an array at once
    setup: tuple[str, ...] = ()  # shell lines run before each job
    extra: tuple[tuple[str, str | bool], ...] = ()  # further sbatch options: (name, value or True for a bare flag)

    def sbatch_options(self) -> list[str]:
        """These settings as sbatch flags."""
        opts = [f"--time={self.time_min}"]
        for name, value in (("partition", self.partition), ("account", self.account), ("mem", self.mem),
                            ("cpus-per-task", self.cpus_per_run), ("gpus-per-node", self.gpus_per_run or None)):
            if value is not None:
                opts.append(f"--{name}={value}")
        return opts + [f"--{k}" if v is True else f"--{k}={v}" for k, v in self.extra]


def slurm_minutes(text: str | int) -> int:
    """A Slurm time limit → whole minutes (seconds rounded up): ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``,
    ``D-H:M:S``; an int is minutes. ``ValueError`` otherwise, or for less than a second."""
    bad = ValueError(f"bad Slurm time {text!r}; write minutes, H:MM:SS or D-HH:MM:SS, e.g. 90, 2:00:00, 1-00:00:00")
    if isinstance(text, bool):
        raise bad
    if isinstance(text, int):
        seconds = 60 * text
    else:
        s = str(text).strip()
        days, dash, rest = s.partition("-")
        parts = (rest if dash else s).split(":")
        if not all(p.isdigit() for p in parts + ([days] if dash else [])) or len(parts) > 3:
            raise bad
        n = [int(p) for p in parts]
        h, m, sec = (n + [0, 0])[:3] if dash else ([0, *n, 0][:3] if len(n) < 3 else n)  # D-H[:M[:S]]; M[:S]; H:M:S
        seconds = (((int(days) if dash else 0) * 24 + h) * 60 + m) * 60 + sec
    if seconds < 1:
        raise bad
    return -(-seconds // 60)


def parse_slurm(settings: Mapping) -> SlurmConfig:
    """The ``slurm_*`` keys of ``settings`` (YAML values or CLI strings) → :class:`SlurmConfig`; a
    :class:`ConfigError` naming the key for a bad value."""
    if settings.get("slurm_time") is None:
        raise ConfigError("slurm_time", "--launcher slurm needs --slurm-time (YAML slurm_time:), the time limit of "
                                        "each run's job, e.g. 2:00:00 or 1-00:00:00 (in YAML, quote it: \"2:00:00\")")
    try:
        minutes = slurm_minutes(settings["slurm_time"])
    except ValueError as e:
        raise ConfigError("slurm_time", str(e)) from None
    if minutes < MIN_TIME_MIN:
        raise ConfigError("slurm_time", f"slurm_time {settings['slurm_time']!r} is too short: each job needs at least "
                                        f"{MIN_TIME_MIN} minutes (Slurm warns it up to "
                                        f"{SIGNAL_DELAY_S + SIGNAL_SLACK_S} s before its limit, then its run gets up "
                                        f"to {STOP_GRACE_S:g} s to save a checkpoint)")
    names = {}
    for key in ("slurm_partition", "slurm_account"):
        value = settings.get(key)
        if value is not None and (not isinstance(value, str) or not re.fullmatch(r"[\w.,+-]+", value.strip())):
            raise ConfigError(key, f"{key} must be a Slurm name (letters, digits, '_', '-', '.'); got {value!r}")
        names[key] = value.strip() if value is not None else None
    mem = settings.get("slurm_mem")
    if mem is not None:
        mem = str(mem).strip()
        if not re.fullmatch(r"\d+[KMGTkmgt]?", mem):
            raise ConfigError("slurm_mem", f"slurm_mem must be a size like 16G or 4000M (per job); got {mem!r}")
    return SlurmConfig(
        time_min=minutes, partition=names["slurm_partition"], account=names["slurm_account"],
        gpus_per_run=whole_number(settings, "slurm_gpus_per_run", 0) or 0,
        cpus_per_run=whole_number(settings, "slurm_cpus_per_run", 1), mem=mem,
        array_parallelism=whole_number(settings, "slurm_array_parallelism", 1),
        setup=_setup_lines(settings.get("slurm_setup")), extra=_extra_options(settings.get("slurm_extra")))


def _setup_lines(value) -> tuple[str, ...]:
    if value is None:
        return ()
    lines = [value] if isinstance(value, str) else value
    if not isinstance(lines, (list, tuple)) or not all(isinstance(x, str) and x.strip() and "\n" not in x
                                                       for x in lines):
        raise ConfigError("slurm_setup", f"slurm_setup must be shell lines (one command each, e.g. 'module load "
                                         f"cuda'); got {value!r}")
    return tuple(x.strip() for x in lines)


def _extra_options(value) -> tuple[tuple[str, str | bool], ...]:
    """``["qos=high", "exclusive"]`` (CLI) or ``{qos: high, exclusive: true}`` (YAML) → sbatch options."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value):
        items = [(k, v if eq else True) for k, eq, v in (x.partition("=") for x in value)]
    else:
        raise ConfigError("slurm_extra", f"slurm_extra must be KEY=VALUE items (or a mapping in YAML); got {value!r}")
    out = []
    for key, v in items:
        name = str(key).strip().removeprefix("--").replace("_", "-")
        if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
            raise ConfigError("slurm_extra", f"slurm_extra {key!r} is not an sbatch option name (e.g. qos, "
                                             "constraint, exclude)")
        if name in _OWN_OPTIONS:
            own = _OWN_OPTIONS[name]
            raise ConfigError("slurm_extra", f"slurm_extra {name!r} is " + (f"set with {own}" if own else
                                                                            "set by ncguide for each job"))
        if v is None or v is False or (isinstance(v, str) and (not v.strip() or "\n" in v)):
            raise ConfigError("slurm_extra", f"slurm_extra {name!r} needs a value (KEY=VALUE), or true for a flag")
        out.append((name, True if v is True else str(v).strip()))
    return tuple(out)


def check_cluster(cfg: SlurmConfig) -> None:
    """submitit is installed, the Slurm commands are here, and ``sbatch --test-only`` accepts ``cfg``'s
    options (partition, GPUs, memory, extra options...): else :class:`ConfigError`, before anything is
    written or submitted."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ConfigError("launcher", "--launcher slurm needs submitit: pip install 'ncguide[slurm]'") from None
    missing = [c for c in ("sbatch", "squeue", "srun") if shutil.which(c) is None]
    if missing:
        raise ConfigError("launcher", f"--launcher slurm: {missing[0]} is not on PATH; run the comparison where "
                                      "Slurm's commands are (a login node of the cluster)")
    try:
        res = subprocess.run(["sbatch", "--test-only", *cfg.sbatch_options(), "--wrap=true"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConfigError("slurm", f"cannot reach Slurm (sbatch --test-only: {e})") from None
    if res.returncode != 0:
        why = next((x.strip() for x in res.stderr.splitlines() if x.strip()), f"exit code {res.returncode}")
        raise ConfigError("slurm", f"Slurm refuses these job options ({' '.join(cfg.sbatch_options())}): {why}")


def job_states(user: str | None = None) -> dict[str, str]:
    """``{job id: state}`` of the user's jobs the controller knows (array tasks as ``ID_INDEX``; finished
    jobs for a few minutes). :class:`SlurmError` when ``squeue`` fails."""
    try:
        res = subprocess.run(["squeue", "-h", "-r", "--states=all", "-u", user or getpass.getuser(), "-o", "%i %T"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SlurmError(f"cannot read the Slurm queue (squeue: {e})") from None
    if res.returncode != 0:
        raise SlurmError(f"cannot read the Slurm queue (squeue: {res.stderr.strip() or res.returncode})")
    return dict(line.split(None, 1) for line in res.stdout.splitlines() if len(line.split(None, 1)) == 2)


def _in_queue(state: str | None) -> bool:
    """Queued, running, or ended in a way a requeue may still follow."""
    return state is not None and state not in _FINAL


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads((path / SLURM_RECORD).read_text())
        return record if isinstance(record, dict) and isinstance(record.get("job_id"), str) else None
    except (OSError, ValueError):
        return None


def check_queued(planned: Mapping[Path, object], *, local: bool = False) -> None:
    """A run folder whose recorded job (``slurm.json``) is still in the queue must be waiting for the same run
    (the Slurm launcher collects it); with ``local`` (the local launcher would train it a second time beside
    its job) it must not be there at all, unless the run is already a result. Else a :class:`ConfigError`,
    before anything is written; ``planned`` maps run folders to their TrainConfig. ``squeue`` is called only
    when some folder has a ``slurm.json`` (and, for ``local``, only where Slurm's commands are)."""
    records = {p: r for p in planned if (r := _read_record(p)) is not None}
    if local:
        records = {p: r for p, r in records.items() if run_outcome(p) is None}
        if records and shutil.which("squeue") is None:
            return  # no Slurm here: nothing of this comparison can be queued from this machine
    if not records:
        return
    try:
        states = job_states()
    except SlurmError as e:
        raise ConfigError("launcher", f"{e}; it is needed to check that the runs recorded as Slurm jobs "
                                      f"(RUN_DIR/{SLURM_RECORD}) are not still queued") from None
    if local:
        queued = [(p, r["job_id"]) for p, r in records.items() if _in_queue(states.get(r["job_id"]))]
        if queued:
            shown = ", ".join(f"{p} (job {job})" for p, job in queued[:3]) + (", ..." if len(queued) > 3 else "")
            raise ConfigError("launcher", f"{len(queued)} run{'s' if len(queued) > 1 else ''} of this comparison "
                                          f"{'are' if len(queued) > 1 else 'is'} still queued or running as Slurm "
                                          f"job{'s' if len(queued) > 1 else ''}: {shown}; the local launcher would "
                                          "train them a second time: wait for the jobs, collect them with "
                                          "--launcher slurm, or scancel them")
        return
    for path, record in records.items():
        if not _in_queue(states.get(record["job_id"])):
            continue
        try:
            queued = json.loads((path / LAUNCH_SPEC).read_text())["config"]
        except (OSError, ValueError, KeyError, TypeError):
            queued = None
        diff = config_diff(queued, planned[path].to_dict()) if isinstance(queued, dict) else {"config": ("?", "?")}
        if diff:
            what = "; ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in list(diff.items())[:3])
            raise ValueError(f"{path} is queued or running as Slurm job {record['job_id']} with other settings "
                             f"({what}); wait for it or scancel it, or use another --out")


class SlurmLauncher:
    """Runs as job arrays on Slurm (see the module docstring)."""

    shows_status = True
    at_once = None  # jobs wait in Slurm's queue: no time estimate

    def __init__(self, cfg: SlurmConfig, *, out_dir: Path, resume: bool, threads: int, wait: bool,
                 log: Callable[[str], None], poll_s: float | None = None):
        self.cfg, self.out_dir, self.resume, self.threads = cfg, out_dir, resume, threads
        self.wait_, self.log, self.poll_s = wait, log, POLL_S if poll_s is None else poll_s
        self.tracked: dict[Path, tuple[Run, str]] = {}  # run folder -> (run, job id)
        self.collected: list[tuple[Run, Outcome]] = []  # runs whose job ended before this command: the next wait()
        self.states: dict[str, str] = {}
        self._seen_final: set[str] = set()  # jobs seen once in a state that may still turn into a requeue

    def __enter__(self) -> SlurmLauncher:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.tracked:
            ids = sorted({job for _, job in self.tracked.values()})
            shown = ", ".join(ids[:8]) + (", ..." if len(ids) > 8 else "")
            stop = "; scancel them to stop them" if exc_type is KeyboardInterrupt else ""
            self.log(f"{len(self.tracked)} run{'s' if len(self.tracked) > 1 else ''} still queued or running as Slurm "
                     f"job{'s' if len(ids) > 1 else ''} {shown}; run the same command again to collect them (it does "
                     f"not submit them twice){stop}")
        return False

    def submit(self, runs: list[Run]) -> None:
        """Submit ``runs``, except those whose recorded job is still in the queue (tracked, not submitted
        twice) and, when resuming, those whose job ended without finishing the run and was not reported yet:
        they are failed runs, returned by the next :meth:`wait` (reported once; the next command submits them
        again)."""
        if not runs:
            return
        records = {r.path: _read_record(r.path) for r in runs}
        states = job_states() if any(records.values()) else {}
        fresh = []
        for r in runs:
            record = records[r.path]
            job = record["job_id"] if record is not None else None
            if record is None:
                fresh.append(r)
            elif _in_queue(states.get(job)):
                self.tracked[r.path] = (r, job)
                self.log(f"{r.tag}: already queued as Slurm job {job} ({states[job]})")
            elif _reported(record) or not self.resume:  # retried, or (--no-resume) trained again from scratch
                if _reported(record):
                    self.log(f"{r.tag}: retrying; Slurm job {job} failed before ({record['failed'].get('why', '?')})")
                fresh.append(r)
            else:
                self.collected.append((r, self._outcome(r, job, states.get(job))))
        if fresh:
            self._submit(fresh, records)

    def _submit(self, runs: list[Run], records: Mapping[Path, dict | None]) -> None:
        import submitit

        for r in runs:
            write_spec(r, self.resume, self.threads)
            (r.path / DIVERGED).unlink(missing_ok=True)
        # a folder of its own (exist_ok=False): the jobs unpickle only what this submission writes there
        folder = self.out_dir / "slurm" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(4)}"
        folder.mkdir(parents=True, exist_ok=False)
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=MAX_TIMEOUTS)
        executor.update_parameters(**self._parameters())
        try:
            with executor.batch():
                jobs = [executor.submit(RunJob(str(r.path.absolute()), self.cfg.gpus_per_run, self.threads))
                        for r in runs]
        except Exception as e:  # noqa: BLE001 (sbatch's failure, as one line)
            why = next((x.strip() for x in str(e).splitlines() if x.strip()), type(e).__name__)
            raise SlurmError(f"submitting {len(runs)} runs to Slurm failed: {why}") from e
        for r, job in zip(runs, jobs):
            record = {"job_id": str(job.job_id), "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
                      "submitted": time.strftime("%Y-%m-%d %H:%M:%S %z")}
            before = records.get(r.path)
            if before is not None:  # the run's earlier jobs, oldest first, each with its logs (and failure)
                earlier = before.get("previous_jobs")
                record["previous_jobs"] = [*(earlier if isinstance(earlier, list) else []),
                                           {k: v for k, v in before.items() if k != "previous_jobs"}]
            atomic_write_text(r.path / SLURM_RECORD, json_text(record, indent=2) + "\n")
            self.tracked[r.path] = (r, record["job_id"])
            self.states[record["job_id"]] = "PENDING"
            self.log(f"{r.tag}: submitted as Slurm job {job.job_id} (log {r.path / LAUNCH_LOG})")

    def _parameters(self) -> dict:
        c = self.cfg
        params = {"job_name": "ncguide", "time": c.time_min, "signal_delay_s": SIGNAL_DELAY_S,
                  "partition": c.partition, "account": c.account,
                  "cpus_per_task": c.cpus_per_run, "gpus_per_node": c.gpus_per_run or None, "mem": c.mem,
                  "setup": list(c.setup) or None, "additional_parameters": dict(c.extra) or None}
        if c.array_parallelism is not None:
            params["array_parallelism"] = c.array_parallelism
        return {k: v for k, v in params.items() if v is not None}

    def counts(self) -> tuple[int, int]:
        running = sum(self.states.get(job) in _RUNNING for _, job in self.tracked.values())
        return len(self.tracked) - running, running

    def wait(self) -> list[tuple[Run, Outcome]]:
        if self.collected:
            ended, self.collected = self.collected, []
            return ended
        while self.tracked:
            try:
                states = job_states()
            except SlurmError as e:
                self.log(f"warning: {e}; trying again in {self.poll_s:g} s")
                states = None
            ended = []
            if states is not None:
                self.states = states
                for path, (run, job) in list(self.tracked.items()):
                    if self._ended(job, states.get(job)):
                        del self.tracked[path]
                        ended.append((run, self._outcome(run, job, states.get(job))))
            if ended or not self.wait_:
                return ended
            time.sleep(self.poll_s)
        return []

    def _ended(self, job: str, state: str | None) -> bool:
        """Gone from the queue, or in a final state (twice in a row for one that a requeue may still follow)."""
        if state is None or state in _FINAL:
            return True
        if state in _MAYBE_FINAL:
            if job in self._seen_final:
                return True
            self._seen_final.add(job)
            return False
        self._seen_final.discard(job)
        return False

    def _outcome(self, run: Run, job: str, state: str | None) -> Outcome:
        outcome = run_outcome(run.path)
        if outcome is not None:
            self.log(f"{run.tag}: {'done' if outcome.status == 'finished' else 'diverged'} (Slurm job {job}; "
                     f"{outcome.why})")
            return outcome
        record = _read_record(run.path) or {}
        logs = tuple(p for p in (run.path / LAUNCH_LOG, Path(record.get("stderr", ""))) if p.name and p.exists())
        why = f"Slurm job {job} {state.lower() if state else 'left the queue'} before the run finished"
        tail = failure_cause(run.path / LAUNCH_LOG)
        if not logs:  # cancelled while pending: the job never started, no file to point at
            why += " (it never started: no log was written)"
        outcome = Outcome("failed", f"{why}: {tail}" if tail else why, logs)
        self.log(f"{run.tag}: FAILED ({outcome.why}); {where_logs(outcome.logs)}")
        if record.get("job_id") == job:  # reported: the next compare submits the run again
            record["failed"] = {"why": outcome.why, "logs": [str(p) for p in outcome.logs],
                                "reported": time.strftime("%Y-%m-%d %H:%M:%S %z")}
            atomic_write_text(run.path / SLURM_RECORD, json_text(record, indent=2) + "\n")
        return outcome


def _reported(record: dict) -> bool:
    """Whether the failure of ``record``'s job was already reported (by a waiting or a collecting compare)."""
    return isinstance(record.get("failed"), dict)


_child: subprocess.Popen | None = None  # the running job's child (RunJob.checkpoint stops it)


class RunJob:
    """What one Slurm job runs (pickled by submitit): the run's child process, as a local launcher starts it.

    submitit calls :meth:`checkpoint` when Slurm warns of preemption or the time limit (SIGUSR2): the child
    is stopped (it saves a checkpoint at its current step) and the job requeued; the requeued job resumes.
    A run that has already ended is not requeued."""

    def __init__(self, run_dir: str, gpus: int, threads: int):
        self.run_dir, self.gpus, self.threads = run_dir, gpus, threads

    def __call__(self) -> str:
        global _child
        path = Path(self.run_dir)
        _child = start_child(path, self.gpus, child_env(self.threads))
        # poll, not wait(): checkpoint() runs in a signal handler on this thread and must be able to poll too
        # (Popen.wait holds a lock that poll, and a second wait, would need)
        while (code := _child.poll()) is None:
            time.sleep(0.5)
        outcome = run_outcome(path) if code == 0 else None
        if outcome is None:
            raise RuntimeError(f"run {path} did not finish (exit code {code}); see {path / LAUNCH_LOG}")
        return outcome.status

    def checkpoint(self, *args, **kwargs):
        """Stop the child (SIGTERM: it checkpoints at its current step; SIGKILL after ``STOP_GRACE_S``), then
        hand submitit this job again, which it requeues. Not when the run has already ended (its child exited
        by itself, or the run is finished or diverged): None, and submitit ends the job instead (the
        comparison reads what happened from the run's folder)."""
        from submitit.helpers import DelayedSubmission

        child = _child
        ended = child is not None and child.poll() is not None  # by itself: finished, diverged or failed
        if child is not None and not ended:
            signal_group(child, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            while child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            if child.poll() is None:
                signal_group(child, signal.SIGKILL)
        if ended or run_outcome(Path(self.run_dir)) is not None:
            return None
        return DelayedSubmission(self, *args, **kwargs)
