"""Data sets read from files: Fashion-MNIST, CIFAR-10/100, STL-10, ImageNet, and ``npz:PATH``.

Images come back as float32 ``(N, C, H, W)`` in ``[0, 1]`` (``load_dataset`` then normalises).
Where files live (``root`` = ``data_dir``, else ``$NCGUIDE_CACHE``, else ``~/.cache/ncguide``):

- ``fashion-mnist``: the four IDX files (``train-images-idx3-ubyte[.gz]`` ...) in ``root``,
  ``root/fashion-mnist`` or ``<system data folder>/fashion-mnist`` (Debian ``dataset-fashion-mnist``;
  the system data folder is ``/usr/share/datasets``, or ``$NCGUIDE_SYSTEM_DATA_DIR`` when set).
- ``cifar10``/``cifar100``/``stl10``: ``root/cifar-10-batches-py``, ``root/cifar-100-python``,
  ``root/stl10_binary``; when absent, the official archive is fetched (``download=True``),
  MD5-checked and unpacked there (see ``archives.py``).
- ``imagenet``: ``root/train`` and ``root/val`` (or ``root/imagenet/...``), one sub-folder per
  class, read lazily through ``torchvision.datasets.ImageFolder``: the returned ``Dataset`` has
  ``train_set``/``test_set`` (torch datasets of ``(3, 224, 224)`` normalised tensors) and no
  ``x_*``/``y_*`` tensors. Train: random-resized crop + flip; val: resize 256, centre crop 224.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from . import archives
from .dataset import Dataset, cache_dir
from .formats import read_cifar_batch, read_idx, read_npz, read_stl10

__all__ = ["load_fashion_mnist", "load_cifar10", "load_cifar100", "load_stl10", "load_imagenet", "load_npz"]

SYSTEM_DATA_DIR = Path("/usr/share/datasets")
SYSTEM_DATA_DIR_ENV = "NCGUIDE_SYSTEM_DATA_DIR"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _images(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)


def _labels(y: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(y, dtype=np.int64))


def system_data_dir() -> Path:
    """Where Debian's ``dataset-*`` packages put data: ``$NCGUIDE_SYSTEM_DATA_DIR``, else ``/usr/share/datasets``."""
    env = os.environ.get(SYSTEM_DATA_DIR_ENV)
    return Path(env).expanduser() if env else SYSTEM_DATA_DIR


FASHION_MNIST_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def find_fashion_mnist(data_dir: str | os.PathLike | None = None) -> list[Path] | None:
    """The four Fashion-MNIST IDX files (train images, train labels, test images, test labels), or None."""
    root = cache_dir(data_dir)
    for folder in (root, root / "fashion-mnist", system_data_dir() / "fashion-mnist"):
        files = [_find_idx(folder, s) for s in FASHION_MNIST_STEMS]
        if all(files):
            return files
    return None


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, seed: int = 0) -> Dataset:
    """Fashion-MNIST from IDX files: 60000 train / 10000 test, ``(1, 28, 28)``, 10 classes."""
    files = find_fashion_mnist(data_dir)
    if files is None:
        root, system = cache_dir(data_dir), system_data_dir() / "fashion-mnist"
        raise ValueError(
            f"Fashion-MNIST IDX files ({FASHION_MNIST_STEMS[0]}[.gz] ...) not found in {root} or {system}; "
            "install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
            "or put the four files in data_dir"
        )
    x_train, y_train, x_test, y_test = (read_idx(f) for f in files)
    for x, y, fx in ((x_train, y_train, files[0]), (x_test, y_test, files[2])):
        if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
            raise ValueError(f"{fx}: expected uint8 images of shape (N, 28, 28), got {x.dtype} {x.shape}")
        if y.ndim != 1 or len(y) != len(x) or (len(y) and (y.min() < 0 or y.max() > 9)):
            raise ValueError(f"{fx.parent}: labels must be {len(x)} values in 0..9 matching the images")
    return Dataset(
        "fashion-mnist",
        _images(x_train[:, None]),
        _labels(y_train),
        _images(x_test[:, None]),
        _labels(y_test),
        10,
        (1, 28, 28),
    )


def _archive_folder(data_dir, name: str, marker: str, download: bool) -> Path:
    """The extracted folder of archive ``name``: ``root/<folder>``, ``root`` itself if it holds ``marker``."""
    root = cache_dir(data_dir)
    if (root / marker).is_file():
        return root
    return archives.ensure_extracted(root, archives.ARCHIVES[name], download=download)


def load_cifar10(
    data_dir: str | os.PathLike | None = None, seed: int = 0, *, download: bool = True
) -> Dataset:
    """CIFAR-10 python batches: ``data_batch_1..5`` (50000 train), ``test_batch`` (10000), ``(3, 32, 32)``."""
    folder = _archive_folder(data_dir, "cifar10", "data_batch_1", download)
    train = [read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = read_cifar_batch(folder / "test_batch")
    x_train, y_train = np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])
    _check_range(y_train, y_test, 10, folder)
    return Dataset(
        "cifar10", _images(x_train), _labels(y_train), _images(x_test), _labels(y_test), 10, (3, 32, 32)
    )


def load_cifar100(
    data_dir: str | os.PathLike | None = None, seed: int = 0, *, download: bool = True
) -> Dataset:
    """CIFAR-100 python pickles ``train``/``test`` with the 100 ``fine_labels``, ``(3, 32, 32)``."""
    folder = _archive_folder(data_dir, "cifar100", "train", download)
    x_train, y_train = read_cifar_batch(folder / "train", label_key="fine_labels")
    x_test, y_test = read_cifar_batch(folder / "test", label_key="fine_labels")
    _check_range(y_train, y_test, 100, folder)
    return Dataset(
        "cifar100", _images(x_train), _labels(y_train), _images(x_test), _labels(y_test), 100, (3, 32, 32)
    )


def load_stl10(data_dir: str | os.PathLike | None = None, seed: int = 0, *, download: bool = True) -> Dataset:
    """STL-10 labelled binary splits (5000 train / 8000 test), ``(3, 96, 96)``; ``unlabeled_X.bin`` unused."""
    folder = _archive_folder(data_dir, "stl10", "train_X.bin", download)
    x_train, y_train = read_stl10(folder / "train_X.bin", folder / "train_y.bin")
    x_test, y_test = read_stl10(folder / "test_X.bin", folder / "test_y.bin")
    return Dataset(
        "stl10", _images(x_train), _labels(y_train), _images(x_test), _labels(y_test), 10, (3, 96, 96)
    )


def _check_range(y_train: np.ndarray, y_test: np.ndarray, k: int, folder: Path) -> None:
    for y in (y_train, y_test):
        if len(y) and (y.min() < 0 or y.max() >= k):
            raise ValueError(
                f"{folder}: labels must lie in 0..{k - 1}, found {y.min()}..{y.max()}; corrupt files?"
            )


def load_imagenet(
    data_dir: str | os.PathLike | None = None, seed: int = 0, *, image_size: int = 224
) -> Dataset:
    """ImageNet-style ``train/`` and ``val/`` class folders, lazily through torchvision ``ImageFolder``."""
    root = cache_dir(data_dir)
    base = next(
        (b for b in (root, root / "imagenet") if (b / "train").is_dir() and (b / "val").is_dir()), None
    )
    if base is None:
        raise ValueError(
            f"imagenet needs folders train/ and val/ (one sub-folder per class) under {root}; pass data_dir="
        )
    try:
        from torchvision import datasets, transforms
    except Exception as e:
        raise ValueError(
            f"imagenet needs torchvision ({e}); install it: pip install 'ncguide[vision]'"
        ) from None
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ]
    )
    test_tf = transforms.Compose(
        [
            transforms.Resize(int(image_size * 8 / 7)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            normalize,
        ]
    )
    train_set = datasets.ImageFolder(str(base / "train"), transform=train_tf)
    test_set = datasets.ImageFolder(str(base / "val"), transform=test_tf)
    if train_set.classes != test_set.classes:
        raise ValueError(f"{base}: train/ and val/ must hold the same class folders")
    return Dataset(
        "imagenet",
        None,
        None,
        None,
        None,
        len(train_set.classes),
        (3, image_size, image_size),
        mean=torch.tensor(IMAGENET_MEAN),
        std=torch.tensor(IMAGENET_STD),
        train_set=train_set,
        test_set=test_set,
        meta={"classes": train_set.classes},
    )


def load_npz(
    data_dir: str | os.PathLike | None = None, seed: int = 0, *, path: str, num_classes: int | None = None
) -> Dataset:
    """A user's arrays (see ``formats.read_npz``); ``uint8`` inputs are taken as pixels and scaled by 1/255."""
    a = read_npz(path, num_classes=num_classes)

    def to_x(x: np.ndarray) -> torch.Tensor:
        t = _images(x) if x.dtype == np.uint8 else torch.from_numpy(x.astype(np.float32))
        if not torch.isfinite(t).all():
            raise ValueError(f"{path}: inputs overflow float32 (|x| > 3.4e38); rescale your data")
        return t

    return Dataset(
        f"npz:{path}",
        to_x(a["x_train"]),
        _labels(a["y_train"]),
        to_x(a["x_test"]),
        _labels(a["y_test"]),
        int(a["num_classes"]),
        tuple(a["x_train"].shape[1:]),
    )
