"""Where and when the runs of a comparison train: in this process, in a pool of local processes, or as Slurm
jobs (``slurm.py``). A run is always ``train(cfg, run_dir)`` under its folder's lock; a launcher only decides
where and when, so results never depend on it (CPU, ``deterministic=True``, the same threads per run).

A comparison is *one pipeline per method*: its selection runs (every grid point on the selection seeds),
then the choice of its winner, then its report runs at the winner. :func:`drive` runs every method's
pipeline at once over one launcher: a method's next stage starts as soon as all runs of its current stage
are done, whatever the other methods are doing. Queued runs start by priority, selection runs first (each
finished one may unlock a whole stage), then in the comparison's seed-major order.

Launchers (``--launcher``, ``--jobs``):

- :class:`InProcess` (``--jobs 1``, the default): one run after another in this process; a run that raises is
  a failed run (its traceback appended to ``RUN_DIR/launch.log``) and the others go on, as in a pool.
- :class:`LocalPool` (``--jobs N``): up to N runs at once, each its own process
  ``python -m ncguide.experiments.run_one RUN_DIR`` (``torchrun --standalone --nproc_per_node G ...`` for
  G GPUs per run) in its own process group, its output in ``RUN_DIR/launch.log``. On CPU each gets
  ``cores // N`` threads (:func:`cpu_plan`); on CUDA disjoint ``CUDA_VISIBLE_DEVICES`` (:func:`assign_gpus`;
  ``runs_per_gpu`` M lets M runs share one GPU). A run that fails is reported with its log and the others go
  on; Ctrl-C (or SIGTERM) sends SIGTERM to every child's group, each saves a checkpoint at its current step
  (``run_one``), and is killed after ``grace_s``.
- ``slurm.SlurmLauncher`` (``--launcher slurm``): job arrays through submitit.

Files a launcher writes into a run folder: ``launch.json`` (what the child trains: the config, ``resume``,
the thread count), ``launch.log`` (the child's output, appended per attempt) and, for Slurm, ``slurm.json``
(the job id and its log files).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoint import CHECKPOINT, load_checkpoint
from .config import ConfigError, Rule, TrainConfig, read_integer
from .files import atomic_write_text, json_text, last_record, open_regular
from .locks import RunLockedError
from .machine import CONCURRENT_ENV
from .progress import CompareProgress
from .report import DIVERGED, short_record
from .runlog import METRICS, finished_record

if TYPE_CHECKING:
    from .slurm import SlurmConfig

__all__ = ["LAUNCHERS", "LOCAL_KEYS", "LAUNCH_LOG", "LAUNCH_SPEC", "LaunchConfig", "Run", "Outcome", "Slot",
           "LaunchError", "RunsFailedError", "parse_launch", "cpu_plan", "assign_gpus", "visible_gpus",
           "available_cores", "drive", "InProcess", "LocalPool", "make_launcher", "run_outcome", "record_divergence",
           "child_command", "child_env", "write_spec", "start_child", "stop_children", "last_line", "failure_cause",
           "whole_number", "signal_group"]

LAUNCHERS = ("local", "slurm")
LAUNCH_SPEC = "launch.json"
LAUNCH_LOG = "launch.log"
# YAML / --set keys of the local launcher (the Slurm ones are slurm.SLURM_KEYS); the flags are --jobs etc.
LOCAL_KEYS = ("launcher", "jobs", "gpus_per_run", "runs_per_gpu", "threads_per_run", "wait")


# ----------------------------------------------------------------------------------------------------
# what runs, and how it ended


@dataclass(frozen=True)
class Run:
    """One run of a comparison: ``cfg`` trained into ``path``. ``order`` ranks it in a launcher's queue
    (lower first); ``tag`` names it in log lines."""

    phase: str  # "selection" or "report"
    method: str
    point: dict  # grid values ({} without a grid)
    seed: int
    cfg: TrainConfig
    path: Path
    order: tuple = ()
    tag: str = ""


@dataclass(frozen=True)
class Outcome:
    """How a run ended: ``finished``, ``diverged`` (a result: ``DIVERGED`` says why) or ``failed`` (``why``,
    and the log files to read); ``seconds`` it took, as the launcher measured it (None: not measured)."""

    status: str
    why: str = ""
    logs: tuple[Path, ...] = ()
    seconds: float | None = None


class LaunchError(RuntimeError):
    """Runs could not be launched or did not finish (the ``ncguide`` command prints one line, exit 1)."""


class RunsFailedError(LaunchError):
    """Runs of a comparison failed (each named with its log); the message also says how many other runs are done,
    which are still queued or running, and which never started (a failed run stops its method's later stages).
    Rerunning the comparison retries only what is unfinished."""

    def __init__(self, failed: list[tuple[Run, Outcome]], out_dir: Path, *, done: int | None = None,
                 reused: int = 0, pending: int = 0, never: Mapping[str, int | None] | None = None):
        self.failed = failed
        names = [f"{_rel(r.path, out_dir)} ({o.why}; {where_logs(o.logs)})" for r, o in failed]
        parts = [f"{_count(len(failed), 'run')} failed: {'; '.join(names)}"]
        if done is not None:
            parts.append(f"{_count(done, 'other run') if done else 'no other run'} done"
                         + (f" ({reused} reused)" if reused else ""))
        if pending:
            parts.append(f"{_count(pending, 'run')} still queued or running")
        for method, n in (never or {}).items():
            what = f"the {_count(n, 'report run')}" if n else "the report runs"
            parts.append(f"{what} of {method} never started (a run of its selection failed)")
        super().__init__("; ".join(parts) + "; run the same command again to retry the failed ones (finished runs "
                         "are reused)")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def where_logs(logs: tuple[Path, ...]) -> str:
    """``log A, B`` for a failed run's logs, ``no log written`` when there is none (a job cancelled before it
    started)."""
    return f"log {', '.join(map(str, logs))}" if logs else "no log written"


def run_outcome(path: Path) -> Outcome | None:
    """``finished`` or ``diverged`` from the run folder's files, else None (not a result yet)."""
    if not (path / CHECKPOINT).is_file():
        return None
    if (path / DIVERGED).is_file():
        return Outcome("diverged", (path / DIVERGED).read_text().strip())
    try:
        finished = bool(load_checkpoint(path / CHECKPOINT).get("finished"))
    except (OSError, ValueError):
        return None
    return Outcome("finished", short_record(last_record(path / METRICS))) if finished else None


def record_divergence(path: Path, error: BaseException) -> str:
    """Write ``DIVERGED`` (the first line of ``error``) into the run folder; return that line."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    atomic_write_text(path / DIVERGED, line + "\n")
    return line


# ----------------------------------------------------------------------------------------------------
# settings


@dataclass(frozen=True)
class LaunchConfig:
    """Where the runs of a comparison train. ``gpus_per_run`` None: 1 on CUDA; ``runs_per_gpu`` None: 1;
    ``threads_per_run`` None: ``cores // concurrent runs`` (local), the CPUs of a Slurm job; ``jobs == 1`` on CPU
    trains in this process (with the process's threads unless ``threads_per_run`` is set)."""

    launcher: str = "local"
    jobs: int = 1
    gpus_per_run: int | None = None
    runs_per_gpu: int | None = None
    threads_per_run: int | None = None
    wait: bool = True
    slurm: SlurmConfig | None = None  # with launcher "slurm"


def parse_launch(settings: LaunchConfig | Mapping | None) -> LaunchConfig:
    """``{"jobs": 2, "slurm_time": "1:00:00", ...}`` (YAML keys, CLI strings accepted) → a checked
    :class:`LaunchConfig`; :class:`ConfigError` naming the key otherwise."""
    from .slurm import SLURM_KEYS, parse_slurm

    if isinstance(settings, LaunchConfig) or settings is None:
        return settings or LaunchConfig()
    if not isinstance(settings, Mapping):
        raise ConfigError("launcher", f"launch settings must be a mapping of {', '.join(LOCAL_KEYS)}, slurm_...; "
                                      f"got {settings!r}")
    unknown = sorted(set(settings) - set(LOCAL_KEYS) - set(SLURM_KEYS))
    if unknown:
        raise ConfigError(unknown[0], f"unknown launch setting {unknown[0]!r}; valid: "
                                      f"{', '.join((*LOCAL_KEYS, *SLURM_KEYS))}")
    launcher = str(settings.get("launcher", "local")).strip()
    if launcher not in LAUNCHERS:
        raise ConfigError("launcher", f"launcher must be one of {', '.join(LAUNCHERS)}; got {launcher!r}")
    jobs = whole_number(settings, "jobs", 1)
    gpus = whole_number(settings, "gpus_per_run", 1)
    per_gpu = whole_number(settings, "runs_per_gpu", 1)
    threads = whole_number(settings, "threads_per_run", 1)
    wait = _flag(settings, "wait")
    slurm_given = sorted(k for k in SLURM_KEYS if settings.get(k) not in (None, [], {}, ()))
    if launcher == "local" and slurm_given and "launcher" not in settings:
        raise ConfigError(slurm_given[0], f"{slurm_given[0]} is a Slurm setting but the launcher is local; add "
                                          "--launcher slurm (YAML launcher: slurm) to submit the runs to Slurm")
    if launcher == "local" and slurm_given:  # e.g. a YAML file made for both launchers: a local run needs none
        warnings.warn(f"{', '.join(slurm_given)} ignored: the launcher is local (--launcher slurm submits the runs "
                      "to Slurm)", stacklevel=2)
    if launcher == "slurm":  # each has a Slurm counterpart; ignoring it would give the jobs other resources
        for key, instead in _NOT_FOR_SLURM.items():
            if settings.get(key) is not None:
                flag = "--" + key.replace("_", "-")
                raise ConfigError(key, f"{key} ({flag}) is a setting of the local launcher; with --launcher slurm "
                                       f"{instead}")
    if launcher == "local" and wait is False:
        raise ConfigError("wait", "--no-wait (wait: false) submits Slurm jobs and returns; it needs --launcher "
                                  "slurm (local runs are children of this process)")
    if gpus is not None and gpus > 1 and per_gpu not in (None, 1):
        raise ConfigError("runs_per_gpu", f"runs_per_gpu {per_gpu} shares one GPU between runs; it cannot be "
                                          f"combined with gpus_per_run {gpus} (several GPUs per run)")
    slurm = parse_slurm(settings) if launcher == "slurm" else None
    return LaunchConfig(launcher=launcher, jobs=jobs or 1, gpus_per_run=gpus, runs_per_gpu=per_gpu,
                        threads_per_run=threads, wait=True if wait is None else wait, slurm=slurm)


_NOT_FOR_SLURM = {
    "jobs": "every run is its own job; --slurm-array-parallelism N (YAML slurm_array_parallelism) limits how many "
            "run at once",
    "gpus_per_run": "give each run's job its GPUs with --slurm-gpus-per-run (YAML slurm_gpus_per_run)",
    "runs_per_gpu": "each run's job has GPUs of its own (--slurm-gpus-per-run); runs do not share them",
}


def whole_number(settings: Mapping, key: str, minimum: int) -> int | None:
    """``settings[key]``, a whole number >= ``minimum`` read as the config's integers are (``config.read_integer``:
    an int or its digits from ``--set``); None when not given."""
    value = settings.get(key)
    if value is None:
        return None
    return read_integer(key, value, Rule(lo=minimum, words=f"a whole number >= {minimum}"))


def _flag(settings: Mapping, key: str) -> bool | None:
    value = settings.get(key)
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    raise ConfigError(key, f"{key} must be true or false; got {value!r}")


# ----------------------------------------------------------------------------------------------------
# devices and threads (pure functions)


def cpu_plan(jobs: int, cores: int, threads_per_run: int | None = None) -> tuple[int, int]:
    """``(concurrent runs, threads per run)`` on CPU: at most ``cores`` runs at once, and ``cores //
    concurrent`` threads each, so that runs × threads <= cores (unless ``threads_per_run`` says otherwise)."""
    if jobs < 1 or cores < 1:
        raise ValueError(f"jobs and cores must be >= 1 (got {jobs}, {cores})")
    concurrent = min(jobs, cores)
    return concurrent, threads_per_run or max(1, cores // concurrent)


def assign_gpus(gpus: list[str], jobs: int, gpus_per_run: int = 1, runs_per_gpu: int = 1) -> list[tuple[str, ...]]:
    """The GPUs (``CUDA_VISIBLE_DEVICES`` entries) of each concurrent run slot.

    ``gpus`` are split into disjoint groups of ``gpus_per_run`` (leftovers unused); each group serves
    ``runs_per_gpu`` slots, filled round-robin so that fewer runs than slots spread over different GPUs.
    At most ``jobs`` slots. ``ValueError`` when not even one group fits."""
    if gpus_per_run < 1 or runs_per_gpu < 1 or jobs < 1:
        raise ValueError(f"jobs, gpus_per_run and runs_per_gpu must be >= 1 (got {jobs}, {gpus_per_run}, "
                         f"{runs_per_gpu})")
    if gpus_per_run > 1 and runs_per_gpu > 1:
        raise ValueError("runs_per_gpu > 1 shares one GPU between runs; it needs gpus_per_run 1")
    groups = [tuple(gpus[i:i + gpus_per_run]) for i in range(0, len(gpus) - gpus_per_run + 1, gpus_per_run)]
    if not groups:
        raise ValueError(f"gpus_per_run {gpus_per_run} but {len(gpus)} GPU{'s' if len(gpus) != 1 else ''} visible")
    slots = [g for _ in range(runs_per_gpu) for g in groups]
    return slots[:jobs]


def visible_gpus() -> list[str]:
    """This process's GPUs as ``CUDA_VISIBLE_DEVICES`` entries (its own list when set, else 0..n-1)."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [x.strip() for x in env.split(",") if x.strip()] if env is not None else [str(i) for i in range(n)]
    return names[:n]


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask: taskset, cgroups, a Slurm allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------------
# one run in a child process


@dataclass(frozen=True)
class Slot:
    """Where a child runs: its GPUs (None: leave ``CUDA_VISIBLE_DEVICES`` as it is) and its thread count."""

    gpus: tuple[str, ...] | None = None
    threads: int = 1

    def describe(self) -> str:
        return f"GPU {','.join(self.gpus)}" if self.gpus else f"{self.threads} thread{'s' if self.threads > 1 else ''}"


def child_command(run_dir: Path, gpus: int = 1) -> list[str]:
    """``python -m ncguide.experiments.run_one RUN_DIR``, through torchrun for ``gpus > 1``."""
    run = ["-m", "ncguide.experiments.run_one", str(run_dir)]
    if gpus > 1:  # --standalone: a free rendezvous port, so several runs can share the machine
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", *run]
    return [sys.executable, *run]


def child_env(threads: int, gpus: tuple[str, ...] | None = None, concurrent: int | None = None) -> dict[str, str]:
    """The child's environment: its threads, its GPUs, and (``concurrent``) how many runs train at once beside it
    on this machine, which the run records in ``machine.json``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
           "NCGUIDE_LAUNCH_PARENT": str(os.getpid())}
    if concurrent is not None:
        env[CONCURRENT_ENV] = str(concurrent)
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    return env


def write_spec(run: Run, resume: bool, threads: int | None) -> None:
    """``RUN_DIR/launch.json``: what ``run_one`` trains."""
    run.path.mkdir(parents=True, exist_ok=True)
    spec = {"config": run.cfg.to_dict(), "resume": resume, "threads": threads}
    atomic_write_text(run.path / LAUNCH_SPEC, json_text(spec, indent=2) + "\n")


def start_child(run_dir: Path, gpus: int, env: dict[str, str]) -> subprocess.Popen:
    """Start the run's child in a new process group (Ctrl-C in a terminal reaches only the launcher), its
    stdout and stderr appended to ``RUN_DIR/launch.log`` after a header line."""
    command = child_command(run_dir, gpus)
    with os.fdopen(open_regular(run_dir / LAUNCH_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab") as log:
        log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        log.flush()
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def stop_children(children: list[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM to each child's process group (a run saves a checkpoint at its current step and exits), then
    SIGKILL to whatever is left after ``grace_s`` seconds, or at once on a second Ctrl-C."""
    for p in children:
        signal_group(p, signal.SIGTERM)
    try:
        deadline = time.monotonic() + grace_s
        while any(p.poll() is None for p in children) and time.monotonic() < deadline:
            time.sleep(0.05)
    except KeyboardInterrupt:
        pass
    finally:
        for p in children:
            if p.poll() is None:
                signal_group(p, signal.SIGKILL)
            p.wait()


def signal_group(p: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the process group a child leads (:func:`start_child`), if it still exists."""
    try:
        os.killpg(p.pid, sig)  # the child leads its own group (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def last_line(path: Path) -> str:
    """The last non-empty line of a log file ('' if none)."""
    lines = _log_tail(path, 4096)
    return lines[-1][:300] if lines else ""


_RANK_PREFIX = re.compile(r"^\[(?:rank|default)\d+\]:\s?")  # what torchrun may put before a rank's lines
_TORCHRUN_AGENT = "ChildFailedError"  # torchrun's own traceback after a rank failed: the rank's says why


def failure_cause(path: Path, fallback: bool = True) -> str:
    """Why the last attempt in a run's log (``launch.log``, attempts separated by :func:`start_child`'s ``====``
    header) failed: the exception line of its last Python traceback (``RuntimeError: ...``; torchrun's
    ``ChildFailedError`` gives way to its rank's), else our one line ``error: ...``, else (``fallback``) its last
    line, which may be a metrics row; '' when the log says nothing."""
    lines = _log_tail(path, 65536)
    starts = [i for i, x in enumerate(lines) if x.startswith("==== ")]
    lines = lines[starts[-1] + 1:] if starts else lines
    errors = [x for x in (_exception_line(lines, i) for i, x in enumerate(lines) if x.startswith("Traceback ("))
              if x]
    errors = [x for x in errors if _TORCHRUN_AGENT not in x.split(":")[0]] or errors
    if errors:
        return errors[-1][:300]
    ours = [x.removeprefix("ncguide: ") for x in lines if x.startswith("ncguide: error: ")]
    if ours:
        return ours[-1][:300]
    return lines[-1].strip()[:300] if lines and fallback else ""


def _exception_line(lines: list[str], start: int) -> str:
    """The line that ends the traceback beginning at ``lines[start]``: the first one after it not indented (its
    frames are)."""
    return next((x.strip() for x in lines[start + 1:] if x.strip() and not x[0].isspace()), "")


def _log_tail(path: Path, size: int) -> list[str]:
    """The non-empty lines of the last ``size`` bytes of a log file, indentation kept ([] if unreadable)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [_RANK_PREFIX.sub("", x).rstrip() for x in text.splitlines() if x.strip()]


# ----------------------------------------------------------------------------------------------------
# the stages


def drive(pipelines: Mapping[str, Iterator[list[Run]]], launcher, *, resume: bool, out_dir: Path,
          log: Callable[[str], None] = print, expected: Mapping[str, int] | None = None,
          report_runs: Mapping[str, int] | None = None) -> int:
    """Run every pipeline to its end over ``launcher``; return how many runs are still pending (not 0 only
    for a launcher that does not wait: ``--no-wait``).

    A pipeline yields the runs of one stage; it is resumed once all of them are done (finished or
    diverged: its code then reads their logs) and stopped for good when one of them fails. Finished and
    diverged runs are reused when ``resume`` (they are not given to the launcher). Each time runs end, one
    line says how many of the comparison's runs are done and estimates the time left
    (``progress.CompareProgress``; ``expected``: the runs each pipeline will yield at least). Raises
    :class:`RunsFailedError` at the end when runs failed, counting the runs done, those still out and, per
    pipeline stopped before its ``"report"`` runs, those (``report_runs``: how many) that never started."""
    owner: dict[Path, str] = {}
    pending: dict[str, set[Path]] = {}  # pipeline -> runs of its current stage not done yet
    blocked: set[str] = set()
    reporting: set[str] = set()  # pipelines that yielded their report runs
    failed: list[tuple[Run, Outcome]] = []
    progress = CompareProgress(expected, getattr(launcher, "at_once", 1),
                               clock=getattr(launcher, "clock", time.perf_counter))  # started_at's time base

    def advance(name: str) -> list[Run]:
        while (batch := next(pipelines[name], None)) is not None:
            todo = [r for r in batch if not (resume and _reused(r, log))]
            reporting.update(name for r in batch if r.phase == "report")
            progress.stage(name, [(r.path, r.point) for r in todo], len(batch) - len(todo))
            if todo:
                pending[name] = {r.path for r in todo}
                owner.update({r.path: name for r in todo})
                return todo
        return []

    try:
        new = [r for name in pipelines for r in advance(name)]
        if new:
            launcher.submit(sorted(new, key=lambda r: r.order))
        while pending:
            ended = launcher.wait()
            if not ended:
                break  # a launcher that does not wait
            new = []
            for run, outcome in ended:
                name = owner.pop(run.path)
                progress.ended(run.path, outcome.status, outcome.seconds, name)
                if outcome.status == "failed":
                    failed.append((run, outcome))
                    blocked.add(name)
                pending[name].discard(run.path)
                if not pending[name]:
                    del pending[name]
                    if name not in blocked:
                        new += advance(name)
            launcher.submit(sorted(new, key=lambda r: r.order))  # also lets a pool fill the slots just freed
            for path, t0 in getattr(launcher, "started_at", dict)().items():  # running runs: their time so far
                progress.started(path, t0)
            log(progress.line(*launcher.counts()) if launcher.shows_status else progress.line())
    finally:
        for gen in pipelines.values():
            gen.close()
    left = sum(len(v) for v in pending.values())
    if failed:
        never = {name: (report_runs or {}).get(name) for name in pipelines if name in blocked - reporting}
        raise RunsFailedError(failed, out_dir, done=progress.done, reused=progress.reused, pending=left, never=never)
    return left


def _reused(run: Run, log: Callable[[str], None]) -> bool:
    """Whether ``run`` is already a result (a finished or diverged run): then say so, and reuse it."""
    if not (run.path / CHECKPOINT).is_file():
        return False
    if load_checkpoint(run.path / CHECKPOINT).get("finished"):
        log(f"{run.tag}: reused finished run in {run.path} ({short_record(finished_record(run.path))})")
        from .loggers import check_loggers

        if check_loggers(run.cfg.loggers):  # write what the loggers asked for now hold (from the run's log)
            from .train import train

            train(run.cfg, run.path, resume=True, progress="none")
        return True
    if (run.path / DIVERGED).is_file():
        log(f"{run.tag}: reused diverged run in {run.path} ({(run.path / DIVERGED).read_text().strip()})")
        return True
    return False


class _Queue:
    """Runs by priority (``Run.order``), first come first served among equals."""

    def __init__(self):
        self._heap: list = []
        self._count = itertools.count()

    def push(self, runs: list[Run]) -> None:
        for r in runs:
            heapq.heappush(self._heap, (r.order, next(self._count), r))

    def pop(self) -> Run:
        return heapq.heappop(self._heap)[2]

    def __len__(self) -> int:
        return len(self._heap)


# ----------------------------------------------------------------------------------------------------
# launchers


class InProcess:
    """One run after another in this process (``--jobs 1``). ``train_fn`` is ``train.train``'s signature. A run
    that raises an ``Exception`` failed (its traceback goes to ``RUN_DIR/launch.log``) and the others go on;
    divergence is a result (``DIVERGED``); Ctrl-C (``KeyboardInterrupt``) propagates."""

    shows_status = False
    at_once = 1  # runs at most at once

    def __init__(self, train_fn: Callable, *, resume: bool, progress: str, log: Callable[[str], None],
                 threads: int | None = None):
        self.train_fn, self.resume, self.progress, self.log, self.threads = train_fn, resume, progress, log, threads
        self.queue = _Queue()

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def submit(self, runs: list[Run]) -> None:
        self.queue.push(runs)

    def counts(self) -> tuple[int, int]:
        return len(self.queue), 0

    def wait(self) -> list[tuple[Run, Outcome]]:
        from .train import NonFiniteLossError

        if not self.queue:
            return []
        r = self.queue.pop()
        resuming = self.resume and (r.path / CHECKPOINT).is_file()
        self.log(f"{r.tag}: {'resuming' if resuming else 'training'} in {r.path}")
        (r.path / DIVERGED).unlink(missing_ok=True)
        t0 = time.perf_counter()
        try:
            with _torch_threads(self.threads):
                record = self.train_fn(r.cfg, r.path, resume=self.resume, progress=self.progress)
        except NonFiniteLossError as e:
            line = record_divergence(r.path, e)
            seconds = time.perf_counter() - t0
            self.log(f"{r.tag}: diverged after {seconds:.1f} s ({line})")
            return [(r, Outcome("diverged", line, seconds=seconds))]
        except Exception as e:  # noqa: BLE001 (the run failed; the others go on, as in a pool of processes)
            # a folder another process holds is its log: the reason names the holder
            logs = () if isinstance(e, RunLockedError) else _log_traceback(r.path)
            outcome = Outcome("failed", _exception_text(e), logs)
            self.log(f"{r.tag}: FAILED ({outcome.why}); {where_logs(outcome.logs)}")
            return [(r, outcome)]
        seconds = time.perf_counter() - t0
        self.log(f"{r.tag}: done in {seconds:.1f} s ({short_record(record or {})})")
        return [(r, Outcome("finished", short_record(record or {}), seconds=seconds))]


def _exception_text(e: BaseException) -> str:
    """``ValueError: the first line of its message``, as a traceback ends."""
    kind = type(e).__qualname__ if type(e).__module__ == "builtins" else f"{type(e).__module__}.{type(e).__qualname__}"
    line = next((x.strip() for x in str(e).splitlines() if x.strip()), "")
    return f"{kind}: {line}"[:300] if line else kind


def _log_traceback(run_dir: Path) -> tuple[Path, ...]:
    """Append the exception being handled, with its traceback, to ``RUN_DIR/launch.log`` (as a child's output
    is); ``(log,)``, or ``()`` when the folder cannot be written."""
    import traceback

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with os.fdopen(open_regular(run_dir / LAUNCH_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab") as log:
            log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} in the compare process (pid {os.getpid()})\n"
                      f"{traceback.format_exc()}".encode())
    except OSError:
        return ()
    return (run_dir / LAUNCH_LOG,)


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


class LocalPool:
    """Up to ``len(slots)`` runs at once, each a child process (:func:`start_child`) in one of ``slots``."""

    shows_status = True
    clock = staticmethod(time.perf_counter)  # the time base of started_at

    def __init__(self, slots: list[Slot], *, resume: bool, log: Callable[[str], None], gpus_per_run: int = 1,
                 grace_s: float = 60.0, poll_s: float = 0.1):
        self.slots, self.resume, self.log, self.gpus_per_run = slots, resume, log, gpus_per_run
        self.at_once = len(slots)  # runs at most at once
        self.grace_s, self.poll_s = grace_s, poll_s
        self.queue = _Queue()
        self.running: dict[int, tuple[Run, subprocess.Popen, float]] = {}  # slot index -> run, child, start
        self._previous_sigterm = None

    def __enter__(self) -> LocalPool:
        if threading.current_thread() is threading.main_thread():  # SIGTERM stops the children like Ctrl-C
            self._previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if self.running:
                children = [p for _, p, _ in self.running.values()]
                self.log(f"stopping {len(children)} running run{'s' if len(children) > 1 else ''}: each saves a "
                         f"checkpoint at its current step (up to {self.grace_s:g} s; Ctrl-C again to kill them now)")
                stop_children(children, self.grace_s)
                for run, p, _ in self.running.values():
                    again = "resumes it" if (run.path / CHECKPOINT).is_file() else "starts it again (no checkpoint yet)"
                    self.log(f"{run.tag}: stopped ({_exit_text(p.returncode)}); rerunning {again}")
                self.running.clear()
        finally:
            if self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
        return False

    def submit(self, runs: list[Run]) -> None:
        self.queue.push(runs)
        self._fill()

    def counts(self) -> tuple[int, int]:
        return len(self.queue), len(self.running)

    def started_at(self) -> dict[Path, float]:
        """When each running run started (``clock``'s time), by run folder: the ETA takes its time so far off."""
        return {run.path: t0 for run, _, t0 in self.running.values()}

    def wait(self) -> list[tuple[Run, Outcome]]:
        self._fill()
        if not self.running:
            return []
        while True:
            ended = []
            for index, (run, p, t0) in list(self.running.items()):
                code = p.poll()
                if code is not None:
                    del self.running[index]
                    ended.append((run, self._outcome(run, code, self.clock() - t0)))
            if ended:
                return ended
            time.sleep(self.poll_s)

    def _fill(self) -> None:
        for index, slot in enumerate(self.slots):
            if index not in self.running and self.queue:
                run = self.queue.pop()
                resuming = self.resume and (run.path / CHECKPOINT).is_file()
                write_spec(run, self.resume, slot.threads)
                (run.path / DIVERGED).unlink(missing_ok=True)
                p = start_child(run.path, self.gpus_per_run, child_env(slot.threads, slot.gpus, self.at_once))
                self.running[index] = (run, p, self.clock())
                self.log(f"{run.tag}: {'resuming' if resuming else 'training'} in {run.path} ({slot.describe()}; "
                         f"log {run.path / LAUNCH_LOG})")

    def _outcome(self, run: Run, code: int, seconds: float) -> Outcome:
        outcome = run_outcome(run.path) if code == 0 else None
        if outcome is not None:
            verb = "done" if outcome.status == "finished" else "diverged"
            self.log(f"{run.tag}: {verb} in {seconds:.1f} s ({outcome.why})")
            return dataclasses.replace(outcome, seconds=seconds)
        why = _exit_text(code) if code else "exited without finishing"
        tail = failure_cause(run.path / LAUNCH_LOG, fallback=code >= 0)  # a signal is the cause
        outcome = Outcome("failed", f"{why}: {tail}" if tail else why, (run.path / LAUNCH_LOG,))
        self.log(f"{run.tag}: FAILED ({outcome.why}); log {run.path / LAUNCH_LOG}")
        return outcome


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def make_launcher(launch: LaunchConfig, planned: Mapping[Path, TrainConfig], *, out_dir: Path, resume: bool,
                  progress: str, log: Callable[[str], None], train_fn: Callable):
    """The launcher for ``launch`` and the ``planned`` runs (folder -> config), checked against this machine
    (GPUs, cores, the Slurm cluster and its queue); nothing starts until it is used. :class:`ConfigError`
    (a ``ValueError``) for settings the machine cannot serve."""
    if launch.launcher == "slurm":
        from .slurm import SlurmLauncher, check_cluster, check_queued

        check_cluster(launch.slurm)
        check_queued(planned)
        threads = launch.threads_per_run or launch.slurm.cpus_per_run or 1
        return SlurmLauncher(launch.slurm, out_dir=out_dir, resume=resume, threads=threads, wait=launch.wait,
                             log=log)
    from .slurm import check_queued

    check_queued(planned, local=True)  # no run may train here while its Slurm job is queued or running
    cuda = _uses_cuda(planned.values())
    gpu_keys = [k for k in ("gpus_per_run", "runs_per_gpu") if getattr(launch, k) is not None]
    if gpu_keys and not cuda:
        key = gpu_keys[0]
        setting = f"{key} {getattr(launch, key)} (--{key.replace('_', '-')})"
        if all(c.device == "cpu" for c in planned.values()):
            raise ConfigError(key, f"{setting} places runs on GPUs, but this comparison trains on device cpu; drop it, "
                                   "or train on CUDA (--device cuda)")
        warnings.warn(f"{setting} ignored: no CUDA device here, so the runs (device auto) train on CPU", stacklevel=2)
    gpus_per_run = (launch.gpus_per_run or 1) if cuda else 1
    runs_per_gpu = launch.runs_per_gpu or 1
    if launch.jobs == 1 and gpus_per_run == 1:
        return InProcess(train_fn, resume=resume, progress=progress, log=log, threads=launch.threads_per_run)
    cores = available_cores()
    if cuda:
        try:
            groups = assign_gpus(visible_gpus(), launch.jobs, gpus_per_run, runs_per_gpu)
        except ValueError as e:
            raise ConfigError("gpus_per_run", str(e)) from None
        if len(groups) < launch.jobs:
            warnings.warn(f"jobs {launch.jobs}: only {len(groups)} runs fit on the GPUs at once ({gpus_per_run} per "
                          f"run, {runs_per_gpu} per GPU); running {len(groups)} at a time", stacklevel=2)
        threads = launch.threads_per_run or max(1, cores // len(groups))
        slots = [Slot(g, threads) for g in groups]
    else:
        concurrent, threads = cpu_plan(launch.jobs, cores, launch.threads_per_run)
        if concurrent < launch.jobs:
            warnings.warn(f"jobs {launch.jobs} > {cores} CPU cores: running {concurrent} at a time, {threads} "
                          f"thread{'s' if threads > 1 else ''} each", stacklevel=2)
        slots = [Slot(None, threads) for _ in range(concurrent)]
    return LocalPool(slots, resume=resume, log=log, gpus_per_run=gpus_per_run)


def _uses_cuda(configs) -> bool:
    devices = {c.device for c in configs}
    if "cuda" in devices:
        return True
    if "auto" not in devices:
        return False
    import torch

    return torch.cuda.is_available()


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)

