"""One ncguide process at a time per output folder.

``train`` holds the lock of its run folder for the whole run (resume decisions included), ``compare``
that of its ``--out`` folder (``config.yaml``, the report) for the whole comparison. The lock is an
exclusive, non-blocking ``fcntl.flock`` on ``<folder>/.lock``; its holder writes its pid, host, start
time and command line into that file. A second process on the same folder gets :class:`RunLockedError`
(a ``ValueError``: the CLI prints it as one line and exits with 2) naming the folder and the holder.

The kernel drops the lock when the holder's file is closed: on return, on an exception, and when the
process dies (even by SIGKILL), so a crashed run never leaves a stale lock. The ``.lock`` file stays (it
is emptied on release; deleting a lock file that another process may be opening would let two
processes hold "the" lock). ``flock`` locks belong to an open file description, so a second ``open`` of
the same file in the same process conflicts too. On NFS, Linux maps ``flock`` onto NFS byte-range locks
(works between hosts); a file system without locks, and platforms without ``fcntl`` (Windows), run
unlocked (with a warning for the former). A symbolic link, FIFO or other non-regular file at
``<folder>/.lock`` is refused with one line (``files.UnsafeFileError``): the lock file is written, and
ncguide never writes through a link.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .files import json_text, open_regular

try:
    import fcntl
except ImportError:  # Windows: no flock; folders are not locked there
    fcntl = None

__all__ = ["LOCK", "RunLockedError", "folder_lock", "rank0_folder_lock"]

LOCK = ".lock"


class RunLockedError(ValueError):
    """Another process holds the folder's lock (one line: the folder and the holder)."""


def _holder(fd: int) -> str:
    """``pid 123@host, started ..., command: ...`` from the lock file (what its holder wrote)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        command = " ".join(str(info.get("command", "")).split())
        if len(command) > 160:
            command = command[:157] + "..."
        return f"pid {info['pid']}@{info['host']}, started {info['started']}, command: {command}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "holder unknown: it has not written its name yet"


@contextmanager
def folder_lock(folder: str | os.PathLike, enabled: bool = True) -> Iterator[None]:
    """Hold the exclusive lock of ``folder`` (created if missing) while the block runs; raise
    :class:`RunLockedError` at once if another process holds it. ``enabled=False``: do nothing."""
    if not enabled or fcntl is None:
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = open_regular(folder / LOCK, os.O_RDWR | os.O_CREAT)  # a link or FIFO there: UnsafeFileError
    locked = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                warnings.warn(f"cannot lock {folder / LOCK} ({e.strerror}); running without a lock, so make sure "
                              "no other process writes into this folder", stacklevel=3)
            else:
                raise RunLockedError(
                    f"{folder} is in use by another ncguide run ({_holder(fd)}); wait for it to finish or "
                    "stop it, or use another output folder"
                ) from None
        if locked:
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": " ".join(sys.argv)}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json_text(info) + "\n").encode("utf-8"), 0)
        yield
    finally:
        if locked:
            try:
                os.ftruncate(fd, 0)  # so that the next reader never sees a departed holder
            except OSError:
                pass
        os.close(fd)  # releases the lock


def rank0_folder_lock(folder: str | os.PathLike):
    """:func:`folder_lock` taken only by rank 0 under torchrun (``RANK`` unset: a single process, which locks)."""
    return folder_lock(folder, enabled=int(os.environ.get("RANK", "0")) == 0)
