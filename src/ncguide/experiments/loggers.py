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
  before training with one line, and so it does when W&B is neither logged in nor offline: no
  ``WANDB_API_KEY``, no netrc entry of ``wandb login``, no ``WANDB_MODE=offline``/``disabled`` nor ``wandb
  offline``; checked without the network). Project ``$WANDB_PROJECT`` or ``ncguide``, name the folder's path
  under ``runs/`` (or the folder's name), group the comparison's folder, the config as W&B's config, each
  record logged at ``step=epoch``. W&B's own settings are left alone: ``WANDB_MODE=offline`` keeps it
  offline (its files go to ``OUT/wandb/``). ``OUT/wandb-run-id`` keeps the W&B run id and the last epoch
  sent, so that a resumed run continues the same W&B run (``resume="allow"``) sending only later epochs
  (offline too, where W&B cannot tell); a fresh start (``resume=False``, or no checkpoint) deletes it, so a
  new W&B run begins. ``OUT/wandb/`` (W&B's own, perhaps not yet synced) is never deleted.

Resume: the checkpoint restores ``metrics.jsonl`` (``runlog.restore_log``), and :func:`open_loggers` then
makes the other outputs agree with it: ``metrics.csv`` and the event files are rewritten from the restored
records (old event files in ``OUT`` are deleted first), so a resumed run holds no duplicate or stale rows.
The same happens when a finished run is trained again (or reused by a comparison) with loggers asked
for: they are written from its log. A run that trains (fresh or resumed) without the ``csv`` or
``tensorboard`` logger deletes that logger's files in ``OUT``, with a warning: they would describe only the
earlier part, and ``metrics.jsonl`` holds every record (a finished run reused leaves them: they hold its
whole log). Only rank 0 writes.
"""

from __future__ import annotations

import configparser
import csv
import importlib
import io
import json
import math
import netrc
import os
import uuid
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .config import ConfigError, TrainConfig
from .files import append_line, atomic_write_text

__all__ = ["LOGGERS", "CSV", "WANDB_ID", "check_loggers", "open_loggers", "read_wandb_id", "scalars", "CSVLogger",
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
        if name == "wandb":
            _check_wandb_login()
        if name != "jsonl" and name not in out:
            out.append(name)
    return out


_OFFLINE_MODES = ("offline", "dryrun", "disabled")


def _check_wandb_login() -> None:
    """:class:`ConfigError` (key ``loggers``) when W&B would stop at ``wandb.init`` for want of a login: not
    offline (``WANDB_MODE``, or ``mode`` in W&B's settings file as ``wandb offline`` writes it) and no API key
    (``WANDB_API_KEY``, or a netrc entry for W&B's host as ``wandb login`` writes it). Reads files and
    environment only: no network."""
    env = os.environ
    if env.get("WANDB_MODE", "").strip().lower() in _OFFLINE_MODES or _wandb_settings_mode() in _OFFLINE_MODES:
        return
    if env.get("WANDB_DISABLED", "").strip().lower() in ("true", "1", "yes"):
        return
    if env.get("WANDB_API_KEY", "").strip():
        return
    host = urlparse(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    rc = Path(env["NETRC"]).expanduser() if env.get("NETRC") else Path.home() / ".netrc"
    try:
        if rc.is_file() and netrc.netrc(str(rc)).authenticators(host):
            return
    except (netrc.NetrcParseError, OSError):
        pass
    raise ConfigError("loggers", f"logger 'wandb': W&B is not logged in here (no WANDB_API_KEY, no {host} entry in "
                                 f"{rc}); run `wandb login`, or set WANDB_MODE=offline (sync later with `wandb "
                                 "sync`), or drop the wandb logger")


def _wandb_settings_mode() -> str:
    """``mode`` of W&B's settings files (``$WANDB_CONFIG_DIR/settings`` or ``~/.config/wandb/settings``, then
    ``./wandb/settings``, the later winning), lowercased; ``""`` when none says."""
    config_dir = os.environ.get("WANDB_CONFIG_DIR") or str(Path.home() / ".config" / "wandb")
    mode = ""
    for path in (Path(config_dir) / "settings", Path("wandb") / "settings"):
        parser = configparser.ConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        mode = parser.get("default", "mode", fallback=mode).strip().lower()
    return mode


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
    """One W&B run per run folder. ``OUT/wandb-run-id`` keeps its id and the last epoch sent to it, so that a
    resumed (or reused) run continues the same W&B run and sends only later records: W&B's steps only grow,
    offline too (where a resumed W&B run cannot say which steps it has). W&B is started at the first record
    to send: a finished run whose records W&B has all opens no W&B run."""

    def __init__(self, out: Path, records: list[dict], cfg: TrainConfig):
        self.out, self.cfg, self.run = Path(out), cfg, None
        self.run_id, self.last_sent = read_wandb_id(self.out)
        for rec in records:
            self.log(rec)

    def log(self, record: dict) -> None:
        step = int(record.get("epoch", 0))
        if step <= self.last_sent:
            return
        if self.run is None:
            self._start()
            if step <= self.last_sent:  # W&B (online) already has it
                return
        self.run.log(scalars(record), step=step)
        self.last_sent = step
        atomic_write_text(self.out / WANDB_ID, f"{self.run_id}\n{step}\n")

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()

    def _start(self) -> None:
        import wandb

        if not self.run_id:
            self.run_id = uuid.uuid4().hex[:12]
            atomic_write_text(self.out / WANDB_ID, self.run_id + "\n")
        name, group = _wandb_names(self.out)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "ncguide", name=name, group=group,
                              id=self.run_id, resume="allow", dir=str(self.out), config=self.cfg.to_dict())
        # online, a resumed W&B run knows its next step; offline it says 0
        self.last_sent = max(self.last_sent, int(getattr(self.run, "step", 0) or 0) - 1)


def read_wandb_id(out: str | os.PathLike) -> tuple[str, int]:
    """(W&B run id, last epoch sent to it) kept in ``OUT/wandb-run-id``; ``("", -1)`` when there is none, and
    -1 for the epoch of a file written before the epoch was kept."""
    path = Path(out) / WANDB_ID
    lines = path.read_text().split() if path.is_file() else []
    run_id = lines[0] if lines else ""
    last = int(lines[1]) if len(lines) > 1 and lines[1].lstrip("-").isdigit() else -1
    return run_id, last


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


def _derived_outputs(out: Path) -> dict[str, list[Path]]:
    """The files of the loggers that only copy ``metrics.jsonl``, by logger: ``metrics.csv``, the event files."""
    return {"csv": [p for p in [out / CSV] if p.is_file()], "tensorboard": sorted(out.glob(_EVENTS))}


@contextmanager
def open_loggers(cfg: TrainConfig, out: str | os.PathLike, lines: Iterable[str] = (), write: bool = True, *,
                 fresh: bool = False, grows: bool = True) -> Iterator[RunLoggers]:
    """The loggers ``cfg.loggers`` asks for (besides ``jsonl``), their outputs made to hold the records of
    ``lines`` (the restored ``metrics.jsonl``); closed on exit. ``write=False`` (ranks other than 0): none.

    ``fresh``: a new run in ``out`` (``--no-resume``, or no checkpoint): the kept W&B run id goes, so that a
    new W&B run starts. ``grows``: records will be added (a run that trains, not a finished one reused):
    ``metrics.csv`` and event files of a logger not asked for this time are deleted, with a warning, since
    they would describe only the earlier part (``metrics.jsonl`` holds every record)."""
    names = check_loggers(cfg.loggers) if write else []
    out = Path(out)
    if write and fresh:
        (out / WANDB_ID).unlink(missing_ok=True)
    if write and (fresh or grows):
        for name, files in _derived_outputs(out).items():
            if name not in names and files:
                for path in files:
                    path.unlink(missing_ok=True)
                what = "an earlier run" if fresh else "the run so far"
                warnings.warn(f"deleted {_shown(files)} of the {name} logger (from {what}): not asked for this "
                              f"time, it would miss the records to come; {out / 'metrics.jsonl'} holds them all "
                              f"(add --logger {name} to keep it)", stacklevel=3)
    records = [json.loads(line) for line in lines if line.strip()] if names else []
    opened: list = []
    try:
        for name in names:
            if name == "csv":
                opened.append(CSVLogger(out, records))
            elif name == "tensorboard":
                opened.append(TensorBoardLogger(out, records))
            elif name == "wandb":
                opened.append(WandbLogger(out, records, cfg))
        yield RunLoggers(opened)
    finally:
        RunLoggers(opened).close()


def _shown(files: list[Path]) -> str:
    return str(files[0]) if len(files) == 1 else f"{len(files)} files ({files[0].name}, ...) in {files[0].parent}"
