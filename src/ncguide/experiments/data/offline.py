"""Data sets that need no download: the unconstrained-feature model, scikit-learn digits, MNIST-1D.

- ``ufm``: ``K`` classes × ``n`` samples; ``x`` are the sample indices ``0..N-1`` (the UFM model
  learns one free feature per index), ``y[i] = i // n``. A UFM has no test set: ``x_test, y_test``
  are the training split again, so "test" numbers in a UFM report are training numbers.
- ``digits``: the 1797 8×8 images bundled with scikit-learn, pixels ``0..16`` scaled to ``[0, 1]``,
  shape ``(1, 8, 8)``; a stratified 80/20 train/test split drawn from ``seed``.
- ``mnist1d``: the standard MNIST-1D (Greydanus 2020), generated locally with
  ``mnist1d.data.make_dataset(get_dataset_args())`` (its fixed seed 42: the same data everywhere),
  never downloaded; 4000 train / 1000 test, shape ``(1, 40)``, already standardised by the
  generator. Cached as ``mnist1d-<hash of the arguments>.npz`` in the cache folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from .dataset import Dataset, cache_dir, seeded_generator, stratified_split

__all__ = ["load_ufm", "load_digits", "load_mnist1d"]


def load_ufm(
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    *,
    num_classes: int = 10,
    samples_per_class: int = 50,
    feature_dim: int = 512,
) -> Dataset:
    """Indices ``x = 0..K·n-1`` with labels ``y = x // n``; ``meta`` holds ``num_samples`` and ``feature_dim``."""
    if num_classes < 2 or samples_per_class < 1:
        raise ValueError(
            f"ufm needs num_classes >= 2 and samples_per_class >= 1, got {num_classes}, {samples_per_class}"
        )
    n = num_classes * samples_per_class
    x = torch.arange(n)
    y = x // samples_per_class
    return Dataset("ufm", x, y, x, y, num_classes, (), meta={"num_samples": n, "feature_dim": feature_dim})


def _require(module: str, extra: str = "experiments"):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ValueError(
            f"this data set needs the {module!r} package: pip install 'ncguide[{extra}]'"
        ) from None


def load_digits(
    data_dir: str | os.PathLike | None = None, seed: int = 0, *, test_fraction: float = 0.2
) -> Dataset:
    """scikit-learn's 8×8 digits in ``[0, 1]``, split ``1-test_fraction : test_fraction`` per class by ``seed``."""
    data, target = _digits_arrays()
    x = torch.from_numpy(data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(target.astype(np.int64))
    train, test = stratified_split(y, test_fraction, seeded_generator(seed, 0xD1617))
    return Dataset("digits", x[train], y[train], x[test], y[test], 10, (1, 8, 8))


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(data (1797, 64), target (1797,))`` of scikit-learn's digits, read from the CSV file scikit-learn ships
    (``sklearn/datasets/data/digits.csv.gz``: 64 pixel columns, then the label) without importing scikit-learn,
    whose import (~1.5 s, scipy.stats) would dominate the start of each run's process; through
    ``sklearn.datasets.load_digits`` where that file is not found."""
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            if table.ndim == 2 and table.shape[1] == 65:
                return table[:, :-1], table[:, -1].astype(np.int64)
    raw = _require("sklearn.datasets").load_digits()
    return raw.data, raw.target


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_mnist1d(data_dir: str | os.PathLike | None = None, seed: int = 0) -> Dataset:
    """MNIST-1D generated locally (cached after the first call); ``seed`` does not change the data."""
    data = _require("mnist1d.data")
    args = data.get_dataset_args(as_dict=True)
    args.pop("url", None)  # a download location, not a property of the data
    key = hashlib.sha1(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir(data_dir) / f"mnist1d-{key}.npz"
    arrays = None
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in ("x", "y", "x_test", "y_test")}
        except Exception:  # a damaged cache is regenerated
            arrays = None
    if arrays is None:
        # make_dataset reseeds numpy's and python's global generators: give the caller's back
        np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
        try:
            raw = data.make_dataset(data.get_dataset_args())
        finally:
            np.random.set_state(np_state)  # noqa: NPY002
            random.setstate(py_state)
        arrays = {k: np.asarray(raw[k]) for k in ("x", "y", "x_test", "y_test")}
        _atomic_savez(path, **arrays)

    def to_x(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32)).unsqueeze(1)

    def to_y(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return Dataset(
        "mnist1d",
        to_x(arrays["x"]),
        to_y(arrays["y"]),
        to_x(arrays["x_test"]),
        to_y(arrays["y_test"]),
        10,
        (1, 40),
    )
