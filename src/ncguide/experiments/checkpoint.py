"""A run's checkpoint: what it holds, writing it atomically, reading it back, and when it may be resumed.

``OUT/checkpoint.pt`` is written (temporary file + ``os.replace``) after every epoch and on Ctrl-C. It is
a dict with ``version`` (1), ``config`` (``TrainConfig.to_dict()``), ``epoch``, ``step``, ``wall_s``,
``mid_epoch``, ``finished``, ``num_threads`` (``torch.get_num_threads()`` of the writer; a resume under
another count warns), the state dicts of ``model``, ``head`` (running means, ``U_prev``),
``optimizer`` and ``loader`` (its position in the epoch), ``rng`` (torch, numpy, python and, when CUDA
is in use, CUDA generator states), ``metrics_lines`` (a copy of the lines of ``metrics.jsonl`` when it
was written) and ``metrics_bytes`` (their size): a resume cuts the lines a killed run wrote later and
restores lost ones (``runlog.py``; checkpoints from before ``metrics_lines`` have only the size).

A checkpoint is resumed only by the same config: fields that cannot change the results
(``RUNTIME_FIELDS``) may differ, and a field added since the checkpoint was written counts as its
default (``config.with_defaults``).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import TrainConfig, with_defaults
from .files import atomic_write

__all__ = [
    "CHECKPOINT",
    "ResumeError",
    "RUNTIME_FIELDS",
    "load_checkpoint",
    "save_checkpoint",
    "is_finished",
    "check_same_config",
    "config_diff",
    "get_rng_state",
    "set_rng_state",
    "seed_everything",
]

CHECKPOINT = "checkpoint.pt"
RUNTIME_FIELDS = {"device", "data_dir", "compile", "check_every", "eval_batch_size", "nc1_threshold", "num_workers",
                  "loggers"}


class ResumeError(ValueError):
    """A run folder that cannot be resumed: a checkpoint (or results) of another config, or an unreadable
    checkpoint. ``str(e)`` ends with the advice in Python's words (``resume=False``, ``out_dir``);
    ``advice(no_resume, out)`` words it for another caller (the ``ncguide`` command: ``--no-resume``, ``--out``)."""

    def __init__(self, problem: str, advice: str = "pass {no_resume} to start over, or use another {out}"):
        self.problem, self._advice = problem, advice
        super().__init__(f"{problem}; {self.advice('resume=False', 'out_dir')}")

    def advice(self, no_resume: str, out: str) -> str:
        return self._advice.format(no_resume=no_resume, out=out)


REQUIRED_KEYS = ("config", "epoch", "step", "finished", "model", "head", "optimizer", "loader", "rng")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict (tensors on CPU, memory-mapped). It is our own file: not ``weights_only``.

    An empty, truncated or corrupt file (or one that is not a checkpoint of ours) raises a one-line
    :class:`ResumeError` naming it and saying what to do; a missing or unreadable-by-permission file keeps
    its ``OSError``."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # torch reports damage as RuntimeError, EOFError, UnpicklingError, ValueError...
        reason = "empty file" if path.stat().st_size == 0 else (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ResumeError(f"{path} is unreadable ({reason})", UNREADABLE_ADVICE) from None
    missing = [k for k in REQUIRED_KEYS if k not in ckpt] if isinstance(ckpt, dict) else list(REQUIRED_KEYS)
    if missing:
        raise ResumeError(f"{path} is unreadable (not an ncguide checkpoint: lacks {', '.join(missing)})",
                          UNREADABLE_ADVICE)
    return ckpt


UNREADABLE_ADVICE = "delete it or pass {no_resume} to start that run over"


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    """``torch.save`` through :func:`files.atomic_write`: a crash leaves the old checkpoint or the new one."""
    atomic_write(path, lambda f: torch.save(checkpoint, f))


def is_finished(out_dir: str | os.PathLike) -> bool:
    """True when ``out_dir`` holds the checkpoint of a completed run (``ValueError`` if it is unreadable)."""
    path = Path(out_dir) / CHECKPOINT
    if not path.is_file():
        return False
    return bool(load_checkpoint(path).get("finished", False))


def config_diff(saved: dict, wanted: dict) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, wanted value)}`` for every field outside ``RUNTIME_FIELDS`` where a saved config
    (completed with today's defaults) and a wanted one differ; both go through JSON, so tuples equal lists."""
    saved = json.loads(json.dumps(with_defaults(saved)))
    wanted = json.loads(json.dumps(wanted))
    keys = sorted((set(saved) | set(wanted)) - RUNTIME_FIELDS)
    return {k: (saved.get(k), wanted.get(k)) for k in keys if saved.get(k) != wanted.get(k)}


def check_same_config(saved: dict, cfg: TrainConfig, path: Path) -> None:
    """:class:`ResumeError` unless ``saved`` (a checkpoint's config) equals ``cfg`` up to ``RUNTIME_FIELDS``."""
    diff = config_diff(saved, cfg.to_dict())
    if diff:
        raise ResumeError(f"{path} was written by a different config (differs in: {', '.join(diff)})")


def seed_everything(seed: int) -> None:
    """Seed the global generators a run draws from: python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the global RNG user code draws from)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """The global generators' states (CUDA only when CUDA is initialised)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),  # noqa: NPY002
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
