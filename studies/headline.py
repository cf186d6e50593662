"""The studies' results as text: one table of a study's compare folders, and the sections of README.md and
BENCHMARKS.md that are written from the committed summaries, so that the text agrees with the data by
construction.

    python studies/headline.py studies/results/convergence [--metric train_acc]   # one table, to stdout
    python studies/headline.py --write      # rewrite every generated block of README.md and BENCHMARKS.md
    python studies/headline.py --check      # exit 1 when a block differs from what the summaries give

A generated block lies between ``<!-- headline:begin NAME ... -->`` and ``<!-- headline:end NAME -->``; the text
outside the markers is written by hand. Every number inside comes from ``studies/results/<study>/<setting>/
summary.json`` (and ``config.yaml``), read by ``tables.read_studies``:

- a folder that is partial (its README.md says so, or runs are missing) is listed as partial, never as a
  result;
- a summary with a ``"verdict"`` (``ncguide compare`` since the sustained rule) is shown as it is: the ratio of
  median *sustained* epochs of ``nearest-etf`` to the fastest other head, its bootstrap 95% interval and
  permutation p-value (``ncguide/experiments/verdict.py``);
- an older summary (no ``"verdict"``: the *first-hit* rule, the first evaluated epoch at the threshold) gets the
  same statistics computed here from its per-seed first-hit epochs against the faster of the paper's baselines
  (``tables.first_hit_verdict``), labelled as the first-hit rule; its test accuracy has no per-seed values, so
  only the difference of medians is shown, without an interval.

Table cells are ``median [min–max]`` over seeds; ``— (r/n)`` when the median seed did not reach a threshold
(r of n seeds did).
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ncguide.experiments.verdict import verdict_lines
from tables import PAPER_BASELINES, Study, cell, first_hit_verdict, read_studies, table_head

REPO = Path(__file__).resolve().parent.parent
RESULTS = "studies/results"
FOCUS = "nearest-etf"
GOAL_RATIO, GOAL_POINTS = 0.7, 0.5  # the project's goal: <= 0.7x the epochs, test accuracy within 0.5 point


# ----------------------------------------------------------------------------------------------------
# cells


def reach_cell(reach: dict, key: str = "epoch", spec: str = "{:g}") -> str:
    """The cell of one threshold of ``summary.json``; ``— (r/n)`` when the median seed did not reach it, and
    ``never`` as the upper end when a seed did not (``max`` null)."""
    stats = reach.get(key) or {}
    if reach["reached"] * 2 <= reach["total"] or stats.get("median") is None:
        return f"— ({reach['reached']}/{reach['total']})"
    if stats["max"] is None:
        text = f"{spec.format(stats['median'])} [{spec.format(stats['min'])}–never]"
    else:
        text = cell(stats["median"], stats["min"], stats["max"], spec)
    return text if reach["reached"] == reach["total"] else f"{text} ({reach['reached']}/{reach['total']})"


def signed(x: float, spec: str = "{:+.1f}") -> str:
    """``x`` with its sign, a true minus sign for negative values (``+0.0`` for zero)."""
    text = spec.format(x)
    return text.replace("-", "−") if x < 0 and not re.fullmatch(r"-0(\.0*)?", text) else text.replace("-", "+")


def percent_cell(stats: dict | None, digits: int = 1) -> str:
    """A fraction's ``median [min–max]`` in percent (``—`` when absent)."""
    if not stats or stats.get("median") is None:
        return "—"
    spec = f"{{:.{digits}f}}"
    return cell(*(100 * stats[k] for k in ("median", "min", "max")), spec) + "%"


def _num(x: float | None) -> str:
    return "∞" if x is None or math.isinf(x) else f"{x:.2f}"


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def ratio_text(v: dict) -> str:
    """``0.94× [0.79–1.20]``, or the ratio and why there is no interval."""
    n = [len(s) for s in v["seeds"].values()]
    if v["ci95"] is None:
        return f"{_num(v['ratio'])}× (no interval: {n[0]} vs {n[1]} seeds)"
    lo, hi = v["ci95"]
    return f"{_num(v['ratio'])}× [{_num(lo)}–{_num(hi)}]"


def p_text(v: dict) -> str:
    """The permutation p-value, and when these seeds could not give p < 0.05, the smallest p they could."""
    floor = v.get("min_p_value", 0.0)
    return _p(v["p_value"]) + (f" (these seeds allow no p below {_p(floor)})" if floor > 0.05 else "")


READING = {"lower": "faster", "higher": "slower", "unresolved": "not resolved",
           "too few seeds": "too few seeds", "neither reached": "neither reached the threshold"}


def test_text(study: Study, v: dict) -> str:
    """Final test accuracy of the focus minus the verdict's baseline, in points: with its interval and p when
    the verdict has per-seed values, else the difference of the summary's medians (older summaries)."""
    acc = v.get("test_acc") or {}
    if "difference" in acc:
        if acc["ci95"] is None:
            return f"{signed(acc['difference'], '{:+.2f}')} (no interval), p = {_p(acc['p_value'])}"
        lo, hi = acc["ci95"]
        return f"{signed(acc['difference'], '{:+.2f}')} [{signed(lo, '{:+.2f}')}, {signed(hi, '{:+.2f}')}], " \
               f"p = {_p(acc['p_value'])}"
    medians = [_test_median(study.summary, m) for m in (v["method"], v["baseline"])]
    if None in medians:
        return "— (no test split)" if all(x is None for x in medians) else "—"
    return f"{signed(100 * (medians[0] - medians[1]))} (medians only)"


def _test_median(summary: dict, method: str) -> float | None:
    return (summary["methods"][method]["final"].get("test_acc") or {}).get("median")


def _threshold(summary: dict) -> str:
    return f"{100 * summary['thresholds']['train_acc']['value']:g}%"


# ----------------------------------------------------------------------------------------------------
# the studies


@dataclass(frozen=True)
class Protocol:
    """A kind of study: its title, how it chose and reported (hand-written, without numbers from the data), and
    per results folder the command that reproduces it (``SETTING``: the folder's name)."""

    key: str
    title: str
    short: str  # the title in the table of every verdict
    how: str
    roots: tuple[tuple[str, str], ...]  # (folder under studies/results, command)


PROTOCOLS = (
    Protocol("paper", "The paper's protocol", "paper's protocol",
             "every head with the paper's settings (`--config paper/<setting>`: AGD, bias-free networks, batch "
             "256, the axis-aligned fixed ETF, stratified batches for nearest-ETF only; docs/paper-protocol.md), "
             "nothing tuned, plus the arms that separate the paper's choices (`fixed-etf-random`: a random "
             "rotation of the fixed ETF; `standard-strat`, `fixed-etf-strat`: stratified batches for those heads "
             "too); sustained epochs",
             (("paper-protocol", "bash studies/paper_protocol.sh studies/results/paper-protocol SETTING"),)),
    Protocol("best", "Best against best", "best against best",
             "every head tuned on the same learning-rate grid, the winner per head by the fewest median "
             "sustained epochs on selection seeds, grids extended until every winner is interior, then report "
             "seeds at each head's winner",
             (("best-vs-best", "bash studies/best_vs_best.sh studies/results/best-vs-best SETTING"),)),
    Protocol("tuned", "Best against best, older rule (first hit)", "best against best, older",
             "every head tuned on the same learning-rate grid, the winner per head by the fewest median epochs "
             "to the *first* evaluation at the threshold on selection seeds (a rule that an unstable rate can "
             "win), then report seeds at each head's winner",
             (("tuned", "bash studies/tuned.sh studies/results/tuned SETTING"),)),
    Protocol("shared", "One shared learning rate, older rule (first hit)", "one shared rate, older",
             "every head at the config's own learning rate (not tuned per head), epochs to the first "
             "evaluation at the threshold",
             (("convergence", "bash studies/convergence.sh studies/results/convergence"),
              ("sensitivity", "bash studies/sensitivity.sh studies/results/sensitivity"))),
)


PAPER, BEST, TUNED, SHARED = PROTOCOLS


@dataclass
class Setting:
    """A study's compare folder with its protocol, command and verdict (None: partial, or no verdict)."""

    protocol: Protocol
    study: Study
    command: str
    verdict: dict | None

    @property
    def rule(self) -> str:
        return "sustained" if "verdict" in self.study.summary else "first hit"


def load_settings(repo: Path, protocol: Protocol) -> list[Setting]:
    """The compare folders of ``protocol`` committed under ``repo/studies/results``."""
    return [s for root, command in protocol.roots for s in settings_in(repo / RESULTS / root, protocol, command)]


def settings_in(root: Path, protocol: Protocol, command: str) -> list[Setting]:
    """The compare folders under ``root``, each with its verdict: the summary's own (``"verdict"``), or computed
    from its first-hit epochs (older summaries), or None (partial folders; no focus method)."""
    out = []
    for study in read_studies(root):
        if study.partial:
            verdict = None
        elif "verdict" in study.summary:
            verdict = study.summary["verdict"]
        else:
            verdict = first_hit_verdict(study.summary)
        out.append(Setting(protocol, study, command.replace("SETTING", study.name), verdict))
    return out


def describe(study: Study) -> str:
    """What a compare folder ran, from its ``config.yaml``."""
    c = study.config
    if not c:
        return f"`{study.name}`"
    dataset = str(c.get("dataset", "?"))
    names = {"ufm": "UFM", "mnist1d": "MNIST-1D", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10",
             "cifar100": "CIFAR-100", "stl10": "STL-10", "imagenet": "ImageNet", "digits": "digits"}
    npz = f"arrays `{Path(dataset.removeprefix('npz:')).name}`" if dataset.startswith("npz:") else dataset
    parts = [names.get(dataset, npz)]
    if dataset == "ufm":
        parts[0] += f" K = {c.get('num_classes')}, d = {c.get('feature_dim')}, {c.get('samples_per_class')} per class"
    elif c.get("train_per_class"):
        parts[0] += f" ({c['train_per_class']} per class)"
    else:
        parts[0] += f", {c.get('model')}"
    if c.get("stratified") is True:
        parts.append("stratified batches")
    optimizer = str(c.get("optimizer", "?")).replace("agd", "AGD").replace("sgd", "SGD").replace("adam", "Adam")
    parts.append(optimizer if "lr" in (c.get("grid") or {}) or c.get("optimizer") == "agd"
                 else f"{optimizer} lr {c.get('lr'):g}")
    parts.append(f"{c.get('epochs')} epochs")
    threshold = study.summary["thresholds"].get("train_acc", {}).get("value")
    if threshold is not None and threshold != 0.99:
        parts.append(f"threshold {100 * threshold:g}%")
    return f"`{study.name}`: " + ", ".join(parts)


def settings_line(settings: Sequence[Setting]) -> str:
    """The settings of a table (from their ``config.yaml``) and the commands that reproduce them."""
    complete = [s for s in settings if not s.study.partial]
    used = {s.study.path.parent.name for s in complete}
    commands = [f"`{c}`" + (" (SETTING: a setting's name)" if "SETTING" in c else "")
                for root, c in complete[0].protocol.roots if root in used] if complete else []
    return f"Settings: {'; '.join(describe(s.study) for s in complete)}. Reproduce: {', '.join(commands)}."


def partial_lines(settings: Sequence[Setting]) -> list[str]:
    """One line per partial folder: where it is and why it is not a result."""
    return [f"- Partial, not a result: `{RESULTS}/{s.study.path.parent.name}/{s.study.name}/` ({s.study.partial})."
            for s in settings if s.study.partial]


# ----------------------------------------------------------------------------------------------------
# what the verdicts say


READING = {"lower": "faster (interval below 1)", "higher": "slower (interval above 1)",
           "unresolved": "not resolved (interval includes 1)", "too few seeds": "too few seeds for an interval",
           "neither reached": "neither reached the threshold"}
SAY = {"lower": "faster", "higher": "slower", "unresolved": "no difference resolved",
       "too few seeds": "too few seeds for an interval", "neither reached": "neither head reached the threshold"}
ACC_SAY = {"lower": "lower", "higher": "higher", "unresolved": "no difference resolved"}


def _test_points(setting: Setting) -> float | None:
    """The focus's final test accuracy minus the verdict baseline's, in points (None: no test split)."""
    v = setting.verdict
    acc = v.get("test_acc") or {}
    if "difference" in acc:
        return acc["difference"]
    medians = [_test_median(setting.study.summary, m) for m in (v["method"], v["baseline"])]
    return None if None in medians else 100 * (medians[0] - medians[1])


def meets_goal(setting: Setting) -> bool:
    """≤ ``GOAL_RATIO`` times the epochs of the fastest other head, final test accuracy at most ``GOAL_POINTS``
    below its (where there is a test split)."""
    v, points = setting.verdict, _test_points(setting)
    return v["ratio"] is not None and v["ratio"] <= GOAL_RATIO and (points is None or points >= -GOAL_POINTS)


def _item(s: Setting) -> str:
    return f"`{s.study.name}` ({ratio_text(s.verdict)}, p = {p_text(s.verdict)})"


def say_protocol(protocol: Protocol, settings: Sequence[Setting]) -> list[str]:
    """The protocol's verdicts in words, grouped by what their intervals say; negative results as plainly as
    positive ones. Empty when no folder of it has a verdict."""
    rows = [s for s in settings if s.verdict]
    if not rows:
        return []
    first = any(s.rule == "first hit" for s in rows)
    rule = ("first-hit epochs; interval and p computed from each seed's first-hit epochs, against the faster of "
            + " and ".join(f"`{b}`" for b in PAPER_BASELINES)) if first else \
        "sustained epochs, against the fastest other head"
    groups = []
    for reading, word in SAY.items():
        items = [_item(s) for s in rows if s.verdict["reading"] == reading]
        if items or reading in ("lower", "higher"):
            groups.append(f"{word} on {', '.join(items) if items else 'no setting'}")
    goal = sum(meets_goal(s) for s in rows)
    text = (f"- **{protocol.title}** (`{FOCUS}`, {rule}): {'; '.join(groups)}. The goal we set (≤ {GOAL_RATIO}× the "
            f"epochs, final test accuracy within {GOAL_POINTS} point) is met on {goal} of {len(rows)} "
            f"setting{'s' if len(rows) > 1 else ''}.")
    with_interval = [s for s in rows if "difference" in (s.verdict.get("test_acc") or {})]
    medians_only = [s for s in rows if s not in with_interval and _test_points(s) is not None]
    if with_interval:
        parts = []
        for reading, word in ACC_SAY.items():
            items = [f"`{s.study.name}` ({test_text(s.study, s.verdict)})" for s in with_interval
                     if s.verdict["test_acc"].get("reading") == reading]
            if items:
                parts.append(f"{word} on {', '.join(items)}")
        others = [s for s in with_interval if s.verdict["test_acc"].get("reading") not in ACC_SAY]
        if others:
            parts.append("no interval on " + ", ".join(f"`{s.study.name}` ({test_text(s.study, s.verdict)})"
                                                       for s in others))
        text += f" Final test accuracy: {'; '.join(parts)}."
    if medians_only:
        text += (" Final test accuracy, difference of medians (these summaries hold no per-seed values, so no "
                 "interval): " + ", ".join(f"`{s.study.name}` {signed(_test_points(s))} points" for s in medians_only)
                 + ".")
    return [text, *variant_lines(rows), *per_rate_lines(rows)]


def _variants_of_focus(study: Study) -> dict[str, str]:
    """``{name: how it differs}`` for the compared variants of ``FOCUS`` (its ``config.yaml``'s ``variants:``)."""
    out = {}
    for name, spec in (study.config.get("variants") or {}).items():
        compared = name in study.summary["methods"]
        if name != FOCUS and isinstance(spec, dict) and spec.get("method") == FOCUS and compared:
            out[name] = ", ".join(f"{k}: {v}" for k, v in spec.items() if k != "method")
    return out


def variant_lines(rows: Sequence[Setting]) -> list[str]:
    """The variants of the focus method (e.g. ``freeze_after``) on the older first-hit studies: their speed against
    the faster baseline and their final test accuracy against the best baseline's."""
    found: dict[str, list[tuple[Setting, str]]] = {}
    for s in rows:
        if s.rule == "first hit":
            for name, how in _variants_of_focus(s.study).items():
                found.setdefault(name, []).append((s, how))
    lines = []
    for name, items in found.items():
        speed, tests = [], []
        for s, _ in items:
            v = first_hit_verdict(s.study.summary, focus=name)
            if v is not None:
                speed.append(f"`{s.study.name}` {ratio_text(v)}, p = {p_text(v)}")
            summary = s.study.summary
            best = [x for x in (_test_median(summary, b) for b in PAPER_BASELINES if b in summary["methods"])
                    if x is not None]
            mine = _test_median(summary, name)
            if best and mine is not None:
                tests.append(f"`{s.study.name}` {signed(100 * (mine - max(best)))}")
        lines.append(f"- `{name}` (`{FOCUS}` with {items[0][1]}; first hit, against the faster baseline): "
                     f"{'; '.join(speed)}." + (" Final test accuracy against the best baseline's, difference of "
                                               f"medians in points: {', '.join(tests)}." if tests else ""))
    return lines


def _point_epochs(rows: list[dict], point: str) -> float:
    """The median epochs of a grid point's tuning row by the selection rule (``value``; ``epochs`` in older
    summaries), ``inf`` when the median seed never got there or the point is missing."""
    row = next((r for r in rows if r["point"] == point), {})
    e = row.get("value", row.get("epochs"))
    return math.inf if e is None else e


def per_rate_lines(rows: Sequence[Setting]) -> list[str]:
    """Where the focus beats both baselines at one grid point (median over the selection seeds)."""
    tuned = [s for s in rows if s.study.summary.get("tuning", {}).get(FOCUS)
             and s.study.summary.get("selection_metric", "first") in ("first", "sustained")]
    if not tuned:
        return []
    parts = []
    for s in tuned:
        tuning = s.study.summary["tuning"]
        wins = []
        for r in tuning[FOCUS]:
            mine = _point_epochs(tuning[FOCUS], r["point"])
            others = [_point_epochs(tuning[b], r["point"]) for b in PAPER_BASELINES if b in tuning]
            if others and mine < min(others):
                wins.append(f"{r['point'].replace('=', ' ')} ({mine:g} vs {min(others):g})")
        parts.append(f"`{s.study.name}` " + (", ".join(wins) if wins else "at no grid point"))
    rules = {"first hit" if s.study.summary.get("selection_metric", "first") == "first" else "sustained"
             for s in tuned}
    return [f"- Per grid point (median over the selection seeds, {' and '.join(sorted(rules))}), "
            f"`{FOCUS}` needs fewer epochs than both baselines at: {'; '.join(parts)}."]


def verdict_table(settings: Sequence[Setting]) -> list[str]:
    """One row per setting with a verdict, every protocol."""
    lines = [table_head(["study", "setting (threshold)", "rule", "seeds", "against", "epochs: ratio [95% interval]",
                         "p", "reading", "final test acc, points"], "lllrllrll")]
    for s in settings:
        v = s.verdict
        if v is None:
            continue
        n = [len(x) for x in v["seeds"].values()]
        lines.append(f"| {s.protocol.short} | `{s.study.name}` ({_threshold(s.study.summary)}) | {s.rule} | "
                     f"{n[0]} vs {n[1]} | `{v['baseline']}` | {ratio_text(v)} | {p_text(v)} | "
                     f"{READING[v['reading']]} | {test_text(s.study, v)} |")
    return lines


# ----------------------------------------------------------------------------------------------------
# tables per protocol


def _selected(study: Study, method: str) -> str:
    """The selected grid point of a tuned compare, and whether it lies at the grid's edge (``summary.json``'s
    ``edge``; for older summaries without it, the selected value against the grid of ``config.yaml``)."""
    summary = study.summary
    point = (summary.get("selected") or {}).get(method)
    if not point:
        return "—"
    text = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in point.items())
    if "edge" in summary:
        at_edge = any(((summary["edge"] or {}).get(method) or {}).values())
    else:
        grid = study.config.get("grid") or {}
        at_edge = any(k in grid and len(grid[k]) > 1 and v in (min(grid[k]), max(grid[k])) for k, v in point.items())
    return text + (" (at the grid's edge)" if at_edge else "")


def _epochs_cells(m: dict) -> str:
    """``sustained | first hit`` epochs to the training-accuracy threshold."""
    return f"{reach_cell(m['sustained']['train_acc'])} | {reach_cell(m['reach']['train_acc'])}"


def paper_table(settings: Sequence[Setting], nc1: bool = False) -> list[str]:
    """The paper's table: training accuracy at the report epochs, and epochs to the threshold (one table per set
    of report epochs)."""
    complete = [s for s in settings if not s.study.partial]
    lines: list[str] = []
    for epochs in dict.fromkeys(tuple(s.study.summary["report_epochs"]) for s in complete):
        if lines:
            lines.append("")
        columns = ["setting (threshold)", "method", "seeds", *(f"train acc @ {e}" for e in epochs),
                   "epochs to threshold: sustained", "first hit", *(["epochs to NC1 threshold"] if nc1 else [])]
        lines.append(table_head(columns, "llr" + "r" * len(epochs) + "ll" + ("l" if nc1 else "")))
        for s in (s for s in complete if tuple(s.study.summary["report_epochs"]) == epochs):
            for method, m in s.study.summary["methods"].items():
                accs = " | ".join(percent_cell(m["at_epoch"][str(e)]["train_acc"], 2) for e in epochs)
                extra = f" | {reach_cell(m['sustained']['nc1'])}" if nc1 and "nc1" in m["sustained"] else \
                    " | —" if nc1 else ""
                lines.append(f"| `{s.study.name}` ({_threshold(s.study.summary)}) | `{method}` | {len(m['seeds'])} | "
                             f"{accs} | {_epochs_cells(m)}{extra} |")
    return lines


def best_table(settings: Sequence[Setting]) -> list[str]:
    """Best against best: per setting and head, the selected point, sustained and first-hit epochs, test
    accuracy."""
    lines = [table_head(["setting (threshold)", "method", "selected", "seeds", "epochs to threshold: sustained",
                         "first hit", "final test acc"], "lllrllr")]
    for s in (s for s in settings if not s.study.partial):
        for method, m in s.study.summary["methods"].items():
            lines.append(f"| `{s.study.name}` ({_threshold(s.study.summary)}) | `{method}` | "
                         f"{_selected(s.study, method)} | {len(m['seeds'])} | {_epochs_cells(m)} | "
                         f"{percent_cell(m['final'].get('test_acc'))} |")
    return lines


def wide_table(settings: Sequence[Setting]) -> list[str]:
    """One row per setting, one column per head: first-hit epochs to the threshold, final test accuracy."""
    complete = [s for s in settings if not s.study.partial]
    methods = list(dict.fromkeys(m for s in complete for m in s.study.summary["methods"]))
    lines = [table_head(["setting (threshold)", *(f"`{m}`" for m in methods)], "l" + "l" * len(methods))]
    for s in complete:
        cells = []
        for method in methods:
            m = s.study.summary["methods"].get(method)
            if m is None:
                cells.append("—")
                continue
            test = (m["final"].get("test_acc") or {}).get("median")
            cells.append(reach_cell(m["reach"]["train_acc"]) + ("" if test is None else f", {100 * test:.1f}%"))
        lines.append(f"| `{s.study.name}` ({_threshold(s.study.summary)}) | " + " | ".join(cells) + " |")
    return lines


def verdict_bullets(settings: Sequence[Setting]) -> list[str]:
    """The first two lines of each setting's verdict as ``ncguide compare`` words them (speed, test accuracy)."""
    return [f"- `{s.study.name}`: " + " ".join(verdict_lines(s.verdict, s.study.summary.get("edge"))[:2])
            for s in settings if s.verdict is not None and s.rule == "sustained"]


# ----------------------------------------------------------------------------------------------------
# the generated blocks


def _section(protocol: Protocol, settings: Sequence[Setting], table: Callable, extra: Sequence[str] = ()
             ) -> list[str]:
    """A protocol's heading, how it ran, its table, settings and commands, ``extra`` lines, its partial folders."""
    if not settings:
        return []
    out = [f"### {protocol.title}", "", protocol.how[0].upper() + protocol.how[1:] + "."]
    if any(not s.study.partial for s in settings):
        out += ["", *table(settings), "", settings_line(settings)]
    if extra:
        out += ["", *extra]
    if partial_lines(settings):
        out += ["", *partial_lines(settings)]
    return out + [""]


def readme_results(repo: Path) -> str:
    """README.md's results: what the verdicts say, every verdict in one table, then a table per protocol."""
    loaded = [(p, load_settings(repo, p)) for p in PROTOCOLS]
    out = ["**What the committed studies say** (generated from their summaries; every number below is in "
           "`studies/results/`):", ""]
    for p, settings in loaded:
        out += say_protocol(p, settings)
    out += ["", "Every verdict: `nearest-etf` against the fastest other head (first-hit rule: the faster of "
            f"{' and '.join(f'`{b}`' for b in PAPER_BASELINES)}), the ratio of median epochs to the training-accuracy "
            "threshold with its bootstrap 95% interval over seeds and a two-sided permutation p-value (on ranks), "
            "and the difference of final test accuracy:", "", *verdict_table([s for _, x in loaded for s in x])]
    out.append("")
    tables = {"paper": paper_table, "best": best_table, "tuned": wide_table, "shared": wide_table}
    for p, settings in loaded:
        out += _section(p, settings, tables[p.key])
    return "\n".join(out).rstrip("\n") + "\n"


def rows(root: Path, metric: str) -> list[str]:
    """One row per compare folder under ``root`` and method: epochs and training seconds to the threshold of
    ``metric`` (first hit), epochs to the NC1 threshold, final test accuracy."""
    out = []
    for study in read_studies(root):
        for method, s in study.summary["methods"].items():
            reach = s["reach"].get(metric)
            nc1 = s["reach"].get("nc1")
            test = s["final"].get("test_acc", {}).get("median")
            out.append(
                f"| {study.name} | `{method}` | {len(s['seeds'])} | "
                f"{reach_cell(reach) if reach else '—'} | {reach_cell(reach, 'wall_s', '{:.2g}') if reach else '—'} | "
                f"{reach_cell(nc1) if nc1 else '—'} | {'—' if test is None else f'{100 * test:.1f}%'} |"
            )
    return out


ROWS_HEAD = ["setting", "method", "seeds", "epochs to train_acc threshold", "training s to it",
             "epochs to NC1 threshold", "final test acc"]


def rows_table(root: Path) -> str:
    return "\n".join([table_head(ROWS_HEAD, "llrlllr"), *rows(root, "train_acc")]) + "\n"


def tuned_table(settings: Sequence[Setting]) -> str:
    """BENCHMARKS §5: per tuned setting and head, the selected rate, first-hit epochs, the ratio to the fastest
    baseline with its interval and p, NC1 epochs, final test accuracy and its difference to the best
    baseline's."""
    lines = [table_head(["setting (threshold)", "method", "selected", "epochs to threshold", "× fastest baseline "
                         "[95% interval], p", "epochs to NC1 threshold", "final test acc", "Δ test (points)"],
                        "llrlllrr")]
    for s in settings:
        if s.study.partial:
            continue
        summary = s.study.summary
        fastest = s.verdict["baseline"] if s.verdict else None
        best = [x for x in (_test_median(summary, b) for b in PAPER_BASELINES if b in summary["methods"])
                if x is not None]
        for i, (method, m) in enumerate(summary["methods"].items()):
            v = None if method == fastest else first_hit_verdict(summary, method, [fastest] if fastest else [])
            speed = "—" if v is None else f"{ratio_text(v)}, p = {p_text(v)}"
            test = _test_median(summary, method)
            diff = "—" if test is None or not best else signed(100 * (test - max(best)))
            lines.append(f"| {f'`{s.study.name}` ({_threshold(summary)})' if i == 0 else ''} | `{method}` | "
                         f"{_selected(s.study, method)} | {reach_cell(m['reach']['train_acc'])} | {speed} | "
                         f"{reach_cell(m['reach']['nc1'])} | {percent_cell(m['final'].get('test_acc'))} | {diff} |")
    return "\n".join(lines) + "\n"


def tuned_grid(settings: Sequence[Setting]) -> str:
    """BENCHMARKS §5: every grid point of the tuned study, median first-hit epochs over the selection seeds."""
    settings = [s for s in settings if not s.study.partial and s.study.summary.get("tuning")]
    methods = list(dict.fromkeys(m for s in settings for m in s.study.summary["tuning"]))
    lines = [table_head(["setting", "grid point", *(f"`{m}`" for m in methods)], "ll" + "r" * len(methods))]
    for s in settings:
        tuning = s.study.summary["tuning"]
        points = list(dict.fromkeys(r["point"] for rows_ in tuning.values() for r in rows_))
        for i, point in enumerate(points):
            cells = []
            for m in methods:
                e = _point_epochs(tuning.get(m, []), point)
                cells.append("—" if math.isinf(e) else f"{e:g}")
            lines.append(f"| {f'`{s.study.name}`' if i == 0 else ''} | {point.replace('=', ' ')} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def freeze_choice(repo: Path) -> str:
    """BENCHMARKS §5: ``freeze_after`` probed on the selection seeds, at the rate each probe ran at."""
    studies = [s for s in read_studies(repo / RESULTS / "tuned" / "freeze-choice") if not s.partial]
    if not studies:
        return ""
    methods = list(dict.fromkeys(m for s in studies for m in s.summary["methods"]))
    lines = [table_head(["setting", "lr probed", f"`{FOCUS}`'s selected lr in the tuned study",
                         *(f"`{m}`" for m in methods)], "lrr" + "r" * len(methods))]
    sums = dict.fromkeys(methods, 0.0)
    moved = []
    for s in studies:
        tuned = repo / RESULTS / "tuned" / s.name / "summary.json"
        selected = json.loads(tuned.read_text()).get("selected", {}).get(FOCUS, {}).get("lr") if tuned.is_file() \
            else None
        cells = []
        for method in methods:
            m = s.summary["methods"].get(method)
            e = m["reach"]["train_acc"]["epoch"]["median"] if m else None
            test = _test_median(s.summary, method) if m else None
            sums[method] += math.inf if e is None else e
            cells.append("—" if e is None else f"{e:g}" + ("" if test is None else f" ({100 * test:.1f}%)"))
        lr = s.config.get("lr")
        if selected is not None and lr != selected:
            moved.append(f"`{s.name}` (probed at lr {lr:g}, selected {selected:g})")
        lines.append(f"| `{s.name}` | {lr:g} | {'—' if selected is None else f'{selected:g}'} | "
                     + " | ".join(cells) + " |")
    seeds = sorted({x for s in studies for m in s.summary["methods"].values() for x in m["seeds"]})
    lines += ["", f"Median epochs to the threshold, first hit, over seeds {', '.join(map(str, seeds))} (final test "
              "accuracy in brackets). Summed over the probed settings: "
              + ", ".join(f"`{m}` {x:g}" for m, x in sums.items()) + "."]
    if moved:
        lines.append("Probed at the rate the tuned study had selected when the probe ran; since then the selection "
                     "has moved for " + ", ".join(moved) + ", so there the probe is not at the selected rate.")
    return "\n".join(lines) + "\n"


def tuned_say(settings: Sequence[Setting]) -> str:
    return "\n".join(say_protocol(TUNED, settings)) + "\n"


def _delta_range(d: Sequence[float]) -> str:
    """``lo to hi`` of per-seed differences (``0`` when all are zero)."""
    fmt = [signed(x, "{:+g}") if x else "0" for x in (min(d), max(d))] if d else ["—", "—"]
    return "0" if d and not any(d) else f"{fmt[0]} to {fmt[1]}"


def warm_parity(repo: Path) -> str:
    """BENCHMARKS §1: ``nearest-etf`` with the exact solver against ``solver=warm``, first-hit epochs to the
    training-accuracy and NC1 thresholds, per setting and per seed."""
    root = repo / RESULTS / "warm-parity"
    lines = [table_head(["setting (threshold)", "exact", "warm", "warm − exact per seed", "final test acc, exact / "
                         "warm"], "lllll")]
    names = {"train_acc": "the training-accuracy threshold", "nc1": "the NC1 threshold"}
    widest = dict.fromkeys(names, 0.0)
    unequal: dict[str, list[str]] = {k: [] for k in names}
    count = 0
    for setting in ("ufm-k10", "ufm-k100", "mnist1d", "fashion-mnist"):
        paths = [root / setting / v / "summary.json" for v in ("exact", "warm")]
        if not all(p.is_file() for p in paths):
            continue
        count += 1
        summaries = [json.loads(p.read_text()) for p in paths]
        a, b = (s["methods"][FOCUS] for s in summaries)
        deltas = {}
        for key in names:
            ea = dict(zip(a["seeds"], a["reach"][key]["epoch"]["per_seed"]))
            eb = dict(zip(b["seeds"], b["reach"][key]["epoch"]["per_seed"]))
            deltas[key] = [eb[x] - ea[x] for x in ea if x in eb and ea[x] is not None and eb[x] is not None]
            widest[key] = max([widest[key], *map(abs, deltas[key])])
            ma, mb = a["reach"][key]["epoch"]["median"], b["reach"][key]["epoch"]["median"]
            if ma != mb:
                unequal[key].append(f"{setting}: {ma:g} exact, {mb:g} warm")
        per_seed = "identical on every seed" if not any(deltas["train_acc"] + deltas["nc1"]) else \
            " / ".join(_delta_range(d) for d in deltas.values())
        lines.append(f"| {setting} ({_threshold(summaries[0])}) | {reach_cell(a['reach']['train_acc'])} / "
                     f"{reach_cell(a['reach']['nc1'])} | {reach_cell(b['reach']['train_acc'])} / "
                     f"{reach_cell(b['reach']['nc1'])} | {per_seed} | {percent_cell(a['final'].get('test_acc'))} / "
                     f"{percent_cell(b['final'].get('test_acc'))} |")
    medians = [f"to {names[k]} in {count - len(u)} of {count} settings" + (f" ({'; '.join(u)})" if u else "")
               for k, u in unequal.items()]
    lines += ["", "Cells: epochs to the training-accuracy / NC1 threshold (first hit). Median epochs are equal "
              + " and ".join(medians) + "; per seed, warm and exact differ by up to "
              + " and ".join(f"{widest[k]:g} epoch{'' if widest[k] == 1 else 's'} to {names[k]}" for k in names) + "."]
    return "\n".join(lines) + "\n"


def protocols_section(repo: Path) -> str:
    """BENCHMARKS §6: the studies under the sustained rule, with their arms, NC1 epochs and verdicts."""
    out = []
    for p, table in ((PAPER, lambda s: paper_table(s, nc1=True)), (BEST, best_table)):
        settings = load_settings(repo, p)
        bullets = verdict_bullets(settings)
        out += _section(p, settings, table, ["Verdicts, as the reports word them:", "", *bullets] if bullets else [])
    return "\n".join(out).rstrip("\n") + "\n"


BLOCKS: dict[str, dict[str, Callable[[Path], str]]] = {
    "README.md": {"results": readme_results},
    "BENCHMARKS.md": {
        "warm-parity": warm_parity,
        "convergence": lambda repo: rows_table(repo / RESULTS / "convergence"),
        "sensitivity": lambda repo: rows_table(repo / RESULTS / "sensitivity"),
        "tuned": lambda repo: tuned_table(load_settings(repo, TUNED)),
        "tuned-grid": lambda repo: tuned_grid(load_settings(repo, TUNED)),
        "freeze-choice": freeze_choice,
        "tuned-say": lambda repo: tuned_say(load_settings(repo, TUNED)),
        "protocols": protocols_section,
    },
}


# ----------------------------------------------------------------------------------------------------
# writing and checking


class BlockError(ValueError):
    """A file's generated-block markers are missing, repeated or unknown."""


BEGIN = ("<!-- headline:begin {name} (generated by `python studies/headline.py --write` from studies/results; "
         "edit that script, not this block) -->")
END = "<!-- headline:end {name} -->"


def replace_blocks(text: str, blocks: dict[str, str], where: str) -> str:
    """``text`` with each named block's body replaced; every block must appear exactly once, and no other."""
    found = re.findall(r"<!-- headline:begin (\S+)", text)
    unknown = sorted(set(found) - set(blocks))
    if unknown:
        raise BlockError(f"{where} has generated blocks this script does not write: {', '.join(unknown)}")
    for name, body in blocks.items():
        pattern = re.compile(rf"<!-- headline:begin {re.escape(name)}[ >].*?-->\n.*?<!-- headline:end "
                             rf"{re.escape(name)} -->", re.DOTALL)
        if len(pattern.findall(text)) != 1:
            raise BlockError(f"{where} needs exactly one block {name!r}: a line {BEGIN.format(name=name)!r} "
                             f"and, after it, {END.format(name=name)!r}")
        new = BEGIN.format(name=name) + "\n" + (body.rstrip("\n") + "\n" if body.strip() else "") + \
            END.format(name=name)
        text = pattern.sub(lambda _, new=new: new, text)
    return text


def generate(repo: Path = REPO) -> dict[str, tuple[str, str]]:
    """``{file: (its text now, its text with every block regenerated)}``."""
    out = {}
    for name, blocks in BLOCKS.items():
        old = (repo / name).read_text()
        out[name] = (old, replace_blocks(old, {b: f(repo) for b, f in blocks.items()}, name))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, nargs="?", help="print the table of this study's compare folders")
    parser.add_argument("--metric", default="train_acc")
    parser.add_argument("--write", action="store_true", help="rewrite the generated blocks of README.md and "
                        "BENCHMARKS.md from the committed summaries")
    parser.add_argument("--check", action="store_true", help="exit 1 when a generated block differs from what the "
                        "committed summaries give")
    parser.add_argument("--repo", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.root is None and not (args.write or args.check):
        parser.error("give ROOT (a table to stdout), --write or --check")
    if args.root is not None:
        print(table_head([*ROWS_HEAD[:3], f"epochs to {args.metric} threshold", *ROWS_HEAD[4:]], "llrlllr"))
        print("\n".join(rows(args.root, args.metric)))
        return
    try:
        files = generate(args.repo)
    except (BlockError, OSError) as e:
        print(f"headline.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    stale = [name for name, (old, new) in files.items() if old != new]
    if args.write:
        from ncguide.experiments.files import atomic_write_text

        for name in stale:
            atomic_write_text(args.repo / name, files[name][1])
        print(f"rewrote {', '.join(stale)}" if stale else "README.md and BENCHMARKS.md already agree with the "
              "summaries")
        return
    for name in stale:
        old, new = files[name]
        sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"{name} (committed)",
                                                   f"{name} (from the summaries)"))
    if stale:
        print(f"headline.py: {', '.join(stale)} differ from the committed summaries; run python studies/headline.py "
              "--write", file=sys.stderr)
        sys.exit(1)
    print("README.md and BENCHMARKS.md agree with the committed summaries")


if __name__ == "__main__":
    main()
