"""Untrusted files stay data: a checkpoint from someone else's results folder never runs code.

The payload is a real checkpoint with one extra entry whose unpickling would create a marker file (what
an attacker's file would do with ``os.system`` instead). Every entry point that reads checkpoints —
``train``, ``compare``, ``report`` and the library's loaders — must refuse it without creating the marker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ncguide.experiments.checkpoint import (
    CHECKPOINT,
    CHECKPOINT_VERSION,
    ResumeError,
    UnsafeCheckpointError,
    convert_checkpoint,
    is_finished,
    load_checkpoint,
)
from ncguide.experiments.config import TrainConfig
from ncguide.experiments.runlog import check_run_log
from ncguide.experiments.train import train

sys.path.insert(0, str(Path(__file__).parent))
from train_script import build_probe  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

BASE = dict(dataset="digits", model="mlp", model_kwargs={"widths": [32]}, batch_size=128, device="cpu", seed=0)
RUN_FLAGS = ["--dataset", "digits", "--model", "mlp", "--set", "model_kwargs.widths=[32]", "--epochs", "1"]


class Payload:
    """Unpickling this calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant(checkpoint: Path, marker: Path) -> None:
    """Rewrite a real checkpoint with the payload inside (all keys a checkpoint needs stay)."""
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["extra"] = Payload(marker)
    torch.save(ckpt, checkpoint)
    assert not marker.exists()


def ncguide(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("NCGUIDE_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", "ncguide", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_the_payload_would_run_under_an_unsafe_load(tmp_path):
    """The test's premise: a plain ``torch.load(weights_only=False)`` of the planted file runs the payload."""
    train(TrainConfig.from_dict({**BASE, "epochs": 1}), tmp_path / "run", progress="none")
    marker = tmp_path / "pwned"
    plant(tmp_path / "run" / CHECKPOINT, marker)
    torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)
    assert marker.exists()


def test_library_loaders_refuse_the_payload(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig.from_dict({**BASE, "epochs": 1}), run, progress="none")
    marker = tmp_path / "pwned"
    plant(run / CHECKPOINT, marker)
    for call in (lambda: load_checkpoint(run / CHECKPOINT), lambda: is_finished(run)):
        with pytest.raises(UnsafeCheckpointError, match="pickled Python objects") as info:
            call()
        assert "\n" not in str(info.value) and "looks crafted" in str(info.value)
        assert "convert-checkpoint" not in str(info.value)  # converting is for 0.1 checkpoints, not this
    with pytest.raises(ValueError, match="trust_source"):
        convert_checkpoint(run / CHECKPOINT)
    assert check_run_log(run) is None  # the log is judged from config.json, as for an unreadable checkpoint
    assert not marker.exists()


def test_train_compare_and_report_refuse_the_payload(tmp_path):
    marker = tmp_path / "pwned"
    # train: the run folder's checkpoint is read to resume
    assert ncguide("train", "--method", "standard", *RUN_FLAGS, "--out", "one", cwd=tmp_path).returncode == 0
    plant(tmp_path / "one" / CHECKPOINT, marker)
    res = ncguide("train", "--method", "standard", *RUN_FLAGS, "--out", "one", cwd=tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "pickled Python objects" in res.stderr and not marker.exists()
    # compare: every run folder's checkpoint is read to identify it; report: to check its log
    cmp_args = ("compare", "--methods", "standard", "--seeds", "1", *RUN_FLAGS, "--out", "cmp")
    assert ncguide(*cmp_args, cwd=tmp_path).returncode == 0
    plant(tmp_path / "cmp" / "runs" / "standard" / "seed-0" / CHECKPOINT, marker)
    res = ncguide(*cmp_args, cwd=tmp_path)
    assert res.returncode == 2 and "pickled Python objects" in res.stderr and not marker.exists(), res.stderr
    res = ncguide("report", "cmp", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert not marker.exists()


def test_a_new_checkpoint_is_plain_data(tmp_path):
    """What we write loads with torch's own safe loader, RNG states included."""
    train(TrainConfig.from_dict({**BASE, "epochs": 1}), tmp_path, progress="none")
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ckpt["version"] == CHECKPOINT_VERSION
    assert isinstance(ckpt["rng"]["numpy"]["key"], torch.Tensor)


def _as_version_1(path: Path) -> None:
    """Rewrite a checkpoint as ncguide 0.1 wrote it: numpy's RNG state as the pickled tuple."""
    ckpt = torch.load(path, weights_only=True)
    s = ckpt["rng"]["numpy"]
    ckpt["rng"]["numpy"] = (s["name"], s["key"].numpy().astype(np.uint32), s["pos"], s["has_gauss"],
                            s["cached_gaussian"])
    ckpt["version"] = 1
    torch.save(ckpt, path)


def test_an_old_checkpoint_is_refused_then_converted_knowingly_and_resumes_exactly(tmp_path):
    """A mid-run checkpoint as 0.1 wrote it: refused, converted only with --trust-source, then the run resumes
    to the same records as an uninterrupted one (the converted numpy RNG state is the same state)."""
    cfg = TrainConfig.from_dict({**BASE, "method": "nearest-etf", "epochs": 2})
    ref, out = tmp_path / "ref", tmp_path / "old"
    train(cfg, ref, progress="none", model=build_probe(cfg))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress="none", model=build_probe(cfg, sigint_at=15))  # epoch 2, batch 3
    _as_version_1(out / CHECKPOINT)
    with pytest.raises(UnsafeCheckpointError, match="numpy"):
        load_checkpoint(out / CHECKPOINT)
    res = ncguide("convert-checkpoint", str(out / CHECKPOINT), cwd=tmp_path)
    assert res.returncode == 2 and "--trust-source" in res.stderr
    res = ncguide("convert-checkpoint", str(out / CHECKPOINT), "--trust-source", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    ckpt = load_checkpoint(out / CHECKPOINT)
    assert ckpt["version"] == CHECKPOINT_VERSION and ckpt["mid_epoch"]
    train(cfg, out, progress="none", model=build_probe(cfg))

    def records(run: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k != "wall_s"}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert records(out) == records(ref)


def _recompress(src: Path, dst: Path, grow: dict[str, int] | None = None) -> None:
    """``src`` (a torch.save archive) rewritten with deflated members; ``grow`` pads members with zero bytes."""
    import zipfile

    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as b:
        for m in a.infolist():
            data = a.read(m)
            pad = next((n for suffix, n in (grow or {}).items() if m.filename.endswith(suffix)), 0)
            b.writestr(m.filename, data + bytes(pad))


def test_torch_inflates_compressed_members(tmp_path):
    """The premise of the zip-bomb check: torch.load reads deflated members (so it would inflate a bomb)."""
    torch.save({"x": torch.arange(5.0)}, tmp_path / "plain.pt")
    _recompress(tmp_path / "plain.pt", tmp_path / "deflated.pt")
    assert torch.equal(torch.load(tmp_path / "deflated.pt", weights_only=True)["x"], torch.arange(5.0))


@pytest.mark.parametrize(("grow", "words"), [({"data/0": 64 * 2**20}, ["inflate to", "looks crafted"]),
                                             ({"data.pkl": 65 * 2**20}, ["inflate to"])],
                         ids=["tensor-bomb", "pickle-bomb"])
def test_a_zip_bomb_is_refused_before_it_is_inflated(tmp_path, monkeypatch, grow, words):
    """A small archive whose members inflate far beyond its size is refused from the zip directory alone."""
    torch.save({"x": torch.arange(5.0)}, tmp_path / "plain.pt")
    bomb = tmp_path / "checkpoint.pt"
    _recompress(tmp_path / "plain.pt", bomb, grow)
    assert bomb.stat().st_size < 2**20

    def no_load(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_load)
    for call in (lambda: load_checkpoint(bomb), lambda: convert_checkpoint(bomb, trust_source=True)):
        with pytest.raises(ResumeError, match="not an ncguide checkpoint") as info:
            call()
        assert str(bomb) in str(info.value) and "\n" not in str(info.value)
        assert all(w in str(info.value) for w in words)


def test_a_stored_pickle_above_the_bound_is_refused(tmp_path, monkeypatch):
    """Stored (uncompressed) like torch.save's, but a pickle no checkpoint of ours needs: refused unread."""
    import zipfile

    from ncguide.experiments import checkpoint

    monkeypatch.setattr(checkpoint, "MAX_PICKLE_BYTES", 1000)  # the real bound is 64 MiB; a cheap file here
    path = tmp_path / "checkpoint.pt"
    torch.save({"lines": ["x" * 2000]}, path)
    assert max(m.file_size for m in zipfile.ZipFile(path).infolist() if m.filename.endswith(".pkl")) > 1000
    with pytest.raises(ResumeError, match=r"data\.pkl is 2\.\d KiB, above the 1000 bytes"):
        load_checkpoint(path)


def test_a_crafted_global_is_named_as_such_and_never_converted(tmp_path):
    """A file that needs a global no ncguide checkpoint holds (here io.open; os.system alike) is not
    called an old checkpoint: no advice to convert it, and convert-checkpoint --trust-source refuses it
    without unpickling it (the payload would create the marker)."""
    run = tmp_path / "run"
    train(TrainConfig.from_dict({**BASE, "epochs": 1}), run, progress="none")
    marker = tmp_path / "pwned"
    plant(run / CHECKPOINT, marker)
    with pytest.raises(UnsafeCheckpointError, match=r"need io\.open.*looks crafted") as info:
        load_checkpoint(run / CHECKPOINT)
    assert "convert-checkpoint" not in str(info.value) and "do not convert" in str(info.value)
    res = ncguide("convert-checkpoint", str(run / CHECKPOINT), "--trust-source", cwd=tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "not an ncguide 0.1 checkpoint" in res.stderr and "looks crafted" in res.stderr
    assert "--no-resume" not in res.stderr and "nothing was converted" in res.stderr
    assert not marker.exists()


def test_converting_a_file_that_is_no_checkpoint_gives_advice_for_that_command(tmp_path):
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    res = ncguide("convert-checkpoint", str(text), "--trust-source", cwd=tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert str(text) in res.stderr and "nothing was converted" in res.stderr and "--no-resume" not in res.stderr
    assert text.read_text() == "root:x:0:0:root:/root:/bin/bash\n"
