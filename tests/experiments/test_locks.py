"""One process per output folder (locks.py): a second train/compare into a folder in use fails at once with
one line naming the holder (the CLI: exit 2); the lock goes with its holder, even when it is killed."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ncguide.experiments.cli import main
from ncguide.experiments.compare import run_compare
from ncguide.experiments.launch import RunsFailedError
from ncguide.experiments.locks import LOCK, RunLockedError, folder_lock, rank0_folder_lock
from ncguide.experiments.train import train

fcntl = pytest.importorskip("fcntl")  # no folder locks without it (Windows)

SRC = str(Path(__file__).parents[2] / "src")
SCRIPT = Path(__file__).parent / "train_script.py"
BASE = dict(dataset="digits", model="mlp", model_kwargs={"widths": [32]}, epochs=1, batch_size=64, optimizer="sgd",
            lr=0.05, device="cpu", seed=0)
HOLD = "import sys, time\nfrom ncguide.experiments.locks import folder_lock\nwith folder_lock(sys.argv[1]):\n" \
       "    print('locked', flush=True)\n    time.sleep(120)\n"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture
def held(tmp_path):
    """A folder whose lock another process holds (until the test kills it): (folder, that process)."""
    folder = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield folder, proc
    proc.kill()
    proc.wait()


def _holder(proc) -> str:
    return re.escape(f"pid {proc.pid}@{socket.gethostname()}, started ")


def test_a_second_lock_in_the_same_process_conflicts_and_names_the_holder(tmp_path):
    with folder_lock(tmp_path):
        info = json.loads((tmp_path / LOCK).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname() and info["command"]
        with pytest.raises(RunLockedError, match=rf"{re.escape(str(tmp_path))} is in use .*pid {os.getpid()}@"):
            with folder_lock(tmp_path):
                pass
        fd = os.open(tmp_path / LOCK, os.O_RDWR)  # another open file description: flock refuses it too
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    assert (tmp_path / LOCK).read_text() == ""  # released and emptied
    with folder_lock(tmp_path):
        pass


def test_train_into_a_folder_in_use_fails_then_works_once_the_holder_dies(held):
    folder, proc = held
    with pytest.raises(RunLockedError, match=_holder(proc)) as e:
        train(BASE | {"method": "standard"}, folder, progress="none")
    assert "\n" not in str(e.value)
    assert not (folder / "metrics.jsonl").exists()  # nothing was written
    proc.kill()  # SIGKILL: no clean-up, the kernel drops the lock
    proc.wait()
    assert train(BASE | {"method": "standard"}, folder, progress="none")["epoch"] == 1


def test_compare_into_a_folder_in_use_fails(held):
    folder, proc = held
    with pytest.raises(RunLockedError, match=_holder(proc)):
        run_compare(BASE, ["standard"], 1, folder, progress="none", log=lambda s: None)
    assert not (folder / "config.yaml").exists()


def test_compare_whose_run_folder_is_in_use_fails(tmp_path):
    out = tmp_path / "cmp"
    with folder_lock(out / "runs" / "standard" / "seed-0"):
        # a failed run (named with the holder), not an exception that stops the comparison: the other run went on
        with pytest.raises(RunsFailedError, match=r"1 run failed: runs/standard/seed-0 \(ncguide\.experiments\.locks\."
                                                  r"RunLockedError: .*seed-0 is in use .*; 1 other run done;") as e:
            run_compare(BASE, ["standard"], 2, out, progress="none", log=lambda s: None, report=False)
        assert not (out / "runs/standard/seed-0/launch.log").exists()  # nothing written into the holder's folder
        assert e.value.failed[0][1].logs == ()
    run_compare(BASE, ["standard"], 2, out, progress="none", log=lambda s: None, report=False)  # released


@pytest.mark.parametrize("command", ["train", "compare"])
def test_cli_one_line_exit_2(held, capsys, command):
    folder, proc = held
    tiny = ["--dataset", "digits", "--model", "mlp", "--epochs", "1", "--set", "model_kwargs.widths=[32]",
            "--set", "device=cpu", "--out", str(folder)]
    assert main([command, *tiny]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ncguide: error: ") and err.count("\n") == 1, err
    assert re.search(_holder(proc), err) and str(folder) in err


def test_only_rank_0_locks_under_torchrun(tmp_path, monkeypatch):
    with folder_lock(tmp_path):
        with pytest.raises(RunLockedError):
            with rank0_folder_lock(tmp_path):
                pass
        monkeypatch.setenv("RANK", "1")
        with rank0_folder_lock(tmp_path):  # other ranks do not lock
            pass


def test_torchrun_ranks_all_stop_when_rank_0_cannot_lock(held):
    """Rank 0 fails to lock; rank 1 must not wait for it in a collective (it learns by a broadcast)."""
    folder, proc = held
    cfg = BASE | {"method": "standard", "model_kwargs": {"widths": [32], "batch_norm": False}}
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
           str(folder), json.dumps(cfg)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode != 0
    assert re.search(_holder(proc), res.stderr) and "could not be locked by rank 0" in res.stderr, res.stderr[-3000:]
    assert not (folder / "metrics.jsonl").exists()
