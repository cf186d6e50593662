"""``run_compare(extend_edges=N)`` / ``--extend-edges N`` on a tiny real compare: a winner at the grid's edge
makes the grid grow one step beyond it, the new points run on the selection seeds, every earlier run is
reused, a rerun trains nothing; values a setting cannot take are not extended and the report says so. The
winner is steered by a selection that prefers the rate closest to 1 (the real rule's rows, re-ranked), so
the test does not hang on which rate a 1-epoch UFM happens to prefer. Also: the new compare keys from the
command line and YAML, and their bad values."""

import json
import math
from pathlib import Path

import pytest
import yaml

from ncguide.experiments import compare as compare_mod
from ncguide.experiments import report as report_mod
from ncguide.experiments.cli import main
from ncguide.experiments.selection import select_point

BASE = {"dataset": "ufm", "model": "ufm", "num_classes": 4, "feature_dim": 8, "samples_per_class": 5,
        "epochs": 1, "batch_size": 10, "optimizer": "sgd", "weight_decay": 0.0, "schedule": "constant",
        "device": "cpu"}
UFM = ["--set", "dataset=ufm", "--set", "model=ufm", "--set", "num_classes=4", "--set", "feature_dim=8",
       "--set", "samples_per_class=5", "--epochs", "1", "--batch-size", "10", "--device", "cpu"]


def _towards(target: float):
    """A selection that ranks grid points by |log(lr / target)| (closest first), with the real rule's rows."""

    def select(runs, threshold, metric):
        _, rows = select_point(runs, threshold, metric)
        order = sorted(rows, key=lambda r: abs(math.log(float(r["point"].partition("=")[2]) / target)))
        for rank, r in enumerate(order, 1):
            r["rank"] = rank
        return order[0]["point"], rows

    return select


@pytest.fixture(autouse=True)
def no_figures(monkeypatch):
    """The figures are not what these tests check (they take most of a tiny compare's time)."""
    monkeypatch.setattr(report_mod, "plot_figures", lambda runs, out: [])


@pytest.fixture
def trained(monkeypatch):
    """Paths that ``train`` was called on, in order."""
    paths: list[Path] = []
    real = compare_mod.train
    monkeypatch.setattr(compare_mod, "train", lambda cfg, path, **kw: paths.append(Path(path)) or real(cfg, path, **kw))
    return paths


def _compare(out, extend_edges, grid=None, log=None):
    return compare_mod.run_compare(BASE, ["standard"], [0], out, grid=grid or {"lr": [0.01, 0.1]}, selection_seeds=1,
                                   extend_edges=extend_edges, progress="none", log=log or (lambda *_: None))


def test_extend_edges_grows_the_grid_reuses_runs_and_reruns_nothing(tmp_path, monkeypatch, trained, one_thread):
    monkeypatch.setattr(compare_mod, "select_point", _towards(1.0))
    out = tmp_path / "out"
    names = lambda: [(p.parent.name, p.name) for p in trained]  # noqa: E731
    # one extension allowed: 0.1 wins at the high edge, 1.0 (ratio 10) is added and wins, again at the edge
    _compare(out, 1)
    assert names() == [("lr=0.01", "seed-1000"), ("lr=0.1", "seed-1000"), ("lr=1.0", "seed-1000"),
                       ("lr=1.0", "seed-0")]
    sel = json.loads((out / "selection.json").read_text())
    assert sel["grid"] == {"lr": [0.01, 0.1]} and sel["grids"] == {"standard": {"lr": [0.01, 0.1, 1.0]}}
    assert sel["selected"] == {"standard": {"lr": 1.0}} and sel["edge"] == {"standard": {"lr": "high"}}
    assert sel["extensions"] == [{"round": 1, "method": "standard", "key": "lr", "side": "high", "value": 1.0,
                                  "step": "ratio 10"}]
    assert [r["point"] for r in sel["tuning"]["standard"]] == ["lr=0.01", "lr=0.1", "lr=1.0"]
    md = (out / "report.md").read_text()
    assert "**lr=1.0** (at the grid's edge: lr high)" in md and "**At the grid's edge**: `standard`" in md
    summary = json.loads((out / "summary.json").read_text())
    assert summary["edge"] == {"standard": {"lr": "high"}} and summary["selection_metric"] == "sustained"

    # two allowed: the runs so far are reused, only lr=10 trains; 1.0 is now interior
    trained.clear()
    _compare(out, 2)
    assert names() == [("lr=10.0", "seed-1000")]
    sel = json.loads((out / "selection.json").read_text())
    assert sel["grids"]["standard"]["lr"] == [0.01, 0.1, 1.0, 10.0] and sel["edge"] == {"standard": {"lr": None}}
    assert [x["round"] for x in sel["extensions"]] == [1, 2]
    assert "At the grid's edge" not in (out / "report.md").read_text()

    # the same command again: nothing trains, the same selection
    trained.clear()
    _compare(out, 2)
    assert trained == [] and json.loads((out / "selection.json").read_text()) == sel


def test_an_extension_beyond_the_valid_range_is_refused_and_said(tmp_path, monkeypatch, trained, one_thread):
    """lr = 0.1, 0.5, 0.6 is linear (ratios 5 and 1.2); the lowest wins, one step below is -0.3: not an lr."""
    monkeypatch.setattr(compare_mod, "select_point", _towards(1e-3))
    out = tmp_path / "out"
    lines: list[str] = []
    _compare(out, 3, grid={"lr": [0.1, 0.5, 0.6]}, log=lines.append)
    assert sorted(p.parent.name for p in trained) == ["lr=0.1", "lr=0.1", "lr=0.5", "lr=0.6"]  # no new point
    sel = json.loads((out / "selection.json").read_text())
    assert sel["edge"] == {"standard": {"lr": "low"}} and sel["extensions"] == []
    [refused] = sel["not_extended"]
    assert (refused["method"], refused["key"], refused["side"], refused["value"]) == ("standard", "lr", "low", -0.3)
    assert "lr must be > 0" in refused["why"]
    assert any("not extending standard's lr beyond its low edge" in line for line in lines)
    md = (out / "report.md").read_text()
    assert "Not extended: `standard` lr (low): not a valid setting (lr must be > 0" in md


def test_a_refusal_is_dropped_once_a_later_round_moves_the_winner_inside(tmp_path, monkeypatch, trained, one_thread):
    """Round 1: the winner sits at lr's low edge (one step below 0.1 is -0.3: refused) and weight_decay's high one
    (extended to 2e-4). Round 2 picks lr = 0.5 at the new weight decay: interior in lr, so the lr refusal is no
    longer news and selection.json and the report drop it."""

    def scripted(runs, threshold, metric):
        _, rows = select_point(runs, threshold, metric)
        point = {r["point"]: dict(kv.split("=") for kv in r["point"].split(",")) for r in rows}
        top = max(float(p["weight_decay"]) for p in point.values())
        want = 0.5 if top > 1e-4 else 0.1  # lr = 0.1 in round 1, 0.5 once the grid has grown
        order = sorted(rows, key=lambda r: (-float(point[r["point"]]["weight_decay"]),
                                            abs(float(point[r["point"]]["lr"]) - want)))
        for rank, r in enumerate(order, 1):
            r["rank"] = rank
        return order[0]["point"], rows

    monkeypatch.setattr(compare_mod, "select_point", scripted)
    out = tmp_path / "out"
    lines: list[str] = []
    _compare(out, 1, grid={"lr": [0.1, 0.5, 0.6], "weight_decay": [0.0, 1e-4]}, log=lines.append)
    assert any("not extending standard's lr beyond its low edge" in line for line in lines)  # round 1 said it
    sel = json.loads((out / "selection.json").read_text())
    assert sel["selected"] == {"standard": {"lr": 0.5, "weight_decay": 2e-4}}
    assert sel["edge"] == {"standard": {"lr": None, "weight_decay": "high"}}
    assert [(x["key"], x["value"]) for x in sel["extensions"]] == [("weight_decay", 2e-4)]
    assert sel["not_extended"] == []
    assert "Not extended" not in (out / "report.md").read_text()


def test_extend_edges_and_selection_metric_from_the_command_line_and_yaml(tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr(compare_mod, "select_point", _towards(1.0))
    out = tmp_path / "out"
    argv = ["compare", *UFM, "--methods", "standard,nearest-etf", "--seeds", "1", "--grid", "lr=0.1,0.3",
            "--selection-seeds", "1", "--extend-edges", "1", "--selection-metric", "auc", "--focus", "standard",
            "--out", str(out)]
    assert main(argv) == 0
    sel = json.loads((out / "selection.json").read_text())
    assert sel["selection_metric"] == "auc" and sel["extend_edges"] == 1
    assert sel["grids"]["standard"]["lr"] == [0.1, 0.3, 1.0]  # the 1-3-10 sequence goes on
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert (resolved["selection_metric"], resolved["extend_edges"], resolved["focus"]) == ("auc", 1, "standard")
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["verdict"]["method"], summary["verdict"]["baseline"]) == ("standard", "nearest-etf")
    assert "mean train error (auc)" in (out / "report.md").read_text()
    # the resolved config repeats the comparison: everything reused
    trained = []
    real = compare_mod.train
    monkeypatch.setattr(compare_mod, "train", lambda cfg, path, **kw: trained.append(path) or real(cfg, path, **kw))
    assert main(["compare", "--config", str(out / "config.yaml"), "--out", str(out)]) == 0
    assert trained == []
    # `ncguide report` keeps the comparison's focus; --focus overrides it
    assert main(["report", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["verdict"]["method"] == "standard"
    assert main(["report", str(out), "--focus", "nearest-etf"]) == 0
    assert json.loads((out / "summary.json").read_text())["verdict"]["method"] == "nearest-etf"
    assert main(["report", str(out), "--focus", "fixed-etf"]) == 2


@pytest.mark.parametrize("extra, words", [
    (["--selection-metric", "fastest"], ["--selection-metric", "selection_metric"]),
    (["--selection-metric", "train_acc@5"], ["--selection-metric", "epoch 5 is not evaluated"]),
    (["--extend-edges", "-1"], ["--extend-edges", "whole number"]),
    (["--extend-edges", "two"], ["--extend-edges", "whole number"]),
    (["--focus", "fixed-etf"], ["--focus", "not a compared method"]),
    (["--set", "focus=nope"], ["--set focus=nope"]),
    (["--selection-metric", "train_acc@²"], ["--selection-metric", "choose sustained"]),
    (["--selection-metric", "train_acc@0"], ["--selection-metric", "epoch 0 is before any training"]),
    (["--grid", "epochs=1,2"], ["--grid", "a grid over epochs", "train_acc@E"]),
    (["--grid", "eval_every=1,2"], ["--grid", "a grid over eval_every", "train_acc@E"]),
])
def test_bad_new_compare_keys_exit_2_with_one_line_and_nothing_written(tmp_path, capsys, extra, words):
    out = tmp_path / "o"
    argv = ["compare", *UFM, "--methods", "standard,nearest-etf", "--grid", "lr=0.1,1", *extra, "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ncguide: error: ") and all(w in err[0] for w in words), err
    assert not out.exists()


def test_a_grid_over_run_lengths_is_allowed_with_the_accuracy_at_an_epoch(tmp_path, capsys):
    argv = ["compare", *UFM, "--methods", "standard", "--grid", "epochs=1,2", "--selection-metric", "train_acc@1",
            "--print-config"]
    assert main(argv) == 0
    assert "selection_metric: train_acc@1" in capsys.readouterr().out


def test_bad_keys_in_a_config_file_name_the_file(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("methods: [standard]\ngrid: {lr: [0.1, 1.0]}\nextend_edges: yes\n")
    assert main(["compare", *UFM, "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "extend_edges" in err and str(cfg) in err and not (tmp_path / "o").exists()
