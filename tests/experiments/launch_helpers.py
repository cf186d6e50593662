"""Shared by the tests of the local and Slurm launchers: a tiny comparison, waiting on run folders, reading
results without their wall-clock fields, and ``ncguide compare`` as a child process."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ncguide.experiments.files import read_jsonl

# UFM runs of well under a second each (a child process mostly spends its time importing torch)
BASE = {"dataset": "ufm", "model": "ufm", "num_classes": 4, "feature_dim": 8, "samples_per_class": 5, "epochs": 3,
        "batch_size": 10, "optimizer": "sgd", "weight_decay": 0.0, "schedule": "constant", "device": "cpu"}
METHODS = ["standard", "nearest-etf"]
GRID = {"lr": [0.03, 1.0]}
# runs long enough to be stopped in the middle: a checkpoint every epoch, a record every 10
LONG = {**BASE, "epochs": 300, "eval_every": 10, "lr": 0.03}
TINY_FLAGS = ["--dataset", "ufm", "--model", "ufm", "--set", "num_classes=4", "--set", "feature_dim=8", "--set",
              "samples_per_class=5", "--batch-size", "10", "--set", "optimizer=sgd", "--set", "weight_decay=0",
              "--set", "schedule=constant", "--device", "cpu"]
LONG_FLAGS = [*TINY_FLAGS, "--epochs", "300", "--set", "eval_every=10", "--lr", "0.03"]


def quiet(*_):
    pass


WALL_CLOCK = {"wall_s", "seconds_per_epoch", "machines"}  # seconds, and where and how they were measured


def without_wall_clock(x):
    """``x`` with every wall-clock entry dropped (seconds differ between any two runs; the threads and runs at
    once of summary.json's ``machines`` differ between launchers)."""
    if isinstance(x, dict):
        return {k: without_wall_clock(v) for k, v in x.items() if k not in WALL_CLOCK}
    if isinstance(x, list):
        return [without_wall_clock(v) for v in x]
    return x


def results(out: Path) -> dict:
    """What must not depend on the launcher: summary.json and selection.json (if any) without wall-clock
    fields, and every run's records without ``wall_s``."""
    runs = {p.parent.relative_to(out).as_posix(): without_wall_clock(read_jsonl(p))
            for p in sorted(out.glob("runs/**/metrics.jsonl"))}
    selection = out / "selection.json"
    return {"summary": without_wall_clock(json.loads((out / "summary.json").read_text())),
            "selection": json.loads(selection.read_text()) if selection.is_file() else None, "runs": runs}


def wait_for(condition, what: str, timeout: float = 600.0, every: float = 0.05, proc=None, log: Path | None = None):
    """Poll ``condition()`` until it is true; fail naming ``what`` (and the compare's output) on timeout or when
    ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            tail = log.read_text()[-3000:] if log is not None and log.is_file() else ""
            raise AssertionError(f"gave up waiting for {what} (compare exit {proc and proc.poll()}):\n{tail}")
        time.sleep(every)


def records(run: Path) -> int:
    return len(read_jsonl(run / "metrics.jsonl"))


def holder_pid(run: Path) -> int | None:
    """The pid in a run folder's lock (the process training it), None while nobody holds it."""
    try:
        return json.loads((run / ".lock").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def child_pythonpath(*first: Path) -> str:
    """A ``PYTHONPATH`` under which a child process imports the ncguide these tests import (whatever the cwd),
    after the folders ``first``."""
    import ncguide

    return os.pathsep.join([*map(str, first), str(Path(ncguide.__file__).resolve().parents[1]),
                            *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])


# Imported first by every Python process started with hold_env: run_one's children stop after the checkpoint of
# their record HOLD_AT (0: the evaluation before training), until SIGINT (Ctrl-C, or SIGTERM through run_one) or a
# kill. A test that stops runs at that point does not race the runs to their end, however loaded the machine.
_HOLD = """import os, signal, sys, time
import ncguide.experiments.train

_t = sys.modules["ncguide.experiments.train"]  # (the package's ``train`` is the function)

_real, _at = _t._save, int(os.environ["NCGUIDE_TEST_HOLD_AT"])
_which = os.environ["NCGUIDE_TEST_HOLD"].split(",")


def _save(run, finished=False):
    _real(run, finished)
    if not finished and len(run.log) == _at + 1 and any(run.out.as_posix().endswith(w) for w in _which):
        # while train's SIGINT handler is in place: its first SIGINT (also one that came before this loop) sets
        # its flag and puts the previous handler back; train then stops at this checkpoint
        while isinstance(getattr(signal.getsignal(signal.SIGINT), "__self__", None), _t._InterruptFlag):
            time.sleep(0.01)


_t._save = _save
"""


def hold_env(folder: Path, runs: list[str], at_record: int = 1) -> dict[str, str]:
    """Environment for :func:`start_compare` whose child runs named ``runs`` (ends of their folders) stop after
    record ``at_record`` until stopped (``_HOLD``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_HOLD)
    return {"PYTHONPATH": child_pythonpath(folder), "NCGUIDE_TEST_HOLD": ",".join(runs),
            "NCGUIDE_TEST_HOLD_AT": str(at_record)}


def start_compare(cwd: Path, *args: str, name: str = "compare",
                  env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
    """``python -m ncguide compare ARGS`` in ``cwd`` (``env``: added to this process's environment), its stdout and
    stderr in ``cwd/<name>.out``."""
    log = cwd / f"{name}.out"
    f = log.open("wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": child_pythonpath(), **(env or {})}
    p = subprocess.Popen([sys.executable, "-m", "ncguide", "compare", *args], cwd=cwd, stdout=f,
                         stderr=subprocess.STDOUT, env=env)
    f.close()
    return p, log


def run_cli(cwd: Path, *args: str, timeout: float = 900.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ncguide", "compare", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": child_pythonpath()})


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
