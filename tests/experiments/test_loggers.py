"""Loggers besides metrics.jsonl (loggers.py): CSV, TensorBoard (read back with TensorBoard's own reader),
W&B (through a fake ``wandb`` module that records calls). metrics.jsonl is the oracle for all of them."""

from __future__ import annotations

import csv
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from ncguide.experiments.cli import main
from ncguide.experiments.compare import run_compare
from ncguide.experiments.config import ConfigError, TrainConfig
from ncguide.experiments.loggers import CSV, WANDB_ID, CSVLogger, check_loggers, read_wandb_id, scalars
from ncguide.experiments.train import train

sys.path.insert(0, str(Path(__file__).parent))
from train_script import build_probe  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

BASE = dict(dataset="digits", model="mlp", model_kwargs={"widths": [32]}, epochs=2, batch_size=128,
            optimizer="sgd", lr=0.05, device="cpu", seed=0)
UFM = dict(dataset="ufm", model="ufm", num_classes=4, samples_per_class=8, feature_dim=8, epochs=2, batch_size=16,
           device="cpu")


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def csv_rows(out: Path) -> tuple[list[str], list[dict]]:
    with (out / CSV).open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def same_cell(cell: str, value) -> bool:
    """A CSV cell read back equals the record's value exactly (floats bit for bit, NaN as NaN)."""
    if value is None:
        return cell == ""
    if isinstance(value, bool):
        return cell == str(value).lower()
    if isinstance(value, float):
        return math.isnan(value) and math.isnan(float(cell)) or float(cell) == value
    if isinstance(value, int):
        return int(cell) == value
    if isinstance(value, str):
        return cell == value
    return json.loads(cell) == value


def assert_csv_matches_log(out: Path) -> None:
    recs = records(out)
    header, rows = csv_rows(out)
    keys = list(dict.fromkeys(k for r in recs for k in r))
    assert header == keys and len(rows) == len(recs)
    for rec, row in zip(recs, rows):
        assert all(same_cell(row[k], rec.get(k)) for k in keys), (rec, row)


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files in ``folder``, read by TensorBoard's own reader, duplicates kept."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(folder), size_guidance={ea.SCALARS: 0}, purge_orphaned_data=False)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_tensorboard_matches_log(out: Path) -> None:
    """One value per (tag, epoch), equal to the log's value rounded to float32 (what TensorBoard stores)."""
    recs = records(out)
    expected: dict[str, list[tuple[int, float]]] = {}
    for rec in recs:
        for key, value in rec.items():
            if key != "epoch" and isinstance(value, (int, float)):
                expected.setdefault(key, []).append((rec["epoch"], float(np.float32(value))))
    got = tensorboard_scalars(out)
    assert set(got) == set(expected)
    for tag, events in got.items():
        assert [s for s, _ in events] == [s for s, _ in expected[tag]], tag
        for (_, v), (_, w) in zip(events, expected[tag]):
            assert v == w or (math.isnan(v) and math.isnan(w)), (tag, v, w)


# ------------------------------------------------------------------------------------------------ CSV


def test_csv_header_grows_and_every_value_reads_back(tmp_path):
    recs = [{"epoch": 0, "loss": 1 / 3, "acc": None},
            {"epoch": 1, "loss": float("nan"), "acc": 0.5},
            {"epoch": 2, "loss": float("inf"), "acc": 0.75, "frozen": True, "note": "a,b \"c\"", "ks": [1, 2]}]
    logger = CSVLogger(tmp_path, [])
    assert not (tmp_path / CSV).exists()
    for rec in recs:
        logger.log(rec)
    header, rows = csv_rows(tmp_path)
    assert header == ["epoch", "loss", "acc", "frozen", "note", "ks"]  # grown by the third record
    assert rows[0]["frozen"] == "" and rows[1]["note"] == ""  # earlier rows get empty cells
    for rec, row in zip(recs, rows):
        assert all(same_cell(row[k], rec[k]) for k in rec)
    text = (tmp_path / CSV).read_text()
    CSVLogger(tmp_path, recs[:2])  # resume from a log that kept two records: the third row goes
    assert len(csv_rows(tmp_path)[1]) == 2 and (tmp_path / CSV).read_text() != text
    CSVLogger(tmp_path, [])  # a fresh run: no rows of the earlier one
    assert not (tmp_path / CSV).exists()


def test_scalars_are_the_numbers_of_a_record():
    rec = {"epoch": 3, "test_acc": None, "nc1": 0.25, "frozen": False, "note": "x", "nan": float("nan")}
    got = scalars(rec)
    assert set(got) == {"epoch", "nc1", "frozen", "nan"} and got["frozen"] == 0.0 and math.isnan(got["nan"])


# ----------------------------------------------------------------------------------- through training


def test_training_sends_every_record_to_csv_and_tensorboard(tmp_path):
    out = tmp_path / "run"
    train(TrainConfig.from_dict({**BASE, "loggers": ["csv", "tensorboard"]}), out, progress="none")
    recs = records(out)
    assert len(recs) == 3 and {"nc1", "nc2_w", "nc3", "nc4", "lr", "wall_s", "test_acc"} <= set(recs[0])
    assert_csv_matches_log(out)
    assert_tensorboard_matches_log(out)


def test_ufm_null_test_metrics_are_empty_cells_and_no_scalars(tmp_path):
    out = tmp_path / "run"
    train(TrainConfig.from_dict({**UFM, "method": "standard", "loggers": ["csv", "tensorboard"]}), out,
          progress="none")
    assert records(out)[0]["test_acc"] is None
    assert_csv_matches_log(out)
    assert "test_acc" not in tensorboard_scalars(out)
    assert_tensorboard_matches_log(out)


def test_resumed_run_has_no_duplicate_or_stale_rows(tmp_path):
    """Ctrl-C inside epoch 2, then a killed run's leftovers: a record after the checkpoint in every output
    (with other values). The resume rewrites CSV and event files from the restored log."""
    from torch.utils.tensorboard import SummaryWriter

    cfg = TrainConfig.from_dict({**BASE, "epochs": 3, "method": "nearest-etf", "loggers": ["csv", "tensorboard"]})
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress="none", model=build_probe(cfg, sigint_at=15))  # epoch 2 (12 steps an epoch)
    assert [r["epoch"] for r in records(out)] == [0, 1]
    stale = {**records(out)[-1], "epoch": 2, "train_acc": -1.0, "nc1": 123.0}
    with (out / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(stale) + "\n")
    CSVLogger(out, records(out))  # the CSV as the dying run left it
    writer = SummaryWriter(str(out))  # and an event file of its own, with the same epochs
    for rec in records(out):
        for key, value in scalars(rec).items():
            if key != "epoch":
                writer.add_scalar(key, value, global_step=rec["epoch"])
    writer.close()

    train(cfg, out, progress="none", model=build_probe(cfg))
    assert [r["epoch"] for r in records(out)] == [0, 1, 2, 3]
    assert all(r["train_acc"] >= 0 and r["nc1"] != 123.0 for r in records(out))
    assert_csv_matches_log(out)
    assert_tensorboard_matches_log(out)  # one value per epoch: the stale file is gone


def test_loggers_asked_for_a_finished_run_are_written_from_its_log(tmp_path):
    """`compare` reuses finished runs without training them; loggers asked for later still get every
    record, and TensorBoard names the runs of a comparison by their folders."""
    base = {**UFM, "loggers": ["jsonl"]}
    run_compare(base, ["standard", "nearest-etf"], seeds=1, out_dir=tmp_path, progress="none", log=lambda s: None,
                report=False)
    run = tmp_path / "runs" / "nearest-etf" / "seed-0"
    before = (run / "checkpoint.pt").stat().st_mtime_ns, (run / "metrics.jsonl").read_bytes()
    assert not (run / CSV).exists() and not list(run.glob("events.out.tfevents.*"))
    run_compare({**base, "loggers": ["csv", "tensorboard"]}, ["standard", "nearest-etf"], seeds=1, out_dir=tmp_path,
                progress="none", log=lambda s: None, report=False)
    assert ((run / "checkpoint.pt").stat().st_mtime_ns, (run / "metrics.jsonl").read_bytes()) == before  # reused
    for method in ("standard", "nearest-etf"):
        assert_csv_matches_log(tmp_path / "runs" / method / "seed-0")
        assert_tensorboard_matches_log(tmp_path / "runs" / method / "seed-0")
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(tmp_path / "runs"))  # what `tensorboard --logdir DIR/runs` lists
    assert sorted(mux.Runs()) == ["nearest-etf/seed-0", "standard/seed-0"]


# ------------------------------------------------------------------------------------------ W&B


class FakeWandb(types.ModuleType):
    """Records what the adapter asks of ``wandb``. Online, a resumed id continues at the step after its last log;
    ``offline=True``: a resumed run says step 0, as W&B offline does (it cannot ask the server)."""

    def __init__(self, offline: bool = False):
        super().__init__("wandb")
        self.offline = offline
        self.inits, self.logs, self.finished, self.steps = [], [], 0, {}

    def init(self, **kwargs):
        import os

        self.inits.append({**kwargs, "env_mode": os.environ.get("WANDB_MODE")})
        fake, run_id = self, kwargs["id"]

        class Run:
            step = 0 if fake.offline else fake.steps.get(run_id, 0)

            def log(self, data, step):
                fake.logs.append((run_id, step, dict(data)))
                fake.steps[run_id] = step + 1

            def finish(self):
                fake.finished += 1

        return Run()

    def steps_of(self, run_id: str) -> list[int]:
        return [step for rid, step, _ in self.logs if rid == run_id]


@pytest.fixture
def no_wandb_login(tmp_path, monkeypatch):
    """An environment where W&B has no login and is not offline: no key, no netrc, no settings file."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DISABLED", "WANDB_BASE_URL", "WANDB_CONFIG_DIR", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return home


def test_wandb_adapter_logs_every_record_once_and_respects_offline_mode(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    cfg = TrainConfig.from_dict({**UFM, "method": "nearest-etf", "loggers": ["wandb"]})
    out = tmp_path / "cmp" / "runs" / "nearest-etf" / "seed-0"
    train(cfg, out, progress="none")
    (init,) = fake.inits
    run_id = read_wandb_id(out)[0]
    assert init["id"] == run_id and init["resume"] == "allow" and init["dir"] == str(out)
    assert init["config"] == cfg.to_dict() and init["project"] == "ncguide"
    assert init["name"] == "nearest-etf/seed-0" and init["group"] == "cmp"
    assert "mode" not in init and init["env_mode"] == "offline"  # W&B reads WANDB_MODE itself
    assert fake.logs == [(run_id, r["epoch"], scalars(r)) for r in records(out)] and fake.finished == 1
    assert read_wandb_id(out) == (run_id, records(out)[-1]["epoch"])

    train(cfg, out, progress="none")  # finished, and W&B has every record: no W&B run is opened again
    assert len(fake.inits) == 1 and len(fake.logs) == len(records(out)) and fake.finished == 1


@pytest.mark.parametrize("offline", [True, False])
def test_wandb_resume_sends_each_epoch_once_and_no_resume_starts_a_new_run(offline, tmp_path, monkeypatch):
    """Offline, a resumed W&B run cannot say what it has: the epoch kept in wandb-run-id does. Steps only grow."""
    fake = FakeWandb(offline=offline)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "offline" if offline else "online")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    cfg = TrainConfig.from_dict({**BASE, "epochs": 3, "method": "nearest-etf", "loggers": ["wandb"]})
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress="none", model=build_probe(cfg, sigint_at=15))  # inside epoch 2
    run_id = read_wandb_id(out)[0]
    assert fake.steps_of(run_id) == [0, 1]
    train(cfg, out, progress="none", model=build_probe(cfg))
    train(cfg, out, progress="none", model=build_probe(cfg))  # finished: nothing more to send
    assert [i["id"] for i in fake.inits] == [run_id, run_id]  # the same W&B run, resumed
    assert fake.steps_of(run_id) == [r["epoch"] for r in records(out)] == [0, 1, 2, 3]
    assert [d for rid, _, d in fake.logs] == [scalars(r) for r in records(out)]

    train(cfg, out, resume=False, progress="none", model=build_probe(cfg))  # --no-resume: a new W&B run
    new_id = read_wandb_id(out)[0]
    assert new_id != run_id and fake.inits[-1]["id"] == new_id and fake.steps_of(new_id) == [0, 1, 2, 3]


def test_wandb_not_logged_in_is_refused_before_training(tmp_path, monkeypatch, no_wandb_login):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = TrainConfig.from_dict({**UFM, "method": "standard", "loggers": ["wandb"]})
    with pytest.raises(ConfigError, match="not logged in.*wandb login.*WANDB_MODE=offline") as e:
        train(cfg, tmp_path / "run", progress="none")
    assert e.value.key == "loggers" and not (tmp_path / "run").exists() and not fake.inits


@pytest.mark.parametrize("how", ["key", "netrc", "netrc_env", "mode", "settings", "self_hosted"])
def test_wandb_login_is_found_without_the_network(how, monkeypatch, no_wandb_login):
    monkeypatch.setitem(sys.modules, "wandb", FakeWandb())
    host = "api.wandb.ai"
    if how == "key":
        monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    elif how in ("netrc", "self_hosted"):
        if how == "self_hosted":
            host = "wandb.example.org"
            monkeypatch.setenv("WANDB_BASE_URL", f"https://{host}")
        (no_wandb_login / ".netrc").write_text(f"machine {host}\n  login user\n  password {'k' * 40}\n")
    elif how == "netrc_env":
        (no_wandb_login / "rc").write_text(f"machine {host} login user password {'k' * 40}\n")
        monkeypatch.setenv("NETRC", str(no_wandb_login / "rc"))
    elif how == "mode":
        monkeypatch.setenv("WANDB_MODE", "disabled")
    elif how == "settings":  # what `wandb offline` writes
        (no_wandb_login / ".config" / "wandb").mkdir(parents=True)
        (no_wandb_login / ".config" / "wandb" / "settings").write_text("[default]\nmode = offline\n")
    assert check_loggers(["wandb"]) == ["wandb"]
    if how == "self_hosted":  # the key of another host does not count
        monkeypatch.delenv("WANDB_BASE_URL")
        with pytest.raises(ConfigError, match="no api.wandb.ai entry"):
            check_loggers(["wandb"])


@pytest.mark.parametrize("command", ["train", "compare", "train --print-config"])
def test_cli_wandb_not_logged_in_is_one_line_before_anything_is_written(command, tmp_path, capsys, monkeypatch,
                                                                       no_wandb_login):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    name, *extra = command.split()
    run = ["--method", "standard"] if name == "train" else ["--methods", "standard", "--seeds", "1"]
    out = tmp_path / "out"
    assert main([name, *run, *extra, "--dataset", "ufm", "--model", "ufm", "--epochs", "1", "--logger", "wandb",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ncguide: error:") and err.count("\n") == 1, err
    assert all(w in err for w in ("not logged in", "`wandb login`", "WANDB_MODE=offline", "--logger")), err
    assert not out.exists() and not fake.inits


# ----------------------------------------------------------------------- outputs of loggers not asked for


def test_a_run_trained_without_a_logger_deletes_its_stale_files(tmp_path):
    """Resumed without csv/tensorboard, their files would describe only the first part: deleted, with a warning.
    A finished run reused leaves them (they hold its whole log); --no-resume deletes them too."""
    logged = TrainConfig.from_dict({**BASE, "epochs": 3, "method": "nearest-etf", "loggers": ["csv", "tensorboard"]})
    plain = TrainConfig.from_dict({**BASE, "epochs": 3, "method": "nearest-etf"})
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(logged, out, progress="none", model=build_probe(logged, sigint_at=15))
    assert (out / CSV).is_file() and list(out.glob("events.out.tfevents.*"))
    with pytest.warns(UserWarning) as caught:
        train(plain, out, progress="none", model=build_probe(plain))
    notes = [str(w.message) for w in caught]
    assert len(notes) == 2 and "\n" not in "".join(notes)
    assert any(n.startswith(f"deleted {out / CSV} of the csv logger") for n in notes)
    assert any("of the tensorboard logger" in n for n in notes)
    assert not (out / CSV).exists() and not list(out.glob("events.out.tfevents.*"))
    assert [r["epoch"] for r in records(out)] == [0, 1, 2, 3]

    train(logged, out, progress="none", model=build_probe(logged))  # finished: written from the whole log
    assert_csv_matches_log(out)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(plain, out, progress="none", model=build_probe(plain))  # reused: nothing deleted, no warning
    assert_csv_matches_log(out)
    assert_tensorboard_matches_log(out)
    (out / WANDB_ID).write_text("abc123\n3\n")
    with pytest.warns(UserWarning, match="from an earlier run"):
        train(plain, out, resume=False, progress="none", model=build_probe(plain))
    assert not (out / CSV).exists() and not list(out.glob("events.out.tfevents.*")) and not (out / WANDB_ID).exists()


# ------------------------------------------------------------------------------------- bad input


def test_check_loggers():
    assert check_loggers(["jsonl", "csv", "csv", "tensorboard"]) == ["csv", "tensorboard"]
    with pytest.raises(ConfigError, match="unknown logger 'tensorbord'") as e:
        check_loggers(["tensorbord"])
    assert e.value.key == "loggers"


@pytest.mark.parametrize("command", ["train", "compare", "train --print-config", "compare --print-config"])
@pytest.mark.parametrize("args,words", [
    (["--logger", "wandb"], ["logger 'wandb' needs the wandb package", "pip install wandb", "--logger"]),
    (["--set", "loggers=csv,bogus"], ["unknown logger 'bogus'", "--set loggers=csv,bogus"]),
    (["--logger", "bogus"], ["--logger", "invalid choice: 'bogus'"]),
    (["--set", "loggers=csv,CSV"], ["unknown logger 'CSV'", "--set loggers=csv,CSV"]),
])
def test_bad_loggers_are_one_line_errors_before_anything_is_written(command, args, words, tmp_path, capsys,
                                                                     monkeypatch):
    """The same checks with --print-config, which trains nothing (names are exact, as the flags' choices)."""
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    command, *extra = command.split()
    run = ["--method", "standard"] if command == "train" else ["--methods", "standard", "--seeds", "1"]
    out = tmp_path / "out"
    argv = [command, *extra, *run, "--dataset", "ufm", "--model", "ufm", "--epochs", "1", *args, "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ncguide: error:") and err.count("\n") == 1 and all(w in err for w in words), err
    assert not out.exists()


def test_cli_train_writes_figures_csv_and_events(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--method", "nearest-etf", "--dataset", "ufm", "--model", "ufm", "--epochs", "2",
            "--set", "num_classes=4", "--set", "samples_per_class=8", "--set", "feature_dim=8", "--set", "device=cpu",
            "--logger", "csv", "--logger", "tensorboard", "--out", str(out)]
    assert main(argv) == 0
    assert "figures:" in capsys.readouterr().out
    for name in ("overview.png", "nc1.png", "nc2.png", "nc3.png", "nc4.png", "train_acc.png", "loss.png"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "config.json").read_text())["loggers"] == ["csv", "tensorboard"]
    assert_csv_matches_log(out)
    assert_tensorboard_matches_log(out)
