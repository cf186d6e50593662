"""What runs say while they train: a run's settings line and its machine.json (a tiny real run), and a
comparison's runs done / total and ETA (the stage scheduler with a scripted launcher, and the estimate
against hand-computed numbers)."""

import json
import socket
import sys
from pathlib import Path

import pytest
import torch

import ncguide
from ncguide.experiments.config import TrainConfig
from ncguide.experiments.launch import Outcome, Run, child_env, drive
from ncguide.experiments.machine import CONCURRENT_ENV, MACHINE, machine_info, read_starts
from ncguide.experiments.progress import CompareProgress, eta_seconds, format_duration, settings_line
from ncguide.experiments.train import train

sys.path.insert(0, str(Path(__file__).parent))
from train_script import build_probe  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

# ----------------------------------------------------------------------------------------------------
# a run's settings


def _pairs(line: str) -> dict[str, str]:
    head, _, pairs = line.partition(": ")
    assert head.startswith("settings (differing from the defaults")
    return dict(p.split("=", 1) for p in pairs.split(" ")) if pairs != "none" else {}


def test_settings_line_names_what_differs_and_never_what_the_run_ignores():
    # an npz run: the UFM's sizes and the loader processes of file-backed sets are ignored, even when set
    cfg = TrainConfig(dataset="npz:data/mine.npz", epochs=5, lr=0.1, num_classes=5, feature_dim=3, num_workers=2,
                      model_kwargs={"widths": [64, 64]})
    assert _pairs(settings_line(cfg)) == {"dataset": "npz:data/mine.npz", "model_kwargs": '{"widths":[64,64]}',
                                          "epochs": "5", "lr": "0.1"}
    # the standard head has no delta; adam has no momentum
    cfg = TrainConfig(method="standard", delta=0.01, optimizer="adam", momentum=0.5, weight_decay=0.0)
    assert _pairs(settings_line(cfg)) == {"method": "standard", "optimizer": "adam", "weight_decay": "0"}
    assert _pairs(settings_line(TrainConfig())) == {}
    assert settings_line(TrainConfig()).endswith(": none")
    # a UFM run names its sizes
    cfg = TrainConfig(dataset="ufm", model="ufm", num_classes=4, freeze_after=2.5)
    assert _pairs(settings_line(cfg)) == {"dataset": "ufm", "model": "ufm", "num_classes": "4", "freeze_after": "2.5"}


def test_a_run_prints_its_settings_and_records_its_machine_at_each_start(tmp_path, capsys):
    cfg = TrainConfig.from_dict(dict(dataset="digits", model="mlp", model_kwargs={"widths": [32]}, epochs=2,
                                     batch_size=64, device="cpu", method="standard"))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path, progress="table", model=build_probe(cfg, sigint_at=30))  # in epoch 2
    first = capsys.readouterr().out.splitlines()[0]
    assert _pairs(first) == {"method": "standard", "model_kwargs": '{"widths":[32]}', "epochs": "2",
                             "batch_size": "64", "device": "cpu"}
    train(cfg, tmp_path, progress="table", model=build_probe(cfg))  # resumes
    assert capsys.readouterr().out.splitlines()[0] == first
    starts = read_starts(tmp_path)
    assert [s["epoch"] for s in starts] == [0, 1]
    for s in starts:
        assert (s["hostname"], s["device"], s["gpu"], s["world_size"]) == (socket.gethostname(), "cpu", None, 1)
        assert (s["torch"], s["ncguide"], s["torch_threads"]) == (torch.__version__, ncguide.__version__, 1)
        assert s["concurrent_runs"] == 1 and s["cpu"] and s["logical_cores"] >= s["usable_cores"] >= 1
    train(cfg, tmp_path, progress="table", model=build_probe(cfg))  # finished: reused, nothing trains
    assert len(read_starts(tmp_path)) == 2
    assert capsys.readouterr().out == ""
    (tmp_path / MACHINE).write_text("{not json")  # damaged: read as not recorded
    assert read_starts(tmp_path) is None
    (tmp_path / MACHINE).write_text(json.dumps({"starts": starts * 3}))  # as an earlier run left it
    train(cfg, tmp_path, resume=False, progress="none", model=build_probe(cfg))  # from scratch: a new record
    assert [s["epoch"] for s in read_starts(tmp_path)] == [0]


def test_the_pool_tells_its_children_how_many_train_at_once(monkeypatch):
    assert child_env(2, None, 3)[CONCURRENT_ENV] == "3"
    monkeypatch.delenv(CONCURRENT_ENV, raising=False)
    assert CONCURRENT_ENV not in child_env(2)
    assert machine_info(torch.device("cpu"))["concurrent_runs"] == 1
    monkeypatch.setenv(CONCURRENT_ENV, "3")
    assert machine_info(torch.device("cpu"))["concurrent_runs"] == 3
    monkeypatch.setenv(CONCURRENT_ENV, "many")
    assert machine_info(torch.device("cpu"))["concurrent_runs"] == 1


# ----------------------------------------------------------------------------------------------------
# a comparison's progress


@pytest.mark.parametrize("seconds,text", [(0, "0 s"), (44.6, "45 s"), (60, "1 min 0 s"), (250, "4 min 10 s"),
                                          (7500, "2 h 05 min")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_eta_seconds_against_hand_numbers():
    durations = {("a", "p1"): [10.0, 20.0], ("a", "p2"): [40.0], ("b", "p"): [6.0]}
    remaining = [("a", "p1", 0.0), ("a", None, 0.0), ("b", None, 0.0), ("c", None, 0.0)]
    # own point: 15; a's mean: 70/3; b's: 6; c has none: the mean of all, 76/4
    assert eta_seconds(remaining, durations, 2) == pytest.approx((15 + 70 / 3 + 6 + 19) / 2)
    assert eta_seconds(remaining[:1], durations, 4) == pytest.approx(15)  # one run left: one slot of use
    assert eta_seconds([], durations, 2) == 0
    assert eta_seconds(remaining, {}, 2) is None
    # running runs: their elapsed time comes off, floored at 0 (a run past its estimate)
    running = [("a", "p1", 11.0), ("b", None, 9.0), ("c", None, 0.0)]
    assert eta_seconds(running, durations, 2) == pytest.approx((4 + 0 + 19) / 2)


def test_running_runs_count_with_their_time_left_on_a_fake_clock():
    now = [100.0]
    p = CompareProgress({"a": 4}, slots=2, clock=lambda: now[0])
    p.stage("a", [("r1", {}), ("r2", {}), ("r3", {})], reused=0)
    p.started("r1", at=100.0)
    p.started("r2", at=100.0)
    now[0] = 110.0
    p.ended("r1", "finished", 10.0, "a")  # each run of a takes 10 s
    p.started("r3", at=110.0)
    now[0] = 116.0  # r2 has trained 16 s (past its estimate: 0 left), r3 6 s (4 left), the 4th not started (10)
    assert [e for _, _, e in p.remaining()] == [16.0, 6.0, 0.0]
    assert eta_seconds(p.remaining(), p.durations, 2) == pytest.approx((0 + 4 + 10) / 2)
    assert "ETA ~ 7 s" in p.line()
    etas = []
    for t in (116.0, 117.0, 118.0, 119.0):  # no run ends: the estimate falls with the clock, it does not jump
        now[0] = t
        etas.append(eta_seconds(p.remaining(), p.durations, 2))
    assert etas == pytest.approx([7.0, 6.5, 6.0, 5.5])
    p.started("r3", at=110.0)  # said again at the next line: the same start
    assert eta_seconds(p.remaining(), p.durations, 2) == pytest.approx(5.5)
    p.started("unknown", at=0.0)  # not a run of this comparison (or one that ended): ignored
    p.ended("r3", "finished", 10.0, "a")
    assert "unknown" not in p.since and "r3" not in p.since


class TimedLauncher:
    """Ends queued runs one at a time in priority order, each taking ``seconds[tag]``; ``fail`` names runs that
    fail."""

    shows_status = False
    at_once = 1

    def __init__(self, seconds, fail=()):
        self.queue, self.seconds, self.fail = [], seconds, set(fail)

    def submit(self, runs):
        self.queue = sorted(self.queue + runs, key=lambda r: r.order)

    def counts(self):
        return len(self.queue), 0

    def wait(self):
        if not self.queue:
            return []
        r = self.queue.pop(0)
        status = "failed" if r.tag in self.fail else "finished"
        return [(r, Outcome(status, "boom" if status == "failed" else "", seconds=self.seconds[r.tag]))]


class PoolLikeLauncher(TimedLauncher):
    """Two slots: runs start when submitted; ``wait`` moves a fake clock (``now``) to the next end.
    ``started_at`` and ``clock`` as LocalPool's."""

    at_once = 2

    def __init__(self, seconds, now):
        super().__init__(seconds)
        self.now, self.running = now, {}

    def clock(self):
        return self.now[0]

    def submit(self, runs):
        super().submit(runs)
        while self.queue and len(self.running) < 2:
            r = self.queue.pop(0)
            self.running[r.path] = (r, self.now[0])

    def wait(self):
        if not self.running:
            return []
        path, (r, t0) = min(self.running.items(), key=lambda kv: kv[1][1] + self.seconds[kv[1][0].tag])
        del self.running[path]
        self.now[0] = t0 + self.seconds[r.tag]
        return [(r, Outcome("finished", "", seconds=self.seconds[r.tag]))]

    def started_at(self):
        return {path: t0 for path, (r, t0) in self.running.items()}


def test_drive_takes_the_running_runs_time_off_the_eta(tmp_path):
    clock = [0.0]
    lines = []
    launcher = PoolLikeLauncher({"a1": 10, "b1": 4, "a2": 20, "a3": 12, "b2": 5}, clock)
    drive(_two_methods(tmp_path), launcher, resume=False, out_dir=tmp_path, log=lines.append,
          expected={"a": 3, "b": 2})
    # a1, b1 start at 0. b1 ends at 4 (b's runs: 4 s); a2 starts. a has no finished run: all's mean, 4 s.
    # Left: a1 4-4=0, a2 4, b2 4, a's report run 4: 12 s over 2 slots (16/2 without a1's 4 s trained)
    # a1 ends at 10 (a's runs: 10 s); b2 starts. Left: a2 10-6=4, b2 4, a's report run 10: 18/2
    # b2 ends at 15. Left: a2 10-11 -> 0, a's report run 10: 10/2
    # a2 ends at 24; a3 starts. Left: a3 10 (its point's), one at a time
    assert [line.split(" (estimate")[0] for line in lines] == [
        "runs: 1/5 done; ETA ~ 6 s", "runs: 2/5 done; ETA ~ 9 s", "runs: 3/5 done; ETA ~ 5 s",
        "runs: 4/5 done; ETA ~ 10 s", "runs: 5/5 done"]


def _run(tmp_path, tag, order, point):
    return Run("selection", tag[0], point, 0, TrainConfig(), tmp_path / tag, order=order, tag=tag)


def _two_methods(tmp_path):
    """a: selection at lr 1 and 2, then a report run at lr 1; b: one run, then another."""
    def a():
        yield [_run(tmp_path, "a1", (0, 0), {"lr": 1}), _run(tmp_path, "a2", (0, 2), {"lr": 2})]
        yield [_run(tmp_path, "a3", (1, 0), {"lr": 1})]

    def b():
        yield [_run(tmp_path, "b1", (0, 1), {})]
        yield [_run(tmp_path, "b2", (1, 1), {})]

    return {"a": a(), "b": b()}


def test_drive_says_runs_done_of_the_total_and_an_eta_per_method(tmp_path):
    lines = []
    launcher = TimedLauncher({"a1": 10, "b1": 4, "a2": 20, "a3": 12, "b2": 5})
    drive(_two_methods(tmp_path), launcher, resume=False, out_dir=tmp_path, log=lines.append,
          expected={"a": 3, "b": 2})
    # ends in order a1, b1, a2, a3, b2. After a1: a2 (a's mean 10), b1 (all's mean 10), a's report run
    # (10) and b's second run (10). After b1: a2 (10), b2 (b's own 4), a's report run (10). After a2: a3 at
    # lr 1 (its point's 10), b2 (4). After a3: b2 (4).
    assert lines == [
        "runs: 1/5 done; ETA ~ 40 s (estimate from the 1 run finished here, per method, 1 at a time)",
        "runs: 2/5 done; ETA ~ 24 s (estimate from the 2 runs finished here, per method, 1 at a time)",
        "runs: 3/5 done; ETA ~ 14 s (estimate from the 3 runs finished here, per method, 1 at a time)",
        "runs: 4/5 done; ETA ~ 4 s (estimate from the 4 runs finished here, per method, 1 at a time)",
        "runs: 5/5 done",
    ]


def test_a_failed_method_leaves_the_total_and_a_grown_grid_joins_it(tmp_path):
    from ncguide.experiments.launch import RunsFailedError

    lines = []
    launcher = TimedLauncher({"a1": 10, "b1": 4, "a2": 20, "a3": 12, "b2": 5}, fail={"a2"})
    with pytest.raises(RunsFailedError):
        drive(_two_methods(tmp_path), launcher, resume=False, out_dir=tmp_path, log=lines.append,
              expected={"a": 3, "b": 2})
    assert lines[2].startswith("runs: 2/4 done, 1 failed; ETA ~ 4 s")  # a's report run will never come
    assert lines[-1] == "runs: 3/4 done, 1 failed"
    lines.clear()  # a pipeline that yields more than expected (a grid extended beyond its edge)
    drive(_two_methods(tmp_path), TimedLauncher({"a1": 10, "b1": 4, "a2": 20, "a3": 12, "b2": 5}), resume=False,
          out_dir=tmp_path, log=lines.append, expected={"a": 1, "b": 1})
    assert [line.split(";")[0] for line in lines] == ["runs: 1/3 done", "runs: 2/4 done", "runs: 3/5 done",
                                                      "runs: 4/5 done", "runs: 5/5 done"]


def test_progress_line_with_reused_runs_running_ones_and_no_estimate():
    p = CompareProgress({"a": 3}, slots=2)
    p.stage("a", [("r1", {}), ("r2", {})], reused=1)
    assert p.line(queued=1, running=1) == "runs: 1/3 done (1 reused), 1 running, 1 queued; ETA once a run has " \
                                          "finished here"
    p.ended("r1", "diverged", 3.0, "a")  # a diverged run's time says nothing of a finished one's
    assert p.line().endswith("ETA once a run has finished here")
    p.ended("r2", "finished", 8.0, "a")
    assert p.line() == "runs: 3/3 done (1 reused)"
    slurm = CompareProgress({"a": 2}, slots=None)
    slurm.stage("a", [("r1", {})], reused=0)
    assert slurm.line(0, 1).endswith("ETA not estimated (the runs wait in a queue)")


def test_machine_json_is_what_a_report_reads(tmp_path):
    """The entry record_start writes is the one read_starts returns (the report's input)."""
    from ncguide.experiments.machine import record_start

    first = record_start(tmp_path, torch.device("cpu"), 1, 0)
    second = record_start(tmp_path, torch.device("cpu"), 1, 4)
    assert read_starts(tmp_path) == [first, second]
    assert json.loads((tmp_path / MACHINE).read_text()) == {"starts": [first, second]}
