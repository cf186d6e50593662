"""Run files: atomic writes (a crash or Ctrl-C leaves the old file or the new one, never a torn one),
durable appends (the line is on disk when :func:`append_line` returns), strict JSON text (:func:`json_text`:
every file and log line we write parses with any JSON parser), reading JSON-lines logs that a killed run may
have left with a cut-off last line, and cutting a log back to the size it had at a checkpoint.

No write follows a symbolic link. A results folder may come from someone else, and a link planted in it
(``metrics.jsonl -> ~/.bashrc``) must not make ncguide write outside the folder. An atomic write renames a
temporary file of the same folder onto the name, which replaces a link there by the new file (the link's
target is never opened); every file opened in place (appends, truncation, the lock file) goes through
:func:`open_regular`, which opens with ``O_NOFOLLOW`` and refuses a link, a FIFO, a device or a folder with
:class:`UnsafeFileError`, one line naming the file."""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["UnsafeFileError", "open_regular", "check_no_links", "atomic_write", "atomic_write_text", "json_text",
           "finite_or_none", "append_line", "read_jsonl", "last_record", "truncate"]


class UnsafeFileError(ValueError):
    """A file that ncguide will not write in place: a symbolic link, or not a regular file (one line naming it)."""


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
          (stat.S_ISBLK, "a device"), (stat.S_ISDIR, "a folder"))


def _refuse(path: Path, what: str) -> UnsafeFileError:
    return UnsafeFileError(f"{path} is {what}, not a regular file; ncguide never writes through links or into "
                           "special files in a results folder: remove it, or use another output folder")


def open_regular(path: str | os.PathLike, flags: int, mode: int = 0o644) -> int:
    """``os.open(path, flags | O_NOFOLLOW)``, for a regular file only: a symbolic link (dangling or not), a
    FIFO, socket, device or folder at ``path`` raises :class:`UnsafeFileError` and nothing is opened through
    it (``O_NONBLOCK`` keeps a FIFO from blocking the open). Returns the file descriptor."""
    path = Path(path)
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags | nofollow | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK) and path.is_symlink():  # EMLINK: FreeBSD's O_NOFOLLOW
            raise _refuse(path, "a symbolic link") from None
        if e.errno in (errno.ENXIO, errno.EISDIR):  # ENXIO: a FIFO without a reader, opened for writing
            raise _refuse(path, "a FIFO" if e.errno == errno.ENXIO else "a folder") from None
        raise
    mode_now = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode_now):
        os.close(fd)
        raise _refuse(path, next((what for test, what in _KINDS if test(mode_now)), "a special file"))
    return fd


def check_no_links(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """``path``, after checking that no folder or file from below ``root`` down to it is a symbolic link
    (:class:`UnsafeFileError` naming the first; parts that do not exist yet are fine). ``root`` itself may be
    one: it is the folder the user named."""
    root, path = Path(root), Path(path)
    here = root
    for part in path.relative_to(root).parts:
        here = here / part
        if here.is_symlink():
            raise _refuse(here, "a symbolic link")
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write(f)`` on a temporary file in ``path``'s folder, fsync it, then ``os.replace`` it onto ``path``
    (a symbolic link at ``path`` is replaced by the file, its target left alone).

    A failed write (full disk, read-only file system...) raises ``OSError`` with its ``errno`` and
    ``filename=path``, also when the writer (``torch.save``) hid the operating system's error in its own."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from e
    f = None
    try:
        with os.fdopen(fd, "wb") as raw:
            f = _Recording(raw)
            write(f)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        cause = f.error if f is not None and f.error is not None else e
        if isinstance(cause, OSError) and cause.errno is not None:
            raise OSError(cause.errno, cause.strerror, str(path)) from e
        raise


class _Recording:
    """A file whose ``write`` keeps the first ``OSError`` it raised (``torch.save`` reports it as a RuntimeError)."""

    def __init__(self, f: IO[bytes]):
        self._f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name: str):
        return getattr(self._f, name)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``Path.write_text``, atomically (UTF-8)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (``nan``, ``inf``, ``-inf``) replaced by None, in dicts, lists and
    tuples at any depth (tuples become lists, as JSON has them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def json_text(obj: Any, indent: int | None = None) -> str:
    """``obj`` as strict JSON (RFC 8259): non-finite floats become ``null`` (:func:`finite_or_none`; the
    file's documentation says what a ``null`` stands for), never the ``NaN``/``Infinity`` tokens that
    Python's ``json`` writes by default and other parsers refuse."""
    return json.dumps(finite_or_none(obj), indent=indent, allow_nan=False)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` and a newline to ``path`` (UTF-8; created if missing), then fsync it. A link or special
    file at ``path`` raises :class:`UnsafeFileError` (:func:`open_regular`)."""
    fd = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with os.fdopen(fd, "ab") as f:
        f.write((line + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines file, skipping blank lines and a line cut short by an interrupted
    write; ``[]`` when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def last_record(path: str | os.PathLike) -> dict:
    """The last complete record of a JSON-lines file, ``{}`` if none."""
    records = read_jsonl(path)
    return records[-1] if records else {}


def truncate(path: str | os.PathLike, size: int) -> None:
    """Cut ``path`` back to ``size`` bytes (an empty file when it does not exist). A link or special file at
    ``path`` raises :class:`UnsafeFileError` (:func:`open_regular`)."""
    fd = open_regular(path, os.O_WRONLY | os.O_CREAT)
    try:
        if os.fstat(fd).st_size > size:
            os.ftruncate(fd, size)
    finally:
        os.close(fd)
