"""report.py on synthetic logs: statistics over seeds, time to threshold, tables, machines, files written, figures."""

import json
import math
import re

import numpy as np
import pytest

from ncguide.experiments import report as report_mod
from ncguide.experiments.machine import MACHINE
from ncguide.experiments.report import (
    FIGURES,
    WALL_CLOCK_CAVEAT,
    accuracy_zoom,
    load_runs,
    summarize,
    summary_table,
    write_report,
)

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
    with pytest.raises(ValueError, match="is not a comparison folder"):
        load_runs(tmp_path)


@pytest.mark.parametrize("make,says", [
    (lambda d: None, ["is not a comparison folder (no config.yaml, no runs/)",
                      "ncguide compare --config CONFIG --out"]),
    (lambda d: (d / "metrics.jsonl").write_text(""), ["is a run of `ncguide train`, not a comparison"]),
    (lambda d: (d / "config.yaml").write_text("methods: [standard]\n"),
     ["no run of the comparison in", "has logged anything yet", "--config {D}/config.yaml --out {D}"]),
    (lambda d: (d / "runs/standard/seed-0").mkdir(parents=True), ["has logged anything yet"]),
])
def test_report_on_a_folder_with_nothing_to_report_says_what_is_missing(tmp_path, capsys, make, says):
    """One line, exit 2, true advice: an empty folder is not a comparison; one that is has no run yet."""
    from ncguide.experiments.cli import main

    folder = tmp_path / "d"
    folder.mkdir()
    make(folder)
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ncguide: error: "), err
    assert "point `ncguide report` at the --out directory" not in err
    for x in says:
        assert x.replace("{D}", str(folder)) in err, err


def test_report_of_a_tuning_under_way_shows_the_selection_runs_so_far(tmp_path, capsys, no_figures):
    """Before selection.json is written (some method still tunes) the report is partial: one row per method and
    grid point over the selection seeds finished so far, marked as such; no winner, no report seeds, no verdict."""
    from ncguide.experiments.checkpoint import load_checkpoint, save_checkpoint
    from ncguide.experiments.cli import main
    from ncguide.experiments.compare import run_compare

    base = {"dataset": "ufm", "model": "ufm", "num_classes": 4, "feature_dim": 8, "samples_per_class": 5,
            "epochs": 2, "batch_size": 10, "device": "cpu"}
    out = tmp_path / "out"
    run_compare(base, ["standard", "nearest-etf"], [0], out, grid={"lr": [0.01, 0.1]}, selection_seeds=[1000, 1001],
                progress="none", log=lambda *_: None)
    (out / "selection.json").unlink()  # as while a method still tunes
    unfinished = out / "runs/nearest-etf/lr=0.1/seed-1001"
    ckpt = load_checkpoint(unfinished / "checkpoint.pt")
    save_checkpoint(unfinished / "checkpoint.pt", {**ckpt, "finished": False})  # still training
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("partial report: the tuning is under way.")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["partial"] and summary["verdict"] is None and "selected" not in summary
    assert {m: v["seeds"] for m, v in summary["methods"].items()} == {
        "standard lr=0.01": [1000, 1001], "standard lr=0.1": [1000, 1001], "nearest-etf lr=0.01": [1000, 1001],
        "nearest-etf lr=0.1": [1000]}  # the report seed 0 is not a selection run; seed 1001 is unfinished
    assert [x["run"] for x in summary["excluded"]] == ["runs/nearest-etf/lr=0.1/seed-1001"]
    md = (out / "report.md").read_text()
    assert md.startswith("# ncguide comparison\n\n**Partial: the tuning is under way.**")
    assert "`standard lr=0.01`" in md


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


# ----------------------------------------------------------------------------------------------------
# tables: one range notation, none too wide


def _tables(md: str) -> list[list[list[str]]]:
    """The markdown tables of ``md``: each a list of rows (header first, separator dropped) of cells."""
    tables, current = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


RANGE = re.compile(r"(?P<mid>[^\s\[\]]+) \[(?P<lo>[^\s\[\]–]+)–(?P<hi>[^\s\[\]–]+)\]")


@pytest.fixture
def no_figures(monkeypatch):
    monkeypatch.setattr(report_mod, "plot_figures", lambda runs, out: [])  # the tables are what these check


def test_every_table_writes_ranges_one_way(out, no_figures):
    """Every cell that gives a spread over seeds is ``median [min–max]``: no ``[a, b]``, no other bracket."""
    write_report(out)
    md = (out / "report.md").read_text()
    tables = _tables(md)
    assert len(tables) == 4  # the paper's, the summary, neural collapse, wall-clock time
    ranged = 0
    for table in tables:
        for row in table[1:]:
            for cell in row:
                if "[" in cell or "]" in cell:
                    assert RANGE.fullmatch(cell), cell
                    ranged += 1
    assert ranged == len(SPEC) * (2 + 2 + 5 + 4)  # accuracies at 2 epochs, final accuracies, NC, seconds
    assert not re.search(r"\[[^\]]*, [^\]]*\]", "\n".join(ln for ln in md.splitlines() if ln.startswith("|")))
    assert "[min, max]" not in md and md.count("median [min–max]") >= 3


def test_no_table_is_wider_than_eight_columns(out, no_figures):
    write_report(out)
    for table in _tables((out / "report.md").read_text()):
        assert len({len(row) for row in table}) == 1  # well-formed
        assert len(table[0]) <= 8, table[0]


def test_headline_nc_and_time_tables_hold_their_values(out, no_figures):
    """Each table's cells against the known oracle of the synthetic logs (SPEC)."""
    s = write_report(out)
    paper, headline, nc, time = _tables((out / "report.md").read_text())
    assert headline[0][:4] == ["method", "seeds", "train acc", "test acc"]
    assert headline[0][4:] == ["epochs to train_acc ≥ 99% (first hit)", "epochs to train_acc ≥ 99% (sustained)"]
    std = {row[0]: row for row in headline}["`standard`"]
    assert std[1:] == ["3", "99.50% [99.50%–99.50%]", "81.00% [80.00%–82.00%]", "4 (3/3)", "4 (3/3)"]
    assert nc[0][:6] == ["method", "NC1", "NC2 W", "NC2 H", "NC3", "NC4"]
    row = {r[0]: r for r in nc}["`standard`"]
    scales = [scale for _, _, scale in SPEC["standard"]]  # nc2_w = 0.1·scale, nc2_h = 0.2·scale
    w, h = [f"{np.median(scales) * f:.3g} [{min(scales) * f:.3g}–{max(scales) * f:.3g}]" for f in (0.1, 0.2)]
    assert row[2:4] == [w, h]
    assert nc[0][6:] == ["epochs to nc1 ≤ 0.05 (first hit)", "epochs to nc1 ≤ 0.05 (sustained)"]
    assert row[6] == "4 (2/3)"  # nc1 first hit at epochs 2, never, 4
    # seconds: wall_s = 2·epoch, so 2 s per epoch; the first hit of train_acc at epochs 3, 5, 4
    t = {r[0]: r for r in time}
    assert t["`standard`"][2:5] == ["12 [12–12]", "2 [2–2]", "8 [6–10]"]
    assert t["`nearest-etf`"][4] == "∞ [4–∞]"  # one of two seeds never reached it: the median is infinite
    assert s["methods"]["standard"]["seconds_per_epoch"]["median"] == pytest.approx(2.0)
    assert paper[0] == ["method", "seeds", "train acc @ epoch 3", "train acc @ epoch 6"]


# ----------------------------------------------------------------------------------------------------
# where the seconds were measured


def _machine(run_dir, *starts):
    (run_dir / MACHINE).write_text(json.dumps({"starts": list(starts)}))


def _start(host="a", threads=1, concurrent=1, torch_version="2.13.0", epoch=0):
    return {"started": "2026-01-01 00:00:00 +0000", "epoch": epoch, "hostname": host, "cpu": f"CPU of {host}",
            "logical_cores": 8, "usable_cores": 8, "torch_threads": threads, "device": "cpu", "gpu": None,
            "world_size": 1, "torch": torch_version, "ncguide": "0.1.0", "python": "3.12",
            "concurrent_runs": concurrent, "slurm_job": None}


def test_old_folders_say_machine_not_recorded(out, no_figures):
    s = write_report(out)
    assert s["machines"]["machines"] == [] and len(s["machines"]["not_recorded"]) == 5
    md = (out / "report.md").read_text()
    wall = md[md.index("## Wall-clock time"):md.index("## Figures")]
    assert "Machine: not recorded" in wall
    assert wall.index(WALL_CLOCK_CAVEAT) < wall.index("| method |")  # the caveat comes before the seconds


def test_one_machine_one_line_and_no_warning(out, no_figures):
    for folder in out.glob("runs/*/seed-*"):
        _machine(folder, _start())
    s = write_report(out)
    assert [m["runs"] for m in s["machines"]["machines"]] == [5]
    md = (out / "report.md").read_text()
    assert md.count("- Machine `a`: CPU of a (8 logical cores), no GPU; torch 2.13.0, ncguide 0.1.0; 1 torch "
                    "thread per run; 5 runs.") == 1
    assert "Mind when comparing seconds" not in md and "not recorded" not in md


def test_mixed_machines_threads_concurrency_and_moves_are_said(out, no_figures):
    runs = sorted(out.glob("runs/*/seed-*"))
    _machine(runs[0], _start("a", 1))
    _machine(runs[1], _start("a", 2, concurrent=2))
    _machine(runs[2], _start("b", 1))
    _machine(runs[3], _start("a", 1), _start("b", 1, epoch=3))  # resumed on machine b
    s = write_report(out)  # runs[4]: no machine.json
    seen = {m["hostname"]: m for m in s["machines"]["machines"]}
    assert seen["a"]["runs"] == 3 and seen["a"]["threads"] == [1, 2] and seen["a"]["concurrent_runs"] == [1, 2]
    assert seen["b"]["runs"] == 2
    rel = [r.relative_to(out).as_posix() for r in runs]
    assert s["machines"]["moved"] == [rel[3]] and s["machines"]["not_recorded"] == [rel[4]]
    md = (out / "report.md").read_text()
    assert md.count("- Machine `") == 2
    note = next(line for line in md.splitlines() if line.startswith("**Mind when comparing seconds**"))
    for said in ("2 different machines", "different torch thread counts (1, 2)", "up to 2 runs trained at once",
                 f"1 run resumed on another machine set-up than the one it started on (e.g. `{rel[3]}`)",
                 f"machine not recorded for 1 run (e.g. `{rel[4]}`"):
        assert said in note, said


def test_another_torch_version_is_another_line(out, no_figures):
    runs = sorted(out.glob("runs/*/seed-*"))
    for i, folder in enumerate(runs):
        _machine(folder, _start(torch_version="2.13.0" if i else "2.12.1"))
    assert len(write_report(out)["machines"]["machines"]) == 2


# ----------------------------------------------------------------------------------------------------
# figures


def _runs_of(curves: dict[str, list[dict]], seeds=(0, 1)) -> dict:
    """{method: {seed: records}} with the same records for every seed."""
    return {m: {s: recs for s in seeds} for m, recs in curves.items()}


def test_accuracy_zoom_against_hand_numbers():
    ep = np.arange(11.0)
    med = np.array([0.1, 0.5, 0.93, 0.94, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95])
    lo, hi = med - 0.01, np.minimum(med + 0.01, 1.0)
    other = (ep, med + 0.01, lo + 0.01, np.minimum(hi + 0.01, 1.0))
    # after the first epochs (epoch >= 1, 10% of 10): lowest median 0.5; highest value 0.97
    low, top = accuracy_zoom([(ep, med, lo, hi), other])
    pad = 0.05 * (0.97 - 0.5)
    assert (low, top) == pytest.approx((0.5 - pad, 0.97 + pad))
    low, top = accuracy_zoom([(ep, med, lo, hi)], skip_fraction=0.2)  # from epoch 2: 0.93
    pad = 0.05 * (0.96 - 0.93)
    assert (low, top) == pytest.approx((0.93 - max(pad, 0.002), 0.96 + max(pad, 0.002)))
    flat = np.ones(3)
    assert accuracy_zoom([(np.arange(3.0), flat, flat, flat)]) == pytest.approx((0.998, 1.002))


def test_accuracy_panels_zoom_to_the_data_and_keep_the_full_range():
    recs = {m: [{"epoch": e, "test_acc": 0.1 if e == 0 else 0.93 + 0.003 * e + 0.01 * i} for e in range(11)]
            for i, m in enumerate(["standard", "nearest-etf"])}
    fig = report_mod.figure(_runs_of(recs), "test_acc.png")
    full, zoom = fig.axes[:2]
    assert full.get_ylim() == pytest.approx((0.0, 1.02))
    lo, hi = zoom.get_ylim()
    assert 0.9 < lo < 0.933 and 0.97 < hi <= 1.0  # 0.933..0.97 after epoch 1
    assert "zoom" in zoom.get_title()
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_nc2_panels_show_h_and_w_each_on_its_own_scale():
    """The ETF heads' W sits at ~1e-8: on one axis it would squash the H curves (~1e-2) into a flat line."""
    recs = {"standard": [{"epoch": e, "nc2_w": 0.05 / (e + 1), "nc2_h": 0.03 / (e + 1)} for e in range(6)],
            "fixed-etf": [{"epoch": e, "nc2_w": 1e-8, "nc2_h": 0.02 / (e + 1)} for e in range(6)]}
    fig = report_mod.figure(_runs_of(recs), "nc2.png")
    h_ax, w_ax = fig.axes[:2]
    assert "features H" in h_ax.get_title() and "classifier W" in w_ax.get_title()
    h_lo, h_hi = h_ax.get_ylim()
    assert 1e-3 < h_lo <= 0.02 / 6 and h_hi >= 0.03  # H fills its panel: not drawn down to 1e-8
    w_lo, w_hi = w_ax.get_ylim()
    assert w_lo <= 1e-8 and w_hi >= 0.05
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_six_methods_each_keep_their_own_style_and_one_legend_below():
    methods = ["standard", "fixed-etf", "nearest-etf", "nearest-etf-nograd", "standard-plain", "nearest-etf-freeze"]
    recs = {m: [{"epoch": e, "train_acc": 0.5 + 0.05 * e + 0.001 * i, "train_loss": 1.0 / (e + 1 + i),
                 "nc1": 1.0 / (e + 1), "nc2_w": 0.1, "nc2_h": 0.2, "nc3": 0.3, "nc4": 0.1} for e in range(8)]
            for i, m in enumerate(methods)}
    fig = report_mod.figure(_runs_of(recs), "overview.png")
    assert all(ax.get_legend() is None for ax in fig.axes)  # no legend over the curves
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == methods
    for ax in fig.axes:
        styles = [(line.get_color(), line.get_linestyle()) for line in ax.get_lines()]
        if styles:
            assert len(styles) == 6 and len(set(styles)) == 6
    # a method keeps its style in a figure of fewer methods
    one = report_mod.figure(_runs_of({"nearest-etf": recs["nearest-etf"]}), "loss.png")
    line = one.axes[0].get_lines()[0]
    ref = next(x for x in fig.axes[2].get_lines() if x.get_label() == "nearest-etf")
    assert (line.get_color(), line.get_linestyle()) == (ref.get_color(), ref.get_linestyle())
    import matplotlib.pyplot as plt

    plt.close(fig)
    plt.close(one)


def test_the_overview_of_a_ufm_comparison_has_no_blank_panel(tmp_path):
    """The UFM has no test set (test_acc null in its logs): its test-accuracy panel says so instead of staying
    blank; every other panel has its curves."""
    for method in ("standard", "nearest-etf"):
        d = tmp_path / "runs" / method / "seed-0"
        d.mkdir(parents=True)
        d.joinpath("metrics.jsonl").write_text("".join(json.dumps({
            "epoch": e, "step": e, "wall_s": e, "train_loss": 1 / (e + 1), "train_acc": 0.5 + 0.1 * e,
            "test_loss": None, "test_acc": None, "nc1": 1 / (e + 1), "nc2_w": 0.1, "nc2_h": 0.2, "nc3": 0.3,
            "nc4": 0.1}) + "\n" for e in range(5)))
        d.joinpath("config.json").write_text(json.dumps({"method": method, "seed": 0, "dataset": "ufm", "epochs": 4}))
    fig = report_mod.figure(load_runs(tmp_path), "overview.png")
    try:
        panels = {ax.get_title(): ax for ax in fig.axes}
        assert len(panels) == 8
        for title, ax in panels.items():
            texts = [t.get_text() for t in ax.texts if t.get_visible() and t.get_text().strip()]
            assert ax.get_lines() or texts, f"panel {title!r} is blank"
        test_ax = panels["Test accuracy (zoomed)"]
        assert not test_ax.get_lines() and "no test set" in test_ax.texts[0].get_text()
        assert all(ax.get_lines() and not ax.texts for t, ax in panels.items() if not t.startswith("Test"))
        assert report_mod.figure(load_runs(tmp_path), "test_acc.png") is None  # no figure of test accuracy at all
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_setup_line_lists_only_settings_a_run_uses():
    """The report's "Setup:" line leaves out what no reported run uses (config.ignored_fields): AGD has no
    learning rate, a standard head no delta; a setting one run uses is shown with that run's value."""
    from ncguide.experiments.config import TrainConfig

    def cfg(**kw) -> dict:
        return TrainConfig.from_dict({"dataset": "digits", "model": "mlp", **kw}).to_dict()

    runs = {"m": {0: [], 1: []}}
    agd = report_mod._setup_line([cfg(method="standard", optimizer="agd", weight_decay=0, lr=0.05)], runs)
    assert "optimizer=agd" in agd and "lr=" not in agd and "delta=" not in agd and agd.endswith("seeds [0, 1].")
    sgd = report_mod._setup_line([cfg(method="standard", lr=0.05), cfg(method="nearest-etf", delta=0.3)], runs)
    assert "lr=0.05" in sgd and "delta=0.3" in sgd
    assert "lr=" not in report_mod._setup_line([cfg(lr=0.05)], runs, vary={"lr"})


@pytest.mark.parametrize("asked, missing", [
    ({"methods": ["standard", "nearest-etf"], "seeds": [0, 1]}, None),  # every asked run is here
    ({"methods": ["standard", "nearest-etf"], "seeds": [0, 1, 2]}, "`nearest-etf` seed 2"),  # a seed still out
    ({"methods": ["standard", "nearest-etf", "fixed-etf"], "seeds": [0, 1]}, "`fixed-etf` seeds 0, 1"),
])
def test_a_report_missing_runs_the_comparison_asks_for_says_partial(out, no_figures, asked, missing):
    """Report seeds still queued (e.g. Slurm jobs) or never started: the report says partial and names them,
    instead of a full-looking report of the runs that happen to be there (review finding)."""
    (out / "config.yaml").write_text(f"methods: {json.dumps(asked['methods'])}\nseeds: {json.dumps(asked['seeds'])}\n")
    summary = write_report(out)
    md = (out / "report.md").read_text()
    if missing is None:
        assert "partial" not in summary and "Partial" not in md
    else:
        assert missing in summary["partial"] and md.count("**Partial: not every run") == 1 and missing in md
