"""A run's log ``metrics.jsonl`` and its agreement with the run's checkpoint.

What is guaranteed:

- Writing: each evaluation record is appended as one line and fsynced (``files.append_line``) before the
  run goes on, so before the checkpoint that counts it is written. After a crash, even a power loss, the
  log holds at least the records of the latest checkpoint; it may hold more (evaluations after it) and
  end with a cut line.
- The checkpoint keeps a copy of every line the log held when it was written (``metrics_lines``, and
  their size ``metrics_bytes``). On resume :func:`restore_log` makes the log exactly those lines: lines
  written after the checkpoint are cut (their epochs are trained again), and records lost or cut (a
  truncated, emptied or deleted log) are rewritten from the copy, atomically, with a warning. A
  checkpoint written before the copy existed (only ``metrics_bytes``) is resumed only while the log
  still holds those bytes intact; otherwise a one-line ``ValueError`` says to retrain the run.
- Reading: :func:`check_run_log` says whether a log is fit for a report. With a checkpoint: the log must
  start with every line the checkpoint kept (``metrics_bytes`` intact, for an old checkpoint), and a
  finished run may hold no records after them. Without a (readable) checkpoint, e.g. deleted to save
  space: the records' epochs must be those ``config.json`` schedules (epoch 0, every ``eval_every``,
  the last) with no cut line among them; with no ``config.json`` either, only cut lines are judged. A
  cut last line after all the records a run must hold loses nothing and is ignored. A run still going (an
  unfinished checkpoint whose lines are intact) passes: its records so far are reported.
"""

from __future__ import annotations

import itertools
import json
import os
import warnings
from pathlib import Path

from .checkpoint import CHECKPOINT, NotACheckpointError, ResumeError, load_checkpoint
from .config import TrainConfig, with_defaults
from .files import atomic_write, atomic_write_text, json_text, truncate
from .locks import rank0_folder_lock

__all__ = ["METRICS", "CONFIG", "log_state", "restore_log", "restore_config", "finished_record", "expected_epochs",
           "read_saved_config", "log_has_results", "check_run_log"]

METRICS = "metrics.jsonl"
CONFIG = "config.json"  # a copy of the checkpoint's config, for people (the run's identity is the checkpoint's)

_RESTORE = "resuming the run (the same train or compare command) rewrites it from the checkpoint"


def _text(lines: list[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode("utf-8")


def log_state(lines: list[str]) -> dict:
    """What a checkpoint stores about the log: ``metrics_lines`` (a copy) and ``metrics_bytes`` (its size)."""
    return {"metrics_lines": list(lines), "metrics_bytes": len(_text(lines))}


def _split(data: bytes) -> tuple[list[str], bool]:
    """The complete lines of ``data`` (without newlines), and whether a cut line (no newline) follows."""
    parts = data.decode("utf-8", "replace").split("\n")
    return parts[:-1], bool(parts[-1].strip())


def _intact(data: bytes, kept: list[str]) -> int:
    """How many of ``kept`` lead the log unchanged."""
    lines, _ = _split(data)
    n = 0
    while n < min(len(lines), len(kept)) and lines[n] == kept[n]:
        n += 1
    return n


def _records(lines: list[str]) -> tuple[list[dict], int | None]:
    """The records of ``lines`` (blank ones skipped) and the number (from 1) of the first unreadable line."""
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            return records, i
        if not isinstance(rec, dict):
            return records, i
        records.append(rec)
    return records, None


def restore_log(run_dir: str | os.PathLike, ckpt: dict, write: bool = True) -> list[str]:
    """Make ``run_dir/metrics.jsonl`` hold exactly the lines ``ckpt`` counted (see the module docstring);
    returns them. ``write=False`` (the other ranks under torchrun) only returns them."""
    path = Path(run_dir) / METRICS
    kept = ckpt.get("metrics_lines")
    if not write:
        return list(kept or [])
    data = path.read_bytes() if path.is_file() else b""
    if kept is None:
        return _restore_by_size(path, data, int(ckpt.get("metrics_bytes", 0)))
    expected = _text(kept)
    if data.startswith(expected):
        truncate(path, len(expected))  # drop what a killed run wrote after the checkpoint
    else:
        intact = _intact(data, kept)
        atomic_write(path, lambda f: f.write(expected))
        warnings.warn(f"{path} held only {intact} of the {len(kept)} records of its checkpoint intact; "
                      f"rewrote them from {path.parent / CHECKPOINT}", stacklevel=2)
    return list(kept)


def _restore_by_size(path: Path, data: bytes, size: int) -> list[str]:
    """A checkpoint without ``metrics_lines``: cut the log back to ``size`` bytes if those are intact."""
    lines, cut = _split(data[:size])
    _, bad = _records(lines)
    if len(data) < size or cut or bad is not None:
        why = f"{len(data)} bytes, {size} when checkpointed" if len(data) < size else "a record is cut"
        raise ResumeError(
            f"{path} lost records since its checkpoint was written ({why}) and that checkpoint (from an older "
            f"ncguide) keeps no copy of them", f"delete {path.parent} or pass {{no_resume}} to retrain the run")
    truncate(path, size)
    return lines


def restore_config(run_dir: str | os.PathLike, ckpt: dict, write: bool = True) -> None:
    """Make ``config.json`` hold the checkpoint's config again when it is missing, unreadable or altered: rewritten
    atomically, with a warning (``write=False``: nothing is written, as on ranks other than 0)."""
    path = Path(run_dir) / CONFIG
    saved = json.loads(json.dumps(ckpt["config"]))
    try:
        if json.loads(path.read_text(encoding="utf-8")) == saved:
            return
    except (OSError, ValueError):
        pass
    if write:
        atomic_write_text(path, json_text(saved, indent=2) + "\n")
        warnings.warn(f"{path} did not hold the run's config; rewrote it from {path.parent / CHECKPOINT}",
                      stacklevel=2)


def finished_record(run_dir: str | os.PathLike) -> dict:
    """The last record of the finished run in ``run_dir``, after :func:`restore_log` and :func:`restore_config`
    (under the folder's lock)."""
    run_dir = Path(run_dir)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    with rank0_folder_lock(run_dir):
        ckpt = load_checkpoint(run_dir / CHECKPOINT)
        lines = restore_log(run_dir, ckpt, write=rank0)
        restore_config(run_dir, ckpt, write=rank0)
    return json.loads(lines[-1]) if lines else {}


def expected_epochs(epochs: int, eval_every: int = 1, limit: int | None = None) -> list[int]:
    """The epochs a complete run logs: 0, every ``eval_every``-th, and the last; only the first ``limit`` of
    them when given (a config may schedule far more epochs than any log holds)."""
    every = range(eval_every, epochs + 1, eval_every)
    last = [epochs] if epochs % eval_every else []
    return ([0, *itertools.islice(every, limit)] + last)[:limit]


def _schedule_length(epochs: int, eval_every: int) -> int:
    """``len(expected_epochs(epochs, eval_every))``, without building it."""
    return 1 + epochs // eval_every + (1 if epochs % eval_every else 0)


def log_has_results(path: str | os.PathLike) -> bool:
    """Whether a run's log holds results that a fresh start would not write again: a record after epoch 0.

    A run killed before its first checkpoint leaves at most the epoch-0 record (the evaluation before any
    training, which a fresh start writes again) and a cut line: no results, so the folder can be trained
    afresh. Records at epoch 0 only, or none (a missing or empty log): no results. Any other record, a complete
    line that cannot be read, or a log that cannot be read: results (kept, never overwritten)."""
    path = Path(path)
    try:
        data = path.read_bytes() if path.is_file() else b""
    except OSError:
        return True
    lines, _ = _split(data)  # a cut last line is no record
    records, bad = _records(lines)
    if bad is not None:
        return True
    epochs = [r.get("epoch") for r in records]
    return not all(isinstance(e, int) and not isinstance(e, bool) and e == 0 for e in epochs)


def check_run_log(run_dir: str | os.PathLike) -> str | None:
    """Why the log of the run in ``run_dir`` is unfit for a report (records lost or cut, or a finished
    run with records after its last; a checkpoint or ``config.json`` that is not ncguide's; see the module
    docstring), or ``None`` if it is fit."""
    run_dir = Path(run_dir)
    log, ckpt, unreadable = run_dir / METRICS, None, False
    if (run_dir / CHECKPOINT).is_file():  # read before the log: a running run only appends to it
        try:
            ckpt = load_checkpoint(run_dir / CHECKPOINT)
        except NotACheckpointError as e:  # crafted or foreign: nothing in this folder can be trusted to judge by
            return e.problem.replace(f"{run_dir / CHECKPOINT} is unreadable (", f"{CHECKPOINT} is unreadable (", 1)
        except (OSError, ValueError):
            unreadable = True
    try:
        data = log.read_bytes() if log.is_file() else b""
    except OSError as e:
        return f"{log.name} is unreadable ({e.strerror})"
    if ckpt is not None:
        return _check_against_checkpoint(data, ckpt)
    return _check_against_config(data, run_dir, unreadable)


def _check_against_checkpoint(data: bytes, ckpt: dict) -> str | None:
    kept = ckpt.get("metrics_lines")
    if kept is not None:
        expected = _text(kept)
        if not data.startswith(expected):
            return (f"the log holds only {_intact(data, kept)} of the {len(kept)} records its checkpoint kept "
                    f"intact; {_RESTORE}")
    else:
        expected = data[: int(ckpt.get("metrics_bytes", 0))]
        lines, cut = _split(expected)
        if len(data) < int(ckpt.get("metrics_bytes", 0)) or cut or _records(lines)[1] is not None:
            return "the log lost records since its checkpoint was written (an old checkpoint: no copy to restore)"
    if ckpt.get("finished"):
        extra, _ = _records(_split(data[len(expected):])[0])
        if extra:
            return f"the run is finished but its log holds {len(extra)} more record(s) after the last one"
    return None


def read_saved_config(path: str | os.PathLike) -> TrainConfig:
    """A run's ``config.json`` read through the config schema (``TrainConfig.from_dict``, today's defaults for
    fields it lacks): a one-line ``ValueError`` naming the file and the key when it is not a valid config."""
    path = Path(path)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path} holds a {type(saved).__name__}, not a mapping of config fields")
    try:
        return TrainConfig.from_dict(with_defaults(saved))
    except ValueError as e:
        raise ValueError(f"{path} is not a valid run config: {(str(e).strip().splitlines() or ['?'])[0]}") from None


def _check_against_config(data: bytes, run_dir: Path, unreadable: bool) -> str | None:
    lines, cut = _split(data)
    records, bad = _records(lines)
    basis = f"{CHECKPOINT} {'unreadable' if unreadable else 'missing'}, judged from config.json"
    if not (run_dir / CONFIG).is_file():
        return f"line {bad} of the log is cut or unreadable" if bad is not None else None
    try:
        cfg = read_saved_config(run_dir / CONFIG)
    except OSError as e:
        return f"{CONFIG} is unreadable ({e.strerror}) and {basis.split(',')[0]}"
    except ValueError as e:
        return f"{str(e).replace(str(run_dir / CONFIG), CONFIG, 1)}, and {basis.split(',')[0]}"
    epochs = [r.get("epoch") for r in records]
    total = _schedule_length(cfg.epochs, cfg.eval_every)
    expected = expected_epochs(cfg.epochs, cfg.eval_every, limit=len(epochs) + 1)  # never more than the log needs
    if bad is None and epochs == expected and len(epochs) == total:
        return None
    prefix = epochs == expected[: len(epochs)]
    if bad is not None and prefix and len(epochs) < total:
        return f"line {bad} of the log is cut or unreadable, after epoch {epochs[-1] if epochs else '-'} ({basis})"
    if bad is not None:
        return f"line {bad} of the log is cut or unreadable ({basis})"
    if prefix and len(epochs) <= total:
        end = f"ends at epoch {epochs[-1]}" if epochs else "is empty"
        return f"the log {end}{' and a cut line' if cut else ''}, of {cfg.epochs} epochs ({basis})"
    return (f"the log's epochs {_short(epochs)} are not the {cfg.epochs}-epoch schedule "
            f"{_schedule_text(cfg.epochs, cfg.eval_every, total)} ({basis})")


def _schedule_text(epochs: int, every: int, total: int) -> str:
    """``_short(expected_epochs(epochs, every))`` without building a long schedule."""
    if total <= 8:
        return _short(expected_epochs(epochs, every))
    tail, k = ([epochs] if epochs % every else []), epochs // every
    while len(tail) < 3:
        tail.insert(0, k * every)
        k -= 1
    return f"[{', '.join(map(str, expected_epochs(epochs, every, limit=3)))}, ..., {', '.join(map(str, tail))}]"


def _short(xs: list) -> str:
    return str(xs) if len(xs) <= 8 else f"[{', '.join(map(str, xs[:3]))}, ..., {', '.join(map(str, xs[-3:]))}]"
