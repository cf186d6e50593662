"""Misuse of compare and report found by a hostile user-test of the tuned compare, run identity, bad input and
freeze_after: one regression test per defect (each failed before its fix; the comment above it says what
went wrong). All runs are tiny (ufm, 4 classes, 2 epochs)."""

import json
import shutil

import pytest

from ncguide.experiments.cli import main

UFM = ["--dataset", "ufm", "--model", "ufm", "--set", "num_classes=4", "--set", "feature_dim=8",
       "--set", "samples_per_class=5", "--epochs", "2", "--batch-size", "10", "--device", "cpu"]


def _err(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# DEFECT (critical): freeze_after is unusable from the CLI and from run_compare. build.check_buildable calls
# head_kwargs(cfg) without steps_per_epoch, so every valid freeze_after (0, 0.5, 1, ...) is rejected with the
# internal message "freeze_after is in epochs: head_kwargs(cfg, steps_per_epoch) needs the steps per epoch".
# Repro: ncguide train <UFM> --method nearest-etf --set freeze_after=1 --out X   -> exit 2
#        ncguide compare <UFM> --methods v --variant v:method=nearest-etf,freeze_after=1 --out X -> exit 2
# (train() from Python works.)
def test_freeze_after_train_cli(tmp_path):
    argv = ["train", *UFM, "--method", "nearest-etf", "--set", "freeze_after=1", "--out", str(tmp_path / "o")]
    assert main(argv) == 0


def test_freeze_after_compare_variant(tmp_path):
    assert main(["compare", *UFM, "--methods", "nearest-etf,v", "--variant", "v:method=nearest-etf,freeze_after=1",
                 "--seeds", "1", "--out", str(tmp_path / "o")]) == 0


# DEFECT (high): compare's identity check of folders not planned by this comparison ignores method and seed, and
# the plain report labels runs by folder name. A fixed-etf run sitting in runs/standard/seed-0 is reported as
# `standard`; a seed-0 run in runs/fixed-etf/seed-5 is counted as a second seed (duplicate data, n inflated).
# Repro: ncguide compare <UFM> --methods fixed-etf --seeds 1 --out P
#        ncguide train <UFM> --method fixed-etf --seed 0 --out P/runs/standard/seed-0
#        ncguide compare <UFM> --methods fixed-etf --seeds 1 --out P   -> exit 0, report has a `standard` row
@pytest.mark.parametrize("folder, why", [("runs/standard/seed-0", "method"), ("runs/fixed-etf/seed-5", "seed")])
def test_folder_must_match_its_checkpoint(tmp_path, capsys, folder, why):
    out = tmp_path / "p"
    assert main(["compare", *UFM, "--methods", "fixed-etf", "--seeds", "1", "--out", str(out)]) == 0
    assert main(["train", *UFM, "--method", "fixed-etf", "--seed", "0", "--out", str(out / folder)]) == 0
    capsys.readouterr()
    assert main(["compare", *UFM, "--methods", "fixed-etf", "--seeds", "1", "--out", str(out)]) == 2
    err = _err(capsys)
    assert len(err) == 1 and why in err[0], err


# DEFECT (high): any variant *declared* (even one not in --methods) loosens the identity check of every
# unplanned folder for the keys it sets. An old `standard` run at lr=1.0 is then pooled into a plain report next
# to fixed-etf at lr=0.05, while config.yaml says lr 0.05 (report.md's Setup line says lr=1.0).
# Repro: ncguide compare <UFM> --methods standard --seeds 1 --lr 1.0 --out P
#        ncguide compare <UFM> --methods fixed-etf --seeds 1 --variant x:method=standard,lr=0.05 --out P -> exit 0
# (without the --variant the second command is correctly refused: "lr: 1.0 vs 0.05").
def test_unused_variant_does_not_admit_other_configs(tmp_path):
    out = tmp_path / "p"
    assert main(["compare", *UFM, "--methods", "standard", "--seeds", "1", "--lr", "1.0", "--out", str(out)]) == 0
    status = main(["compare", *UFM, "--methods", "fixed-etf", "--seeds", "1", "--variant", "x:method=standard,lr=0.05",
                   "--out", str(out)])
    assert status == 2, "a run at lr=1.0 was pooled into an lr=0.05 report"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned") / "t"
    assert main(["compare", *UFM, "--methods", "standard,nearest-etf", "--seeds", "1", "--grid", "lr=0.1,0.5",
                 "--selection-seeds", "1", "--out", str(out)]) == 0
    return out


# DEFECT (low): --report-epochs past the end of every run is accepted, by compare (--report-epochs 5 with --epochs 1)
# and by report, and gives a table column of "—" only. Repro: ncguide report T --report-epochs 5 (T ran 2 epochs)
def test_report_epochs_past_every_run_is_refused(tuned, tmp_path, capsys):
    out = tmp_path / "t"
    shutil.copytree(tuned, out)
    before = (out / "report.md").read_text()
    capsys.readouterr()
    assert main(["report", str(out), "--report-epochs", "1,5"]) == 2
    err = _err(capsys)
    assert len(err) == 1 and "--report-epochs 5" in err[0] and "(2)" in err[0], err
    assert (out / "report.md").read_text() == before  # nothing rewritten
    assert main(["report", str(out), "--report-epochs", "1,2"]) == 0


# DEFECT (medium): a malformed selection.json (valid JSON, wrong shape) crashes `ncguide report` with an
# AttributeError traceback and exit 1 instead of one line and exit 2.
# Repro: echo '[1,2]' > T/selection.json; ncguide report T   (also {"folders": 3}, {"grid": [1], ...})
@pytest.mark.parametrize("text", ['[1, 2]', '{"folders": 3}',
                                  '{"folders": {"standard": "lr=0.1"}, "report_seeds": [0], "grid": [1]}'])
def test_report_malformed_selection_one_line(tuned, tmp_path, capsys, text):
    out = tmp_path / "t"
    shutil.copytree(tuned, out)
    (out / "selection.json").write_text(text)
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    assert len(_err(capsys)) == 1


# DEFECT (medium): selection.json naming a point folder that does not exist silently drops that method from the
# report (no warning, nothing in report.md / summary.json "excluded").
# Repro: edit T/selection.json folders.standard = "lr=7"; ncguide report T -> exit 0, only nearest-etf reported
def test_report_selection_missing_folder_is_said(tuned, tmp_path, capsys):
    out = tmp_path / "t"
    shutil.copytree(tuned, out)
    sel = json.loads((out / "selection.json").read_text())
    sel["folders"]["standard"] = "lr=7"
    (out / "selection.json").write_text(json.dumps(sel))
    status = main(["report", str(out)])
    if status == 0:
        summary = json.loads((out / "summary.json").read_text())
        assert "standard" in summary["methods"] or any("standard" in x["run"] for x in summary["excluded"]) \
            or _err(capsys), "method `standard` silently vanished from the report"


# Once a DEFECT (low): after selection.json is deleted from a tuned compare, `ncguide report` said "no run logs under
# T/runs/<method>/seed-<s>/metrics.jsonl" although the logs are there. Without selection.json a tuned comparison is one
# whose tuning is under way (#20): the report is partial, its selection runs so far, and says why.
def test_report_without_selection_names_it(tuned, tmp_path, capsys):
    out = tmp_path / "t"
    shutil.copytree(tuned, out)
    (out / "selection.json").unlink()
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "partial report: the tuning is under way. `selection.json` is not written yet" in capsys.readouterr().out


# DEFECT (medium): bad input accepted with exit 0: --selection-seeds (flag or YAML) is not checked without a grid,
# and --print-config checks none of --selection-seeds, --report-epochs, variant values, seed overlap.
# Repro: ncguide compare <UFM> --methods standard --selection-seeds abc --out X   -> exit 0, trains
#        ncguide compare <UFM> --methods standard --report-epochs abc --print-config -> exit 0
@pytest.mark.parametrize("extra", [
    ["--selection-seeds", "abc", "--out", "{OUT}"],
    ["--grid", "lr=0.1,0.2", "--selection-seeds", "abc", "--print-config"],
    ["--report-epochs", "abc", "--print-config"],
    ["--methods", "v", "--variant", "v:method=standard,lr=abc", "--print-config"],
    ["--grid", "lr=0.1,0.2", "--seeds", "1000,1", "--print-config"],
])
def test_bad_compare_input_exit_2(tmp_path, capsys, extra):
    out = tmp_path / "o"
    args = ["compare", *UFM, *([] if "--methods" in extra else ["--methods", "standard"]),
            *[str(out) if a == "{OUT}" else a for a in extra]]
    assert main(args) == 2
    assert len(_err(capsys)) == 1
    assert not out.exists()


# DEFECT (medium): errors in YAML compare keys checked inside run_compare (report_epochs, selection_seeds
# overlapping seeds) do not name the config file, against "naming the key (and the file for files)".
# Repro: printf 'methods: [standard]\nreport_epochs: abc\n' > y.yaml; ncguide compare <UFM> --config y.yaml --out X
#        -> "ncguide: error: bad report_epochs ['abc']; give whole epochs like 50,200" (no file)
@pytest.mark.parametrize("yaml_text", ["methods: [standard]\nreport_epochs: abc\n",
                                       "methods: [standard]\nseeds: [0]\nselection_seeds: [0]\n"
                                       "grid: {lr: [0.1, 0.2]}\n"])
def test_yaml_compare_key_error_names_file(tmp_path, capsys, yaml_text):
    cfg = tmp_path / "y.yaml"
    cfg.write_text(yaml_text)
    capsys.readouterr()
    assert main(["compare", *UFM, "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = _err(capsys)
    assert len(err) == 1 and str(cfg) in err[0]


# DEFECT (medium): a bad value inside a variant is attributed to the wrong source: with --lr 0.3 (fine) and
# --variant v:method=standard,lr=abc the error ends "(from --lr)"; likewise a YAML variant's value
# and a variant's device=cuda ("(from --device)" when --device cpu was given).
# Repro: ncguide compare <UFM> --lr 0.3 --methods v --variant v:method=standard,lr=abc --out X
def test_variant_error_names_variant_not_flag(tmp_path, capsys):
    capsys.readouterr()
    assert main(["compare", *UFM, "--lr", "0.3", "--methods", "v", "--variant", "v:method=standard,lr=abc",
                 "--out", str(tmp_path / "o")]) == 2
    err = _err(capsys)
    assert len(err) == 1 and "from --lr" not in err[0] and "variant" in err[0]


# DEFECT (low): `--set grid=lr=0.1,0.2` (or YAML `grid: "lr=0.1,0.2"`) iterates the string's characters and says
# "bad --grid 'l'"; a string grid should be read as one KEY=V1,V2 item or rejected with a message that says so.
def test_string_grid(tmp_path, capsys):
    capsys.readouterr()
    status = main(["compare", *UFM, "--methods", "standard", "--set", "grid=lr=0.1,0.2", "--selection-seeds", "1",
                   "--seeds", "1", "--out", str(tmp_path / "o")])
    assert status == 0 or "'l'" not in _err(capsys)[0]


# DEFECT (medium): `ncguide report` on a comparison whose compare was killed (kill -9) reports the unfinished run's
# last evaluation as its *final* values, next to finished runs, with no warning and nothing in report.md or
# summary.json (excluded == []). Repro: start a long compare (epochs 30000, eval_every 1000), kill -9 it after a few
# seconds, `ncguide report OUT`: exit 0, final = epoch 2000 of 30000, unmarked. (A running run would be held by its
# lock; a dead one is not, so the report could tell the two apart.)
def test_report_marks_unfinished_run(tuned, tmp_path):
    out = tmp_path / "t"
    shutil.copytree(tuned, out)
    import torch

    from ncguide.experiments.checkpoint import CHECKPOINT
    sel = json.loads((out / "selection.json").read_text())
    run = out / "runs" / "standard" / sel["folders"]["standard"] / "seed-0"
    ckpt = torch.load(run / CHECKPOINT, weights_only=True)
    ckpt["finished"] = False  # what a compare killed mid-run leaves (its log intact up to the checkpoint)
    torch.save(ckpt, run / CHECKPOINT)
    assert main(["report", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    text = (out / "report.md").read_text()
    assert summary["excluded"] or "unfinished" in text.lower() or "still running" in text.lower()


# DEFECT (medium): a grid over a key the method ignores trains identical points and crowns a tie.
# Repro: ncguide compare <UFM> --methods standard-plain --grid temperature=1,2 --out X -> exit 0, "selected
#        temperature=1.0" (the two points are the same run); likewise delta for standard, momentum under adam.
@pytest.mark.parametrize("extra", [["--methods", "standard-plain", "--grid", "temperature=1,2"],
                                   ["--methods", "standard,nearest-etf", "--grid", "delta=0.001,0.5"],
                                   ["--methods", "standard", "--set", "optimizer=adam", "--grid", "momentum=0.5,0.9"]])
def test_grid_over_an_ignored_key_is_refused(tmp_path, capsys, extra):
    out = tmp_path / "o"
    capsys.readouterr()
    assert main(["compare", *UFM, *extra, "--selection-seeds", "1", "--seeds", "1", "--out", str(out)]) == 2
    err = _err(capsys)
    key = extra[-1].partition("=")[0]
    assert len(err) == 1 and f"grid key {key!r} does not change method" in err[0] and "--grid" in err[0], err
    assert not out.exists()


def test_grid_over_an_ignored_key_from_python_names_the_grid():
    from ncguide.experiments.compare import run_compare
    from ncguide.experiments.config import ConfigError

    base = {"dataset": "ufm", "model": "ufm", "num_classes": 4, "feature_dim": 8, "samples_per_class": 5}
    with pytest.raises(ConfigError, match="'solver' does not change method 'fixed-etf'") as info:
        run_compare(base, ["fixed-etf"], [0], "unused", grid={"solver": ["polar", "polar-gram"]}, check_only=True)
    assert info.value.key == "grid"


# DEFECT (low): a key set explicitly that the run ignores is accepted without a word (--set temperature=3 with
# standard-plain trains as if it had not been given); it should be named in a warning line.
@pytest.mark.parametrize("argv, words", [
    (["train", "--method", "standard-plain", "--set", "temperature=3"],
     ["temperature is not used with method='standard-plain'", "--set temperature=3"]),
    (["train", "--method", "standard", "--set", "optimizer=adam", "--set", "momentum=0.5"],
     ["momentum is not used with optimizer='adam'", "--set momentum=0.5"]),
    (["compare", "--methods", "standard,fixed-etf", "--set", "delta=0.5"],
     ["delta is not used with method='standard'", "every run"]),
    (["compare", "--methods", "standard,v", "--variant", "v:method=fixed-etf,solver=polar"],
     ["variant 'v'", "solver is not used with method='fixed-etf'"]),
])
def test_an_ignored_key_is_named_in_one_warning(argv, words, capsys):
    capsys.readouterr()
    assert main([*argv, *UFM, "--print-config"]) == 0
    err = _err(capsys)
    assert len(err) == 1 and err[0].startswith("ncguide: warning: "), err
    assert all(w in err[0] for w in words), err


def test_a_key_used_by_one_method_of_a_compare_is_not_warned_about(capsys):
    capsys.readouterr()
    assert main(["compare", *UFM, "--methods", "standard,standard-plain", "--set", "temperature=3",
                 "--print-config"]) == 0
    assert _err(capsys) == []


# DEFECT (low): a finished run's config.json that was damaged (or edited) is never repaired: a compare reuses the run,
# a train "resumes" it, and config.json keeps saying something else than the checkpoint the run is.
@pytest.mark.parametrize("command", ["train", "compare"])
def test_config_json_of_a_finished_run_is_restored_from_its_checkpoint(tmp_path, capsys, command):
    import torch

    out = tmp_path / "o"
    if command == "train":
        argv, run = ["train", *UFM, "--method", "standard", "--out", str(out)], out
    else:
        argv, run = ["compare", *UFM, "--methods", "standard", "--seeds", "1", "--out", str(out)], \
            out / "runs" / "standard" / "seed-0"
    assert main(argv) == 0
    saved = (run / "config.json").read_text()
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert json.loads(saved) == json.loads(json.dumps(ckpt["config"]))
    for damage in ("garbage", "edited", "deleted"):  # each time the finished run is reused, not retrained
        if damage == "garbage":
            (run / "config.json").write_text('{"epochs": 2, "lr"')
        elif damage == "edited":
            (run / "config.json").write_text(json.dumps({**json.loads(saved), "lr": 99.0}))
        else:
            (run / "config.json").unlink()
        capsys.readouterr()
        assert main(argv) == 0
        assert (run / "config.json").read_text() == saved, damage
        warned = [line for line in _err(capsys) if "config.json" in line]
        assert len(warned) == 1 and warned[0].startswith("ncguide: warning:") and "rewrote it" in warned[0], warned
        assert not list(run.glob(".config.json.*"))  # written atomically: no temporary file left
    capsys.readouterr()
    assert main(argv) == 0 and not [line for line in _err(capsys) if "config.json" in line]  # intact: untouched
