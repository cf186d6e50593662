"""A run's checkpoint: what it holds, writing it atomically, reading it back, and when it may be resumed.

``OUT/checkpoint.pt`` is written (temporary file + ``os.replace``) after every epoch and on Ctrl-C. It is
a dict with ``version`` (``CHECKPOINT_VERSION``), ``config`` (``TrainConfig.to_dict()``), ``epoch``, ``step``,
``wall_s``, ``mid_epoch``, ``finished``, ``num_threads`` (``torch.get_num_threads()`` of the writer; a resume under
another count warns), the state dicts of ``model``, ``head`` (running means, ``U_prev``),
``optimizer`` and ``loader`` (its position in the epoch), ``rng`` (torch, numpy, python and, when CUDA
is in use, CUDA generator states), ``metrics_lines`` (a copy of the lines of ``metrics.jsonl`` when it
was written) and ``metrics_bytes`` (their size): a resume cuts the lines a killed run wrote later and
restores lost ones (``runlog.py``; checkpoints from before ``metrics_lines`` have only the size).

**Untrusted files stay data.** A results folder may come from someone else, and unpickling arbitrary
objects runs code. So a checkpoint holds tensors and plain containers only (numpy's RNG state is stored
as a tensor and numbers, not as a numpy array) and is always read with ``torch.load(weights_only=True)``:
a file that needs more (a checkpoint written by ncguide 0.1, or a crafted one) is refused with one line,
which tells the two apart by the object the file needs (numpy's arrays for 0.1; anything else looks
crafted). :func:`convert_checkpoint` rewrites an old checkpoint in the safe format (``ncguide
convert-checkpoint PATH --trust-source``), reading it with the safe loader plus numpy's array types only.
A zip archive that would inflate far beyond its size is refused before it is read, and what loads is
checked key by key (types, the config through the schema) before anyone uses it.

A checkpoint is resumed only by the same config: fields that cannot change the results
(``RUNTIME_FIELDS``) may differ, and a field added since the checkpoint was written counts as its
default (``config.with_defaults``).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import TrainConfig, with_defaults
from .files import atomic_write

__all__ = [
    "CHECKPOINT",
    "CHECKPOINT_VERSION",
    "ResumeError",
    "UnsafeCheckpointError",
    "NotACheckpointError",
    "convert_checkpoint",
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
CHECKPOINT_VERSION = 2  # 2: only tensors and plain containers (safe to load); 1: numpy RNG state pickled
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


REQUIRED_KEYS = ("config", "epoch", "step", "wall_s", "mid_epoch", "finished", "model", "head", "optimizer", "loader",
                 "rng")


class UnsafeCheckpointError(ResumeError):
    """A checkpoint that a safe load (``weights_only=True``) refuses: it holds pickled Python objects."""


class NotACheckpointError(ResumeError):
    """A file that loads as plain data but is not what ncguide writes (its keys, their types, its config)."""


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict (tensors on CPU, memory-mapped), read with ``weights_only=True``: loading a file
    from someone else's results folder never runs code from it.

    A file that holds more than tensors and plain containers raises :class:`UnsafeCheckpointError`; an empty,
    truncated or corrupt file a one-line :class:`ResumeError` naming it and saying what to do; a file that is
    not a checkpoint of ours — a zip archive that would inflate far beyond its size (checked before loading),
    a missing key, a key of the wrong type, a config the schema refuses — :class:`NotACheckpointError`; a
    missing or unreadable-by-permission file keeps its ``OSError``."""
    path = Path(path)
    _check_archive(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except pickle.UnpicklingError as e:  # weights_only met a global it does not allow
        name = _refused_global(e)
        if name is None or _OLD_GLOBAL.fullmatch(name):  # what ncguide 0.1 pickled: numpy's RNG state
            problem = (f"{path} holds pickled Python objects (it needs {name or 'objects beyond tensors'}), which a "
                       "safe load refuses: unpickling can run code from the file")
            raise UnsafeCheckpointError(problem, _unsafe_advice(path)) from None
        raise UnsafeCheckpointError(_crafted(path, name), "delete it (do not convert or unpickle it) or pass "
                                                          "{no_resume}") from None
    except Exception as e:  # torch reports damage as RuntimeError, EOFError, ValueError...
        raise ResumeError(f"{path} is unreadable ({_damage(path, e)})", UNREADABLE_ADVICE) from None
    why = _structure_problem(ckpt)
    if why is not None:
        raise NotACheckpointError(f"{path} is unreadable (not an ncguide checkpoint: {why})", UNREADABLE_ADVICE)
    return ckpt


def _is_int(x: Any, lo: int = 0) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= lo


def _str_keyed(x: Any, values: type | tuple = object) -> bool:
    return isinstance(x, dict) and all(isinstance(k, str) and isinstance(v, values) for k, v in x.items())


def _python_rng(x: Any) -> bool:  # random.getstate(): (version, 625 ints, gauss_next)
    return (isinstance(x, (tuple, list)) and len(x) == 3 and _is_int(x[0]) and isinstance(x[1], (tuple, list))
            and all(_is_int(i) for i in x[1]) and (x[2] is None or isinstance(x[2], float)))


def _numpy_rng(x: Any) -> bool:  # _plain_numpy_state's dict
    return (isinstance(x, dict) and isinstance(x.get("name"), str) and isinstance(x.get("key"), torch.Tensor)
            and _is_int(x.get("pos")) and _is_int(x.get("has_gauss")) and isinstance(x.get("cached_gaussian"), float))


def _rng(x: Any) -> bool:
    return (isinstance(x, dict) and isinstance(x.get("torch"), torch.Tensor) and x["torch"].dtype == torch.uint8
            and _numpy_rng(x.get("numpy")) and _python_rng(x.get("python"))
            and ("cuda" not in x or (isinstance(x["cuda"], (list, tuple))
                                     and all(isinstance(t, torch.Tensor) for t in x["cuda"]))))


def _state_dict(x: Any) -> bool:  # tensors by name; a module's extra state (the warm solver's policy) is a dict
    return isinstance(x, dict) and all(isinstance(k, str) and (
        isinstance(v, torch.Tensor) or (k.endswith("_extra_state") and isinstance(v, dict))) for k, v in x.items())


def _optimizer(x: Any) -> bool:
    return (isinstance(x, dict) and isinstance(x.get("state"), dict)
            and all(isinstance(v, dict) for v in x["state"].values())
            and isinstance(x.get("param_groups"), list) and all(_str_keyed(g) for g in x["param_groups"]))


# what each key of a checkpoint holds: a test, and the words for it (REQUIRED_KEYS must be there; others may)
_SHAPE: dict[str, tuple[Any, str]] = {
    "version": (_is_int, "an integer"),
    "config": (lambda x: _str_keyed(x), "a mapping of config fields"),
    "epoch": (_is_int, "an integer >= 0"),
    "step": (_is_int, "an integer >= 0"),
    "wall_s": (lambda x: isinstance(x, (int, float)) and not isinstance(x, bool), "a number"),
    "mid_epoch": (lambda x: isinstance(x, bool), "true or false"),
    "finished": (lambda x: isinstance(x, bool), "true or false"),
    "num_threads": (lambda x: _is_int(x, 1), "an integer >= 1"),
    "model": (_state_dict, "a state dict of tensors"),
    "head": (_state_dict, "a state dict of tensors"),
    "optimizer": (_optimizer, "an optimizer state dict (state, param_groups)"),
    "loader": (lambda x: _str_keyed(x) and all(_is_int(v) for v in x.values()), "a mapping of integers >= 0"),
    "rng": (_rng, "the torch, numpy and python generator states"),
    "metrics_lines": (lambda x: isinstance(x, list) and all(isinstance(line, str) for line in x), "a list of text"),
    "metrics_bytes": (_is_int, "an integer >= 0"),
    "data_fingerprint": (lambda x: x is None or isinstance(x, str), "text or none"),
}


def _structure_problem(ckpt: Any) -> str | None:
    """What makes ``ckpt`` something other than a checkpoint ncguide writes (None if nothing): a missing key,
    a key of the wrong type (``_SHAPE``), or a config that the schema refuses (``TrainConfig.from_dict``)."""
    if not isinstance(ckpt, dict):
        return f"holds {type(ckpt).__name__}, not a mapping"
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        return f"lacks {', '.join(missing)}"
    for key, (test, words) in _SHAPE.items():
        if key in ckpt and not test(ckpt[key]):
            return f"{key} is not {words}"
    try:
        TrainConfig.from_dict(with_defaults(ckpt["config"]))
    except ValueError as e:
        return f"its config is invalid: {(str(e).strip().splitlines() or [type(e).__name__])[0]}"
    return None


MAX_PICKLE_BYTES = 64 * 2**20  # a checkpoint's data.pkl holds configs, numbers and log lines; tensors are apart


def _check_archive(path: Path) -> None:
    """Refuse, before anything is inflated, a zip archive that would take far more memory than its size: a
    member larger than the whole file (``torch.save`` stores members uncompressed, so a compressed one that
    inflates past the file is no checkpoint of ours — a "zip bomb") or a pickle above ``MAX_PICKLE_BYTES``.
    A file that is not a zip archive is left to ``torch.load`` (which says it is damaged)."""
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError, OSError):
        return
    inflated = sum(m.file_size for m in members)
    biggest = max(members, key=lambda m: m.file_size, default=None)
    pickles = [m for m in members if m.filename.endswith(".pkl") and m.file_size > MAX_PICKLE_BYTES]
    if inflated > size:
        why = (f"its members inflate to {_size(inflated)} from a {_size(size)} file ({biggest.filename}: "
               f"{_size(biggest.file_size)}); torch.save stores them uncompressed, so it looks crafted")
    elif pickles:
        why = (f"its pickle {pickles[0].filename} is {_size(pickles[0].file_size)}, above the "
               f"{_size(MAX_PICKLE_BYTES)} an ncguide checkpoint's pickle can need")
    else:
        return
    raise NotACheckpointError(f"{path} is not an ncguide checkpoint ({why}); refused without loading it",
                              UNREADABLE_ADVICE)


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


# The globals a checkpoint of ncguide 0.1 needs beyond tensors: numpy's RNG state array (numpy 1 and 2 names)
_OLD_GLOBAL = re.compile(r"numpy\.(_?core\.multiarray\._reconstruct|ndarray|dtype|dtypes\.\w+DType)|_codecs\.encode")


def _old_globals() -> list:
    """:data:`_OLD_GLOBAL` as objects for ``torch.serialization.safe_globals`` (under both numpy module names)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct
    dtypes = [getattr(np.dtypes, n) for n in dir(getattr(np, "dtypes", None)) if n.endswith("DType")]
    return [(_reconstruct, "numpy.core.multiarray._reconstruct"), (_reconstruct, "numpy._core.multiarray._reconstruct"),
            np.ndarray, np.dtype, *dtypes]


def _refused_global(e: Exception) -> str | None:
    """The global a safe load refused (``posix.system``), from torch's message; None if it names none."""
    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    return found.group(1) if found else None


def _crafted(path: Path, name: str) -> str:
    return (f"{path} is not an ncguide checkpoint: it holds pickled Python objects that need {name}, which no "
            "ncguide checkpoint of any version holds (only tensors, plain containers and, from ncguide 0.1, numpy "
            "arrays), so it looks crafted; a safe load refuses it: unpickling it could run code")


def _damage(path: Path, e: Exception) -> str:
    """Why a file could not be read, in a user's words (not the zip reader's internals)."""
    if path.stat().st_size == 0:
        return "empty file"
    if not zipfile.is_zipfile(path):
        return "not a file written by torch.save: no zip archive"
    return f"damaged archive: {(str(e).strip().splitlines() or [type(e).__name__])[0]}"


def _unsafe_advice(path: Path) -> str:
    shown = str(path).replace("{", "{{").replace("}", "}}")  # the advice is a format string
    return (f"if it is a checkpoint of ncguide 0.1 and you trust where it came from, convert it with "
            f"`ncguide convert-checkpoint {shown} --trust-source`; otherwise delete it or pass {{no_resume}}")
UNREADABLE_ADVICE = "delete it or pass {no_resume} to start that run over"


CONVERT_ADVICE = "nothing was converted; give the checkpoint.pt of a run that ncguide 0.1 wrote"


def convert_checkpoint(path: str | os.PathLike, *, trust_source: bool = False) -> Path:
    """Rewrite an old (version 1) checkpoint in the safe format, in place and atomically; returns the path.

    The file is read with torch's safe loader that allows, beyond tensors and plain containers, only the numpy
    array types a 0.1 checkpoint pickled (its numpy RNG state): a file that needs anything else (``os.system``...)
    is refused as crafted and never unpickled. ``trust_source=True`` is still required, as a confirmation that
    the file is yours. The result is checked to load with :func:`load_checkpoint` before it replaces the file."""
    path = Path(path)
    if not trust_source:
        raise ValueError(f"converting {path} unpickles the numpy arrays it holds; pass trust_source=True "
                         "(--trust-source) only for a file whose source you trust")
    _check_archive(path)
    try:
        with torch.serialization.safe_globals(_old_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except pickle.UnpicklingError as e:
        name = _refused_global(e) or "objects beyond tensors and numpy arrays"
        raise UnsafeCheckpointError(_crafted(path, name).replace("not an ncguide checkpoint",
                                                                 "not an ncguide 0.1 checkpoint", 1),
                                    "nothing was converted; delete it (do not unpickle it)") from None
    except Exception as e:
        raise ResumeError(f"{path} is unreadable ({_damage(path, e)})", CONVERT_ADVICE) from None
    missing = [k for k in REQUIRED_KEYS if k not in ckpt] if isinstance(ckpt, dict) else list(REQUIRED_KEYS)
    if missing:
        raise NotACheckpointError(f"{path} is not an ncguide checkpoint (lacks {', '.join(missing)})", CONVERT_ADVICE)
    try:
        ckpt["rng"] = {**ckpt["rng"], "numpy": _plain_numpy_state(ckpt["rng"]["numpy"])}
    except (KeyError, TypeError, ValueError) as e:
        raise NotACheckpointError(f"{path} is not an ncguide checkpoint (its rng state: {e!r})", CONVERT_ADVICE) \
            from None
    ckpt["version"] = CHECKPOINT_VERSION
    tmp = path.with_name(path.name + ".converted")
    try:
        save_checkpoint(tmp, ckpt)
        try:
            load_checkpoint(tmp)  # refuses anything that is still not plain data, or not a checkpoint of ours
        except ResumeError as e:
            raise NotACheckpointError(e.problem.replace(str(tmp), str(path)), CONVERT_ADVICE) from None
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


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
    state = {"torch": torch.get_rng_state(), "numpy": _plain_numpy_state(np.random.get_state()),  # noqa: NPY002
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state(state["numpy"]))  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain_numpy_state(state: tuple | dict) -> dict:
    """numpy's legacy global RNG state as a tensor and numbers (loadable with ``weights_only=True``)."""
    if isinstance(state, dict):
        return state
    name, key, pos, has_gauss, cached = state
    return {"name": str(name), "key": torch.from_numpy(np.asarray(key, dtype=np.uint32).astype(np.int64)),
            "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _numpy_state(state: dict | tuple) -> tuple:
    """The tuple ``np.random.set_state`` takes, from :func:`_plain_numpy_state`'s dict (or a legacy tuple)."""
    if not isinstance(state, dict):
        return state
    return (state["name"], state["key"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
            state["cached_gaussian"])
