"""Tuned comparisons (``run_compare(grid=...)``): the winner rule, selection on selection seeds only, the
folder layout, reuse and resume across grid points, diverged runs; run identity from the checkpoint
(issue: reuse under a changed config); the paper's training-accuracy table."""

import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from ncguide.experiments import compare as compare_mod
from ncguide.experiments import report as report_mod
from ncguide.experiments.checkpoint import ResumeError
from ncguide.experiments.cli import main
from ncguide.experiments.compare import (
    parse_grid,
    parse_variants,
    point_name,
    run_compare,
    run_dir,
    select_point,
)
from ncguide.experiments.config import TrainConfig
from ncguide.experiments.files import read_jsonl
from ncguide.experiments.report import DIVERGED, load_runs, summarize
from ncguide.experiments.runlog import log_has_results
from ncguide.experiments.train import train

# a UFM small enough that a run takes well under a second
BASE = {"dataset": "ufm", "model": "ufm", "num_classes": 4, "feature_dim": 8, "samples_per_class": 5,
        "epochs": 3, "batch_size": 10, "optimizer": "sgd", "weight_decay": 0.0, "schedule": "constant",
        "device": "cpu"}
METHODS = ["standard", "nearest-etf"]
GRID = {"lr": [0.03, 1.0]}


def _quiet(*_):
    pass


def _compare(out, **kw):
    kw = {"methods": METHODS, "seeds": [0, 1], "grid": GRID, "selection_seeds": 2, "progress": "none",
          "log": _quiet, **kw}
    return run_compare(BASE, out_dir=out, **kw)


def _strict_json_files(out: Path) -> int:
    """Parse every ``*.json`` file and every line of every ``*.jsonl`` log under ``out`` as strict JSON (the NaN and
    Infinity tokens that Python's ``json`` writes by default raise); returns how many files were read."""

    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    files = sorted([*out.rglob("*.json"), *out.rglob("*.jsonl")])
    for path in files:
        text = path.read_text()
        for part in (text.splitlines() if path.suffix == ".jsonl" else [text]):
            if part.strip():
                json.loads(part, parse_constant=refuse)
    return len(files)


def _rec(epoch, acc, loss):
    return {"epoch": epoch, "train_acc": acc, "train_loss": loss}


# ----------------------------------------------------------------------------------------------------
# the winner rule


def test_select_point_fewest_median_epochs_wins():
    runs = {
        "lr=0.1": {1000: [_rec(0, 0.5, 2), _rec(1, 0.995, 0.1)], 1001: [_rec(0, 0.5, 2), _rec(1, 0.999, 0.1)]},
        "lr=1": {1000: [_rec(0, 0.5, 2), _rec(1, 0.9, 0.5), _rec(2, 0.999, 0.01)],
                 1001: [_rec(0, 0.5, 2), _rec(1, 0.9, 0.5), _rec(2, 0.999, 0.01)]},
    }
    winner, rows = select_point(runs)
    assert winner == "lr=0.1"
    assert [(r["point"], r["value"], r["rank"]) for r in rows] == [("lr=0.1", 1, 1), ("lr=1", 2, 2)]


def test_select_point_tie_goes_to_lower_final_loss_then_grid_order():
    same = [_rec(0, 0.5, 2), _rec(1, 0.999, 0.2)]
    lower = [_rec(0, 0.5, 2), _rec(1, 0.999, 0.1)]
    assert select_point({"a": {0: same}, "b": {0: lower}})[0] == "b"
    assert select_point({"a": {0: same}, "b": {0: list(same)}})[0] == "a"


def test_select_point_never_reached_ranks_last_and_median_counts_unreached_as_inf():
    reached = [_rec(0, 0.5, 2), _rec(5, 0.999, 1.0)]
    never = [_rec(0, 0.5, 2), _rec(5, 0.98, 0.001)]  # lowest loss, but never at 99 %
    # median of (1, inf, inf) is inf: a point reached by one seed of three ranks with the never-reached
    runs = {"never": {0: never, 1: never, 2: never},
            "one-of-three": {0: [_rec(1, 0.999, 0.5)], 1: never, 2: never},
            "all": {0: reached, 1: reached, 2: reached}}
    winner, rows = select_point(runs)
    ranks = {r["point"]: r["rank"] for r in rows}
    assert winner == "all" and ranks["all"] == 1
    assert {r["point"]: r["value"] for r in rows}["one-of-three"] is None
    assert ranks["never"] == 2  # both unreached: lower final loss first


def test_select_point_all_unreached_picks_lowest_loss():
    runs = {"a": {0: [_rec(3, 0.5, 0.9)]}, "b": {0: [_rec(3, 0.6, 0.4)]}}
    winner, rows = select_point(runs)
    assert winner == "b" and all(r["value"] is None and r["reached"] == 0 for r in rows)


# ----------------------------------------------------------------------------------------------------
# the protocol end to end


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned") / "out"
    summary = _compare(out)
    return out, summary


def test_layout_selection_then_report_at_the_winner(tuned):
    out, summary = tuned
    selection = json.loads((out / "selection.json").read_text())
    assert selection["selection_seeds"] == [1000, 1001] and selection["report_seeds"] == [0, 1]
    for m in METHODS:
        winner = selection["folders"][m]
        for lr in GRID["lr"]:
            folder = out / "runs" / m / point_name({"lr": lr})
            seeds = sorted(p.name for p in folder.iterdir())
            expected = ["seed-0", "seed-1", "seed-1000", "seed-1001"] if folder.name == winner else \
                ["seed-1000", "seed-1001"]
            assert seeds == expected, (folder, seeds)
            for s in seeds:
                cfg = json.loads((folder / s / "config.json").read_text())
                assert cfg["lr"] == lr and cfg["method"] == m and f"seed-{cfg['seed']}" == s
    # the report holds exactly the report seeds at each method's winner
    assert {m: v["seeds"] for m, v in summary["methods"].items()} == {m: [0, 1] for m in METHODS}
    assert summary["selected"] == {m: {"lr": float(selection["folders"][m].split("=")[1])} for m in METHODS}
    md = (out / "report.md").read_text()
    assert md.index("## Tuning") < md.index("## Training accuracy at fixed epochs") < md.index("## Summary")


def test_selection_uses_only_selection_seeds(tuned):
    """The winner is select_point over the selection seeds' logs; report seeds' logs play no part."""
    out, _ = tuned
    selection = json.loads((out / "selection.json").read_text())
    for m in METHODS:
        logs = {point_name({"lr": lr}): {s: read_jsonl(run_dir(out, m, s, {"lr": lr}) / "metrics.jsonl")
                                         for s in (1000, 1001)} for lr in GRID["lr"]}
        winner, rows = select_point(logs)
        assert winner == selection["folders"][m]
        assert rows == selection["tuning"][m]


def test_rerun_reuses_and_a_new_grid_value_trains_only_its_runs(tuned, tmp_path, monkeypatch):
    src, _ = tuned
    out = tmp_path / "out"
    shutil.copytree(src, out)
    trained = []
    real = compare_mod.train
    monkeypatch.setattr(compare_mod, "train",
                        lambda cfg, path, **kw: trained.append(Path(path)) or real(cfg, path, **kw))
    _compare(out)
    assert trained == []  # everything reused
    _compare(out, grid={"lr": [*GRID["lr"], 0.3]})
    new = [p for p in trained if p.parent.name == "lr=0.3"]
    assert sorted(p.name for p in new if p.name.startswith("seed-100")) == ["seed-1000", "seed-1000", "seed-1001",
                                                                              "seed-1001"]
    assert all(p.parent.name == "lr=0.3" or p.name in ("seed-0", "seed-1") for p in trained)


def test_interrupted_grid_resumes(tmp_path, monkeypatch):
    out = tmp_path / "out"
    real, calls = compare_mod.train, []

    def flaky(cfg, path, **kw):
        calls.append(Path(path))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(cfg, path, **kw)

    monkeypatch.setattr(compare_mod, "train", flaky)
    with pytest.raises(KeyboardInterrupt):
        _compare(out)
    done_first = calls[:2]
    monkeypatch.setattr(compare_mod, "train", real)
    resumed = []
    monkeypatch.setattr(compare_mod, "train",
                        lambda cfg, path, **kw: resumed.append(Path(path)) or real(cfg, path, **kw))
    summary = _compare(out)
    assert not set(done_first) & set(resumed) and calls[2] in resumed
    assert {m: v["seeds"] for m, v in summary["methods"].items()} == {m: [0, 1] for m in METHODS}


def test_a_method_that_never_reaches_the_threshold(tmp_path):
    """Grid points too slow to reach 99 % in one epoch: selection falls back to the final loss; the report
    marks the method unreached."""
    out = tmp_path / "out"
    summary = run_compare({**BASE, "epochs": 1}, ["standard"], [0], out, grid={"lr": [1e-4, 1e-3]},
                          selection_seeds=1, progress="none", log=_quiet)
    sel = json.loads((out / "selection.json").read_text())
    rows = sel["tuning"]["standard"]
    assert all(r["value"] is None for r in rows)
    best_loss = min(rows, key=lambda r: r["final_train_loss"])
    assert sel["folders"]["standard"] == best_loss["point"]
    assert summary["methods"]["standard"]["reach"]["train_acc"]["reached"] == 0
    assert "| `standard` | 1 |" in (out / "report.md").read_text() and ">1 (0/1)" in (out / "report.md").read_text()


def test_diverged_grid_point_ranks_last_and_does_not_stop_the_comparison(tmp_path):
    out = tmp_path / "out"
    summary = run_compare(BASE, ["standard"], [0], out, grid={"lr": [1.0, 1e38]}, selection_seeds=1,
                          progress="none", log=_quiet)
    bad = run_dir(out, "standard", 1000, {"lr": 1e38})
    assert (bad / DIVERGED).is_file() and "non-finite" in (bad / DIVERGED).read_text()
    sel = json.loads((out / "selection.json").read_text())
    assert sel["folders"]["standard"] == "lr=1.0"
    assert [r["rank"] for r in sel["tuning"]["standard"]] == [1, 2]
    assert summary["methods"]["standard"]["seeds"] == [0]
    # every JSON file and log line is strict JSON: a diverged point's medians are null, not Infinity or NaN
    assert _strict_json_files(out) >= 6  # two runs' config.json and metrics.jsonl, selection.json, summary.json
    diverged_row = next(r for r in sel["tuning"]["standard"] if r["point"] == "lr=1e+38")
    assert diverged_row["final_train_acc"] is None and diverged_row["final_train_loss"] is None
    # a rerun reuses the diverged outcome instead of training it again
    logs = []
    run_compare(BASE, ["standard"], [0], out, grid={"lr": [1.0, 1e38]}, selection_seeds=1, progress="none",
                log=logs.append)
    assert any("reused diverged run" in line for line in logs)


def test_variant_runs_with_its_settings(tmp_path):
    out = tmp_path / "out"
    variants = {"nearest-etf-t10": {"method": "nearest-etf", "temperature": 10.0},
                "frozen": {"method": "nearest-etf", "freeze_after": 1}}
    summary = run_compare(BASE, ["nearest-etf", "nearest-etf-t10", "frozen"], [0], out, variants=variants,
                          progress="none", log=_quiet)
    cfg = json.loads((out / "runs" / "nearest-etf-t10" / "seed-0" / "config.json").read_text())
    assert (cfg["method"], cfg["temperature"], cfg["freeze_after"]) == ("nearest-etf", 10.0, None)
    assert json.loads((out / "runs" / "frozen" / "seed-0" / "config.json").read_text())["freeze_after"] == 1.0
    assert list(summary["methods"]) == ["nearest-etf", "nearest-etf-t10", "frozen"]


@pytest.mark.parametrize("kw, match", [
    ({"grid": {"seed": [1, 2]}}, "not a grid key"),
    ({"grid": {"device": ["cpu"]}}, "runtime setting"),
    ({"grid": {"lr": [0.1, 0.1]}}, "twice"),
    ({"grid": {"lr": ["x"]}}, "lr"),
    ({"grid": {"lr": [0.1, 1.0]}, "selection_seeds": [0]}, "disjoint"),
    ({"selection_seeds": 0, "grid": {"lr": [0.1, 1.0]}}, "selection_seeds"),
    ({"variants": {"a/b": {"method": "standard"}}}, "variant name"),
    ({"variants": {"standard": {"method": "nearest-etf"}}}, "named after a method"),
    ({"variants": {"v": {"method": "nope"}}}, "needs `method:`"),
    ({"variants": {"v": {"method": "standard", "seed": 3}}, "methods": ["v"]}, "seed"),
    ({"variants": {"v": {"method": "standard", "lr": 0.1}}, "methods": ["v"], "grid": {"lr": [0.1, 1.0]}},
     "grid varies"),
    ({"report_epochs": [-1]}, "report_epochs"),
])
def test_bad_grid_and_variants_are_value_errors_before_any_run(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        run_compare(BASE, **{"methods": ["standard"], "seeds": [0], "progress": "none", "log": _quiet, **kw},
                    out_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "runs").exists()


def test_parse_grid_from_cli_items():
    assert parse_grid(["lr=1e-3,0.01", "temperature=5,10"]) == {"lr": [0.001, 0.01], "temperature": [5.0, 10.0]}
    assert parse_variants({"x": {"method": "standard"}}) == {"x": {"method": "standard"}}
    with pytest.raises(ValueError, match="KEY=V1,V2"):
        parse_grid(["lr"])


# ----------------------------------------------------------------------------------------------------
# run identity (a run is what its checkpoint says)


@pytest.fixture
def plain(tmp_path):
    out = tmp_path / "out"
    run_compare(BASE | {"lr": 1.0}, ["standard"], [0, 1], out, progress="none", log=_quiet)
    return out


@pytest.mark.parametrize("damage", ["delete", "truncate", "rewrite"])
def test_changed_config_is_refused_even_without_config_json(plain, damage):
    cfg = plain / "runs" / "standard" / "seed-0" / "config.json"
    if damage == "delete":
        cfg.unlink()
    elif damage == "truncate":
        cfg.write_text(cfg.read_text()[:20])
    else:  # a config.json that claims the new value
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "lr": 0.5}))
    with pytest.raises(ValueError, match="different config.*lr"):
        run_compare(BASE | {"lr": 0.5}, ["standard"], [0, 1], plain, progress="none", log=_quiet)


def test_run_without_checkpoint_is_refused_not_reused(plain):
    (plain / "runs" / "standard" / "seed-1" / "checkpoint.pt").unlink()
    with pytest.raises(ValueError, match="cannot be established"):
        run_compare(BASE | {"lr": 1.0}, ["standard"], [0, 1], plain, progress="none", log=_quiet)
    # --no-resume retrains it (and the report is whole again)
    summary = run_compare(BASE | {"lr": 1.0}, ["standard"], [0, 1], plain, resume=False, progress="none", log=_quiet)
    assert summary["methods"]["standard"]["seeds"] == [0, 1]


def _without_wall(text: str) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "wall_s"} for line in text.splitlines()]


def test_a_run_stopped_before_its_first_checkpoint_is_retrained(plain, monkeypatch):
    """A folder without ``checkpoint.pt`` whose log holds nothing a fresh start would not write again is trained
    afresh by the same command (no --no-resume, which would retrain every finished run too); one with records
    after epoch 0 stays refused. ``config.json`` may even name another config: nothing of it is kept."""
    monkeypatch.setattr(report_mod, "plot_figures", lambda runs, out: [])  # not what this checks
    trained = []
    real = compare_mod.train
    monkeypatch.setattr(compare_mod, "train", lambda cfg, path, **kw: trained.append(Path(path)) or real(cfg, path,
                                                                                                        **kw))
    run = plain / "runs" / "standard" / "seed-1"
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)

    def stop_before_checkpoint(log: str) -> None:
        (run / "checkpoint.pt").unlink()
        (run / "metrics.jsonl").write_text(log)
        (run / "config.json").write_text(json.dumps({**json.loads((run / "config.json").read_text()), "lr": 7.0}))

    # empty (killed while loading data or evaluating before training), the epoch-0 record only (killed before
    # the first checkpoint), the epoch-0 record and a cut line
    for log in ("", lines[0], lines[0] + lines[1][:15]):
        stop_before_checkpoint(log)
        assert not log_has_results(run / "metrics.jsonl")
        trained.clear()
        summary = run_compare(BASE | {"lr": 1.0}, ["standard"], [0, 1], plain, progress="none", log=_quiet)
        assert trained == [run] and summary["methods"]["standard"]["seeds"] == [0, 1]
        assert (run / "checkpoint.pt").is_file()
        assert _without_wall((run / "metrics.jsonl").read_text()) == _without_wall("".join(lines))
    # a record after training is a result: refused by compare, and by train() unless config.json is the same
    stop_before_checkpoint("".join(lines[:2]))
    assert log_has_results(run / "metrics.jsonl")
    with pytest.raises(ValueError, match="holds results .* but no checkpoint.pt"):
        run_compare(BASE | {"lr": 1.0}, ["standard"], [0, 1], plain, progress="none", log=_quiet)
    with pytest.raises(ResumeError, match="holds the results of an earlier run"):
        train(TrainConfig.from_dict({**BASE, "lr": 1.0, "method": "standard", "seed": 1}), run, progress="none")


def _npz(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = np.arange(40) % 4
    np.savez(path, x_train=x, y_train=y, x_test=x[:8], y_test=y[:8])


def test_changed_npz_file_is_not_pooled_with_old_seeds(tmp_path):
    data = tmp_path / "mine.npz"
    _npz(data, 0)
    base = {"dataset": f"npz:{data}", "model": "mlp", "model_kwargs": {"widths": [8]}, "epochs": 1,
            "batch_size": 20, "device": "cpu"}
    out = tmp_path / "out"
    run_compare(base, ["standard"], [0], out, progress="none", log=_quiet)
    _npz(data, 1)  # same path, other content
    with pytest.raises(ValueError, match="data file.*changed"):
        run_compare(base, ["standard"], [0, 1], out, progress="none", log=_quiet)
    from ncguide.experiments import train

    with pytest.raises(ValueError, match="other data"):
        train(base | {"method": "standard"}, out / "runs" / "standard" / "seed-0", progress="none")


# ----------------------------------------------------------------------------------------------------
# the paper's table


def test_train_accuracy_at_report_epochs(tuned, tmp_path):
    out, _ = tuned
    runs = load_runs(out)
    summary = summarize(runs, report_epochs=[1, 3])
    for m, by_seed in runs.items():
        accs = [next(r["train_acc"] for r in recs if r["epoch"] == 1) for recs in by_seed.values()]
        st = summary["methods"][m]["at_epoch"]["1"]["train_acc"]
        assert st["median"] == pytest.approx(float(np.median(accs)))
        assert (st["min"], st["max"]) == (min(accs), max(accs))
    assert summarize(runs)["report_epochs"] == [1, 3]  # default: midpoint (3 // 2) and the last epoch
    missing = summarize(runs, report_epochs=[7])["methods"]["standard"]["at_epoch"]["7"]["train_acc"]
    assert missing["n"] == 0 and missing["per_seed"] == [None, None]
    assert math.isnan(float("nan"))


def test_report_epochs_from_cli_reach_the_report(tuned, tmp_path, capsys):
    src, _ = tuned
    out = tmp_path / "out"
    shutil.copytree(src, out)
    assert main(["report", str(out), "--report-epochs", "2,3"]) == 0
    md = (out / "report.md").read_text()
    assert "train acc @ epoch 2" in md and "train acc @ epoch 3" in md
    assert json.loads((out / "summary.json").read_text())["report_epochs"] == [2, 3]
    assert main(["report", str(out), "--report-epochs", "x"]) == 2


def test_cli_grid_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["compare", "--set", "dataset=ufm", "--set", "model=ufm", "--set", "num_classes=4", "--set", "feature_dim=8",
            "--set", "samples_per_class=5", "--epochs", "2", "--batch-size", "10", "--device", "cpu",
            "--methods", "standard", "--seeds", "1", "--grid", "lr=0.1,1", "--selection-seeds", "1",
            "--report-epochs", "1,2", "--out", str(out)]
    assert main(argv) == 0
    sel = json.loads((out / "selection.json").read_text())
    assert sel["selection_seeds"] == [1000] and set(sel["folders"]["standard"].split("=")) <= {"lr", "0.1", "1.0"}
    import yaml

    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["grid"] == {"lr": [0.1, 1.0]} and resolved["selection_seeds"] == [1000]
    assert resolved["report_epochs"] == [1, 2]
    capsys.readouterr()
    assert main(["compare", "--config", str(out / "config.yaml"), "--out", str(out)]) == 0  # repeats: all reused
    assert "training in" not in capsys.readouterr().out
    assert main([*argv[:-2], "--seeds", "1", "--selection-seeds", "0,1000", "--out", str(tmp_path / "o2")]) == 2


def test_train_acc_threshold_drives_selection_and_report(tmp_path, capsys):
    out = tmp_path / "out"
    summary = run_compare({**BASE, "epochs": 2}, ["standard"], [0], out, grid={"lr": [1e-4, 1.0]}, selection_seeds=1,
                          train_acc_threshold=0.3, progress="none", log=_quiet)
    sel = json.loads((out / "selection.json").read_text())
    assert sel["primary"]["value"] == 0.3
    logs = {point_name({"lr": lr}): {1000: read_jsonl(run_dir(out, "standard", 1000, {"lr": lr}) / "metrics.jsonl")}
            for lr in (1e-4, 1.0)}
    assert select_point(logs, 0.3)[1] == sel["tuning"]["standard"]
    assert summary["thresholds"]["train_acc"]["value"] == 0.3
    assert main(["report", str(out)]) == 0  # the report keeps the comparison's threshold
    assert json.loads((out / "summary.json").read_text())["thresholds"]["train_acc"]["value"] == 0.3
    with pytest.raises(ValueError, match="train_acc_threshold"):
        run_compare(BASE, ["standard"], [0], tmp_path / "o2", train_acc_threshold=1.5, progress="none", log=_quiet)


def test_options_that_cannot_act_get_one_warning_each():
    """A variant no listed method names never runs; the selection options without a grid select nothing: one warning
    line each, and none for the same options at their defaults (as a resolved config.yaml lists them)."""
    def notes(**options) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_compare(BASE, ["standard"], [0], "unused", check_only=True, **options)
        return [str(w.message) for w in caught]

    assert notes(selection_seeds=2, extend_edges=0, selection_metric="sustained") == []
    got = notes(variants={"v": {"method": "standard", "lr": 0.1}}, selection_seeds=3, extend_edges=2,
                selection_metric="first")
    assert len(got) == 4, got
    assert "variant 'v' is not in methods (standard)" in got[0]
    assert [g.split()[0] for g in got[1:]] == ["selection_seeds", "extend_edges", "selection_metric"]
    assert all("without a grid it is ignored" in g for g in got[1:])
    assert notes(grid={"lr": [0.1, 0.2]}, selection_seeds=3, extend_edges=2, selection_metric="first") == []
