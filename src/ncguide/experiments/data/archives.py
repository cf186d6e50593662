"""Fetch an official archive, verify its MD5, and unpack it atomically and safely.

``ensure_extracted(root, archive)`` makes ``root/<archive.folder>`` exist:
1. already there → done;
2. ``root/<archive.filename>`` present (downloaded by hand) → verify, unpack;
3. ``download=True`` → ``fetch`` into ``<filename>.part``, verify, rename, unpack.

Unpacking goes to a temporary folder inside ``root`` and is moved into place with one
``os.replace``, so an interrupted run never leaves a half-extracted folder. Members with absolute
paths, ``..`` components, links or device files are refused (no path traversal).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["Archive", "ARCHIVES", "fetch", "md5sum", "safe_extract", "ensure_extracted"]


@dataclass(frozen=True)
class Archive:
    url: str
    md5: str
    filename: str  # the archive's file name under root
    folder: str  # the top-level folder it unpacks to


ARCHIVES = {
    "cifar10": Archive(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "cifar-10-python.tar.gz",
        "cifar-10-batches-py",
    ),
    "cifar100": Archive(
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python.tar.gz",
        "cifar-100-python",
    ),
    "stl10": Archive(
        "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
        "91f7769df0f17e558f3565bffb0c7dfb",
        "stl10_binary.tar.gz",
        "stl10_binary",
    ),
}


def fetch(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Download ``url`` to ``dest`` (raises ``OSError``/``URLError`` on failure)."""
    with urllib.request.urlopen(url, timeout=timeout) as response, dest.open("wb") as f:
        shutil.copyfileobj(response, f, length=1 << 20)


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    parts = PurePosixPath(member.name).parts
    if member.name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise ValueError(f"{archive}: refusing unsafe path {member.name!r} in the archive")
    if not (member.isfile() or member.isdir()):
        raise ValueError(f"{archive}: refusing link or special file {member.name!r} in the archive")


def safe_extract(archive: Path, root: Path) -> None:
    """Unpack a tar archive into ``root``, atomically per top-level entry, refusing unsafe members."""
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                _check_member(m, archive)
            tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
            try:
                kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(tmp, members=members, **kwargs)
                for entry in tmp.iterdir():
                    target = root / entry.name
                    if not target.exists():
                        os.replace(entry, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ValueError(f"{archive}: cannot unpack ({e}); delete it and download it again") from None


def _verify(path: Path, md5: str) -> None:
    got = md5sum(path)
    if got != md5:
        raise ValueError(
            f"{path}: MD5 {got} does not match the official {md5}; delete it and download it again"
        )


def ensure_extracted(root: Path, archive: Archive, download: bool = True) -> Path:
    """``root/archive.folder``, unpacking (and, if ``download``, first fetching) the archive as needed.

    Raises ``ValueError`` when the folder is absent and cannot be produced (no archive and
    ``download=False``, a failed download, or a checksum mismatch).
    """
    folder = root / archive.folder
    if folder.is_dir():
        return folder
    path = root / archive.filename
    downloaded = not path.is_file()
    if downloaded:
        if not download:
            raise ValueError(
                f"{folder} not found under data_dir {root} and download=False; put the extracted "
                f"{archive.folder}/ (or {archive.filename} from {archive.url}) there, or pass download=True"
            )
        root.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        try:
            fetch(archive.url, part)
        except Exception as e:
            part.unlink(missing_ok=True)
            raise ValueError(
                f"{folder} not found under data_dir {root} and the download from {archive.url} failed ({e}); "
                f"fetch {archive.filename} yourself and extract it (or just place it) in {root}, "
                f"or pass data_dir=<the folder that holds {archive.folder}/>"
            ) from None
        try:
            _verify(part, archive.md5)
        except ValueError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, path)
    else:
        _verify(path, archive.md5)
    safe_extract(path, root)
    if not folder.is_dir():
        raise ValueError(
            f"{path} did not contain the expected folder {archive.folder}/; is it the right archive?"
        )
    if downloaded:
        path.unlink()  # the extracted folder is what is read; a hand-placed archive is left alone
    return folder
