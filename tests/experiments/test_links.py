"""No write follows a link: a symbolic link (or a FIFO) planted in a results folder never makes ncguide write
outside it. Atomic writes replace the link itself; appends, truncation and the lock file refuse it with one
line naming the file (``UnsafeFileError``, exit 2 from the CLI)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ncguide.experiments.cli import main
from ncguide.experiments.files import UnsafeFileError, append_line, atomic_write_text, open_regular, truncate
from ncguide.experiments.locks import LOCK, folder_lock

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not hasattr(os, "O_NOFOLLOW"), reason="needs O_NOFOLLOW (POSIX)")]

TINY = ["--dataset", "digits", "--model", "mlp", "--set", "model_kwargs.widths=[16]", "--set", "device=cpu",
        "--epochs", "1"]
SECRET = "the victim's file\n"


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file outside every results folder, which a planted link points to."""
    path = tmp_path / "outside" / "victim.txt"
    path.parent.mkdir()
    path.write_text(SECRET)
    return path


def _outside_untouched(victim: Path) -> None:
    assert victim.read_text() == SECRET
    assert sorted(p.name for p in victim.parent.iterdir()) == [victim.name]


def test_an_atomic_write_replaces_the_link_not_its_target(tmp_path, victim):
    link, dangling = tmp_path / "summary.json", tmp_path / "report.md"
    link.symlink_to(victim)
    dangling.symlink_to(victim.parent / "created-by-ncguide")
    atomic_write_text(link, "new\n")
    atomic_write_text(dangling, "new\n")
    for path in (link, dangling):
        assert not path.is_symlink() and path.read_text() == "new\n"
    _outside_untouched(victim)


@pytest.mark.parametrize("write", [lambda p: append_line(p, "{}"), lambda p: truncate(p, 0),
                                   lambda p: truncate(p, 10**6)], ids=["append_line", "truncate-0", "truncate-big"])
@pytest.mark.parametrize("dangling", [False, True], ids=["link", "dangling-link"])
def test_appends_and_truncation_refuse_a_link(tmp_path, victim, write, dangling):
    path = tmp_path / "metrics.jsonl"
    path.symlink_to(victim.parent / "created-by-ncguide" if dangling else victim)
    with pytest.raises(UnsafeFileError, match="symbolic link") as info:
        write(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert path.is_symlink()
    _outside_untouched(victim)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("flags", [os.O_WRONLY | os.O_APPEND | os.O_CREAT, os.O_RDWR | os.O_CREAT],
                         ids=["write-only", "read-write"])
def test_a_fifo_or_a_folder_is_refused_without_blocking(tmp_path, flags):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    with pytest.raises(UnsafeFileError, match="is a FIFO"):
        open_regular(tmp_path / "fifo", flags)
    with pytest.raises(UnsafeFileError, match="is a folder"):
        open_regular(tmp_path / "folder", flags)


def test_a_regular_file_is_appended_to_and_cut(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_line(path, '{"epoch": 0}')
    append_line(path, '{"epoch": 1}')
    assert path.read_text() == '{"epoch": 0}\n{"epoch": 1}\n'
    truncate(path, 13)
    assert path.read_text() == '{"epoch": 0}\n'
    truncate(path, 100)  # never grows a file
    assert path.read_text() == '{"epoch": 0}\n'


@pytest.mark.skipif(sys.platform == "win32", reason="no folder locks")
def test_the_lock_file_refuses_a_link_and_a_fifo(tmp_path, victim):
    linked, fifo = tmp_path / "a", tmp_path / "b"
    linked.mkdir()
    fifo.mkdir()
    (linked / LOCK).symlink_to(victim)
    os.mkfifo(fifo / LOCK)
    for folder, what in ((linked, "symbolic link"), (fifo, "FIFO")):
        with pytest.raises(UnsafeFileError, match=what), folder_lock(folder):
            pass
    _outside_untouched(victim)


def _run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    status = main(argv)
    return status, capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="no folder locks")
def test_train_compare_and_report_never_write_through_planted_links(tmp_path, victim, capsys, monkeypatch):
    monkeypatch.delenv("NCGUIDE_TRACEBACK", raising=False)
    run = tmp_path / "run"
    assert _run(["train", *TINY, "--out", str(run)], capsys)[0] == 0
    # the log of a finished run is cut back to its checkpoint's lines when the command is rerun: a link to a
    # file that starts with those lines would be cut; one to any other file is replaced by the lines
    log = run / "metrics.jsonl"
    cut_me = victim.parent / "log-and-more.txt"
    cut_me.write_text(log.read_text() + "more\n")
    before = cut_me.read_text()
    log.unlink()
    log.symlink_to(cut_me)
    status, err = _run(["train", *TINY, "--out", str(run)], capsys)
    assert status == 2 and err.count("\n") == 1 and str(log) in err and "symbolic link" in err, err
    assert cut_me.read_text() == before
    cut_me.unlink()
    log.unlink()
    log.symlink_to(victim)
    status, err = _run(["train", *TINY, "--out", str(run)], capsys)
    assert status == 0 and not log.is_symlink() and "rewrote them" in err, err
    # the lock file, before anything else of a fresh run
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / LOCK).symlink_to(victim)
    status, err = _run(["train", *TINY, "--out", str(fresh)], capsys)
    assert status == 2 and err.count("\n") == 1 and str(fresh / LOCK) in err, err
    # a compare, then its report over links planted at a figure (dangling) and at summary.json
    cmp = tmp_path / "cmp"
    assert _run(["compare", *TINY, "--methods", "standard", "--seeds", "1", "--out", str(cmp)], capsys)[0] == 0
    for name in ("overview.png", "summary.json"):
        (cmp / name).unlink()
    (cmp / "overview.png").symlink_to(victim.parent / "created-by-ncguide.png")
    (cmp / "summary.json").symlink_to(victim)
    status, err = _run(["report", str(cmp)], capsys)
    assert status == 0, err
    assert not (cmp / "overview.png").is_symlink() and (cmp / "overview.png").read_bytes()[:4] == b"\x89PNG"
    assert not (cmp / "summary.json").is_symlink()
    _outside_untouched(victim)


def test_a_linked_folder_inside_a_comparison_is_refused(tmp_path, victim, capsys, monkeypatch):
    """A link planted as ``runs`` (or a method's folder) would put every run's files elsewhere: refused with
    one line before anything is written there; the --out folder itself may be a link (the user named it)."""
    monkeypatch.delenv("NCGUIDE_TRACEBACK", raising=False)
    for planted in ("runs", "runs/standard"):
        cmp = tmp_path / planted.replace("/", "-")
        (cmp / planted).parent.mkdir(parents=True, exist_ok=True)
        (cmp / planted).symlink_to(victim.parent, target_is_directory=True)
        status, err = _run(["compare", *TINY, "--methods", "standard", "--seeds", "1", "--out", str(cmp)], capsys)
        assert status == 2 and err.count("\n") == 1 and f"{cmp / planted} is a symbolic link" in err, err
        _outside_untouched(victim)
