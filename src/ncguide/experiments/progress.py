"""What runs print while they train: one run's bar or table, and a comparison's progress line.

One run (:class:`Progress`): a tqdm bar on a terminal, a fixed-width table in logs, or nothing.
``mode="auto"`` picks the bar when ``sys.stderr`` is a terminal, else the table. The run starts with one
line of its settings that differ from ``TrainConfig``'s defaults (:func:`settings_line`), never naming a
field the run ignores (``config.ignored_fields``). The table has one line per epoch, ``epoch, train_loss,
train_acc, test_acc, nc1, time_s``: evaluation values on evaluation epochs; on the others the running
averages over the epoch's training batches (rank 0's shard) and ``-``.

A comparison (:class:`CompareProgress`, printed by ``launch.drive`` each time runs end)::

    runs: 12/40 done (4 reused), 1 failed, 2 running, 3 queued; ETA ~ 6 min 10 s (estimate: ...)

The total is every method's selection runs plus its report runs (it grows when a grid is extended beyond
an edge, and drops the runs a failed method will not reach). The ETA (:func:`eta_seconds`) assumes each
remaining run takes as long as the mean of the runs of the same method and grid point that finished in this
process (else of the same method, else of all of them), less the time a running run has already trained
(``CompareProgress.started``; floored at 0), and that they share the launcher's slots evenly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Mapping

import torch

from .config import TrainConfig, ignored_fields

__all__ = ["PROGRESS_MODES", "Progress", "settings_line", "non_default_settings", "CompareProgress", "eta_seconds",
           "format_duration"]

PROGRESS_MODES = ("auto", "bar", "table", "none")


class Progress:
    """tqdm bar (terminal), fixed-width table (logs), or nothing (``mode="none"``)."""

    COLUMNS = ("epoch", "train_loss", "train_acc", "test_acc", "nc1", "time_s")

    def __init__(self, mode: str, epochs: int, steps_per_epoch: int):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "table"
        self.mode, self.epochs, self.spe = mode, epochs, steps_per_epoch
        self.bar = None
        self._header = False
        self._since = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def start_epoch(self, epoch: int, initial: int = 0) -> None:
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.close()
            self.bar = tqdm(total=self.spe, initial=initial, desc=f"epoch {epoch}/{self.epochs}", leave=False,
                            dynamic_ncols=True)
        self._since = 0

    def step(self, running: torch.Tensor) -> None:
        """One training step done; ``running`` = (loss sum, correct, count) of the epoch so far."""
        if self.bar is None:
            return
        self.bar.update(1)
        self._since += 1
        if self._since % 10 == 1:  # reading the sums syncs the device: not every step
            loss, correct, n = running.tolist()
            self.bar.set_postfix(loss=f"{loss / n:.4f}", acc=f"{correct / n:.4f}")

    def record(self, rec: dict) -> None:
        """An evaluation record (a line of metrics.jsonl)."""
        if self.mode == "none":
            return
        test = "-" if rec.get("test_acc") is None else f"{rec['test_acc']:.4f}"
        self._emit([str(rec["epoch"]), f"{rec['train_loss']:.4f}", f"{rec['train_acc']:.4f}", test,
                    f"{rec.get('nc1', float('nan')):.4g}", f"{rec['wall_s']:.1f}"])

    def running(self, epoch: int, running: torch.Tensor, wall_s: float) -> None:
        """An epoch without evaluation: its running training averages."""
        if self.mode == "none":
            return
        loss, correct, n = running.tolist()
        self._emit([str(epoch), f"{loss / n:.4f}", f"{correct / n:.4f}", "-", "-", f"{wall_s:.1f}"])

    def note(self, line: str) -> None:
        """One line of text (the run's settings), above the bar or the table."""
        if self.mode == "table":
            print(line, flush=True)
        elif self.mode == "bar":
            from tqdm.auto import tqdm

            tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _emit(self, cells: list[str]) -> None:
        if self.mode == "table":
            if not self._header:
                print("  ".join(f"{c:>10}" for c in self.COLUMNS), flush=True)
                self._header = True
            print("  ".join(f"{c:>10}" for c in cells), flush=True)
        elif self.mode == "bar":
            from tqdm.auto import tqdm

            self.close()
            tqdm.write("  ".join(f"{k}={v}" for k, v in zip(self.COLUMNS, cells)), file=sys.stderr)


# ----------------------------------------------------------------------------------------------------
# a run's settings


def non_default_settings(cfg: TrainConfig) -> dict:
    """The fields of ``cfg`` whose value differs from ``TrainConfig()``'s and that the run uses
    (``config.ignored_fields`` are left out), in the dataclass's order."""
    default, ignored = TrainConfig(), ignored_fields(cfg)
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if f.name not in ignored and getattr(cfg, f.name) != getattr(default, f.name)}


def _value(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (dict, list, tuple)) or v is None or isinstance(v, bool):
        return json.dumps(v, separators=(",", ":"), default=str)
    return f"{v:g}" if isinstance(v, float) else str(v)


def settings_line(cfg: TrainConfig) -> str:
    """``settings (differing from the defaults): dataset=npz:x.npz epochs=5 lr=0.1`` — one line, ``key=value``
    pairs without spaces inside a value."""
    diff = non_default_settings(cfg)
    pairs = " ".join(f"{k}={_value(v)}" for k, v in diff.items()) or "none"
    return f"settings (differing from the defaults; `--print-config` shows every value): {pairs}"


# ----------------------------------------------------------------------------------------------------
# a comparison's progress


def format_duration(seconds: float) -> str:
    """``45 s``, ``4 min 10 s``, ``2 h 05 min``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def eta_seconds(remaining: list[tuple[str, str | None, float]], durations: Mapping[tuple[str, str], list[float]],
                slots: int) -> float | None:
    """Seconds until ``remaining`` runs (``(method, point, elapsed)``; point None: not known yet; elapsed: the
    seconds a running run has trained, 0 for one not started) are done, from the ``durations`` of finished
    runs by ``(method, point)``: each run is estimated by the mean of its own method and point, else of its
    method, else of every finished run, less its elapsed time (floored at 0); their sum is shared by
    ``min(slots, len(remaining))`` runs at once. 0 with nothing remaining; None with no finished run to go by."""
    if not remaining:
        return 0.0
    every = [d for ds in durations.values() for d in ds]
    if not every or slots < 1:
        return None
    by_method: dict[str, list[float]] = {}
    for (method, _), ds in durations.items():
        by_method.setdefault(method, []).extend(ds)
    total = 0.0
    for method, point, elapsed in remaining:
        ds = durations.get((method, point)) or by_method.get(method) or every
        total += max(0.0, math.fsum(ds) / len(ds) - elapsed)
    return total / min(slots, len(remaining))


class CompareProgress:
    """Runs done out of the comparison's total, and an ETA (the module docstring). ``expected``: the runs each
    method will train at least (selection and report runs); ``slots``: runs the launcher trains at once (None:
    no estimate, e.g. Slurm jobs that wait in a queue); ``clock``: seconds, in the time base of the start times
    given to :meth:`started` (``time.perf_counter``, what the launchers measure with)."""

    def __init__(self, expected: Mapping[str, int] | None = None, slots: int | None = 1,
                 clock: Callable[[], float] = time.perf_counter):
        self.expected, self.slots, self.clock = dict(expected or {}), slots, clock
        self.since: dict[object, float] = {}  # run id -> when it started training (running runs)
        self.seen: dict[str, int] = {}  # runs each method's pipeline has yielded so far
        self.stopped: set[str] = set()  # methods stopped by a failed run: their later stages never come
        self.outstanding: dict[object, tuple[str, str]] = {}  # given to the launcher, not ended
        self.durations: dict[tuple[str, str], list[float]] = {}
        self.done = self.reused = self.failed = 0

    @staticmethod
    def key(method: str, point: Mapping) -> tuple[str, str]:
        return method, json.dumps(dict(point), sort_keys=True, default=str)

    def stage(self, method: str, todo: list[tuple[object, Mapping]], reused: int) -> None:
        """A stage of ``method`` yielded: ``todo`` (``(run id, grid point)``) go to the launcher, ``reused``
        runs were results already."""
        self.seen[method] = self.seen.get(method, 0) + len(todo) + reused
        self.done += reused
        self.reused += reused
        self.outstanding.update({i: self.key(method, point) for i, point in todo})

    def started(self, run_id, at: float | None = None) -> None:
        """Run ``run_id`` started training at ``at`` (``clock()``'s time base; None: now). Its elapsed time comes
        off its estimate. Saying it again for the same start changes nothing."""
        if run_id in self.outstanding:
            self.since[run_id] = self.clock() if at is None else at

    def ended(self, run_id, status: str, seconds: float | None, method: str) -> None:
        """A run ended: ``finished``, ``diverged`` or ``failed`` after ``seconds`` (None: not measured)."""
        key = self.outstanding.pop(run_id, None)
        self.since.pop(run_id, None)
        if status == "failed":
            self.failed += 1
            self.stopped.add(method)
            return
        self.done += 1
        if status == "finished" and seconds is not None and key is not None:
            self.durations.setdefault(key, []).append(seconds)

    def total(self) -> int:
        methods = set(self.expected) | set(self.seen)
        return sum(self.seen.get(m, 0) if m in self.stopped else max(self.expected.get(m, 0), self.seen.get(m, 0))
                   for m in methods)

    def remaining(self) -> list[tuple[str, str | None, float]]:
        """The runs not ended yet, ``(method, point, seconds trained so far)``: those out with the launcher
        (running ones with their elapsed time), then those of stages still to come."""
        now = self.clock() if self.since else 0.0
        left = [(m, point, max(0.0, now - self.since[i]) if i in self.since else 0.0)
                for i, (m, point) in self.outstanding.items()]
        for m, n in self.expected.items():
            if m not in self.stopped:
                left += [(m, None, 0.0)] * max(0, n - self.seen.get(m, 0))
        return left

    def line(self, queued: int | None = None, running: int | None = None) -> str:
        parts = [f"{self.done}/{self.total()} done" + (f" ({self.reused} reused)" if self.reused else "")]
        if self.failed:
            parts.append(f"{self.failed} failed")
        if running is not None and queued is not None:
            parts += [f"{running} running", f"{queued} queued"]
        text = "runs: " + ", ".join(parts)
        left = self.remaining()
        if not left:
            return text
        if self.slots is None:
            return text + "; ETA not estimated (the runs wait in a queue)"
        eta = eta_seconds(left, self.durations, self.slots)
        if eta is None:
            return text + "; ETA once a run has finished here"
        n = sum(map(len, self.durations.values()))
        return (text + f"; ETA ~ {format_duration(eta)} (estimate from the {n} run{'s' if n > 1 else ''} finished "
                f"here, per method, {min(self.slots, len(left))} at a time)")
