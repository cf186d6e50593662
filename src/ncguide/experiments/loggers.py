"""Where a run's evaluation records go besides ``metrics.jsonl``: a CSV file, TensorBoard, Weights & Biases.

    loggers: [jsonl, csv, tensorboard]              # a config file (TrainConfig.loggers)
    ncguide train ... --logger csv --logger tensorboard
    ncguide compare ... --set loggers=csv,tensorboard

``jsonl`` is always on and stays the source of truth: ``metrics.jsonl`` is written exactly as without
loggers (``train.py``, ``runlog.py``). Every record — ``epoch, step, wall_s, lr``, losses, accuracies,
every NC metric and any other key a record carries — goes to each logger, in the run's folder ``OUT``:

- ``csv``: ``OUT/metrics.csv``, one row per record, one column per key in the order keys first appear.
  A record with a key the header lacks rewrites the file atomically with the grown header (earlier rows
  get empty cells there); otherwise the row is appended. Floats are written as Python's ``repr`` (they read
  back exactly; ``nan``, ``inf``), ``None`` as an empty cell, lists and dicts as JSON.
- ``tensorboard``: event files in ``OUT`` itself (``torch.utils.tensorboard``; ``pip install
  'ncguide[tensorboard]'``). Every number of a record is a scalar whose tag is its key, at the record's
  ``epoch`` as TensorBoard's step (``epoch`` itself is the axis, not a tag); ``None`` and text are left
  out. TensorBoard stores float32. ``tensorboard --logdir DIR/runs`` shows a whole comparison, each run
  named by its folder (``nearest-etf/seed-0``, ``nearest-etf/lr=0.01/seed-1000``).
- ``wandb``: one W&B run per run folder (``pip install wandb``; asked for without it, the run stops
  before training with one line). Project ``$WANDB_PROJECT`` or ``ncguide``, name the folder's path under
  ``runs/`` (or the folder's name), group the comparison's folder, the config as W&B's config, each
  record logged at ``step=epoch``. W&B's own settings are left alone: ``WANDB_MODE=offline`` keeps it
  offline (its files go to ``OUT/wandb/``). The W&B run id is kept in ``OUT/wandb-run-id`` so that a
  resumed run continues the same W&B run (``resume="allow"``), logging only epochs W&B has not had.

Resume: the checkpoint restores ``metrics.jsonl`` (``runlog.restore_log``), and :func:`open_loggers` then
makes the other outputs agree with it: ``metrics.csv`` and the event files are rewritten from the restored
records (old event files in ``OUT`` are deleted first), so a resumed run holds no duplicate or stale rows.
The same happens when a finished run is trained again (or reused by a comparison) with loggers asked
for: they are written from its log. Only rank 0 writes.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import math
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .config import ConfigError, TrainConfig
from .files import append_line, atomic_write_text

__all__ = ["LOGGERS", "CSV", "WANDB_ID", "check_loggers", "open_loggers", "scalars", "CSVLogger",
           "TensorBoardLogger", "WandbLogger", "RunLoggers"]

LOGGERS = ("jsonl", "csv", "tensorboard", "wandb")
CSV = "metrics.csv"
WANDB_ID = "wandb-run-id"
_EVENTS = "events.out.tfevents.*"
# logger -> (module to import, how to install it)
_NEEDS = {"tensorboard": ("torch.utils.tensorboard", "pip install 'ncguide[tensorboard]' (or pip install tensorboard)"),
          "wandb": ("wandb", "pip install wandb")}


def check_loggers(names: Iterable[str]) -> list[str]:
    """The loggers asked for besides ``jsonl``, in order and without repeats; :class:`ConfigError` (key
    ``loggers``) for an unknown name or one whose package does not import."""
    if isinstance(names, str):
        names = [names]
    out = []
    for name in names:
        if name not in LOGGERS:
            raise ConfigError("loggers", f"unknown logger {name!r} (valid: {', '.join(LOGGERS)})")
        if name in _NEEDS:
            module, install = _NEEDS[name]
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise ConfigError("loggers", f"logger {name!r} needs the {name} package, which does not import "
                                             f"here ({str(e).strip().splitlines()[0]}); {install}") from None
        if name != "jsonl" and name not in out:
            out.append(name)
    return out


def scalars(record: dict) -> dict[str, float]:
    """The numbers of ``record`` (booleans as 0/1), keyed as in the record: what TensorBoard and W&B get."""
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float))}


class CSVLogger:
    """``OUT/metrics.csv``: rewritten (atomically) from ``records``, then a row per :meth:`log`."""

    def __init__(self, out: Path, records: list[dict]):
        self.path = Path(out) / CSV
        self.columns: list[str] = []
        self.records: list[dict] = []
        for rec in records:
            self._add_columns(rec)
            self.records.append(rec)
        if self.records:
            self._rewrite()
        else:
            self.path.unlink(missing_ok=True)  # a fresh run: no rows of an earlier run

    def log(self, record: dict) -> None:
        self.records.append(record)
        if self._add_columns(record) or not self.path.is_file():
            self._rewrite()
        else:
            append_line(self.path, self._line([self._cell(record.get(c)) for c in self.columns]))

    def close(self) -> None:
        pass

    def _add_columns(self, record: dict) -> bool:
        new = [k for k in record if k not in self.columns]
        self.columns += new
        return bool(new)

    def _rewrite(self) -> None:
        lines = [self._line(self.columns)]
        lines += [self._line([self._cell(r.get(c)) for c in self.columns]) for r in self.records]
        atomic_write_text(self.path, "\n".join(lines) + "\n")

    @staticmethod
    def _line(cells: list[str]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="").writerow(cells)
        return buf.getvalue()

    @staticmethod
    def _cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, float):
            return repr(value) if math.isfinite(value) else str(value)  # nan, inf, -inf
        if isinstance(value, (int, str)):
            return str(value)
        return json.dumps(value)


class TensorBoardLogger:
    """Event files in ``OUT``: earlier ones deleted, ``records`` written again, then each :meth:`log`."""

    def __init__(self, out: Path, records: list[dict]):
        from torch.utils.tensorboard import SummaryWriter

        out = Path(out)
        for old in out.glob(_EVENTS):
            old.unlink()
        self.writer = SummaryWriter(log_dir=str(out))
        for rec in records:
            self._write(rec)
        self.writer.flush()

    def log(self, record: dict) -> None:
        self._write(record)
        self.writer.flush()  # readable by a running `tensorboard` at once

    def close(self) -> None:
        self.writer.close()

    def _write(self, record: dict) -> None:
        step = int(record.get("epoch", 0))
        for key, value in scalars(record).items():
            if key != "epoch":
                self.writer.add_scalar(key, value, global_step=step)


class WandbLogger:
    """One W&B run per run folder, resumed by the id kept in ``OUT/wandb-run-id``."""

    def __init__(self, out: Path, records: list[dict], cfg: TrainConfig):
        import wandb

        out = Path(out)
        id_file = out / WANDB_ID
        run_id = id_file.read_text().strip() if id_file.is_file() else ""
        if not run_id:
            run_id = uuid.uuid4().hex[:12]
            atomic_write_text(id_file, run_id + "\n")
        name, group = _wandb_names(out)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "ncguide", name=name, group=group,
                              id=run_id, resume="allow", dir=str(out), config=cfg.to_dict())
        self.next_step = int(getattr(self.run, "step", 0) or 0)  # a resumed W&B run has the epochs before this
        for rec in records:
            self.log(rec)

    def log(self, record: dict) -> None:
        step = int(record.get("epoch", 0))
        if step >= self.next_step:
            self.run.log(scalars(record), step=step)
            self.next_step = step + 1

    def close(self) -> None:
        self.run.finish()


def _wandb_names(out: Path) -> tuple[str, str | None]:
    """(run name, group): the folder's path under a comparison's ``runs/`` and that comparison's folder name."""
    parts = out.resolve().parts
    if "runs" in parts[:-1]:
        i = len(parts) - 1 - parts[::-1].index("runs")
        return "/".join(parts[i + 1:]), parts[i - 1] if i > 0 else None
    return out.resolve().name, None


class RunLoggers:
    """The loggers of one run; :meth:`log` sends a record to each."""

    def __init__(self, loggers: list):
        self.loggers = loggers

    def log(self, record: dict) -> None:
        for logger in self.loggers:
            logger.log(record)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


@contextmanager
def open_loggers(cfg: TrainConfig, out: str | os.PathLike, lines: Iterable[str] = (),
                 write: bool = True) -> Iterator[RunLoggers]:
    """The loggers ``cfg.loggers`` asks for (besides ``jsonl``), their outputs made to hold the records of
    ``lines`` (the restored ``metrics.jsonl``); closed on exit. ``write=False`` (ranks other than 0): none."""
    names = check_loggers(cfg.loggers) if write else []
    records = [json.loads(line) for line in lines if line.strip()] if names else []
    opened: list = []
    try:
        for name in names:
            if name == "csv":
                opened.append(CSVLogger(Path(out), records))
            elif name == "tensorboard":
                opened.append(TensorBoardLogger(Path(out), records))
            elif name == "wandb":
                opened.append(WandbLogger(Path(out), records, cfg))
        yield RunLoggers(opened)
    finally:
        RunLoggers(opened).close()
