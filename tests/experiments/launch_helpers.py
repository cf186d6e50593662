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


def start_compare(cwd: Path, *args: str, name: str = "compare") -> tuple[subprocess.Popen, Path]:
    """``python -m ncguide compare ARGS`` in ``cwd``, its stdout and stderr in ``cwd/<name>.out``."""
    log = cwd / f"{name}.out"
    f = log.open("wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "ncguide", "compare", *args], cwd=cwd, stdout=f,
                         stderr=subprocess.STDOUT, env=env)
    f.close()
    return p, log


def run_cli(cwd: Path, *args: str, timeout: float = 900.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ncguide", "compare", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
