"""The ``ncguide`` command: a tiny compare end to end (files of docs/design.md, reuse on re-run), train,
report, config precedence, and the one-line errors (exit 2) a user will meet."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ncguide.experiments import cli, compare
from ncguide.experiments.cli import main

METHODS = ["standard", "nearest-etf"]
SEEDS = [0, 1]
TINY = ["--dataset", "digits", "--model", "mlp", "--epochs", "2", "--set", "model_kwargs.widths=[32]",
        "--set", "device=cpu"]
TINY_1 = [*TINY[:5], "1", *TINY[6:]]  # one epoch (a flag given twice is refused)
RECORD_KEYS = {"epoch", "step", "wall_s", "train_loss", "train_acc", "test_acc", "nc1", "nc2_w", "nc2_h", "nc3", "nc4"}
FIGURES = ["overview.png", "train_acc.png", "loss.png", "nc1.png", "nc2.png", "nc3.png", "nc4.png"]


def _run_files(out: Path) -> list[Path]:
    return [out / "runs" / m / f"seed-{s}" / f for m in METHODS for s in SEEDS
            for f in ("metrics.jsonl", "config.json", "checkpoint.pt")]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One tiny compare (2 methods x 2 seeds x 2 epochs on digits), shared by the tests below."""
    out = tmp_path_factory.mktemp("cmp") / "out"
    argv = ["compare", *TINY, "--methods", ",".join(METHODS), "--seeds", "2", "--set", "lr=0.01", "--out", str(out)]
    assert main(argv) == 0
    return out, argv


def test_compare_writes_every_file(compared):
    out, _ = compared
    for f in _run_files(out) + [out / n for n in ("summary.json", "report.md", "config.yaml", *FIGURES)]:
        assert f.is_file() and f.stat().st_size > 0, f
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(METHODS)
    for m in METHODS:
        for s in SEEDS:
            run = out / "runs" / m / f"seed-{s}"
            records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            assert [r["epoch"] for r in records] == [0, 1, 2]
            assert all(RECORD_KEYS <= set(r) for r in records)
            cfg = json.loads((run / "config.json").read_text())
            assert (cfg["method"], cfg["seed"], cfg["epochs"], cfg["lr"]) == (m, s, 2, 0.01)
            assert cfg["model_kwargs"] == {"widths": [32]}
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == METHODS and set(summary["thresholds"]) == {"train_acc", "nc1"}
    for m in METHODS:
        entry = summary["methods"][m]
        assert entry["seeds"] == SEEDS
        assert {"train_acc", "test_acc", "nc1", "nc2_w", "nc2_h", "nc3", "nc4"} <= set(entry["final"])
        assert set(entry["final"]["nc1"]) >= {"median", "min", "max"}
        assert entry["reach"]["train_acc"]["total"] == len(SEEDS)
    md = (out / "report.md").read_text()
    assert all(f"]({f})" in md for f in FIGURES)


def test_compare_rerun_reuses_finished_runs(compared, capsys):
    out, argv = compared
    before = {f: f.stat().st_mtime_ns for f in _run_files(out)}
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("reused finished run") == len(METHODS) * len(SEEDS)
    assert "| `nearest-etf` |" in printed and "report.md" in printed  # the table and where the report is
    assert {f: f.stat().st_mtime_ns for f in _run_files(out)} == before


@pytest.mark.parametrize("change", [("--epochs", "3"), ("--methods", "fixed-etf")])
def test_compare_refuses_to_mix_configs(compared, capsys, change):
    """Another config into the same --out is refused (the report would pool both), even for other methods."""
    out, argv = compared
    argv = list(argv)
    argv[argv.index("--epochs") + 1] = "3"
    argv[argv.index(change[0]) + 1] = change[1]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ncguide: error:") and "different config" in err and "epochs: 2 vs 3" in err
    assert not (out / "runs" / "fixed-etf").exists()


def test_compare_adds_seeds_to_finished_runs(compared, tmp_path, capsys):
    out, argv = compared
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    argv = list(argv)
    argv[argv.index("--seeds") + 1] = "3"
    argv[argv.index("--out") + 1] = str(copy)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("reused finished run") == 4 and printed.count(": training in") == 2
    summary = json.loads((copy / "summary.json").read_text())
    assert all(summary["methods"][m]["seeds"] == [0, 1, 2] for m in METHODS)


def test_report_regenerates(compared, capsys):
    out, _ = compared
    for name in ["summary.json", "report.md", *FIGURES]:
        (out / name).unlink()
    assert main(["report", str(out), "--nc1-threshold", "0.5"]) == 0
    assert all((out / n).is_file() for n in ["summary.json", "report.md", *FIGURES])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["thresholds"]["nc1"] == {"op": "<=", "value": 0.5}
    assert "| `standard` |" in capsys.readouterr().out


def test_cut_log_is_left_out_of_the_report_and_restored_by_compare(compared, tmp_path, capsys):
    """A finished run's log cut back: `report` leaves it out with a one-line warning (no silent 1-seed
    method), and re-running `compare` restores the log from the run's checkpoint."""
    out, argv = compared
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    log = copy / "runs" / "standard" / "seed-1" / "metrics.jsonl"
    intact = log.read_bytes()
    os.truncate(log, len(intact) - 40)
    capsys.readouterr()
    assert main(["report", str(copy)]) == 0
    err = capsys.readouterr().err
    assert err == ("ncguide: warning: runs/standard/seed-1 left out of the report: the log holds only 2 of the 3 "
                   "records its checkpoint kept intact; resuming the run (the same train or compare command) "
                   "rewrites it from the checkpoint\n")
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["methods"]["standard"]["seeds"] == [0] and summary["excluded"][0]["run"] == "runs/standard/seed-1"
    argv = list(argv)
    argv[argv.index("--out") + 1] = str(copy)
    capsys.readouterr()
    assert main(argv) == 0
    assert "rewrote them" in capsys.readouterr().err  # the CLI prints warnings as one line each
    assert log.read_bytes() == intact
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["methods"]["standard"]["seeds"] == SEEDS and summary["excluded"] == []


def test_train_one_run(tmp_path, capsys):
    out = tmp_path / "one"
    assert main(["train", *TINY_1, "--method", "fixed-etf", "--seed", "3", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["method"], cfg["seed"], cfg["epochs"], cfg["dataset"]) == ("fixed-etf", 3, 1, "digits")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and (out / "checkpoint.pt").is_file()
    assert "metrics.jsonl" in capsys.readouterr().out


def test_precedence_config_flags_set(tmp_path):
    """config file < explicit flags and --set; a key given by both its flag and --set is refused."""
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 7\nlr: 0.5\nbatch_size: 33\nmethods: [standard]\nseeds: 4\n")
    args = cli.build_parser().parse_args(
        ["compare", "--config", str(path), "--epochs", "2", "--set", "lr=0.01", "--out", "x"])
    d, compare = cli.resolve_config(args)
    assert (d["epochs"], d["lr"], d["batch_size"]) == (2, 0.01, 33)
    args = cli.build_parser().parse_args(["compare", "--config", str(path), "--lr", "0.1", "--set", "lr=0.01"])
    with pytest.raises(ValueError, match=r"lr is given twice \(--lr and --set lr=...\)"):
        cli.resolve_config(args)
    assert compare == {"methods": ["standard"], "seeds": 4}
    args = cli.build_parser().parse_args(
        ["compare", "--config", str(path), "--seeds", "2", "--set", "methods=fixed-etf", "--out", "x"])
    assert cli.resolve_config(args)[1] == {"methods": "fixed-etf", "seeds": "2"}


@pytest.mark.parametrize("seeds,expected", [(3, [0, 1, 2]), ("2", [0, 1]), ("0,4", [0, 4]), ([5, 1], [5, 1])])
def test_parse_seeds(seeds, expected):
    assert compare.parse_seeds(seeds) == expected


def _errors(tmp_path: Path) -> list[tuple[list[str], str]]:
    """(argv, part of the message) for each documented user error."""
    (tmp_path / "bad.yaml").write_text("epochs: [1, 2\nlr: 0.1\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "key.yaml").write_text("epoch: 3\n")
    (tmp_path / "afile").write_text("")
    out = str(tmp_path / "out")
    base = ["train", "--out", out]
    return [
        (base + ["--dataset", "nope"], "unknown dataset 'nope'"),
        (base + ["--model", "nope"], "unknown model 'nope'"),
        (base + ["--method", "nope"], "unknown method 'nope'"),
        (["compare", "--methods", "standard,nope", "--out", out], "unknown method(s) ['nope']"),
        (base + ["--dataset", "imagenet", "--model", "resnet50", "--data-dir", str(tmp_path / "missing")],
         "imagenet needs folders"),
        (base + ["--set", "model_kwargs.widths=[8]", "--method", "nearest-etf"], "feature_dim >= num_classes"),
        (base + ["--set", "nope=1"], "unknown config key 'nope'"),
        (base + ["--set", "epochs=abc"], "bad value 'abc' for config key 'epochs'"),
        (base + ["--set", "epochs"], "bad --set 'epochs'"),
        (["train", "--out", str(tmp_path / "afile" / "sub")], "cannot create --out"),
        (["train", "--out", str(tmp_path / "afile")], "is a file"),
        (base + ["--config", str(tmp_path / "missing.yaml")], "not found"),
        (base + ["--config", str(tmp_path / "bad.yaml")], "malformed YAML"),
        (base + ["--config", str(tmp_path / "list.yaml")], "must hold a mapping"),
        (base + ["--config", str(tmp_path / "key.yaml")], "unknown config key 'epoch'"),
        (["compare", "--seeds", "0", "--out", out], "seeds must be a count >= 1"),
        (["report", str(tmp_path)], "is not a comparison folder"),
        (["report", str(tmp_path / "missing")], "not a directory"),
        (["compare", "--dataset", "digits"], "add --out DIR"),
    ]


@pytest.mark.parametrize("case", range(19))
def test_user_errors_one_line_exit_2(case, tmp_path, capsys):
    argv, message = _errors(tmp_path)[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ncguide: error: "), err
    assert message in err


def test_error_cases_counted(tmp_path):
    assert len(_errors(tmp_path)) == 19  # keep the parametrize range in step


@pytest.mark.parametrize("argv,message", [
    (["train", "--dataset", "nope"], "unknown dataset 'nope'"),
    (["compare", "--config", "no/such/file.yaml"], "not found"),
])
def test_errors_from_python_m_have_no_traceback(argv, message, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    r = subprocess.run([sys.executable, "-m", "ncguide", *argv, "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith("ncguide: error: ") and message in r.stderr


@pytest.mark.parametrize("argv", [["train", "--epochs", "x"], ["compare", "--seeds"], ["bogus"], []])
def test_argparse_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("argv,words", [
    (["--help"], ["train", "compare", "report", "--config demo", "--version"]),
    (["train", "--help"], ["--method", "--set", "--resume", "--no-resume", "--device", "--data-dir"]),
    (["compare", "--help"], ["--methods", "--seeds", "--epochs", "--batch-size", "--lr", "methods:"]),
    (["report", "--help"], ["DIR", "--nc1-threshold"]),
])
def test_help(argv, words, capsys):
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert all(w in text for w in words)


def test_print_config(tmp_path, capsys):
    import yaml

    argv = ["compare", "--config", "demo",
            "--seeds", "2", "--set", "lr=0.01", "--print-config"]
    assert main(argv) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["seeds"] == [0, 1] and shown["lr"] == 0.01 and shown["dataset"] == "mnist1d"
    assert shown["methods"] == ["standard", "fixed-etf", "nearest-etf"] and "nc1_threshold" in shown


def test_diverged_run_exits_1(tmp_path, capsys):
    argv = ["train", *TINY, "--method", "standard", "--lr", "1e30", "--set", "optimizer=sgd", "--out", str(tmp_path)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("ncguide: training diverged: non-finite loss") and err.count("\n") == 1


def test_ctrl_c_exits_130(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare, "train", interrupted)
    argv = ["compare", *TINY, "--methods", "standard", "--seeds", "1", "--out", str(tmp_path / "o")]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "resume" in err


@pytest.mark.parametrize(("command", "damage"), [("train", "empty"), ("train", "truncated"), ("train", "garbage"),
                                                ("compare", "truncated")])
def test_unreadable_checkpoint_one_line_exit_2(tmp_path, capsys, damage, command):
    """A damaged checkpoint.pt: one line naming the file, saying it is unreadable and what to do; no
    "resuming" first, no traceback."""
    out = tmp_path / "o"
    if command == "train":
        argv = ["train", *TINY_1, "--method", "standard", "--out", str(out)]
        ckpt = out / "checkpoint.pt"
    else:
        argv = ["compare", *TINY_1, "--methods", "standard", "--seeds", "1", "--out", str(out)]
        ckpt = out / "runs" / "standard" / "seed-0" / "checkpoint.pt"
    assert main(argv) == 0
    raw = ckpt.read_bytes()
    ckpt.write_bytes({"empty": b"", "truncated": raw[: len(raw) // 2], "garbage": b"not a checkpoint" * 10}[damage])
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("ncguide: error:") and err.count("\n") == 1, err
    assert str(ckpt) in err and "unreadable" in err and "--no-resume" in err and "resume=False" not in err
    assert "resuming" not in captured.out
    assert main([*argv, "--no-resume"]) == 0  # the advice works


def test_config_mismatch_advice_names_the_flag(tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["train", *TINY_1, "--method", "standard", "--out", str(out)]
    assert main(argv) == 0
    assert main([*argv, "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "--no-resume" in err and "resume=False" not in err


def test_train_refuses_to_erase_results_of_another_config(tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["train", *TINY_1, "--method", "standard", "--out", str(out)]
    assert main(argv) == 0
    (out / "checkpoint.pt").unlink()
    before = (out / "metrics.jsonl").read_text()
    assert main([*argv, "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ncguide: error:") and err.count("\n") == 1 and "--no-resume" in err
    assert (out / "metrics.jsonl").read_text() == before
    assert main([*argv, "--lr", "0.5", "--no-resume"]) == 0


@pytest.mark.parametrize(("method", "flags"), [("nearest-etf", []), ("fixed-etf", []),
                                               ("nearest-etf", ["--batch-size", "5000"])])  # diverges on the last step
def test_default_method_diverged_run_exits_1(tmp_path, capsys, method, flags):
    """A huge learning rate under an ETF head: the same one-line "training diverged" (exit 1) as standard."""
    argv = ["train", *TINY, "--method", method, "--lr", "1e30", "--set", "optimizer=sgd", *flags,
            "--out", str(tmp_path)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("ncguide: training diverged: non-finite") and err.count("\n") == 1, err
    assert (tmp_path / "checkpoint.pt").is_file()


@pytest.mark.parametrize(("flags", "key"), [
    (["--lr", "inf"], "lr"), (["--lr", "nan"], "lr"), (["--set", "weight_decay=nan"], "weight_decay"),
    (["--set", "schedule=step", "--set", "step_milestones=[1]", "--set", "gamma=nan"], "gamma"),
    (["--set", "momentum=-inf"], "momentum"), (["--set", "temperature=inf"], "temperature"),
])
@pytest.mark.parametrize("command", ["train", "compare"])
def test_non_finite_hyper_parameters_rejected_up_front(tmp_path, capsys, flags, key, command):
    out = tmp_path / "o"
    extra = ["--method", "nearest-etf"] if command == "train" else ["--methods", "standard,nearest-etf", "--seeds", "1"]
    assert main([command, *TINY, *extra, *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ncguide: error: {key} must be a finite number") and err.count("\n") == 1, err
    assert not (out / "runs").exists() and not (out / "metrics.jsonl").exists()
