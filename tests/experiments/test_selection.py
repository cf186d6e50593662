"""The selection rule (``experiments/selection.py``) on hand-made logs whose answer is known: each metric,
where they disagree (an unstable rate that touches the threshold early and falls back), diverged runs, ties;
the grid's edges and the step beyond them; first and sustained epochs side by side in the report summary."""

import math

import pytest

from ncguide.experiments.report import DIVERGED, first_reach, summarize, sustained_reach
from ncguide.experiments.selection import (
    axis_edge,
    extend_axis,
    parse_selection_metric,
    run_cost,
    select_point,
    winner_edges,
)


def _log(accs, losses=None):
    """A run's records at epochs 0, 1, ...: training accuracy ``accs[e]``, loss ``losses[e]`` (default 1 - acc)."""
    losses = losses or [1 - a for a in accs]
    return [{"epoch": e, "wall_s": 2.0 * e, "train_acc": a, "train_loss": loss}
            for e, (a, loss) in enumerate(zip(accs, losses))]


# touches 99 % at epoch 1, falls back to 70 %, back at 99.5 % from epoch 5 on
UNSTABLE = [0.5, 0.995, 0.7, 0.9, 0.98, 0.995, 0.999]
# first at 99 % at epoch 3, and stays there
STEADY = [0.5, 0.9, 0.97, 0.995, 0.996, 0.998, 0.999]
DIVERGED_LOG = [{"epoch": math.inf, "train_loss": math.inf, "train_acc": math.nan}]  # compare's stand-in


def _mean_error(accs):
    return sum(1 - a for a in accs) / len(accs)


def test_sustained_and_first_reach_on_a_log_that_falls_back():
    assert first_reach(_log(UNSTABLE), "train_acc", ">=", 0.99)[0] == 1
    assert sustained_reach(_log(UNSTABLE), "train_acc", ">=", 0.99) == (5, 10.0)  # epoch and its wall_s
    assert sustained_reach(_log(STEADY), "train_acc", ">=", 0.99)[0] == 3
    ends_below = UNSTABLE[:-1] + [0.98]
    assert first_reach(_log(ends_below), "train_acc", ">=", 0.99)[0] == 1
    assert sustained_reach(_log(ends_below), "train_acc", ">=", 0.99) == (math.inf, math.inf)
    assert sustained_reach(_log([0.99, 0.99]), "train_acc", ">=", 0.99)[0] == 0  # inclusive, from epoch 0
    # a lower-is-better threshold (NC1 <= 0.1): the same rule
    nc1 = [{"epoch": e, "nc1": v} for e, v in enumerate([1.0, 0.05, 0.2, 0.08, 0.09])]
    assert first_reach(nc1, "nc1", "<=", 0.1)[0] == 1 and sustained_reach(nc1, "nc1", "<=", 0.1)[0] == 3


@pytest.mark.parametrize("metric, winner, values", [
    ("first", "lr=unstable", {"lr=unstable": 1, "lr=steady": 3}),
    ("sustained", "lr=steady", {"lr=unstable": 5, "lr=steady": 3}),
    ("auc", "lr=steady", {"lr=unstable": _mean_error(UNSTABLE), "lr=steady": _mean_error(STEADY)}),
    ("train_acc@1", "lr=unstable", {"lr=unstable": 0.995, "lr=steady": 0.9}),
    ("train_acc@2", "lr=steady", {"lr=unstable": 0.7, "lr=steady": 0.97}),
])
def test_each_metric_on_logs_where_they_disagree(metric, winner, values):
    """The unstable rate wins under `first` (and at epoch 1), loses under `sustained`, `auc` and at epoch 2."""
    runs = {"lr=unstable": {1000: _log(UNSTABLE), 1001: _log(UNSTABLE)},
            "lr=steady": {1000: _log(STEADY), 1001: _log(STEADY)}}
    chosen, rows = select_point(runs, 0.99, metric)
    assert chosen == winner
    for r in rows:
        assert r["value"] == pytest.approx(values[r["point"]], rel=1e-12)
        assert r["per_seed"] == [pytest.approx(values[r["point"]], rel=1e-12)] * 2
        assert (r["first"], r["sustained"]) == ((1, 5) if r["point"] == "lr=unstable" else (3, 3))
        assert r["rank"] == (1 if r["point"] == winner else 2)


def test_default_metric_is_sustained():
    runs = {"a": {0: _log(UNSTABLE)}, "b": {0: _log(STEADY)}}
    assert select_point(runs)[0] == "b" == select_point(runs, 0.99, "sustained")[0]


@pytest.mark.parametrize("metric", ["sustained", "first", "auc", "train_acc@1", "train_acc@6"])
def test_a_diverged_run_ranks_last_under_every_metric(metric):
    never = _log([0.1] * 7, [5.0] * 7)  # never reaches anything, but trained to the end
    runs = {"diverged": {0: DIVERGED_LOG, 1: DIVERGED_LOG}, "never": {0: never, 1: never}}
    winner, rows = select_point(runs, 0.99, metric)
    assert winner == "never" and {r["point"]: r["rank"] for r in rows}["diverged"] == 2
    assert math.isinf(run_cost(DIVERGED_LOG, metric, 0.99))


def test_median_over_seeds_counts_never_as_infinite_and_ties_go_to_final_loss():
    reaches = _log(STEADY)
    ends_below = _log(UNSTABLE[:-1] + [0.98])
    # sustained: (3, inf, inf) has median inf, below (3, 3, inf)
    runs = {"one-of-three": {0: reaches, 1: ends_below, 2: ends_below}, "two-of-three": {0: reaches, 1: reaches,
                                                                                         2: ends_below}}
    winner, rows = select_point(runs)
    assert winner == "two-of-three"
    assert [(r["value"], r["reached"], r["total"]) for r in rows] == [(None, 1, 3), (3, 2, 3)]
    # equal metric: the lower median final training loss wins, then grid order
    low_loss = _log(STEADY, [1.0] * 6 + [1e-4])  # default final loss: 1 - 0.999
    assert select_point({"a": {0: _log(STEADY)}, "b": {0: low_loss}})[0] == "b"
    assert select_point({"a": {0: _log(STEADY)}, "b": {0: _log(STEADY)}})[0] == "a"


def test_train_acc_at_an_epoch_not_evaluated_ranks_last():
    runs = {"evaluated": {0: _log([0.5, 0.6])}, "short": {0: _log([0.5])}}
    winner, rows = select_point(runs, 0.99, "train_acc@1")
    assert winner == "evaluated" and rows[1]["value"] is None and rows[0]["value"] == 0.6


@pytest.mark.parametrize("text, canonical", [("sustained", "sustained"), (" first ", "first"), ("auc", "auc"),
                                             ("train_acc@50", "train_acc@50"), ("train_acc@007", "train_acc@7")])
def test_parse_selection_metric(text, canonical):
    assert parse_selection_metric(text) == canonical


@pytest.mark.parametrize("bad", ["fastest", "train_acc@", "train_acc@-1", "train_acc@1.5", "test_acc@3", 3, None,
                                 "train_acc@²", "train_acc@١"])  # digits that str.isdigit accepts and int() may not
def test_parse_selection_metric_rejects(bad):
    with pytest.raises(ValueError, match="selection_metric") as e:
        parse_selection_metric(bad)
    assert "choose sustained" in str(e.value)  # our message, not int()'s


@pytest.mark.parametrize("text", ["train_acc@0", "train_acc@00"])
def test_parse_selection_metric_refuses_epoch_0(text):
    with pytest.raises(ValueError, match="epoch 0 is before any training"):
        parse_selection_metric(text)


# ----------------------------------------------------------------------------------------------------
# edges


def test_axis_edge_by_value_not_by_position():
    values = [1e-2, 1e-3, 3e-3]  # not sorted
    assert [axis_edge(values, v) for v in values] == ["high", "low", None]
    assert axis_edge([0.1], 0.1) is None  # one value: not a tuned axis
    assert axis_edge(["sgd", "adam"], "sgd") is None and axis_edge([True, False], True) is None
    assert winner_edges({"lr": [0.1, 1.0], "optimizer": ["sgd", "adam"], "temperature": [5.0, 10.0, 20.0]},
                        {"lr": 1.0, "optimizer": "sgd", "temperature": 10.0}) == \
        {"lr": "high", "optimizer": None, "temperature": None}


@pytest.mark.parametrize("values, side, expected, how", [
    # 1-3-10: the next term of ..., 0.1, 0.3, 1, 3, 10, 30, ... (not the end ratio 3.33)
    ([1e-3, 3e-3, 1e-2], "high", 3e-2, "1-3-10 sequence"),
    ([1e-3, 3e-3, 1e-2], "low", 3e-4, "1-3-10 sequence"),
    ([1.0, 3.0, 10.0], "low", 0.3, "1-3-10 sequence"),
    ([0.3, 1.0, 3.0, 10.0], "low", 0.1, "1-3-10 sequence"),  # the grid that one low extension makes
    ([1, 3, 10], "high", 30, "1-3-10 sequence"),
    ([1, 3], "high", 10, "1-3-10 sequence"),
    # log-spaced: ratios more even than differences (3+ values), or two values a factor >= 2 apart
    ([64, 128, 256], "high", 512, "ratio 2"),
    ([64, 128, 256], "low", 32, "ratio 2"),
    ([1e-3, 1e-2, 1e-1, 0.5], "high", 2.5, "ratio 5"),  # one odd end value: its own ratio, still log-spaced
    ([1e-3, 1e-2, 1e-1, 0.5], "low", 1e-4, "ratio 10"),
    ([0.03, 1.0], "high", 1.0 / 0.03, "ratio 33.3"),
    ([1, 2], "high", 4, "ratio 2"),
    ([2, 8], "low", 1, "ratio 4"),  # 0.5: a half rounds toward the grid
    ([4, 10], "low", 2, "ratio 2.5"),  # 1.6: the nearest whole number
    # linear: the end difference
    ([10, 11], "high", 12, "difference 1"),  # two values less than a factor 2 apart
    ([10, 11], "low", 9, "difference 1"),
    ([3, 5], "low", 1, "difference 2"),
    ([2, 4, 6, 8], "high", 10, "difference 2"),
    ([0.1, 0.5, 0.6], "high", 0.7, "difference 0.1"),  # ratios 5, 1.2 (spread 4.2) vs differences 0.4, 0.1 (4)
    ([0.1, 0.5, 0.6], "low", -0.3, "difference 0.4"),  # beyond lr's range: the caller refuses it
    ([0.0, 1e-4, 5e-4], "high", 9e-4, "difference 0.0004"),  # a zero: linear
])
def test_extend_axis_by_its_own_step(values, side, expected, how):
    value, step = extend_axis(values, side)
    # a float is rounded to 6 significant digits: at most half a unit of the 6th, 5e-6 relative
    assert value == pytest.approx(expected, rel=5e-6) and step == how
    assert type(value) is type(values[0])
    assert (value > max(values)) if side == "high" else (value < min(values))
    if isinstance(value, float):
        assert value == float(f"{value:.6g}")  # a readable folder name


def test_extend_axis_continues_the_one_three_sequence_round_after_round():
    grid = [0.01, 0.03]
    for expected in (0.1, 0.3, 1.0, 3.0):
        value, how = extend_axis(grid, "high")
        assert (value, how) == (expected, "1-3-10 sequence")
        grid.append(value)
    for expected in (3e-3, 1e-3, 3e-4):
        value, _ = extend_axis(grid, "low")
        assert value == expected
        grid.insert(0, value)


@pytest.mark.parametrize("values, side, why", [
    (["sgd", "adam"], "high", "not all numbers"),
    ([True, False], "high", "not all numbers"),
    ([0.5], "high", "single value"),
    ([1.0, 1.0000001], "high", "rounds to the edge"),
    ([1, 2], "low", "rounds to the edge"),  # half of 1 is no whole number: refused, not 0
    ([1, 3, 10], "low", "not a whole number above 0"),  # 0.3 on a whole-number axis
])
def test_extend_axis_refuses(values, side, why):
    value, reason = extend_axis(values, side)
    assert value is None and why in reason


# ----------------------------------------------------------------------------------------------------
# the report: first and sustained side by side


def test_summary_holds_first_and_sustained_epochs_per_seed():
    runs = {"standard": {0: _log(STEADY), 1: _log(UNSTABLE), 2: _log(UNSTABLE[:-1] + [0.98])}}
    summary = summarize(runs, {"train_acc": (">=", 0.99)}, diverged={"standard": [0]})
    m = summary["methods"]["standard"]
    assert m["reach"]["train_acc"]["epoch"]["per_seed"] == [3, 1, 1]
    # seed 0 is marked diverged: it never stays at the threshold whatever its log says
    assert m["sustained"]["train_acc"]["epoch"]["per_seed"] == [None, 5, None]
    assert m["sustained"]["train_acc"]["reached"] == 1 and m["sustained"]["train_acc"]["epoch"]["median"] is None
    assert m["sustained"]["train_acc"]["wall_s"]["per_seed"] == [None, 10.0, None]


def test_report_tables_show_both(tmp_path, monkeypatch):
    import json

    from ncguide.experiments import report as report_mod

    monkeypatch.setattr(report_mod, "plot_figures", lambda runs, out: [])  # figures are not what this checks

    for seed, accs in enumerate([UNSTABLE, UNSTABLE, STEADY]):
        d = tmp_path / "runs" / "fixed-etf" / f"seed-{seed}"
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _log(accs)))
    (tmp_path / "runs" / "fixed-etf" / "seed-2" / DIVERGED).write_text("non-finite loss\n")
    md = report_mod.write_report(tmp_path) and (tmp_path / "report.md").read_text()
    assert "epochs to train_acc ≥ 99% (first hit) | epochs to train_acc ≥ 99% (sustained)" in md
    assert "| 1 (3/3) | 5 (2/3) |" in md  # first hit: 1, 1, 3; sustained: 5, 5, never (diverged)


def test_the_tuning_section_names_edges_and_keys_without_edges():
    from ncguide.experiments.report import _selection_section

    sel = {"grid": {"lr": [0.1, 1.0], "optimizer": ["sgd", "adam"]}, "selection_seeds": [1000], "report_seeds": [0],
           "folders": {"standard": "lr=1.0,optimizer=sgd"}, "selection_metric": "sustained",
           "primary": {"key": "train_acc", "op": ">=", "value": 0.99},
           "edge": {"standard": {"lr": "high", "optimizer": None}},
           "tuning": {"standard": [{"point": "lr=1.0,optimizer=sgd", "value": 3, "per_seed": [3], "reached": 1,
                                    "total": 1, "first": 1, "sustained": 3, "final_train_loss": 0.1,
                                    "final_train_acc": 1.0, "rank": 1}]}}
    md = "\n".join(_selection_section(sel))
    assert "Selected: `standard`: lr=1.0,optimizer=sgd (at the grid's edge: lr high)." in md
    assert "| **lr=1.0,optimizer=sgd** (at the grid's edge: lr high) | 3 (1/1) | 3 | 1 | 0.1 | 1 |" in md
    assert "No edges on optimizer: its values are not all numbers" in md
    assert "**At the grid's edge**: `standard` (lr high)." in md
