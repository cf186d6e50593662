"""The log and the checkpoint agree (runlog.py): records are fsynced, a resume restores lost or cut records
from the checkpoint's copy, and check_run_log says which finished runs' logs are unfit for a report."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest

from ncguide.experiments import files
from ncguide.experiments.checkpoint import load_checkpoint, save_checkpoint
from ncguide.experiments.config import TrainConfig
from ncguide.experiments.runlog import check_run_log, expected_epochs, finished_record
from ncguide.experiments.train import train

sys.path.insert(0, str(Path(__file__).parent))
from train_script import build_probe  # noqa: E402

CFG = TrainConfig.from_dict(dict(dataset="digits", model="mlp", model_kwargs={"widths": [32]}, epochs=4,
                                 batch_size=64, optimizer="sgd", lr=0.05, device="cpu", seed=0, method="standard"))
SPE = math.ceil(1437 / 64)  # steps per epoch


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> Path:
    """A finished run of CFG (tests copy it before damaging it)."""
    out = tmp_path_factory.mktemp("ref")
    train(CFG, out, progress="none", model=build_probe(CFG))
    return out


def copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("metrics.jsonl", "config.json", "checkpoint.pt"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def epochs(out: Path) -> list[int]:
    return [r["epoch"] for r in files.read_jsonl(out / "metrics.jsonl")]


def cut(path: Path, n: int) -> None:
    """``truncate -s -n path``."""
    os.truncate(path, path.stat().st_size - n)


def without_wall(out: Path) -> list[str]:
    return [json.dumps({k: v for k, v in r.items() if k != "wall_s"}) for r in files.read_jsonl(out / "metrics.jsonl")]


def test_each_record_is_fsynced(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(files.os, "fsync", lambda fd: synced.append(os.fstat(fd).st_size))
    files.append_line(tmp_path / "log", '{"epoch": 0}')
    files.append_line(tmp_path / "log", '{"epoch": 1}')
    assert synced == [13, 26] and (tmp_path / "log").read_text() == '{"epoch": 0}\n{"epoch": 1}\n'


def test_cut_record_is_restored_from_the_checkpoint_on_resume(tmp_path, ref):
    """The issue's case: a cut last line and a resume used to lose the cut record (epochs [0, 1, 3, 4])."""
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C on the last step of epoch 2: checkpoint at epoch 2
        train(CFG, out, progress="none", model=build_probe(CFG, sigint_at=2 * SPE))
    assert epochs(out) == [0, 1, 2] and load_checkpoint(out / "checkpoint.pt")["epoch"] == 2
    cut(out / "metrics.jsonl", 40)
    with pytest.warns(UserWarning, match="held only 2 of the 3 records of its checkpoint intact; rewrote them"):
        train(CFG, out, progress="none", model=build_probe(CFG))
    assert epochs(out) == [0, 1, 2, 3, 4] and without_wall(out) == without_wall(ref)
    assert check_run_log(out) is None


def test_emptied_log_of_a_finished_run_is_restored(tmp_path, ref):
    out = copy_run(ref, tmp_path / "run")
    (out / "metrics.jsonl").write_text("")
    with pytest.warns(UserWarning, match="rewrote them"):
        rec = train(CFG, out, progress="none")  # finished: nothing trained, the log comes back
    assert (out / "metrics.jsonl").read_bytes() == (ref / "metrics.jsonl").read_bytes()
    assert rec == files.last_record(ref / "metrics.jsonl")
    cut(out / "metrics.jsonl", 40)
    with pytest.warns(UserWarning, match="rewrote them"):
        assert finished_record(out) == rec  # what compare does with a finished run it reuses
    assert (out / "metrics.jsonl").read_bytes() == (ref / "metrics.jsonl").read_bytes()


def test_records_written_after_the_checkpoint_are_cut_as_before(tmp_path, ref):
    out = copy_run(ref, tmp_path / "run")
    before = (out / "metrics.jsonl").read_bytes()
    files.append_line(out / "metrics.jsonl", '{"epoch": 5}')
    (out / "metrics.jsonl").open("a").write('{"epoch": 6, "st')
    train(CFG, out, progress="none")
    assert (out / "metrics.jsonl").read_bytes() == before


def test_an_old_checkpoint_without_a_copy_resumes_only_an_intact_log(tmp_path, ref):
    out = copy_run(ref, tmp_path / "run")
    ckpt = dict(load_checkpoint(out / "checkpoint.pt"))
    del ckpt["metrics_lines"]
    save_checkpoint(out / "checkpoint.pt", ckpt)
    assert train(CFG, out, progress="none")["epoch"] == 4  # intact: as before
    assert check_run_log(out) is None
    cut(out / "metrics.jsonl", 40)
    assert "lost records" in check_run_log(out)
    with pytest.raises(ValueError, match=r"metrics.jsonl lost records since its checkpoint.*resume=False") as e:
        train(CFG, out, progress="none")
    assert "\n" not in str(e.value)


def test_check_run_log_with_a_checkpoint(tmp_path, ref):
    out = copy_run(ref, tmp_path / "run")
    assert check_run_log(out) is None
    (out / "metrics.jsonl").open("a").write('{"epoch": 5, "st')  # a cut line after every record: harmless
    assert check_run_log(out) is None
    out = copy_run(ref, tmp_path / "cut")
    cut(out / "metrics.jsonl", 40)
    assert check_run_log(out).startswith("the log holds only 4 of the 5 records its checkpoint kept intact")
    out = copy_run(ref, tmp_path / "extra")
    files.append_line(out / "metrics.jsonl", (ref / "metrics.jsonl").read_text().splitlines()[1])
    assert "finished but its log holds 1 more record" in check_run_log(out)


def test_check_run_log_without_a_checkpoint_judges_by_the_config(tmp_path, ref):
    out = copy_run(ref, tmp_path / "run")
    (out / "checkpoint.pt").unlink()  # deleted to save space
    assert check_run_log(out) is None
    cut(out / "metrics.jsonl", 40)
    assert check_run_log(out) == ("the log ends at epoch 3 and a cut line, of 4 epochs "
                                  "(checkpoint.pt missing, judged from config.json)")
    lines = (ref / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join([lines[0], lines[1][:30], *lines[2:]]) + "\n")
    assert check_run_log(out).startswith("line 2 of the log is cut or unreadable, after epoch 0")
    (out / "metrics.jsonl").write_text("\n".join([lines[0], *lines[2:]]) + "\n")
    assert check_run_log(out).startswith("the log's epochs [0, 2, 3, 4] are not the 4-epoch schedule")
    (out / "config.json").unlink()  # no config either: only cut lines count
    assert check_run_log(out) is None


def test_expected_epochs():
    assert expected_epochs(4) == [0, 1, 2, 3, 4]
    assert expected_epochs(7, 3) == [0, 3, 6, 7] and expected_epochs(0) == [0]
