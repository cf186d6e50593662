"""Atomic writes: a failure while writing leaves the previous file intact and no temporary file."""

import pytest

from ncguide.experiments.files import atomic_write, atomic_write_text


def test_atomic_write_replaces_the_file(tmp_path):
    path = tmp_path / "summary.json"
    atomic_write_text(path, "old\n")
    atomic_write_text(path, "new ✓\n")
    assert path.read_text(encoding="utf-8") == "new ✓\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_failure_mid_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "checkpoint.pt"
    atomic_write_text(path, "last good")

    def crash(f):
        f.write(b"half of a new checkpoint")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert path.read_text() == "last good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_read_jsonl_skips_a_cut_off_last_line_and_missing_files(tmp_path):
    from ncguide.experiments.files import last_record, read_jsonl

    path = tmp_path / "metrics.jsonl"
    assert read_jsonl(path) == [] and last_record(path) == {}
    path.write_text('{"epoch": 0}\n\n{"epoch": 1}\n{"epoch": 2, "st')
    assert read_jsonl(path) == [{"epoch": 0}, {"epoch": 1}]
    assert last_record(path) == {"epoch": 1}
