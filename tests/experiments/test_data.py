"""Data sets (on-disk formats written here from their specifications), subsets, normalisation, and the
``TensorLoader``: stratified batches, sharding, exact resume, on-device augmentation."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import random
import struct
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from ncguide.experiments.data import (
    DATASETS,
    TensorLoader,
    archives,
    balanced_subset,
    channel_stats,
    crop_flip,
    load_dataset,
    ondisk,
    random_crop_flip,
    stratified_batches,
)
from ncguide.experiments.data.formats import read_idx


def _system_fashion_mnist() -> bool:
    """Whether the system data folder (``$NCGUIDE_SYSTEM_DATA_DIR`` or /usr/share/datasets) has Fashion-MNIST."""
    return (ondisk.system_data_dir() / "fashion-mnist").is_dir()


def images(n: int, c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, h, w), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------
# writers that follow the published formats (independent of the readers)


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: 0x00 0x00, type code, ndim, big-endian uint32 sizes, big-endian data."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}[array.dtype]
    raw = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(array.dtype.newbyteorder(">")).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def write_cifar(path: Path, imgs: np.ndarray, labels: list[int], label_key: bytes = b"labels") -> None:
    """CIFAR python pickle: b'data' uint8 N×3072 = 1024 R, 1024 G, 1024 B, each row-major 32×32."""
    data = np.zeros((len(imgs), 3072), dtype=np.uint8)
    for i in range(len(imgs)):
        for c in range(3):
            for r in range(32):
                data[i, c * 1024 + r * 32 : c * 1024 + (r + 1) * 32] = imgs[i, c, r]
    obj = {b"data": data, label_key: list(labels), b"batch_label": b"fixture"}
    if label_key == b"fine_labels":
        obj[b"coarse_labels"] = [y // 5 for y in labels]
    path.write_bytes(pickle.dumps(obj))


def write_cifar10(
    root: Path, per_batch: int = 6, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for b in range(1, 6):
        x = images(per_batch, 3, 32, 32, seed + b)
        y = [(per_batch * (b - 1) + i) % 10 for i in range(per_batch)]
        write_cifar(folder / f"data_batch_{b}", x, y)
        xs.append(x)
        ys.extend(y)
    x_test = images(4, 3, 32, 32, seed + 9)
    y_test = [3, 1, 4, 1]
    write_cifar(folder / "test_batch", x_test, y_test)
    return np.concatenate(xs), np.array(ys), x_test, np.array(y_test)


def write_stl10(folder: Path, split: str, imgs: np.ndarray, labels_1_to_10: list[int]) -> None:
    """STL-10 binary: per image, channel after channel, each channel flattened column-major."""
    folder.mkdir(parents=True, exist_ok=True)
    flat = [imgs[i, c].flatten(order="F") for i in range(len(imgs)) for c in range(3)]
    (folder / f"{split}_X.bin").write_bytes(np.concatenate(flat).tobytes())
    (folder / f"{split}_y.bin").write_bytes(np.array(labels_1_to_10, dtype=np.uint8).tobytes())


# ---------------------------------------------------------------------------------------------------
# IDX / Fashion-MNIST


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_idx_round_trip(tmp_path, suffix, dtype):
    a = (np.random.default_rng(1).normal(size=(5, 3, 4)) * 100).astype(dtype)
    write_idx(tmp_path / f"a.idx{suffix}", a)
    got = read_idx(tmp_path / f"a.idx{suffix}")
    assert got.dtype == dtype and got.shape == a.shape
    np.testing.assert_array_equal(got, a)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_fashion_mnist_format_from_data_dir(tmp_path, suffix, monkeypatch):
    monkeypatch.setenv("NCGUIDE_SYSTEM_DATA_DIR", str(tmp_path / "absent"))
    x_train, x_test = images(7, 1, 28, 28, 1)[:, 0], images(3, 1, 28, 28, 2)[:, 0]
    x_train[0, 2, 5] = 255  # an asymmetric marker: row 2, column 5
    y_train, y_test = np.array([0, 1, 2, 3, 9, 5, 0], np.uint8), np.array([4, 9, 0], np.uint8)
    for name, a in [
        ("train-images-idx3-ubyte", x_train),
        ("train-labels-idx1-ubyte", y_train),
        ("t10k-images-idx3-ubyte", x_test),
        ("t10k-labels-idx1-ubyte", y_test),
    ]:
        write_idx(tmp_path / (name + suffix), a)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path, normalize=False)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.x_train.shape == (7, 1, 28, 28) and ds.x_train.dtype == torch.float32
    assert torch.equal(ds.x_train[:, 0] * 255, torch.from_numpy(x_train).float())
    assert torch.equal(ds.x_test[:, 0] * 255, torch.from_numpy(x_test).float())
    assert ds.x_train[0, 0, 2, 5] == 1.0
    assert ds.y_train.tolist() == y_train.tolist() and ds.y_test.tolist() == y_test.tolist()


def test_system_data_dir_follows_the_environment(tmp_path, monkeypatch):
    """$NCGUIDE_SYSTEM_DATA_DIR replaces /usr/share/datasets: empty there means not found, files there are used."""
    system = tmp_path / "system"
    monkeypatch.setenv("NCGUIDE_SYSTEM_DATA_DIR", str(system))
    assert ondisk.system_data_dir() == system
    with pytest.raises(ValueError, match="not found") as info:
        load_dataset("fashion-mnist", data_dir=tmp_path / "empty")
    assert str(system / "fashion-mnist") in str(info.value)
    folder = system / "fashion-mnist"
    folder.mkdir(parents=True)
    for name, a in [
        ("train-images-idx3-ubyte", images(5, 1, 28, 28, 1)[:, 0]),
        ("train-labels-idx1-ubyte", np.array([0, 1, 2, 3, 4], np.uint8)),
        ("t10k-images-idx3-ubyte", images(2, 1, 28, 28, 2)[:, 0]),
        ("t10k-labels-idx1-ubyte", np.array([5, 6], np.uint8)),
    ]:
        write_idx(folder / name, a)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path / "empty", normalize=False)
    assert ds.x_train.shape == (5, 1, 28, 28) and ds.y_test.tolist() == [5, 6]


def test_idx_corrupt_files(tmp_path):
    good = tmp_path / "good"
    write_idx(good, np.zeros((4, 28, 28), np.uint8))
    raw = good.read_bytes()
    (tmp_path / "truncated").write_bytes(raw[:-10])
    (tmp_path / "magic").write_bytes(b"\x01\x02" + raw[2:])
    (tmp_path / "bad.gz").write_bytes(b"this is not gzip data at all")
    with pytest.raises(ValueError, match="size mismatch"):
        read_idx(tmp_path / "truncated")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "magic")
    with pytest.raises(ValueError, match="corrupt"):
        read_idx(tmp_path / "bad.gz")
    with pytest.raises(ValueError, match="not found"):
        read_idx(tmp_path / "missing")


def test_fashion_mnist_missing_names_package_and_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NCGUIDE_SYSTEM_DATA_DIR", str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="dataset-fashion-mnist") as info:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert "apt-get install" in str(info.value) and "data_dir" in str(info.value)


@pytest.mark.skipif(not _system_fashion_mnist(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_system_package(tmp_path):
    ds = load_dataset("fashion-mnist", data_dir=tmp_path)  # empty data_dir: falls back to the package
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    assert torch.bincount(ds.y_train).tolist() == [6000] * 10
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10
    mean, std = channel_stats(ds.x_train)  # normalised with the training statistics
    assert abs(mean.item()) < 1e-5 and abs(std.item() - 1) < 1e-5
    assert 0.2 < ds.mean.item() < 0.4 and 0.2 < ds.std.item() < 0.5  # raw pixels in [0, 1]


# ---------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100


def test_cifar10_pickles_round_trip(tmp_path):
    x_train, y_train, x_test, y_test = write_cifar10(tmp_path)
    ds = load_dataset("cifar10", data_dir=tmp_path, download=False, normalize=False)
    assert ds.num_classes == 10 and ds.input_shape == (3, 32, 32)
    assert ds.x_train.shape == (30, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert torch.equal(ds.x_train * 255, torch.from_numpy(x_train).float())
    assert torch.equal(ds.x_test * 255, torch.from_numpy(x_test).float())
    assert ds.y_train.tolist() == y_train.tolist() and ds.y_test.tolist() == y_test.tolist()
    # pointing data_dir at the extracted folder itself works too
    again = load_dataset(
        "cifar10", data_dir=tmp_path / "cifar-10-batches-py", download=False, normalize=False
    )
    assert torch.equal(again.x_train, ds.x_train)


def test_cifar_orientation_marker(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    img = np.zeros((2, 3, 32, 32), np.uint8)
    img[0, 2, 1, 30] = 200  # blue channel, row 1, column 30
    write_cifar(folder / "train", img, [99, 0], b"fine_labels")
    write_cifar(folder / "test", img[:1], [42], b"fine_labels")
    ds = load_dataset("cifar100", data_dir=tmp_path, download=False, normalize=False)
    assert ds.num_classes == 100 and ds.y_train.tolist() == [99, 0] and ds.y_test.tolist() == [42]
    nz = torch.nonzero(ds.x_train)
    assert nz.tolist() == [[0, 2, 1, 30]] and ds.x_train[0, 2, 1, 30] * 255 == 200


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.parametrize("problem", ["missing-batch", "garbage", "wrong-shape", "not-allowed", "bad-label"])
def test_cifar_corrupt_or_missing(tmp_path, problem):
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    target = folder / "data_batch_3"
    if problem == "missing-batch":
        target.unlink()
        match = "data_batch_3.*not found"
    elif problem == "garbage":
        target.write_bytes(b"\x80\x04garbage" * 10)
        match = "data_batch_3.*corrupt"
    elif problem == "wrong-shape":
        target.write_bytes(pickle.dumps({b"data": np.zeros((2, 1000), np.uint8), b"labels": [0, 1]}))
        match = "3072"
    elif problem == "not-allowed":
        target.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": [0]}))
        match = "refusing"
    else:
        write_cifar(target, images(2, 3, 32, 32), [0, 10])
        match = "0..9"
    with pytest.raises(ValueError, match=match):
        load_dataset("cifar10", data_dir=tmp_path, download=False)


def test_cifar_absent_without_download(tmp_path):
    with pytest.raises(ValueError, match="data_dir") as info:
        load_dataset("cifar10", data_dir=tmp_path, download=False)
    assert "download=True" in str(info.value)


def _tar_of(folder: Path, out: Path, arcname: str) -> str:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return hashlib.md5(out.read_bytes()).hexdigest()


def test_download_failure_is_a_clear_error(tmp_path, monkeypatch):
    def offline(url, dest, timeout=60.0):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(archives, "fetch", offline)
    for name in ("cifar10", "cifar100", "stl10"):
        with pytest.raises(ValueError, match="not found under data_dir.*download.*failed") as info:
            load_dataset(name, data_dir=tmp_path / name)
        assert archives.ARCHIVES[name].url in str(info.value)
    assert not any(tmp_path.rglob("*.part"))  # nothing half-written left behind


def test_download_verifies_and_extracts(tmp_path, monkeypatch):
    src = tmp_path / "src"
    x_train, y_train, _, _ = write_cifar10(src)
    archive = tmp_path / "fixture.tar.gz"
    md5 = _tar_of(src / "cifar-10-batches-py", archive, "cifar-10-batches-py")
    fetched = []

    def fake_fetch(url, dest, timeout=60.0):
        fetched.append(url)
        dest.write_bytes(archive.read_bytes())

    monkeypatch.setattr(archives, "fetch", fake_fetch)
    real = archives.ARCHIVES["cifar10"]
    monkeypatch.setitem(
        archives.ARCHIVES, "cifar10", archives.Archive(real.url, md5, real.filename, real.folder)
    )
    root = tmp_path / "data"
    ds = load_dataset("cifar10", data_dir=root, normalize=False)
    assert fetched == [real.url]
    assert torch.equal(ds.x_train * 255, torch.from_numpy(x_train).float())
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # archive and temp dirs gone

    # a checksum mismatch is refused and leaves nothing behind
    monkeypatch.setitem(
        archives.ARCHIVES, "cifar10", archives.Archive(real.url, "0" * 32, real.filename, real.folder)
    )
    with pytest.raises(ValueError, match="MD5"):
        load_dataset("cifar10", data_dir=tmp_path / "other")
    assert list((tmp_path / "other").iterdir()) == []


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_safe_extract_refuses_unsafe_members(tmp_path, kind):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo(
            {"dotdot": "../escaped.txt", "absolute": "/tmp/escaped.txt", "symlink": "link"}[kind]
        )
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(ValueError, match="refusing"):
        archives.safe_extract(archive, root)
    assert list(root.iterdir()) == [] and not (tmp_path / "escaped.txt").exists()


# ---------------------------------------------------------------------------------------------------
# STL-10


def test_stl10_binary_column_major(tmp_path):
    folder = tmp_path / "stl10_binary"
    x_train, x_test = images(3, 3, 96, 96, 5), images(2, 3, 96, 96, 6)
    x_train[1] = 0
    x_train[1, 1, 2, 70] = 77  # green, row 2, column 70: lands at byte 9216 + 70·96 + 2 of image 1
    write_stl10(folder, "train", x_train, [1, 10, 4])
    write_stl10(folder, "test", x_test, [2, 2])
    raw = np.frombuffer((folder / "train_X.bin").read_bytes(), np.uint8)
    assert raw[27648 + 9216 + 70 * 96 + 2] == 77  # the fixture follows the column-major spec
    ds = load_dataset("stl10", data_dir=tmp_path, download=False, normalize=False)
    assert ds.input_shape == (3, 96, 96) and ds.num_classes == 10
    assert torch.equal(ds.x_train * 255, torch.from_numpy(x_train).float())
    assert torch.equal(ds.x_test * 255, torch.from_numpy(x_test).float())
    assert ds.y_train.tolist() == [0, 9, 3] and ds.y_test.tolist() == [1, 1]
    assert torch.nonzero(ds.x_train[1]).tolist() == [[1, 2, 70]]


@pytest.mark.parametrize("problem", ["truncated", "count", "label-range", "missing"])
def test_stl10_corrupt(tmp_path, problem):
    folder = tmp_path / "stl10_binary"
    write_stl10(folder, "train", images(2, 3, 96, 96), [1, 2])
    write_stl10(folder, "test", images(1, 3, 96, 96), [3])
    if problem == "truncated":
        raw = (folder / "train_X.bin").read_bytes()
        (folder / "train_X.bin").write_bytes(raw[:-5])
        match = "truncated"
    elif problem == "count":
        (folder / "train_y.bin").write_bytes(bytes([1, 2, 3]))
        match = "3 labels for 2 images"
    elif problem == "label-range":
        (folder / "train_y.bin").write_bytes(bytes([0, 2]))
        match = "1..10"
    else:
        (folder / "test_y.bin").unlink()
        match = "not found"
    with pytest.raises(ValueError, match=match):
        load_dataset("stl10", data_dir=tmp_path, download=False)


# ---------------------------------------------------------------------------------------------------
# npz


def _npz_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.normal(size=(12, 2, 5)).astype(np.float32),
        "y_train": np.array([0, 1, 2] * 4),
        "x_test": rng.normal(size=(4, 2, 5)).astype(np.float32),
        "y_test": np.array([2, 0, 1, 1]),
    }


def test_npz_round_trip(tmp_path):
    a = _npz_arrays()
    np.savez(tmp_path / "mine.npz", **a)
    ds = load_dataset(f"npz:{tmp_path / 'mine.npz'}")
    assert ds.num_classes == 3 and ds.input_shape == (2, 5)
    for key in a:
        assert torch.equal(getattr(ds, key), torch.from_numpy(a[key]).to(getattr(ds, key).dtype))
    a["y_train"] = a["y_train"].astype(np.float64)  # integral float labels are accepted
    a["x_train"] = np.arange(12 * 10, dtype=np.uint8).reshape(12, 2, 5)  # uint8 pixels scaled to [0, 1]
    a["x_test"] = np.full((4, 2, 5), 255, np.uint8)
    np.savez(tmp_path / "pix.npz", **a)
    ds = load_dataset(f"npz:{tmp_path / 'pix.npz'}", num_classes=3)
    assert ds.num_classes == 3 and ds.y_train.dtype == torch.int64
    assert torch.equal(ds.x_train * 255, torch.from_numpy(a["x_train"]).float()) and ds.x_test.max() == 1
    with pytest.raises(ValueError, match="classes \\[3, 4\\] have no training sample"):
        load_dataset(f"npz:{tmp_path / 'pix.npz'}", num_classes=5)  # declared classes must all be present


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.pop("y_test"), "missing arrays \\['y_test'\\]"),
        (lambda a: a.update(y_train=a["y_train"][:-1]), "x_train has 12 samples but y_train has 11"),
        (lambda a: a.update(y_train=a["y_train"] + 0.5), "integer class labels"),
        (lambda a: a.update(y_test=np.array([0, 1, -1, 2])), "y_test labels must lie in 0..2"),
        (lambda a: a.update(y_train=np.array([0, 2] * 6)), "classes \\[1\\] have no training sample"),
        (lambda a: a["x_train"].__setitem__((3, 1, 2), np.nan), "x_train holds 1 NaN"),
        (lambda a: a["x_test"].__setitem__((0, 0, 0), np.inf), "x_test holds 1 NaN or infinite"),
        (lambda a: a.update(x_test=np.zeros((4, 10), np.float32)), "share|shape"),
    ],
)
def test_npz_validation(tmp_path, change, match):
    a = _npz_arrays()
    change(a)
    np.savez(tmp_path / "bad.npz", **a)
    with pytest.raises(ValueError, match=match):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")


def test_npz_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")


# ---------------------------------------------------------------------------------------------------
# offline sets, subsets, normalisation


def test_digits_offline_and_split_by_seed():
    from sklearn.datasets import load_digits

    raw = load_digits()
    ds = load_dataset("digits", seed=0, normalize=False)
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10 and ds.x_train.shape[1:] == (1, 8, 8)
    assert len(ds.y_train) + len(ds.y_test) == len(raw.target)
    counts = np.bincount(raw.target)
    assert torch.bincount(ds.y_test).tolist() == [round(0.2 * n) for n in counts]  # stratified 80/20
    # the two splits are the data set: every raw sample appears in exactly one of them
    rows = torch.cat([ds.x_train, ds.x_test]).reshape(-1, 64) * 16
    labels = torch.cat([ds.y_train, ds.y_test])
    key = {tuple(r) + (y,) for r, y in zip(raw.data.astype(int).tolist(), raw.target.tolist())}
    assert {tuple(r) + (y,) for r, y in zip(rows.round().int().tolist(), labels.tolist())} == key
    same, other = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert torch.equal(same.y_test, load_dataset("digits", seed=0).y_test)
    assert not torch.equal(same.x_test, other.x_test)


@pytest.mark.parametrize("shipped_file", [True, False])
def test_digits_arrays_equal_sklearn_in_order(monkeypatch, shipped_file):
    """The CSV read without importing scikit-learn gives scikit-learn's arrays, row for row (the seeded split
    depends on the order); without the file, the fallback is scikit-learn itself."""
    from sklearn.datasets import load_digits

    from ncguide.experiments.data import offline

    if not shipped_file:
        monkeypatch.setattr(offline.importlib.util, "find_spec", lambda name: None)
    raw = load_digits()
    data, target = offline._digits_arrays()
    assert np.array_equal(data, raw.data) and np.array_equal(target, raw.target)
    assert target.dtype == np.int64 or not shipped_file


def test_mnist1d_generated_and_cached(tmp_path):
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    ds = load_dataset("mnist1d", data_dir=tmp_path)
    assert np.array_equal(np.random.get_state()[1], np_state[1]) and random.getstate() == py_state  # noqa: NPY002
    assert ds.x_train.shape == (4000, 1, 40) and ds.x_test.shape == (1000, 1, 40)
    assert ds.num_classes == 10 and ds.input_shape == (1, 40)
    assert set(ds.y_train.unique().tolist()) == set(range(10))
    cached = sorted(p.name for p in tmp_path.iterdir())
    assert (
        len(cached) == 1 and cached[0].startswith("mnist1d-") and cached[0].endswith(".npz")
    )  # no temp files
    again = load_dataset("mnist1d", data_dir=tmp_path)  # read back from the cache
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.y_test, ds.y_test)
    (tmp_path / cached[0]).write_bytes(b"damaged")  # a damaged cache is regenerated
    assert torch.equal(load_dataset("mnist1d", data_dir=tmp_path).x_test, ds.x_test)


@pytest.mark.parametrize("k, n", [(3, 4), (10, 7)])
def test_ufm(k, n):
    ds = load_dataset("ufm", num_classes=k, train_per_class=n, feature_dim=16)
    assert ds.x_train.dtype == torch.int64 and torch.equal(ds.x_train, torch.arange(k * n))
    assert torch.bincount(ds.y_train).tolist() == [n] * k and ds.num_classes == k
    assert ds.x_test is ds.x_train and ds.y_test is ds.y_train  # no test set: reports use train
    assert ds.meta == {"num_samples": k * n, "feature_dim": 16} and ds.input_shape == ()


def test_balanced_subset_deterministic_by_seed(tmp_path):
    full = load_dataset("digits", seed=3, normalize=False)
    a = load_dataset("digits", seed=3, train_per_class=20, test_per_class=5, normalize=False)
    b = load_dataset("digits", seed=3, train_per_class=20, test_per_class=5, normalize=False)
    c = load_dataset("digits", seed=4, train_per_class=20, test_per_class=5, normalize=False)
    assert torch.bincount(a.y_train).tolist() == [20] * 10 and torch.bincount(a.y_test).tolist() == [5] * 10
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    assert not torch.equal(a.x_train, c.x_train)
    idx = balanced_subset(full.y_train, 20, torch.Generator().manual_seed(0))
    assert len(set(idx.tolist())) == 200  # distinct samples
    with pytest.raises(ValueError, match="fewer than"):
        load_dataset("digits", train_per_class=1000)


def test_normalisation_uses_training_statistics(tmp_path):
    write_cifar10(tmp_path)
    raw = load_dataset("cifar10", data_dir=tmp_path, download=False, normalize=False, train_per_class=2)
    ds = load_dataset("cifar10", data_dir=tmp_path, download=False, train_per_class=2)
    x = raw.x_train.double()
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3), unbiased=False)  # oracle: per channel, train only
    torch.testing.assert_close(ds.mean.double(), mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ds.std.double(), std, rtol=1e-6, atol=1e-7)
    m, s = channel_stats(ds.x_train)
    torch.testing.assert_close(m, torch.zeros(3, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(s, torch.ones(3, dtype=torch.float64), atol=1e-6, rtol=0)
    back = ds.x_test * ds.std.view(1, 3, 1, 1) + ds.mean.view(1, 3, 1, 1)  # test set uses the train stats
    torch.testing.assert_close(back, raw.x_test, atol=1e-5, rtol=0)


def test_name_and_option_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        load_dataset("svhn")
    with pytest.raises(ValueError, match="unknown option.*'widht'"):
        load_dataset("digits", widht=3)
    with pytest.raises(ValueError, match="npz:PATH"):
        load_dataset("npz:")
    assert {"ufm", "digits", "mnist1d", "fashion-mnist", "cifar10", "cifar100", "stl10", "imagenet"} <= set(
        DATASETS
    )


def _has_torchvision() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


def _image_folders(root: Path, classes: int, per_class: dict[str, int]) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_imagenet_needs_folders(tmp_path):
    with pytest.raises(ValueError, match="train/ and val/"):
        load_dataset("imagenet", data_dir=tmp_path)


@pytest.mark.skipif(_has_torchvision(), reason="torchvision is installed; its absence cannot be exercised")
def test_imagenet_without_torchvision(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "n01440764").mkdir(parents=True)
    with pytest.raises(ValueError, match="torchvision"):
        load_dataset("imagenet", data_dir=tmp_path)


@pytest.mark.skipif(not _has_torchvision(), reason="needs torchvision")
def test_imagenet_folders_lazy(tmp_path):
    _image_folders(tmp_path, 3, {"train": 4, "val": 2})
    ds = load_dataset("imagenet", data_dir=tmp_path, image_size=32, train_per_class=2, seed=1)
    assert ds.is_lazy and ds.num_classes == 3 and ds.input_shape == (3, 32, 32)
    assert len(ds.train_set) == 6 and len(ds.test_set) == 6
    labels = sorted(ds.train_set[i][1] for i in range(len(ds.train_set)))
    assert labels == [0, 0, 1, 1, 2, 2]  # balanced subset of the class folders
    x, _ = ds.test_set[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    again = load_dataset("imagenet", data_dir=tmp_path, image_size=32, train_per_class=2, seed=1)
    assert again.train_set.indices == ds.train_set.indices


# ---------------------------------------------------------------------------------------------------
# stratified batches


def _labels(counts: list[int], seed: int = 0) -> torch.Tensor:
    y = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


LABEL_CASES = {
    "balanced": [20] * 10,
    "imbalanced": [50, 31, 20, 12, 9, 7, 3, 1],
    "one-rare": [40, 40, 40, 2],
    "many-classes": [5] * 30,
}


@pytest.mark.parametrize("case", list(LABEL_CASES))
@pytest.mark.parametrize("batch_size", [4, 10, 13, 32, 500])
@pytest.mark.parametrize("seed", [0, 1])
def test_stratified_batches_exact_cover_and_shares(case, batch_size, seed):
    counts = LABEL_CASES[case]
    y = _labels(counts, seed)
    n, k = len(y), len(counts)
    batches = stratified_batches(y, batch_size, torch.Generator().manual_seed(seed))
    assert len(batches) == -(-n // batch_size)
    assert [len(b) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
    assert torch.equal(torch.cat(batches).sort().values, torch.arange(n))  # every sample exactly once
    for b in batches:
        got = torch.bincount(y[b], minlength=k).tolist()
        for c, n_c in enumerate(counts):
            share = n_c * len(b)
            assert share // n <= got[c] <= -(-share // n), (c, got, len(b))  # floor/ceil of n_c·s/N
        if case == "balanced" and len(b) >= k:
            assert min(got) >= 1  # every class in every batch
        if len(b) == batch_size and batch_size < k and case in ("balanced", "many-classes"):
            assert max(got) == 1  # batch_size < K: as many distinct classes as samples
        if len(b) == batch_size:  # a class with at least as many samples as batches is in every full batch
            assert all(got[c] >= 1 for c, n_c in enumerate(counts) if n_c >= len(batches))


@pytest.mark.parametrize("stratified", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_loader_epoch_covers_every_sample_once(stratified, drop_last):
    y = _labels(LABEL_CASES["imbalanced"])
    x = torch.arange(len(y)).float()[:, None]
    loader = TensorLoader(x, y, 16, stratified=stratified, drop_last=drop_last, seed=5)
    seen = [xb[:, 0].long() for xb, _ in loader]
    assert len(seen) == len(loader) == (len(y) // 16 if drop_last else -(-len(y) // 16))
    seen = torch.cat(seen)
    assert len(set(seen.tolist())) == len(seen)  # no sample twice
    assert (
        len(seen) == (len(y) // 16) * 16
        if drop_last
        else torch.equal(seen.sort().values, torch.arange(len(y)))
    )
    for xb, yb in loader:  # labels travel with their samples
        assert torch.equal(yb, y[xb[:, 0].long()])


def test_loader_orders_deterministic_per_seed_and_epoch():
    y = _labels([10] * 5)
    x = torch.arange(50).float()

    def epoch_order(seed, epoch, **kw):
        loader = TensorLoader(x, y, 10, seed=seed, **kw)
        loader.set_epoch(epoch)
        return torch.cat([xb for xb, _ in loader])

    assert torch.equal(epoch_order(0, 2, stratified=True), epoch_order(0, 2, stratified=True))
    assert not torch.equal(epoch_order(0, 2, stratified=True), epoch_order(0, 3, stratified=True))
    assert not torch.equal(epoch_order(0, 2), epoch_order(1, 2))
    assert torch.equal(epoch_order(0, 0, shuffle=False), x)
    loader = TensorLoader(x, y, 10, seed=0)
    first, second = torch.cat([xb for xb, _ in loader]), torch.cat([xb for xb, _ in loader])
    assert not torch.equal(first, second) and loader.epoch == 2  # each pass is a new epoch


@pytest.mark.parametrize("augment", [None, "crop-flip"])
@pytest.mark.parametrize("batch_size", [8, 7])
def test_sharding_partitions_each_global_batch(augment, batch_size):
    y = _labels([6] * 5)
    x = torch.rand(30, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    kw = dict(stratified=True, seed=3, augment=augment)
    whole = list(TensorLoader(x, y, batch_size, **kw))
    ranks = [list(TensorLoader(x, y, batch_size, rank=r, world_size=2, **kw)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(whole)
    for (xw, yw), (x0, y0), (x1, y1) in zip(whole, *ranks):
        assert abs(len(y0) - len(y1)) <= 1
        assert torch.equal(torch.cat([x0, x1]), xw) and torch.equal(torch.cat([y0, y1]), yw)


@pytest.mark.parametrize("stop_at", [3, 7, 8])
def test_state_dict_resumes_identical_batches(stop_at):
    y = _labels([9] * 4)
    x = torch.rand(36, 1, 5, 5, generator=torch.Generator().manual_seed(1))
    kw = dict(stratified=True, seed=11, augment="crop-flip")
    reference = TensorLoader(x, y, 9, **kw)  # 4 batches per epoch; run 3 epochs
    expected = [b for _ in range(3) for b in reference]

    loader = TensorLoader(x, y, 9, **kw)
    got, it = [], iter(loader)
    for _ in range(stop_at):  # stop mid-way (or at an epoch's end) and save
        try:
            got.append(next(it))
        except StopIteration:
            it = iter(loader)
            got.append(next(it))
    state = loader.state_dict()
    resumed = TensorLoader(x, y, 9, **kw)
    resumed.load_state_dict(state)
    resumed.set_epoch(state["epoch"])  # what a training loop does at the top of an epoch: keeps the position
    while len(got) < len(expected):
        got.extend(resumed)
    assert len(got) == len(expected)
    for (xa, ya), (xb, yb) in zip(got, expected):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    with pytest.raises(ValueError, match="batch_size"):
        TensorLoader(x, y, 6, **kw).load_state_dict(state)


def test_loader_argument_errors():
    x, y = torch.rand(10, 3), torch.arange(10) % 2
    with pytest.raises(ValueError, match="shuffle=True"):
        TensorLoader(x, y, 4, shuffle=False, stratified=True)
    with pytest.raises(ValueError, match="images"):
        TensorLoader(x, y, 4, augment="crop-flip")
    with pytest.raises(ValueError, match="rank"):
        TensorLoader(x, y, 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="samples"):
        TensorLoader(x, y[:5], 4)


# ---------------------------------------------------------------------------------------------------
# augmentation


def _crop_flip_oracle(x, offsets, flips, pad):
    h, w = x.shape[-2:]
    out = []
    for i in range(len(x)):
        p = torch.nn.functional.pad(x[i], (pad, pad, pad, pad))
        oy, ox = offsets[i].tolist()
        crop = p[:, oy : oy + h, ox : ox + w]
        out.append(crop.flip(-1) if flips[i] else crop)
    return torch.stack(out)


@pytest.mark.parametrize("shape", [(6, 3, 8, 8), (5, 1, 7, 9)])
def test_crop_flip_matches_per_image_oracle(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g)
    offsets = torch.randint(0, 9, (shape[0], 2), generator=g)
    offsets[0] = torch.tensor([0, 8])  # extremes
    flips = torch.rand(shape[0], generator=g) < 0.5
    flips[:2] = torch.tensor([True, False])
    out = crop_flip(x, offsets, flips, pad=4)
    assert out.shape == x.shape
    assert torch.equal(out, _crop_flip_oracle(x, offsets, flips, 4))
    # an unshifted, unflipped crop is the identity
    centre = torch.full((shape[0], 2), 4)
    assert torch.equal(crop_flip(x, centre, torch.zeros(shape[0], dtype=torch.bool)), x)


def test_random_crop_flip_deterministic_and_changes_inputs():
    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0)) + 0.1  # no zeros in x
    a = random_crop_flip(x, torch.Generator().manual_seed(1))
    b = random_crop_flip(x, torch.Generator().manual_seed(1))
    c = random_crop_flip(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    changed = (a != x).flatten(1).any(1)
    assert changed.float().mean() > 0.8  # only the centred, unflipped crop (1/162) leaves an image as is
    assert ((a == 0).flatten(1).any(1)).any()  # some crops show the zero padding
    flipped = random_crop_flip(x, torch.Generator().manual_seed(3), crop=False)
    is_flip = (flipped == x.flip(-1)).flatten(1).all(1)
    is_same = (flipped == x).flatten(1).all(1)
    assert torch.all(is_flip ^ is_same) and 0 < is_flip.sum() < len(x)


def test_loader_augmentation_is_seeded():
    x = torch.rand(40, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(40) % 4
    a = [xb for xb, _ in TensorLoader(x, y, 10, seed=1, augment="crop-flip")]
    b = [xb for xb, _ in TensorLoader(x, y, 10, seed=1, augment="crop-flip")]
    plain = [xb for xb, _ in TensorLoader(x, y, 10, seed=1)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert all(p.shape == q.shape and not torch.equal(p, q) for p, q in zip(a, plain))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loader_on_cuda_matches_cpu():
    x = torch.rand(50, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.arange(50) % 5
    kw = dict(stratified=True, seed=2, augment="crop-flip")
    cpu = list(TensorLoader(x, y, 16, **kw))
    gpu = list(TensorLoader(x, y, 16, device="cuda", **kw))
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.is_cuda and torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)
