"""report.py on synthetic logs: statistics over seeds, time to threshold, files written, valid PNGs."""

import json
import math

import numpy as np
import pytest

from ncguide.experiments.report import FIGURES, load_runs, summarize, summary_table, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _records(reach_epoch: int | None, nc1_epoch: int | None, epochs: int, scale: float, seed: int):
    """One synthetic run: train_acc crosses 0.99 exactly at ``reach_epoch`` (never if None), nc1 drops below
    0.05 at ``nc1_epoch``; wall_s = 2·epoch; final metrics depend on ``scale`` so that the oracle is known."""
    recs = []
    for e in range(epochs + 1):
        acc = 0.995 if reach_epoch is not None and e >= reach_epoch else 0.5 + 0.4 * e / epochs
        nc1 = 0.01 if nc1_epoch is not None and e >= nc1_epoch else 1.0 / (e + 1)
        recs.append({
            "epoch": e, "step": 10 * e, "wall_s": 2.0 * e, "train_loss": scale / (e + 1), "train_acc": acc,
            "test_acc": 0.8 + 0.01 * seed, "nc1": nc1, "nc2_w": scale * 0.1, "nc2_h": scale * 0.2,
            "nc3": scale * 0.3, "nc4": 0.0 if e == epochs else 0.1,
        })
    return recs


# method -> per-seed (reach_epoch, nc1_epoch, scale)
SPEC = {
    "standard": [(3, 2, 1.0), (5, None, 2.0), (4, 4, 4.0)],
    "nearest-etf": [(2, 1, 0.5), (None, None, 3.0)],
}
EPOCHS = 6


def _write_runs(root, spec=SPEC, epochs=EPOCHS):
    for method, seeds in spec.items():
        for seed, (reach, nc1e, scale) in enumerate(seeds):
            d = root / "runs" / method / f"seed-{seed}"
            d.mkdir(parents=True)
            lines = [json.dumps(r) for r in _records(reach, nc1e, epochs, scale, seed)]
            (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
            (d / "config.json").write_text(json.dumps({"method": method, "seed": seed, "dataset": "digits",
                                                       "epochs": epochs, "nc1_threshold": 0.05}))


@pytest.fixture
def out(tmp_path):
    _write_runs(tmp_path)
    return tmp_path


def test_load_runs_groups_by_method_and_seed(out):
    runs = load_runs(out)
    assert list(runs) == ["standard", "nearest-etf"]  # fixed method order, not alphabetical
    assert sorted(runs["standard"]) == [0, 1, 2] and sorted(runs["nearest-etf"]) == [0, 1]
    assert all(len(r) == EPOCHS + 1 for by_seed in runs.values() for r in by_seed.values())


def test_load_runs_errors_without_logs(tmp_path):
    with pytest.raises(ValueError, match="no run logs"):
        load_runs(tmp_path)


@pytest.mark.parametrize("key,factor", [("nc2_w", 0.1), ("nc2_h", 0.2), ("nc3", 0.3)])
def test_final_median_min_max(out, key, factor):
    s = summarize(load_runs(out), {"train_acc": (">=", 0.99)})
    for method, seeds in SPEC.items():
        vals = np.array([scale * factor for _, _, scale in seeds])
        st = s["methods"][method]["final"][key]
        assert st["median"] == pytest.approx(np.median(vals))
        assert st["min"] == pytest.approx(vals.min()) and st["max"] == pytest.approx(vals.max())
        assert st["n"] == len(seeds)


def test_final_test_acc_and_loss(out):
    s = summarize(load_runs(out), {"train_acc": (">=", 0.99)})
    st = s["methods"]["standard"]["final"]["test_acc"]
    assert (st["median"], st["min"], st["max"]) == pytest.approx((0.81, 0.80, 0.82))
    loss = s["methods"]["nearest-etf"]["final"]["train_loss"]
    assert loss["median"] == pytest.approx(np.median([0.5 / 7, 3.0 / 7]))  # even count: mean of middle two


def test_time_to_threshold(out):
    s = summarize(load_runs(out), {"train_acc": (">=", 0.99), "nc1": ("<=", 0.05)})
    r = s["methods"]["standard"]["reach"]["train_acc"]
    assert r["reached"] == 3 and r["total"] == 3
    assert r["epoch"]["per_seed"] == [3, 5, 4] and r["epoch"]["median"] == 4
    assert r["wall_s"]["median"] == pytest.approx(8.0) and r["wall_s"]["max"] == pytest.approx(10.0)
    # nc1 <= 0.05: seed 1 never drops (1/(e+1) > 0.05 for e <= EPOCHS)
    n = s["methods"]["standard"]["reach"]["nc1"]
    assert n["epoch"]["per_seed"] == [2, None, 4] and n["reached"] == 2
    assert n["epoch"]["median"] == 4 and n["epoch"]["max"] is None  # unreached counts as inf
    # two seeds, one unreached: the median (mean of 2 and inf) is inf -> None
    e = s["methods"]["nearest-etf"]["reach"]["train_acc"]
    assert e["reached"] == 1 and e["epoch"]["median"] is None and e["epoch"]["min"] == 2


def test_threshold_boundary_is_inclusive(tmp_path):
    d = tmp_path / "runs" / "standard" / "seed-0"
    d.mkdir(parents=True)
    recs = [{"epoch": e, "wall_s": float(e), "train_acc": a} for e, a in [(1, 0.98), (2, 0.99), (3, 1.0)]]
    (d / "metrics.jsonl").write_text("\n".join(map(json.dumps, recs)))
    s = summarize(load_runs(tmp_path), {"train_acc": (">=", 0.99)})
    assert s["methods"]["standard"]["reach"]["train_acc"]["epoch"]["per_seed"] == [2]


def test_table_marks_unreached(out):
    table = summary_table(summarize(load_runs(out), {"train_acc": (">=", 0.99)}))
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert "4 (3/3)" in rows["`standard`"]
    assert f">{EPOCHS} (1/2)" in rows["`nearest-etf`"]
    assert len({line.count("|") for line in table.splitlines()}) == 1  # well-formed markdown


def test_write_report_files(out):
    summary = write_report(out)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["thresholds"]["nc1"] == {"op": "<=", "value": 0.05}  # nc1_threshold from config.json
    assert on_disk["thresholds"]["train_acc"] == {"op": ">=", "value": 0.99}
    names = list(FIGURES) + ["overview.png"]
    for name in names:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000, name
    md = (out / "report.md").read_text()
    for name in names:
        assert f"]({name})" in md  # relative links, readable on GitHub
    assert "| `standard` |" in md and "| `nearest-etf` |" in md
    assert not math.isnan(on_disk["methods"]["standard"]["wall_s"]["median"])


def test_report_ignores_truncated_last_line(out):
    p = out / "runs" / "standard" / "seed-0" / "metrics.jsonl"
    p.write_text(p.read_text() + '{"epoch": 7, "train_ac')
    runs = load_runs(out)
    assert len(runs["standard"][0]) == EPOCHS + 1


def test_incomplete_log_is_left_out_and_named(out):
    """A finished run's log cut back (here without a checkpoint: judged by config.json's epochs) is not
    silently summarised from its truncated records: it is left out, and summary/report say so."""
    p = out / "runs" / "standard" / "seed-1" / "metrics.jsonl"
    p.write_text("".join(p.read_text().splitlines(keepends=True)[:3]))  # epochs 0-2 of 6
    with pytest.warns(UserWarning, match="runs/standard/seed-1 left out of the report: the log ends at epoch 2"):
        assert sorted(load_runs(out)["standard"]) == [0, 2]
    summary = write_report(out)
    assert summary["methods"]["standard"]["seeds"] == [0, 2]
    why = "the log ends at epoch 2, of 6 epochs (checkpoint.pt missing, judged from config.json)"
    assert summary["excluded"] == [{"run": "runs/standard/seed-1", "why": why}]
    assert json.loads((out / "summary.json").read_text())["excluded"] == summary["excluded"]
    md = (out / "report.md").read_text()
    assert "**Left out**: 1 run(s)" in md and f"- `runs/standard/seed-1`: {why}" in md


def test_all_runs_left_out_is_an_error(tmp_path):
    _write_runs(tmp_path, {"standard": [(3, 2, 1.0)]})
    p = tmp_path / "runs" / "standard" / "seed-0" / "metrics.jsonl"
    p.write_text(p.read_text()[:-40])
    with pytest.raises(ValueError, match="no complete run logs .* all 1 left out, e.g. runs/standard/seed-0: the log"):
        load_runs(tmp_path, [])
