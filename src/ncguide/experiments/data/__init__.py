"""Data sets by name and in-memory batching.

    ds = load_dataset("cifar10", data_dir="data", seed=0, train_per_class=500)
    loader = TensorLoader(ds.x_train, ds.y_train, 128, stratified=True, augment="crop-flip", device="cuda")
    model = build_model("resnet18", ds.input_shape, ds.num_classes)

Names (``DATASETS``): ``ufm``, ``digits``, ``mnist1d``, ``fashion-mnist``, ``cifar10``, ``cifar100``,
``stl10``, ``imagenet``, and ``npz:PATH`` (a user's ``x_train, y_train, x_test, y_test``). Where the
files come from: ``offline.py`` (no files), ``ondisk.py`` (files, downloads via ``archives.py``).

``load_dataset`` then, in this order:
1. ``train_per_class``/``test_per_class``: keep that many samples of every class, chosen by ``seed``
   (for ``ufm``, ``train_per_class`` is the number of samples per class it generates);
2. ``normalize``: per-channel ``(x - μ_c)/σ_c`` with ``μ_c, σ_c`` from the (subsetted) training
   split, applied to both splits and kept in ``ds.mean``/``ds.std``. Default on for the image
   sets (``digits``, ``fashion-mnist``, ``cifar10``, ``cifar100``, ``stl10``), off for ``mnist1d``
   (standardised by its generator), ``npz`` (your arrays as given) and ``ufm`` (indices).

Everything is a deterministic function of the arguments: the same ``seed`` gives the same split and
subsets. ``imagenet`` is lazy: see ``Dataset`` (``train_set``/``test_set`` instead of tensors).
``dataset_info`` gives a set's input shape and number of classes without loading it (for up-front checks).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from . import dataset as _dataset
from .dataset import Dataset, balanced_subset, cache_dir, channel_stats, normalize, seeded_generator
from .formats import read_npz
from .loader import DatasetLoader, TensorLoader, crop_flip, random_crop_flip, stratified_batches
from .offline import load_digits, load_mnist1d, load_ufm
from .ondisk import (
    find_fashion_mnist,
    load_cifar10,
    load_cifar100,
    load_fashion_mnist,
    load_imagenet,
    load_npz,
    load_stl10,
)

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetLoader",
    "TensorLoader",
    "balanced_subset",
    "cache_dir",
    "channel_stats",
    "crop_flip",
    "dataset_info",
    "load_dataset",
    "normalize",
    "random_crop_flip",
    "stratified_batches",
]

DATASETS: dict[str, Callable[..., Dataset]] = {
    "ufm": load_ufm,
    "digits": load_digits,
    "mnist1d": load_mnist1d,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "stl10": load_stl10,
    "imagenet": load_imagenet,
    "npz": load_npz,  # by name as "npz:PATH"
}

NORMALIZED_BY_DEFAULT = frozenset({"digits", "fashion-mnist", "cifar10", "cifar100", "stl10"})

# (input shape, classes) of the sets whose shape does not depend on their files
_FIXED_INFO = {"digits": ((1, 8, 8), 10), "mnist1d": ((1, 40), 10), "fashion-mnist": ((1, 28, 28), 10),
               "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100), "stl10": ((3, 96, 96), 10)}
_NPZ_INFO: dict[tuple, tuple[tuple[int, ...], int]] = {}  # (path, size, mtime) -> info: one read per file version


def _parse_name(name: str) -> tuple[str, str]:
    """(registry key, npz path) of a data set name; ``ValueError`` for an unknown one."""
    key, _, path = name.partition(":") if name.lower().startswith("npz:") else (name, "", "")
    key = key.strip().lower().replace("_", "-")
    key = {"fashionmnist": "fashion-mnist", "mnist-1d": "mnist1d"}.get(key, key)
    if key not in DATASETS:
        names = ", ".join(n for n in DATASETS if n != "npz")
        raise ValueError(f"unknown dataset {name!r}; valid names: {names}, npz:PATH")
    if key == "npz" and not path.strip():
        raise ValueError("give your arrays as npz:PATH, e.g. npz:data/mine.npz")
    return key, path.strip()


def dataset_info(
    name: str, data_dir: str | os.PathLike | None = None, *, num_classes: int = 10, image_size: int = 224
) -> tuple[tuple[int, ...], int]:
    """``(input_shape, num_classes)`` of data set ``name`` without loading its data, and the ``ValueError``
    ``load_dataset`` would raise for a ``data_dir`` that is not a folder or for files that are missing
    (``fashion-mnist``, ``imagenet``) or invalid (``npz:PATH``, read and checked once per file version).
    ``num_classes`` is that of ``ufm``; files that ``load_dataset`` would download are not looked for."""
    key, path = _parse_name(name)
    if data_dir is not None and Path(data_dir).expanduser().exists() and not Path(data_dir).expanduser().is_dir():
        raise ValueError(f"data_dir {str(data_dir)!r} is a file, not a folder; give the folder of the data sets")
    if key == "ufm":
        return (), num_classes
    if key == "npz":
        p = Path(path).expanduser()
        stat = p.stat() if p.is_file() else None
        tag = (str(p.resolve()), stat.st_size, stat.st_mtime_ns) if stat else None
        if tag not in _NPZ_INFO:
            a = read_npz(p)  # ValueError naming the file and the problem
            info = (tuple(int(s) for s in a["x_train"].shape[1:]), int(a["num_classes"]))
            if tag is None:
                return info
            _NPZ_INFO[tag] = info
        return _NPZ_INFO[tag]
    if key == "fashion-mnist" and find_fashion_mnist(data_dir) is None:
        load_fashion_mnist(data_dir)  # raises its "files not found" error before reading anything
    if key == "imagenet":
        root = cache_dir(data_dir)
        base = next((b for b in (root, root / "imagenet") if (b / "train").is_dir() and (b / "val").is_dir()), None)
        if base is None:
            load_imagenet(data_dir)  # raises its "needs folders" error before reading anything
        classes = sum(1 for d in (base / "train").iterdir() if d.is_dir())
        return (3, image_size, image_size), classes
    return _FIXED_INFO[key]


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    train_per_class: int | None = None,
    *,
    test_per_class: int | None = None,
    normalize: bool | None = None,
    download: bool = True,
    **kwargs,
) -> Dataset:
    """Data set ``name`` (see the module docstring); ``kwargs`` are the data set's own options
    (``ufm``: ``num_classes``, ``feature_dim``; ``digits``: ``test_fraction``; ``npz``: ``num_classes``;
    ``imagenet``: ``image_size``). ``download`` applies to ``cifar10``, ``cifar100``, ``stl10``.
    """
    key, path = _parse_name(name)
    loader = DATASETS[key]
    options = {p.name for p in inspect.signature(loader).parameters.values() if p.kind == p.KEYWORD_ONLY}
    if key == "npz":
        kwargs["path"] = path
    if "download" in options:
        kwargs["download"] = download
    if key == "ufm" and train_per_class is not None:
        kwargs["samples_per_class"], train_per_class = train_per_class, None
    unknown = sorted(set(kwargs) - options)
    if unknown:
        shown = sorted(options - {"path", "download"})
        raise ValueError(f"unknown option(s) {unknown} for dataset {key!r}; valid options: {shown or 'none'}")

    ds = loader(data_dir, seed, **kwargs)
    ds = _subset(ds, train_per_class, test_per_class, seed)
    if (key in NORMALIZED_BY_DEFAULT if normalize is None else normalize) and not ds.is_lazy:
        if key == "ufm":
            raise ValueError("ufm inputs are sample indices and cannot be normalised; drop normalize=True")
        ds = _dataset.normalize(ds)
    return ds


def _subset(ds: Dataset, train_per_class: int | None, test_per_class: int | None, seed: int) -> Dataset:
    """Balanced subsets of each split (streams ``(seed, 1)`` for train, ``(seed, 2)`` for test)."""
    changes = {}
    for split, per_class, stream in (("train", train_per_class, 1), ("test", test_per_class, 2)):
        if per_class is None:
            continue
        g = seeded_generator(seed, stream)
        if ds.is_lazy:
            lazy = getattr(ds, f"{split}_set")
            idx = balanced_subset(torch.as_tensor(lazy.targets), per_class, g, ds.num_classes)
            changes[f"{split}_set"] = torch.utils.data.Subset(lazy, idx.tolist())
        else:
            idx = balanced_subset(getattr(ds, f"y_{split}"), per_class, g, ds.num_classes)
            changes[f"x_{split}"] = getattr(ds, f"x_{split}")[idx]
            changes[f"y_{split}"] = getattr(ds, f"y_{split}")[idx]
    return replace(ds, **changes) if changes else ds
