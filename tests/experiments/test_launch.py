"""Launch settings, thread and GPU assignment (pure functions, a fake device count), the per-method stage
scheduler with a scripted launcher, and bad launch options on the command line. No child processes here:
tests/experiments/test_launch_local.py and test_launch_slurm.py run real ones."""

import itertools
import json
from pathlib import Path

import pytest

from ncguide.experiments import launch as launch_mod
from ncguide.experiments.checkpoint import load_checkpoint
from ncguide.experiments.cli import main
from ncguide.experiments.config import ConfigError, TrainConfig
from ncguide.experiments.launch import (
    InProcess,
    LaunchConfig,
    LocalPool,
    Outcome,
    Run,
    RunsFailedError,
    assign_gpus,
    child_command,
    child_env,
    cpu_plan,
    drive,
    failure_cause,
    make_launcher,
    parse_launch,
)
from ncguide.experiments.slurm import parse_slurm, slurm_minutes

# ----------------------------------------------------------------------------------------------------
# threads and GPUs


@pytest.mark.parametrize("jobs,cores", list(itertools.product(range(1, 9), range(1, 9))))
def test_cpu_plan_never_oversubscribes_and_uses_the_cores(jobs, cores):
    concurrent, threads = cpu_plan(jobs, cores)
    assert concurrent * threads <= cores  # runs x threads <= cores
    assert concurrent == min(jobs, cores) and threads == cores // concurrent  # and no core left idle by choice
    assert concurrent * (threads + 1) > cores  # one more thread each would oversubscribe


def test_cpu_plan_explicit_threads_win():
    assert cpu_plan(2, 16, threads_per_run=3) == (2, 3)
    with pytest.raises(ValueError):
        cpu_plan(0, 4)


@pytest.mark.parametrize("n,jobs,per_run,per_gpu", [(4, 4, 1, 1), (4, 8, 1, 2), (4, 3, 1, 2), (5, 2, 2, 1),
                                                     (8, 8, 2, 1), (2, 16, 1, 8), (3, 1, 3, 1), (6, 5, 1, 3)])
def test_assign_gpus_disjoint_groups_shared_at_most_m_times(n, jobs, per_run, per_gpu):
    gpus = [f"GPU-{i}" for i in range(n)]  # names pass through, e.g. UUIDs from CUDA_VISIBLE_DEVICES
    slots = assign_gpus(gpus, jobs, per_run, per_gpu)
    assert len(slots) == min(jobs, (n // per_run) * per_gpu)
    assert all(len(s) == per_run and set(s) <= set(gpus) for s in slots)
    for a, b in itertools.combinations(slots, 2):
        assert a == b or not set(a) & set(b)  # two slots share all their GPUs or none
    for g in gpus:
        assert sum(g in s for s in slots) <= per_gpu
    # round-robin: the first slots land on different GPU groups before any group is shared
    groups = n // per_run
    assert len(set(slots[:groups])) == min(len(slots), groups)


def test_assign_gpus_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match="gpus_per_run 4 but 2 GPUs visible"):
        assign_gpus(["0", "1"], 1, 4)
    with pytest.raises(ValueError, match="needs gpus_per_run 1"):
        assign_gpus(["0", "1"], 2, 2, 2)


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert launch_mod.visible_gpus() == ["3", "5"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert launch_mod.visible_gpus() == ["0", "1"]


def _planned(tmp_path, device="cpu", n=2):
    return {tmp_path / f"run{i}": TrainConfig(device=device, seed=i) for i in range(n)}


def test_make_launcher_on_a_fake_four_gpu_machine(tmp_path, monkeypatch):
    monkeypatch.setattr(launch_mod, "visible_gpus", lambda: ["0", "1", "2", "3"])
    monkeypatch.setattr(launch_mod, "available_cores", lambda: 16)
    kw = dict(out_dir=tmp_path, resume=True, progress="none", log=print, train_fn=None)
    pool = make_launcher(LaunchConfig(jobs=8, runs_per_gpu=2), _planned(tmp_path, "cuda"), **kw)
    assert isinstance(pool, LocalPool) and pool.gpus_per_run == 1
    visible = [child_env(s.threads, s.gpus)["CUDA_VISIBLE_DEVICES"] for s in pool.slots]
    assert sorted(visible) == ["0", "0", "1", "1", "2", "2", "3", "3"] and visible[:4] == ["0", "1", "2", "3"]
    assert all(s.threads == 2 for s in pool.slots)  # 16 cores over 8 runs
    pool = make_launcher(LaunchConfig(jobs=2, gpus_per_run=2), _planned(tmp_path, "cuda"), **kw)
    assert [s.gpus for s in pool.slots] == [("0", "1"), ("2", "3")]
    cmd = child_command(Path("r"), pool.gpus_per_run)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    # one run on two GPUs needs torchrun, so a child process even with jobs 1
    assert isinstance(make_launcher(LaunchConfig(jobs=1, gpus_per_run=2), _planned(tmp_path, "cuda"), **kw), LocalPool)
    with pytest.raises(ConfigError, match="gpus_per_run 8 but 4 GPUs visible"):
        make_launcher(LaunchConfig(jobs=2, gpus_per_run=8), _planned(tmp_path, "cuda"), **kw)


def test_gpu_settings_on_a_cpu_comparison_are_refused_or_warned(tmp_path, monkeypatch):
    """--gpus-per-run / --runs-per-gpu place runs on GPUs: refused when the runs train on device cpu, a warning
    when device auto finds no CUDA device (the same command serves a GPU machine)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(launch_mod, "available_cores", lambda: 2)
    kw = dict(out_dir=tmp_path, resume=True, progress="none", log=print, train_fn=None)
    for launch, key in ((LaunchConfig(jobs=2, gpus_per_run=2), "gpus_per_run"),
                        (LaunchConfig(jobs=2, runs_per_gpu=4), "runs_per_gpu")):
        with pytest.raises(ConfigError, match=f"{key} .* but this comparison trains on device cpu") as e:
            make_launcher(launch, _planned(tmp_path, "cpu"), **kw)
        assert e.value.key == key
        with pytest.warns(UserWarning, match=f"{key} .* ignored: no CUDA device here"):
            pool = make_launcher(launch, _planned(tmp_path, "auto"), **kw)
        assert isinstance(pool, LocalPool) and pool.gpus_per_run == 1 and all(s.gpus is None for s in pool.slots)
    assert isinstance(make_launcher(LaunchConfig(), _planned(tmp_path, "cpu"), **kw), InProcess)  # nothing given


def test_make_launcher_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(launch_mod, "available_cores", lambda: 2)
    kw = dict(out_dir=tmp_path, resume=True, progress="none", log=print, train_fn=None)
    assert isinstance(make_launcher(LaunchConfig(), _planned(tmp_path), **kw), InProcess)
    pool = make_launcher(LaunchConfig(jobs=2), _planned(tmp_path), **kw)
    assert [(s.gpus, s.threads) for s in pool.slots] == [(None, 1), (None, 1)]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    env = child_env(1)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1" and "CUDA_VISIBLE_DEVICES" not in env
    with pytest.warns(UserWarning, match="jobs 5 > 2 CPU cores: running 2 at a time"):
        pool = make_launcher(LaunchConfig(jobs=5), _planned(tmp_path), **kw)
    assert len(pool.slots) == 2


# ----------------------------------------------------------------------------------------------------
# settings


@pytest.mark.parametrize("settings,key", [
    ({"jobs": 0}, "jobs"), ({"jobs": "two"}, "jobs"), ({"jobs": 1.5}, "jobs"), ({"jobs": True}, "jobs"),
    ({"runs_per_gpu": 2, "gpus_per_run": 2}, "runs_per_gpu"), ({"wait": False}, "wait"), ({"wait": "maybe"}, "wait"),
    ({"launcher": "pbs"}, "launcher"), ({"slurm_time": "1:00:00"}, "slurm_time"), ({"nodes": 2}, "nodes"),
    ({"launcher": "slurm"}, "slurm_time"), ({"launcher": "slurm", "slurm_time": "soon"}, "slurm_time"),
    ({"launcher": "slurm", "slurm_time": 10, "slurm_mem": "4X"}, "slurm_mem"),
    ({"launcher": "slurm", "slurm_time": 10, "slurm_extra": ["array=0-3"]}, "slurm_extra"),
    ({"launcher": "slurm", "slurm_time": 10, "slurm_extra": {"partition": "gpu"}}, "slurm_extra"),
    ({"launcher": "slurm", "slurm_time": 10, "slurm_extra": ["--QOS=x"]}, "slurm_extra"),
    ({"launcher": "slurm", "slurm_time": 10, "slurm_setup": ["a\nb"]}, "slurm_setup"),
    ({"launcher": "slurm", "slurm_time": 10, "slurm_partition": "a b"}, "slurm_partition"),
    ({"launcher": "slurm", "slurm_time": 10, "slurm_cpus_per_run": 0}, "slurm_cpus_per_run"),
    # settings of the local launcher that Slurm would ignore: each has a Slurm counterpart
    ({"launcher": "slurm", "slurm_time": 10, "jobs": 4}, "jobs"),
    ({"launcher": "slurm", "slurm_time": 10, "gpus_per_run": 2}, "gpus_per_run"),
    ({"launcher": "slurm", "slurm_time": 10, "runs_per_gpu": 4}, "runs_per_gpu"),
])
def test_bad_launch_settings_name_their_key(settings, key):
    with pytest.raises(ConfigError) as e:
        parse_launch(settings)
    assert e.value.key == key


def test_launch_settings_from_yaml_and_cli_strings():
    c = parse_launch({"jobs": "3", "threads_per_run": 2, "gpus_per_run": "1", "runs_per_gpu": 4})
    assert (c.launcher, c.jobs, c.threads_per_run, c.runs_per_gpu, c.wait) == ("local", 3, 2, 4, True)
    # slurm settings next to an explicit local launcher (a YAML file made for both) are ignored, with a warning
    with pytest.warns(UserWarning, match="slurm_partition, slurm_time ignored: the launcher is local"):
        assert parse_launch({"launcher": "local", "slurm_time": "1:00", "slurm_partition": "gpu"}).slurm is None
    s = parse_launch({"launcher": "slurm", "slurm_time": "1-00:00:00", "slurm_partition": "gpu", "wait": "false",
                      "slurm_cpus_per_run": "8", "slurm_gpus_per_run": 2, "slurm_mem": "32G",
                      "slurm_setup": ["module load cuda", "source venv/bin/activate"],
                      "slurm_extra": ["qos=high", "exclusive", "constraint=a100|h100"]})
    assert s.wait is False and s.slurm.time_min == 1440
    assert s.slurm.sbatch_options() == ["--time=1440", "--partition=gpu", "--mem=32G", "--cpus-per-task=8",
                                        "--gpus-per-node=2", "--qos=high", "--exclusive", "--constraint=a100|h100"]
    assert parse_slurm({"slurm_time": 5, "slurm_extra": {"mail_type": "END", "requeue": True}}).extra == (
        ("mail-type", "END"), ("requeue", True))


@pytest.mark.parametrize("text,minutes", [("90", 90), (90, 90), ("1:30", 2), ("0:59", 1), ("2:00:00", 120),
                                          ("1:00:01", 61), ("1-0", 1440), ("1-2", 1560), ("1-2:30", 1590),
                                          ("2-00:00:00", 2880), ("0:0:1", 1)])
def test_slurm_minutes_reads_slurm_time_formats(text, minutes):
    assert slurm_minutes(text) == minutes


@pytest.mark.parametrize("text", ["", "0", "0:00", "soon", "1:2:3:4", "-1", "1-", "1h", True, 0])
def test_slurm_minutes_refuses_the_rest(text):
    with pytest.raises(ValueError, match="bad Slurm time"):
        slurm_minutes(text)


# ----------------------------------------------------------------------------------------------------
# why a run failed, from its log

_HEADER = "==== 2026-01-01 12:00:00 python -m ncguide.experiments.run_one RUN\n"
_TABLE = "  epoch  train_loss  train_acc\n      0      1.3863     25.00%\n     10      0.5127     80.00%\n"
_OOM = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
_TRACEBACK = ("Traceback (most recent call last):\n  File \"run_one.py\", line 53, in main\n    record = train(cfg)\n"
              "             ^^^^^^^^^^\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
_TORCHRUN = ("E1205 06:48:15.075000 14005 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 1)\n"
             "Traceback (most recent call last):\n  File \"<frozen runpy>\", line 198, in _run_module_as_main\n"
             "    raise ChildFailedError(\ntorch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
             + "=" * 60 + "\nncguide.experiments.run_one FAILED\n" + "-" * 60
             + "\nRoot Cause (first observed failure):\n[0]:\n  exitcode  : 1 (pid: 14010)\n" + "=" * 60 + "\n")


@pytest.mark.parametrize("log,cause", [
    # run_one's traceback then its one line: the exception line, with its type
    (_HEADER + _TABLE + _TRACEBACK + "ncguide: error: CUDA out of memory. Tried to allocate 2.00 GiB\n",
     "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"),
    # torchrun: its own ChildFailedError traceback and table come last; the rank's traceback says why
    (_HEADER + _TABLE + _TRACEBACK + _TORCHRUN, _OOM),
    # newer torch prefixes each rank's lines
    (_HEADER + "".join(f"[rank1]: {x}\n" for x in _TRACEBACK.splitlines()) + _TORCHRUN,
     "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"),
    # chained exceptions: the last one
    (_HEADER + _TRACEBACK + "\nDuring handling of the above exception, another exception occurred:\n\n"
     + _TRACEBACK.replace("torch.OutOfMemoryError: CUDA", "OSError: [Errno 28] No space left on device; CUDA"),
     "OSError: [Errno 28] No space left on device; CUDA out of memory. Tried to allocate 2.00 GiB"),
    # no traceback: our one line
    (_HEADER + _TABLE + "ncguide: error: run folder RUN is in use by pid 42\n",
     "error: run folder RUN is in use by pid 42"),
    # only the last attempt counts: an earlier attempt's traceback is not this failure's cause
    (_HEADER + _TABLE + _TRACEBACK + _HEADER + _TABLE, "10      0.5127     80.00%"),
    # nothing better: the last line
    (_HEADER + _TABLE, "10      0.5127     80.00%"),
    ("", ""),
])
def test_failure_cause_is_the_exception_not_the_last_line(tmp_path, log, cause):
    path = tmp_path / "launch.log"
    path.write_text(log)
    assert failure_cause(path) == cause
    last = log.split(_HEADER)[-1]
    if "Traceback" not in last and "error:" not in last:
        assert failure_cause(path, fallback=False) == ""  # killed by a signal: the signal is the cause
    assert failure_cause(tmp_path / "missing.log") == ""


def test_a_failed_childs_reason_is_its_exception(tmp_path):
    """A real child whose run cannot start (no launch.json): the pool's reason is the exception, not the last line."""
    pool = LocalPool([launch_mod.Slot(None, 1)], resume=True, log=lambda *_: None)
    run = Run("report", "standard", {}, 0, TrainConfig(), tmp_path / "run", tag="r")
    run.path.mkdir()
    (run.path / "launch.log").write_text("")
    p = launch_mod.start_child(run.path, 1, launch_mod.child_env(1))
    code = p.wait(timeout=600)
    outcome = pool._outcome(run, code, 0.0)
    assert outcome.status == "failed" and code == 1
    assert outcome.why.startswith("exit code 1: FileNotFoundError: ") and "launch.json" in outcome.why, outcome.why


# ----------------------------------------------------------------------------------------------------
# the stage scheduler


class ScriptedLauncher:
    """Ends queued runs one at a time in priority order; ``fail`` names runs that fail."""

    shows_status = False

    def __init__(self, fail=(), stop_after=None):
        self.queue, self.events, self.fail, self.stop_after, self.ended = [], [], set(fail), stop_after, 0

    def submit(self, runs):
        if runs:
            self.events.append(("submit", [r.tag for r in runs]))
        self.queue = sorted(self.queue + runs, key=lambda r: r.order)

    def counts(self):
        return len(self.queue), 0

    def wait(self):
        if not self.queue or self.ended == self.stop_after:
            return []
        r = self.queue.pop(0)
        self.ended += 1
        self.events.append(("end", r.tag))
        return [(r, Outcome("failed", "boom", (r.path / "launch.log",)) if r.tag in self.fail else Outcome("finished"))]


def _run(tmp_path, tag, order):
    return Run("selection", tag[0], {}, 0, TrainConfig(), tmp_path / tag, order=order, tag=tag)


def _pipelines(tmp_path, resumed):
    def pipe(name, first, second):
        yield [_run(tmp_path, t, o) for t, o in first]
        resumed.append(name)  # the stage's runs are all done when the pipeline goes on
        yield [_run(tmp_path, t, o) for t, o in second]
        resumed.append(name + "-end")

    return {"a": pipe("a", [("a1", (0, 0)), ("a2", (0, 2))], [("a3", (1, 0))]),
            "b": pipe("b", [("b1", (0, 1)), ("b2", (0, 3)), ("b3", (0, 4))], [("b4", (1, 1))])}


def test_each_method_moves_on_as_soon_as_its_own_stage_is_done(tmp_path):
    resumed, launcher = [], ScriptedLauncher()
    assert drive(_pipelines(tmp_path, resumed), launcher, resume=False, out_dir=tmp_path, log=lambda *_: None) == 0
    ev = launcher.events
    assert ev[0] == ("submit", ["a1", "b1", "a2", "b2", "b3"])  # every first stage at once, in priority order
    # a's report stage goes out right after a2, while b's selection is still running
    assert ev.index(("submit", ["a3"])) == ev.index(("end", "a2")) + 1
    assert ev.index(("submit", ["a3"])) < ev.index(("end", "b3"))
    assert ev.index(("submit", ["b4"])) == ev.index(("end", "b3")) + 1
    assert resumed == ["a", "b", "a-end", "b-end"]  # queued selection runs go before report runs


def test_a_failed_run_stops_its_method_only_and_is_named_at_the_end(tmp_path):
    resumed, launcher = [], ScriptedLauncher(fail={"a2"})
    with pytest.raises(RunsFailedError) as e:
        drive(_pipelines(tmp_path, resumed), launcher, resume=False, out_dir=tmp_path, log=lambda *_: None)
    assert resumed == ["b", "b-end"]  # a never selects; b finishes
    assert ("end", "b4") in launcher.events and not any(x == ("submit", ["a3"]) for x in launcher.events)
    assert "1 run failed: a2 (boom; log " + str(tmp_path / "a2" / "launch.log") in str(e.value)
    assert [r.tag for r, _ in e.value.failed] == ["a2"]


def test_ctrl_c_says_which_stopped_runs_resume_and_which_start_again(tmp_path):
    """A stopped run with a checkpoint resumes; one stopped before its first checkpoint starts again."""
    import subprocess
    import sys

    lines = []
    pool = LocalPool([launch_mod.Slot(None, 1)] * 2, resume=True, log=lines.append, grace_s=60.0)
    runs = [Run("report", m, {}, 0, TrainConfig(), tmp_path / m, tag=m) for m in ("saved", "early")]
    for r in runs:
        r.path.mkdir()
    (tmp_path / "saved/checkpoint.pt").write_bytes(b"")
    with pool:
        for i, r in enumerate(runs):  # children that wait for SIGTERM, as a run does
            p = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(1)"],
                                 start_new_session=True)
            pool.running[i] = (r, p, 0.0)
    assert "saved: stopped (killed by SIGTERM); rerunning resumes it" in lines, lines
    assert "early: stopped (killed by SIGTERM); rerunning starts it again (no checkpoint yet)" in lines, lines


def _staged(tmp_path, stages: dict[str, tuple[list[str], list[str]]]):
    """Pipelines of a selection stage then a report stage: ``{name: (selection tags, report tags)}``."""
    def stage(phase, tags, rank):
        return [Run(phase, t[0], {}, 0, TrainConfig(), tmp_path / t, order=(rank, i), tag=t)
                for i, t in enumerate(tags)]

    def pipe(sel, rep):
        yield stage("selection", sel, 0)
        yield stage("report", rep, 1)

    return {name: pipe(*spec) for name, spec in stages.items()}


@pytest.mark.parametrize("stages,fail,stop_after,says", [
    # a's selection failed: its report runs never started; b went on to the end
    ({"a": (["a1", "a2"], ["a3", "a4"]), "b": (["b1"], ["b2"])}, {"a1"}, None,
     "; 3 other runs done; the 2 report runs of a never started (a run of its selection failed); run the same"),
    # the only run failed: nothing else is done, and nothing is said to have finished
    ({"a": ([], ["a1"])}, {"a1"}, None, "1 run failed: a1 (boom; log {D}/a1/launch.log); no other run done; run the"),
    # a report run failed: nothing of its method is left to start
    ({"a": (["a1"], ["a2", "a3"])}, {"a3"}, None, "; 2 other runs done; run the same command"),
    # a launcher that stopped waiting (Slurm --no-wait) with runs still out
    ({"a": (["a1"], ["a2"]), "b": (["b1", "b2", "b3"], ["b4"])}, {"a1"}, 2,
     "1 run failed: a1 (boom; log {D}/a1/launch.log); 1 other run done; 2 runs still queued or running; the 1 "
     "report run of a never started"),
])
def test_the_end_says_what_failed_finished_and_never_started(tmp_path, stages, fail, stop_after, says):
    launcher = ScriptedLauncher(fail=fail, stop_after=stop_after)
    report_runs = {name: len(rep) for name, (_, rep) in stages.items()}
    with pytest.raises(RunsFailedError) as e:
        drive(_staged(tmp_path, stages), launcher, resume=False, out_dir=tmp_path, log=lambda *_: None,
              report_runs=report_runs)
    assert says.replace("{D}", str(tmp_path)) in str(e.value), str(e.value)
    assert "the other runs finished" not in str(e.value)


def test_jobs_1_a_run_that_raises_fails_alone_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    """--jobs 1 (in this process) as --jobs 2: the run that raises is named with its log (its traceback), the other
    runs train to the end, and the command exits 1 with one line."""
    from ncguide.experiments import compare as compare_mod

    real = compare_mod.train

    def train(cfg, path, **kw):
        if cfg.method == "standard" and cfg.seed == 0:
            raise RuntimeError("boom at epoch 1\nsecond line")
        return real(cfg, path, **kw)

    monkeypatch.setattr(compare_mod, "train", train)
    out = tmp_path / "out"
    flags = TINY[:-4]  # without --methods and --seeds
    assert main(["compare", *flags, "--methods", "standard,nearest-etf", "--seeds", "2", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    err = captured.err
    log = out / "runs/standard/seed-0/launch.log"
    assert err.count("\n") == 1 and err.startswith(f"ncguide: error: 1 run failed: runs/standard/seed-0 (RuntimeError: "
                                                   f"boom at epoch 1; log {log}); 3 other runs done; "), err
    assert "standard seed 0: FAILED (RuntimeError: boom at epoch 1)" in captured.out
    for m, s in (("standard", 1), ("nearest-etf", 0), ("nearest-etf", 1)):  # the others trained to the end
        assert load_checkpoint(out / f"runs/{m}/seed-{s}/checkpoint.pt")["finished"]
    assert "Traceback (most recent call last)" in log.read_text() and failure_cause(log) == (
        "RuntimeError: boom at epoch 1")
    assert not (out / "summary.json").exists()  # no report of an incomplete comparison
    monkeypatch.setattr(compare_mod, "train", real)
    assert main(["compare", *flags, "--methods", "standard,nearest-etf", "--seeds", "2", "--out", str(out)]) == 0
    assert "reused finished run" in capsys.readouterr().out


def test_a_launcher_that_does_not_wait_leaves_runs_pending(tmp_path):
    launcher = ScriptedLauncher(stop_after=2)
    pending = drive(_pipelines(tmp_path, []), launcher, resume=False, out_dir=tmp_path, log=lambda *_: None)
    assert pending == 3  # a1, b1 ended; a2, b2, b3 still out


def test_a_run_that_failed_before_its_first_checkpoint_is_retried(tmp_path):
    """A child killed between writing config.json and its first checkpoint leaves no result: a rerun trains
    it instead of refusing the folder (a folder with records but no checkpoint is still refused)."""
    from ncguide.experiments.compare import run_compare

    base = {"dataset": "ufm", "model": "ufm", "num_classes": 4, "feature_dim": 8, "samples_per_class": 5,
            "epochs": 1, "batch_size": 10, "device": "cpu"}
    run = tmp_path / "out/runs/standard/seed-0"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({**TrainConfig.from_dict(base).to_dict(), "lr": 123.0}))
    (run / "metrics.jsonl").write_text("")
    (run / "launch.log").write_text("killed\n")
    summary = run_compare(base, ["standard"], [0], tmp_path / "out", progress="none", log=lambda *_: None)
    assert summary["methods"]["standard"]["seeds"] == [0]
    (run / "checkpoint.pt").unlink()
    with pytest.raises(ValueError, match="cannot be established"):
        run_compare(base, ["standard"], [0], tmp_path / "out", progress="none", log=lambda *_: None)


# ----------------------------------------------------------------------------------------------------
# the command line: bad launch options are one line, exit 2, nothing written

TINY = ["--dataset", "ufm", "--model", "ufm", "--set", "num_classes=4", "--set", "feature_dim=8", "--set",
        "samples_per_class=5", "--epochs", "1", "--batch-size", "10", "--device", "cpu", "--methods", "standard",
        "--seeds", "1"]


@pytest.mark.parametrize("flags,says", [
    (["--jobs", "0"], "jobs must be a whole number >= 1; got 0 (from --jobs)"),
    (["--jobs", "2.0"], "bad value '2.0' for config key 'jobs'"),
    (["--no-wait"], "it needs --launcher slurm"),
    (["--slurm-time", "10"], "add --launcher slurm"),
    (["--launcher", "slurm"], "needs --slurm-time"),
    (["--launcher", "slurm", "--slurm-time", "25x"], "bad Slurm time '25x'"),
    (["--launcher", "slurm", "--slurm-time", "5", "--slurm-extra", "array=0-3"], "'array' is set by ncguide"),
    (["--launcher", "slurm", "--slurm-time", "5", "--slurm-extra", "time=5"], "set with --slurm-time"),
    (["--launcher", "slurm", "--slurm-time", "5", "--slurm-mem", "4X"], "slurm_mem must be a size"),
    (["--set", "runs_per_gpu=2", "--gpus-per-run", "2"], "cannot be combined with gpus_per_run 2"),
    (["--launcher", "slurm", "--slurm-time", "5", "--jobs", "4"], "--slurm-array-parallelism N"),
    (["--launcher", "slurm", "--slurm-time", "5", "--gpus-per-run", "2"], "with --slurm-gpus-per-run"),
    (["--gpus-per-run", "2", "--jobs", "2"], "trains on device cpu"),
])
def test_bad_launch_flags_exit_2_with_one_line_and_no_folder(tmp_path, capsys, flags, says):
    out = tmp_path / "out"
    assert main(["compare", *TINY, *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ncguide: error: ") and says in err, err
    assert not out.exists()


def test_slurm_launcher_without_slurm_commands_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    out = tmp_path / "out"
    assert main(["compare", *TINY, "--launcher", "slurm", "--slurm-time", "5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sbatch is not on PATH" in err and not out.exists()


def test_slurm_settings_with_the_local_launcher_say_they_are_ignored(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compare", *TINY, "--launcher", "local", "--slurm-time", "5", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "ncguide: warning: slurm_time ignored: the launcher is local" in err, err


def test_launch_keys_in_yaml(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: ufm\nmodel: ufm\nnum_classes: 4\nfeature_dim: 8\nepochs: 1\nmethods: [standard]\n"
                   "jobs: 0\n")
    assert main(["compare", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "jobs must be a whole number >= 1" in err and f"in config file {cfg}" in err
    cfg.write_text(cfg.read_text().replace("jobs: 0", "jobs: 2\nthreads_per_run: 1"))
    assert main(["compare", "--config", str(cfg), "--print-config"]) == 0
    assert "methods:" in capsys.readouterr().out
