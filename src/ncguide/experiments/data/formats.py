"""Readers for the on-disk formats of the public data sets, and for a user's own ``.npz`` arrays.

Each reader returns numpy arrays exactly as stored (images as ``uint8`` ``(N, C, H, W)``) and
raises ``ValueError`` naming the file and the problem when a file is missing, truncated or corrupt.

- IDX (MNIST, Fashion-MNIST): big-endian header ``0 0 <type> <ndim>``, ``ndim`` int32 sizes, data;
  plain or gzip-compressed.
- CIFAR-10/100 python pickles: a dict with ``data`` (``uint8`` ``N×3072``: 1024 red, 1024 green,
  1024 blue values, each a row-major 32×32 image) and ``labels`` (CIFAR-10) or ``fine_labels``
  (CIFAR-100). Unpickled with an allow-list (numpy arrays, builtins only), not a bare ``pickle.load``.
- STL-10 binary: ``*_X.bin`` ``uint8`` images of 3×96×96, channel after channel, each channel
  stored **column-major** (so a C-order read gives ``(C, W, H)`` and needs a transpose);
  ``*_y.bin`` ``uint8`` labels ``1..10``, returned as ``0..9``.
"""

from __future__ import annotations

import gzip
import os
import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np

__all__ = ["read_idx", "read_cifar_batch", "read_stl10", "read_npz"]

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: cannot read ({e}); the file is corrupt, download it again") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in an IDX file (``.gz`` or plain)."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(
            f"{path}: not an IDX file (bad magic number); the file is corrupt, download it again"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header; the file is corrupt, download it again")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: IDX size mismatch (header says shape {shape}, {expected} bytes; file has {len(raw)}); "
            "the file is truncated or corrupt, download it again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts/lists/bytes and numpy arrays only (CIFAR archives need nothing more)."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if module == "numpy.core.multiarray":  # old pickles; numpy 2 keeps it as numpy._core
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def read_cifar_batch(path: str | os.PathLike, label_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 3, 32, 32), labels int64 (N,))`` from one CIFAR python pickle."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        with path.open("rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as e:  # any unpickling failure means a corrupt or foreign file
        raise ValueError(
            f"{path}: not a CIFAR python pickle ({e}); the file is corrupt, download it again"
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict in the CIFAR pickle, found {type(obj).__name__}")
    obj = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in obj or label_key not in obj:
        raise ValueError(f"{path}: CIFAR pickle lacks 'data' or {label_key!r} (keys: {sorted(obj)})")
    data = np.asarray(obj["data"])
    labels = np.asarray(obj[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(
            f"{path}: expected uint8 data of shape (N, 3072) and N labels; "
            f"got {data.dtype} {data.shape} and {len(labels)} labels"
        )
    return data.reshape(-1, 3, 32, 32), labels


def read_stl10(images: str | os.PathLike, labels: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 3, 96, 96) row-major, labels int64 0..9)`` from an STL-10 ``*_X.bin``/``*_y.bin`` pair."""
    images, labels = Path(images), Path(labels)
    raw = np.frombuffer(_read_bytes(images), dtype=np.uint8)
    size = 3 * 96 * 96
    if len(raw) == 0 or len(raw) % size:
        raise ValueError(
            f"{images}: {len(raw)} bytes is not a whole number of 3×96×96 images; the file is truncated "
            "or corrupt, download it again"
        )
    x = raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)  # stored (C, W, H) column-major → (C, H, W)
    y = np.frombuffer(_read_bytes(labels), dtype=np.uint8).astype(np.int64) - 1
    if len(y) != len(x):
        raise ValueError(
            f"{labels}: {len(y)} labels for {len(x)} images in {images.name}; a file is truncated"
        )
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"{labels}: STL-10 labels must lie in 1..10, found {y.min() + 1}..{y.max() + 1}")
    return np.ascontiguousarray(x), y


def _int_labels(y: np.ndarray, key: str, path: Path) -> np.ndarray:
    """``y`` as int64 labels; the range is checked in ``y``'s own dtype first, so that no label wraps around
    in the cast (a ``uint64`` 2**64 - 1 or a float 1e30 would become a negative or arbitrary int64)."""
    if y.ndim != 1:
        raise ValueError(f"{path}: {key} must be 1-D integer labels, got shape {y.shape}")
    whole = np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))
    if not (np.issubdtype(y.dtype, np.integer) or whole):
        raise ValueError(
            f"{path}: {key} must hold integer class labels 0..K-1, got dtype {y.dtype} with non-integers"
        )
    if len(y) and (y.max() > _MAX_LABEL or y.min() < -_MAX_LABEL):  # the range itself is checked against K later
        raise ValueError(f"{path}: {key} labels must lie in 0..K-1, found {y.min()}..{y.max()}; relabel the classes "
                         "0..K-1")
    return y.astype(np.int64)


_MAX_LABEL = 2**53  # every float64 integer up to here is exact; a class label beyond it is no class count anyway


def read_npz(path: str | os.PathLike, num_classes: int | None = None) -> dict[str, np.ndarray]:
    """Validated ``x_train, y_train, x_test, y_test`` from a user's ``.npz`` (``K = max label + 1`` by default).

    Checks: the four keys exist; ``len(x) == len(y)`` per split; train and test samples share a
    shape; labels are integers in ``0..K-1`` and every class has a training sample; ``x`` is finite.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"npz file {path} not found; give npz:PATH with the path of your .npz file")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a .npz file (a zip archive of arrays); save it with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:
        raise ValueError(f"{path}: cannot read as .npz ({e}); save it with numpy.savez") from None
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing arrays {missing}; it needs x_train, y_train, x_test, y_test")
    out = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim < 2 or len(x) == 0:
            raise ValueError(f"{path}: x_{split} must have shape (N, ...) with N >= 1, got {x.shape}")
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.iscomplexobj(x):
            raise ValueError(f"{path}: x_{split} must be real numbers, got dtype {x.dtype}")
        y = _int_labels(y, f"y_{split}", path)  # 1-D first: len() of a 0-d array is a TypeError
        if len(x) != len(y):
            raise ValueError(f"{path}: x_{split} has {len(x)} samples but y_{split} has {len(y)} labels")
        if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
            raise ValueError(f"{path}: x_{split} holds {int((~np.isfinite(x)).sum())} NaN or infinite values")
        if np.issubdtype(x.dtype, np.floating) and x.size and np.abs(x).max() > np.finfo(np.float32).max:
            raise ValueError(f"{path}: x_{split} overflows float32 (|x| > 3.4e38), the precision of training; "
                             "rescale your data")
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
        raise ValueError(
            f"{path}: train samples have shape {out['x_train'].shape[1:]} but test samples {out['x_test'].shape[1:]}"
        )
    k = int(out["y_train"].max()) + 1 if num_classes is None else num_classes
    if k < 2:
        raise ValueError(f"{path}: y_train holds a single class (label {int(out['y_train'].max())}); a classifier "
                         "needs at least 2 classes, labelled 0..K-1")
    for split in ("train", "test"):
        y = out[f"y_{split}"]
        if y.min() < 0 or y.max() >= k:
            raise ValueError(f"{path}: y_{split} labels must lie in 0..{k - 1}, found {y.min()}..{y.max()}")
    n = len(out["y_train"])
    if k > n:  # before counting: np.bincount would allocate k counters (a label of 10**9 would exhaust memory)
        raise ValueError(f"{path}: y_train's largest label {k - 1} means {k} classes, but there are only {n} training "
                         "samples, so some classes have none; relabel to 0..K-1 without gaps")
    empty = np.flatnonzero(np.bincount(out["y_train"], minlength=k) == 0)
    if len(empty):
        raise ValueError(
            f"{path}: classes {empty.tolist()[:10]} have no training sample; relabel to 0..K-1 without gaps"
        )
    out["num_classes"] = np.int64(k)
    return out
