"""Every way a user can give ncguide bad input: exit status 2, one line ``ncguide: error: ...`` naming the
offending key or flag (and the file, for files), and nothing written: no output folder, no run files.

Every case must fail up front, before any training or data loading (a case that trains first is a bug)."""

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ncguide.experiments import checkpoint
from ncguide.experiments.cli import main

T = ["train", "--out", "{OUT}"]
C = ["compare", "--out", "{OUT}"]
TINY = ["--dataset", "digits", "--model", "mlp", "--set", "model_kwargs.widths=[32]", "--set", "device=cpu"]


def _npz(path: Path, **change) -> None:
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.normal(size=(20, 6)).astype(np.float32), "y_train": np.arange(20) % 4,
              "x_test": rng.normal(size=(8, 6)).astype(np.float32), "y_test": np.arange(8) % 4}
    arrays.update(change)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


def _make_files(d: Path) -> None:
    """The bad (and good) input files the cases refer to as {D}/name."""
    text = {
        "syntax.yaml": "epochs: [1, 2\nlr: 0.1\n",
        "list.yaml": "- a\n- b\n",
        "key.yaml": "epoch: 3\n",
        "value.yaml": "epochs: abc\n",
        "range.yaml": "lr: -1\n",
        "kwargs.yaml": "model_kwargs: {widths: abc}\n",
        "nonstr.yaml": "1: 2\n",
        "methods.yaml": "methods: [standard, nope]\n",
        "seeds.yaml": "seeds: -2\n",
        "method.yaml": "method: standard\n",
        "bad.json": '{"epochs": 3,}',
        "list.json": "[1, 2]",
        "afile": "",
        "garbage.npz": "not a zip file",
        # integers are never truncated: a number that is not an integer is refused for an integer field
        "float-epochs.yaml": "epochs: 2.7e0\n",
        "float-batch.yaml": "batch_size: 3.0\n",
        "float-milestones.yaml": "step_milestones: [1.5]\n",
        "hex.yaml": "epochs: 0x10\n",
        "bool-int.yaml": "nesterov: 1\n",
        "text-method.yaml": "method: 5\n",
        # integers beyond what torch holds
        "huge-seed.yaml": "seed: 99999999999999999999\n",
        "huge-epochs.yaml": "epochs: 99999999999999999999\n",
        # a key given twice
        "dup.yaml": "lr: 0.1\nepochs: 2\nlr: 0.2\n",
        "dup-nested.yaml": "model_kwargs: {widths: [8], widths: [16]}\n",
        "dup-grid.yaml": "methods: [standard]\ngrid:\n  lr: [0.1, 0.2]\n  lr: [0.3]\n",
        "dup-variant.yaml": "methods: [v]\nvariants:\n  v: {method: standard}\n  v: {method: fixed-etf}\n",
        "dup.json": '{"lr": 0.1, "lr": 0.2}',
        # head_kwargs would shadow a top-level field
        "shadow.yaml": "method: nearest-etf\nhead_kwargs: {temperature: 3}\n",
        "shadow-variant.yaml": "methods: [v]\nvariants: {v: {method: nearest-etf, head_kwargs: {delta: 0.5}}}\n",
        # a grid over a key the method ignores
        "ignored-grid.yaml": "methods: [standard]\ngrid: {solver: [polar, polar-gram]}\n",
        # compare keys of the wrong type
        "methods5.yaml": "methods: 5\n",
        "seeds-float.yaml": "seeds: 1.5\n",
        "seeds-map.yaml": "seeds: {a: 1}\n",
        "seeds-bool.yaml": "seeds: [true]\n",
        "seeds-huge.yaml": "seeds: [0, 99999999999999999999]\n",
        "grid5.yaml": "methods: [standard]\ngrid: 5\n",
        "variants5.yaml": "variants: 5\n",
        "report-epochs-map.yaml": "methods: [standard]\nreport_epochs: {a: 1}\n",
        "report-epochs-late.yaml": "methods: [standard]\nepochs: 2\nreport_epochs: [1, 5]\n",
        "threshold-list.yaml": "methods: [standard]\ntrain_acc_threshold: [0.9]\n",
        "selection-bool.yaml": "methods: [standard]\ngrid: {lr: [0.1, 0.2]}\nselection_seeds: true\n",
        # ranges that state the true rule
        "classes1.yaml": "dataset: ufm\nmodel: ufm\nnum_classes: 1\n",
    }
    for name, content in text.items():
        (d / name).write_text(content)
    (d / "latin1.yaml").write_bytes("epochs: 3  # café\n".encode("latin-1"))
    (d / "confdir.yaml").mkdir()
    (d / "report").mkdir()  # a folder without runs
    _npz(d / "good.npz")
    _npz(d / "noy.npz", y_train=None, y_test=None)
    _npz(d / "nan.npz", x_train=np.full((20, 6), np.nan, dtype=np.float32))
    _npz(d / "len.npz", y_train=np.arange(19) % 4)
    _npz(d / "neg.npz", y_train=np.arange(20) % 4 - 1)
    _npz(d / "testlabel.npz", y_test=np.arange(8) % 4 + 3)
    _npz(d / "strings.npz", x_train=np.array([["a"] * 6] * 20))
    _npz(d / "floatlabels.npz", y_train=np.arange(20) % 4 + 0.5)
    _npz(d / "gap.npz", y_train=(np.arange(20) % 2) * 3)
    _npz(d / "flat.npz", x_train=np.zeros(20, dtype=np.float32))
    _npz(d / "shapes.npz", x_test=np.zeros((8, 7), dtype=np.float32))
    _npz(d / "classes20.npz", y_train=np.arange(20), y_test=np.arange(8))
    _npz(d / "biglabel.npz", y_train=np.r_[np.arange(19) % 4, 10**9])  # would count 10**9 classes
    # 2**64 - 1 is -1 as int64
    _npz(d / "biglabel-u64.npz", y_train=np.append(np.arange(19, dtype=np.uint64) % 4, np.uint64(2**64 - 1)))
    _npz(d / "biglabel-float.npz", y_train=np.r_[np.arange(19) % 4, 1e30])
    _npz(d / "oneclass.npz", y_train=np.zeros(20, dtype=np.int64), y_test=np.arange(8) % 2)
    _npz(d / "hugex.npz", x_train=np.full((20, 6), 1e300))  # finite in float64, inf in float32
    for name, content in TYPED_FILES.items():  # the files of the block "values read by their type" below
        _npz(d / name, **content) if isinstance(content, dict) else (d / name).write_text(content)
    _make_report_folders(d)


# ---- report: a comparison's config.yaml and runs' config.json are read through the schema ------------------
def _make_report_folders(d: Path) -> None:
    """Folders for `ncguide report` whose config.yaml, or only run's config.json, breaks a rule."""
    files = {
        "report-acc/config.yaml": "train_acc_threshold: 5\n",
        "report-epochs/config.yaml": "epochs: 3\nreport_epochs: [99999999999]\n",
        "report-epochs-text/config.yaml": "report_epochs: [2.5]\n",
        "report-methods/config.yaml": "methods: 5\n",
        "report-focus/config.yaml": "focus: [a]\n",
        "report-dup/config.yaml": "focus: a\nfocus: b\n",
        "report-syntax/config.yaml": "methods: [a\n",
        **{f"report-{name}/runs/standard/seed-0/{f}": text for name, cfg in [
            ("nc1", '{"nc1_threshold": "abc"}'), ("list", "[1]"), ("huge", '{"epochs": ' + "1" + "0" * 30 + "}")]
           for f, text in [("config.json", cfg), ("metrics.jsonl", '{"epoch": 0}\n')]},
    }
    for name, text in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)


REPORT_CASES = [
    (["report", "{D}/report-acc"], ["{D}/report-acc/config.yaml", "train_acc_threshold", "(0, 1]", "5"]),
    (["report", "{D}/report-epochs"], ["{D}/report-epochs/config.yaml", "report_epochs", "epochs=3", "99999999999"]),
    (["report", "{D}/report-epochs-text"], ["{D}/report-epochs-text/config.yaml", "report_epochs", "2.5"]),
    (["report", "{D}/report-methods"], ["{D}/report-methods/config.yaml", "methods", "list of method names"]),
    (["report", "{D}/report-focus"], ["{D}/report-focus/config.yaml", "focus"]),
    (["report", "{D}/report-dup"], ["{D}/report-dup/config.yaml", "'focus'", "twice"]),
    (["report", "{D}/report-syntax"], ["{D}/report-syntax/config.yaml", "malformed YAML"]),
    (["report", "{D}/report-nc1"], ["runs/standard/seed-0", "config.json", "nc1_threshold", "'abc'"]),
    (["report", "{D}/report-list"], ["runs/standard/seed-0", "config.json", "not a mapping"]),
    (["report", "{D}/report-huge"], ["runs/standard/seed-0", "config.json", "epochs", "too large"]),
]
# ---- end of report cases ---------------------------------------------------------------------------------


# (argv, substrings the one line must hold): {OUT} is the --out folder (never created), {D} the folder of files
CASES = [
    # flags and argparse
    (["compare", "--seed", "5", "--out", "{OUT}"], ["--seed", "did you mean --seeds"]),
    (["compare", "--method", "standard", "--out", "{OUT}"], ["--method", "did you mean --methods"]),
    (T + ["--meth", "standard"], ["--meth"]),
    (T + ["--epochs", "x"], ["--epochs", "'x'"]),
    (T + ["--lr", "fast"], ["--lr"]),
    (T + ["--device", "tpu"], ["--device", "tpu"]),
    (["bogus"], ["bogus"]),
    ([], ["command"]),
    (["report", "{D}/report", "--train-acc-threshold", "5"], ["--train-acc-threshold", "(0, 1]"]),
    (["report", "{D}/report", "--train-acc-threshold", "0"], ["--train-acc-threshold"]),
    (["report", "{D}/report", "--train-acc-threshold", "nan"], ["--train-acc-threshold", "finite"]),
    (["report", "{D}/report", "--nc1-threshold", "-1"], ["--nc1-threshold", "> 0"]),
    (["report", "{D}/report", "--nc1-threshold", "inf"], ["--nc1-threshold", "finite"]),
    (["report", "{D}/report", "--nc1-threshold", "abc"], ["--nc1-threshold", "'abc'"]),
    (["report", "{D}/report"], ["{D}/report is not a comparison folder", "ncguide compare"]),
    (["report", "{D}/missing"], ["{D}/missing", "not a directory"]),
    (["report", "{D}/afile"], ["{D}/afile", "not a directory"]),
    # keys of the other command
    (T + ["--set", "seeds=3"], ["seeds", "compare", "--seed"]),
    (T + ["--set", "methods=standard"], ["methods", "compare", "--method"]),
    (C + ["--set", "method=standard"], ["method", "--methods"]),
    (C + ["--set", "seed=1"], ["seed", "--seeds"]),
    (C + ["--config", "{D}/method.yaml"], ["method", "{D}/method.yaml"]),
    # --set and flag values
    (T + ["--set", "warmup_epochs=nan"], ["warmup_epochs", "--set warmup_epochs=nan"]),
    (T + ["--set", "warmup_epochs=50", "--epochs", "5"], ["warmup_epochs", "epochs=5"]),
    (T + ["--set", "model_kwargs.widths=abc"], ["model_kwargs.widths", "list of ints"]),
    (T + ["--set", "model_kwargs={widths: abc}"], ["model_kwargs.widths"]),
    (T + ["--set", "model_kwargs.nope=1"], ["model_kwargs.nope", "widths"]),
    (T + ["--set", "model_kwargs.batch_norm=maybe"], ["model_kwargs.batch_norm", "true or false"]),
    (T + ["--set", "model_kwargs=[1, 2]"], ["model_kwargs"]),
    (T + ["--set", "model_kwargs.=3"], ["model_kwargs"]),
    (T + ["--set", "model_kwargs.widths=[1, 2"], ["model_kwargs.widths", "YAML"]),
    (T + ["--set", "head_kwargs.nope=1"], ["head_kwargs.nope", "nearest-etf"]),
    (T + ["--set", "epochs.x=1"], ["epochs", "not a dict field"]),
    (T + ["--set", "nope=1"], ["'nope'"]),
    (T + ["--set", "epoch=3"], ["'epoch'", "did you mean 'epochs'"]),
    (T + ["--set", "epochs=abc"], ["epochs", "'abc'"]),
    (T + ["--set", "epochs=1e400"], ["epochs"]),
    (T + ["--set", "epochs=2.5"], ["epochs"]),
    (T + ["--set", "epochs"], ["--set 'epochs'", "key=value"]),
    (T + ["--set", "=3"], ["--set '=3'"]),
    (T + ["--set", "lr=-1"], ["lr", "> 0"]),
    (T + ["--lr", "inf"], ["lr", "finite", "--lr"]),
    (T + ["--epochs", "-1"], ["epochs", ">= 0", "--epochs"]),
    (T + ["--batch-size", "0"], ["batch_size", "--batch-size"]),
    (T + ["--set", "momentum=1.5"], ["momentum", "[0, 1)"]),
    (T + ["--set", "step_milestones=a,b"], ["step_milestones", "list of integers"]),
    (T + ["--set", "step_milestones=[0]"], ["step_milestones"]),
    (T + ["--set", "augment=bogus"], ["augment", "crop-flip"]),
    (T + ["--set", "nc1_threshold=0"], ["nc1_threshold"]),
    (T + ["--set", "temperature=-5"], ["temperature"]),
    (T + ["--set", "nesterov=true", "--set", "optimizer=adam"], ["nesterov"]),
    (T + ["--set", "optimizer=agd"], ["weight_decay", "agd"]),
    (T + ["--set", "train_per_class=0"], ["train_per_class"]),
    (T + ["--set", "solver=bogus"], ["solver", "bogus"]),
    (T + ["--set", "device=cuda"] if not torch.cuda.is_available() else T + ["--set", "device=tpu"], ["device"]),
    (T + ["--method", "nope"], ["method", "'nope'"]),
    (T + ["--model", "nope"], ["model", "'nope'", "cnn1d"]),
    (T + ["--dataset", "nope"], ["dataset", "'nope'", "npz:PATH"]),
    (T + ["--dataset", "npz"], ["npz:PATH"]),
    (T + ["--dataset", "npz:"], ["npz:PATH"]),
    # a model or head that does not fit the data set: checked before any data is loaded
    (T + ["--dataset", "mnist1d", "--model", "cnn2d"], ["cnn2d", "mnist1d", "--model"]),
    (T + ["--dataset", "digits", "--model", "ufm"], ["ufm", "digits"]),
    (T + ["--dataset", "ufm", "--model", "mlp"], ["ufm", "mlp"]),
    (T + ["--dataset", "digits", "--model", "vgg13"], ["vgg13", "32"]),
    (T + ["--dataset", "mnist1d", "--model", "cnn1d", "--set", "model_kwargs.feature_dim=4"],
     ["feature_dim", "4 < 10", "model_kwargs.feature_dim=4"]),
    (T + ["--dataset", "ufm", "--model", "ufm", "--set", "feature_dim=5"], ["feature_dim", "5 < 10"]),
    (T + ["--dataset", "ufm", "--model", "ufm", "--set", "model_kwargs.num_samples=3"], ["model_kwargs.num_samples"]),
    (T + ["--dataset", "mnist1d", "--model", "cnn1d", "--set", "augment=flip"], ["augment", "images"]),
    (T + TINY + ["--batch-size", "1"], ["batch_size", "batch norm"]),
    (T + ["--method", "standard", "--set", "head_kwargs.sync_distributed=false"],
     ["head_kwargs.sync_distributed", "standard"]),
    # compare: a later method's requirements are checked before the first run trains
    (C + TINY[:4] + ["--methods", "standard,nearest-etf", "--set", "model_kwargs.widths=[8]"],
     ["nearest-etf", "feature_dim", "8 < 10"]),
    (C + TINY + ["--methods", "fixed-etf,standard", "--set", "head_kwargs.sync_distributed=false"],
     ["head_kwargs.sync_distributed", "standard"]),
    (T + ["--method", "fixed-etf", "--set", "head_kwargs.rotation=canonical"], ["head_kwargs.rotation", "fixed_etf"]),
    (C + ["--methods", "standard,nope"], ["nope", "--methods"]),
    (C + ["--methods", "standard,standard"], ["twice"]),
    (C + ["--seeds", "0"], ["seeds", "--seeds"]),
    (C + ["--seeds", "a,b"], ["seeds", "'a,b'"]),
    (C + ["--config", "{D}/methods.yaml"], ["nope", "{D}/methods.yaml"]),
    (C + ["--config", "{D}/seeds.yaml"], ["seeds", "{D}/seeds.yaml"]),
    # config files
    (T + ["--config", "{D}/missing.yaml"], ["{D}/missing.yaml", "not found"]),
    (T + ["--config", "{D}/confdir.yaml"], ["{D}/confdir.yaml", "directory"]),
    (T + ["--config", "{D}/syntax.yaml"], ["{D}/syntax.yaml", "malformed YAML", "line"]),
    (T + ["--config", "{D}/latin1.yaml"], ["{D}/latin1.yaml", "UTF-8"]),
    (T + ["--config", "{D}/bad.json"], ["{D}/bad.json", "JSON", "line 1"]),
    (T + ["--config", "{D}/list.json"], ["{D}/list.json", "mapping"]),
    (T + ["--config", "{D}/list.yaml"], ["{D}/list.yaml", "mapping"]),
    (T + ["--config", "{D}/nonstr.yaml"], ["{D}/nonstr.yaml", "key 1"]),
    (T + ["--config", "{D}/key.yaml"], ["'epoch'", "{D}/key.yaml"]),
    (T + ["--config", "{D}/value.yaml"], ["epochs", "'abc'", "{D}/value.yaml"]),
    (T + ["--config", "{D}/range.yaml"], ["lr", "{D}/range.yaml"]),
    (T + ["--config", "{D}/kwargs.yaml"], ["model_kwargs.widths", "{D}/kwargs.yaml"]),
    # integers are read strictly, by one rule at every entry point: nothing is truncated
    (T + ["--set", "batch_size=1.5e0"], ["batch_size", "'1.5e0'", "--set batch_size=1.5e0"]),
    (T + ["--set", "epochs=2.7e0"], ["epochs", "'2.7e0'", "integer"]),
    (T + ["--set", "epochs=3e0"], ["epochs", "'3e0'", "integer"]),
    (T + ["--set", "epochs=3.0"], ["epochs", "'3.0'", "integer"]),
    (T + ["--set", "step_milestones=[2.5]"], ["step_milestones", "integers"]),
    (T + ["--set", "nesterov=1"], ["nesterov", "true or false"]),
    (T + ["--epochs", "2.7e0"], ["epochs", "'2.7e0'", "--epochs"]),
    (T + ["--batch-size", "1.5e0"], ["batch_size", "'1.5e0'", "--batch-size"]),
    (T + ["--seed", "1.5"], ["seed", "'1.5'", "--seed"]),
    (T + ["--config", "{D}/float-epochs.yaml"], ["epochs", "2.7", "{D}/float-epochs.yaml"]),
    (T + ["--config", "{D}/float-batch.yaml"], ["batch_size", "3.0", "{D}/float-batch.yaml"]),
    (T + ["--config", "{D}/float-milestones.yaml"], ["step_milestones", "{D}/float-milestones.yaml"]),
    (T + ["--config", "{D}/hex.yaml"], ["0x10", "decimal", "{D}/hex.yaml"]),
    (T + ["--config", "{D}/bool-int.yaml"], ["nesterov", "true or false", "{D}/bool-int.yaml"]),
    (T + ["--config", "{D}/text-method.yaml"], ["method", "text", "{D}/text-method.yaml"]),
    (C + ["--methods", "v", "--variant", "v:method=standard,epochs=2.7e0"], ["epochs", "'2.7e0'", "variant"]),
    (C + ["--methods", "standard", "--grid", "batch_size=1.5e0,2"], ["batch_size", "'1.5e0'", "--grid"]),
    (C + ["--methods", "standard", "--grid", "epochs=3.0,4"], ["epochs", "'3.0'", "--grid"]),
    (C + ["--seeds", "1.5"], ["seeds", "'1.5'", "--seeds"]),
    (C + ["--seeds", "0,1.5"], ["seeds", "'0,1.5'", "--seeds"]),
    (C + ["--methods", "standard", "--grid", "lr=0.1,0.2", "--selection-seeds", "1.5"], ["selection_seeds", "'1.5'"]),
    (C + ["--methods", "standard", "--report-epochs", "1.5"], ["report_epochs", "'1.5'", "--report-epochs"]),
    # integers beyond what torch holds: refused with the key's or flag's name, before anything is written
    (T + ["--seed", "99999999999999999999"], ["seed", "4294967295", "--seed"]),
    (T + ["--set", "seed=99999999999999999999"], ["seed", "4294967295", "--set seed="]),
    (T + ["--config", "{D}/huge-seed.yaml"], ["seed", "4294967295", "{D}/huge-seed.yaml"]),
    (T + ["--set", "seed=-1"], ["seed", "0..4294967295"]),
    (T + ["--epochs", "99999999999999999999"], ["epochs", "too large", "--epochs"]),
    (T + ["--config", "{D}/huge-epochs.yaml"], ["epochs", "too large", "{D}/huge-epochs.yaml"]),
    (T + ["--set", "batch_size=99999999999999999999"], ["batch_size", "too large"]),
    (T + ["--set", "train_per_class=99999999999999999999"], ["train_per_class", "too large"]),
    (T + ["--set", "step_milestones=[99999999999999999999]"], ["step_milestones", "too large"]),
    (T + ["--set", "epochs=" + "9" * 5000], ["epochs", "too large"]),
    (C + ["--seeds", "99999999999999999999"], ["seeds", "1000", "--seeds"]),
    (C + ["--seeds", "0,99999999999999999999"], ["seeds", "4294967295", "--seeds"]),
    (C + ["--config", "{D}/seeds-huge.yaml"], ["seeds", "4294967295", "{D}/seeds-huge.yaml"]),
    (C + ["--methods", "standard", "--grid", "lr=0.1,0.2", "--selection-seeds", "99999999999999999999"],
     ["selection_seeds", "1000", "--selection-seeds"]),
    (C + ["--methods", "standard", "--grid", "epochs=1,99999999999999999999"], ["epochs", "too large", "--grid"]),
    (C + ["--methods", "v", "--variant", "v:method=standard,seed=1"], ["seed", "variant"]),
    (C + ["--methods", "v", "--variant", "v:method=standard,epochs=99999999999999999999"],
     ["epochs", "too large", "variant"]),
    (C + ["--methods", "standard", "--report-epochs", "99999999999999999999"], ["report_epochs", "--report-epochs"]),
    # a key given twice is refused, not "the last wins"
    (T + ["--config", "{D}/dup.yaml"], ["'lr'", "twice", "lines 1 and 3", "{D}/dup.yaml"]),
    (T + ["--config", "{D}/dup-nested.yaml"], ["'widths'", "twice", "{D}/dup-nested.yaml"]),
    (T + ["--config", "{D}/dup.json"], ["'lr'", "twice", "{D}/dup.json"]),
    (C + ["--config", "{D}/dup-grid.yaml"], ["'lr'", "twice", "{D}/dup-grid.yaml"]),
    (C + ["--config", "{D}/dup-variant.yaml"], ["'v'", "twice", "{D}/dup-variant.yaml"]),
    (T + ["--set", "lr=0.1", "--set", "lr=0.2"], ["--set lr", "twice"]),
    (T + ["--set", "model_kwargs.widths=[8]", "--set", "model_kwargs.widths=[16]"], ["model_kwargs.widths", "twice"]),
    (T + ["--set", "model_kwargs={widths: [8], widths: [16]}"], ["model_kwargs", "'widths'", "twice"]),
    (C + ["--set", "seeds=2", "--set", "seeds=3"], ["--set seeds", "twice"]),
    (T + ["--epochs", "1", "--epochs", "2"], ["--epochs", "twice"]),
    (T + ["--lr=0.1", "--lr", "0.2"], ["--lr", "twice"]),
    (T + ["--resume", "--no-resume"], ["--resume", "--no-resume", "both"]),
    (T + ["--config", "{D}/dup.yaml", "--config", "{D}/key.yaml"], ["--config", "twice"]),
    (C + ["--methods", "v", "--variant", "v:method=standard,lr=0.1", "--variant", "v:method=standard,lr=0.2"],
     ["--variant v", "twice"]),
    (C + ["--methods", "v", "--variant", "v:method=standard,lr=0.1,lr=0.2"], ["--variant", "lr twice"]),
    (C + ["--methods", "standard", "--grid", "lr=0.1", "--grid", "lr=0.2"], ["'lr'", "twice", "--grid"]),
    (C + ["--methods", "standard", "--grid", "lr=0.1,0.10"], ["'lr'", "twice", "--grid"]),
    (C + ["--seeds", "1,1"], ["seeds", "repeats", "--seeds"]),
    (C + ["--methods", "standard", "--report-epochs", "1,1"], ["report_epochs", "twice", "--report-epochs"]),
    # head_kwargs cannot shadow a top-level field (model_kwargs.feature_dim neither, for the UFM)
    *[(T + ["--method", "nearest-etf", "--set", f"head_kwargs.{k}={v}"], [f"head_kwargs.{k}", f"set {k}"])
      for k, v in [("temperature", 3), ("delta", 0.5), ("solver", "polar"), ("alpha_min", 0.1), ("ema_alpha", 0.5),
                   ("mean_schedule", "ema"), ("seed", 3), ("freeze_after", 1)]],
    (T + ["--config", "{D}/shadow.yaml"], ["head_kwargs.temperature", "set temperature", "{D}/shadow.yaml"]),
    (C + ["--config", "{D}/shadow-variant.yaml"], ["head_kwargs.delta", "set delta", "variant"]),
    (T + ["--dataset", "ufm", "--model", "ufm", "--method", "standard", "--set", "model_kwargs.feature_dim=16"],
     ["model_kwargs.feature_dim", "set feature_dim"]),
    # a grid over a key that a method ignores would train identical points and crown a tie
    (C + ["--methods", "standard-plain", "--grid", "temperature=1,2"], ["'temperature'", "standard-plain", "--grid"]),
    (C + ["--methods", "standard,nearest-etf", "--grid", "delta=0.1,0.2"], ["'delta'", "'standard'", "--grid"]),
    (C + ["--methods", "standard", "--set", "optimizer=adam", "--grid", "momentum=0.5,0.9"],
     ["'momentum'", "optimizer='adam'"]),
    (C + ["--methods", "standard", "--grid", "num_classes=3,4"], ["'num_classes'", "dataset='digits'"]),
    (C + ["--methods", "nearest-etf", "--grid", "ema_alpha=0.2,0.5"], ["'ema_alpha'", "mean_schedule='paper'"]),
    (C + ["--methods", "standard", "--grid", "lr=0.1,0.2", "--print-config", "--set", "optimizer=agd",
          "--set", "weight_decay=0"], ["'lr'", "optimizer='agd'"]),
    (C + ["--config", "{D}/ignored-grid.yaml"], ["'solver'", "'standard'", "{D}/ignored-grid.yaml"]),
    # compare keys of the wrong type (a YAML file, --set)
    (C + ["--config", "{D}/methods5.yaml"], ["methods", "list of method names", "{D}/methods5.yaml"]),
    (C + ["--config", "{D}/seeds-float.yaml"], ["seeds", "1.5", "{D}/seeds-float.yaml"]),
    (C + ["--config", "{D}/seeds-map.yaml"], ["seeds", "{D}/seeds-map.yaml"]),
    (C + ["--config", "{D}/seeds-bool.yaml"], ["seeds", "True", "{D}/seeds-bool.yaml"]),
    (C + ["--config", "{D}/grid5.yaml"], ["grid", "5", "{D}/grid5.yaml"]),
    (C + ["--config", "{D}/variants5.yaml"], ["variants", "{D}/variants5.yaml"]),
    (C + ["--config", "{D}/report-epochs-map.yaml"], ["report_epochs", "{D}/report-epochs-map.yaml"]),
    (C + ["--config", "{D}/threshold-list.yaml"], ["train_acc_threshold", "{D}/threshold-list.yaml"]),
    (C + ["--config", "{D}/selection-bool.yaml"], ["selection_seeds", "{D}/selection-bool.yaml"]),
    # ranges that state the true rule; report epochs a run never reaches
    (T + ["--set", "num_classes=0"], ["num_classes", ">= 2", "got 0"]),
    (T + ["--config", "{D}/classes1.yaml"], ["num_classes", ">= 2", "{D}/classes1.yaml"]),
    (T + ["--set", "eval_every=0"], ["eval_every", ">= 1"]),
    (T + ["--set", "warmup_epochs=-1"], ["warmup_epochs", ">= 0"]),
    (T + ["--set", "ema_alpha=0"], ["ema_alpha", "(0, 1]"]),
    (C + ["--methods", "standard", "--epochs", "1", "--report-epochs", "5"],
     ["report_epochs 5", "1 epochs", "--report-epochs"]),
    (C + ["--config", "{D}/report-epochs-late.yaml"], ["report_epochs 5", "2 epochs", "{D}/report-epochs-late.yaml"]),
    (C + ["--methods", "standard", "--epochs", "1", "--report-epochs", "5", "--print-config"], ["report_epochs 5"]),
    # --out
    (["train", *TINY, "--out", ""], ["--out", "empty"]),
    (["compare", *TINY, "--out", ""], ["--out", "empty"]),
    (["report", ""], ["DIR", "empty"]),
    (["train", *TINY], ["--out"]),
    (["compare", *TINY], ["--out"]),
    (["train", *TINY, "--out", "{D}/afile"], ["--out", "{D}/afile", "is a file"]),
    (["train", *TINY, "--out", "{D}/afile/sub"], ["--out", "{D}/afile/sub"]),
    (["train", *TINY, "--out", "/sys/ncguide-bad-input-test"], ["--out", "/sys/ncguide-bad-input-test"]),
    # --data-dir and the data files
    (T + ["--dataset", "fashion-mnist", "--model", "cnn2d", "--data-dir", "{D}/afile"],
     ["data_dir", "{D}/afile", "--data-dir"]),
    (T + ["--dataset", "fashion-mnist", "--model", "cnn2d", "--data-dir", "{D}/nodata"], ["{D}/nodata", "not found"]),
    (T + ["--dataset", "imagenet", "--model", "resnet50", "--data-dir", "{D}/nodata"], ["{D}/nodata", "train/"]),
    (T + ["--dataset", "npz:{D}/missing.npz"], ["{D}/missing.npz", "not found"]),
    (T + ["--dataset", "npz:{D}/garbage.npz"], ["{D}/garbage.npz", "not a .npz"]),
    (T + ["--dataset", "npz:{D}/noy.npz"], ["{D}/noy.npz", "y_train"]),
    (T + ["--dataset", "npz:{D}/nan.npz"], ["{D}/nan.npz", "NaN"]),
    (T + ["--dataset", "npz:{D}/len.npz"], ["{D}/len.npz", "y_train has 19"]),
    (T + ["--dataset", "npz:{D}/neg.npz"], ["{D}/neg.npz", "y_train labels"]),
    (T + ["--dataset", "npz:{D}/testlabel.npz"], ["{D}/testlabel.npz", "y_test labels"]),
    (T + ["--dataset", "npz:{D}/strings.npz"], ["{D}/strings.npz", "real numbers"]),
    (T + ["--dataset", "npz:{D}/floatlabels.npz"], ["{D}/floatlabels.npz", "integer"]),
    (T + ["--dataset", "npz:{D}/gap.npz"], ["{D}/gap.npz", "no training sample"]),
    (T + ["--dataset", "npz:{D}/flat.npz"], ["{D}/flat.npz", "x_train"]),
    (T + ["--dataset", "npz:{D}/shapes.npz"], ["{D}/shapes.npz", "shape"]),
    (T + ["--dataset", "npz:{D}/good.npz", "--model", "cnn2d"], ["cnn2d", "{D}/good.npz"]),
    (T + ["--dataset", "npz:{D}/classes20.npz", "--set", "model_kwargs.widths=[16]"], ["feature_dim", "16 < 20"]),
    (T + ["--dataset", "npz:{D}/biglabel.npz"], ["{D}/biglabel.npz", "1000000001 classes", "20 training samples"]),
    (T + ["--dataset", "npz:{D}/biglabel-u64.npz"], ["{D}/biglabel-u64.npz", "y_train labels", "18446744073709551615"]),
    (T + ["--dataset", "npz:{D}/biglabel-float.npz"], ["{D}/biglabel-float.npz", "y_train labels"]),
    (T + ["--dataset", "npz:{D}/oneclass.npz"], ["{D}/oneclass.npz", "single class", "at least 2 classes"]),
    (T + ["--dataset", "npz:{D}/hugex.npz"], ["{D}/hugex.npz", "x_train", "float32"]),
    # sizes no machine's memory holds (petabytes), and per-class subsets larger than a class: refused up front,
    # naming the key (not the flag of the step that would have overflowed), before a lock or config.yaml
    (T + ["--dataset", "ufm", "--model", "ufm", "--set", "feature_dim=100000000000"], ["feature_dim", "GiB"]),
    (T + ["--dataset", "ufm", "--model", "ufm", "--set", "samples_per_class=4611686018427387904"],
     ["samples_per_class", "GiB", "from --set samples_per_class"]),
    (T + ["--dataset", "ufm", "--model", "ufm", "--set", "train_per_class=4611686018427387904"], ["train_per_class"]),
    (T + ["--dataset", "ufm", "--model", "ufm", "--set", "num_classes=100000000000000"], ["num_classes", "GiB"]),
    (C + ["--methods", "standard", "--dataset", "ufm", "--model", "ufm", "--set", "feature_dim=100000000000"],
     ["feature_dim", "GiB"]),
    (T + ["--set", "model_kwargs.widths=[10000000000000]"], ["model_kwargs", "parameters", "GiB"]),
    (T + TINY + ["--set", "train_per_class=500"], ["train_per_class=500", "139", "training split"]),
    (T + TINY + ["--set", "test_per_class=100"], ["test_per_class=100", "35", "test split"]),
    (T + ["--dataset", "npz:{D}/good.npz", "--set", "train_per_class=6"], ["train_per_class", "has 5 in"]),
    (T + ["--dataset", "npz:{D}/good.npz", "--set", "test_per_class=3"], ["test_per_class", "has 2 in"]),
    (T + ["--dataset", "cifar10", "--model", "resnet18", "--set", "train_per_class=5001"], ["train_per_class", "5000"]),
    (C + TINY + ["--methods", "standard", "--set", "train_per_class=500"], ["train_per_class", "139"]),
    (C + TINY + ["--methods", "standard", "--grid", "train_per_class=10,500"], ["train_per_class", "139"]),
    *REPORT_CASES,
]

# ---- values read by their type: YAML's other notations, aliases, merge keys, digits beyond int(), keys given
# ---- twice by a flag and --set, head options, npz labels
_HUGE = "9" * 5000
TYPED_FILES = {
    "sexagesimal.yaml": "lr: 1:30.5\n",
    "underscore-float.yaml": "lr: 1_0.5\n",
    "set-tag.yaml": "model_kwargs: {widths: !!set {16: null}}\n",
    "merge-twice.yaml": "a: &a {widths: [16]}\nb: &b {batch_norm: false}\nmodel_kwargs:\n  <<: *a\n  <<: *b\n",
    "recursive.yaml": "model_kwargs: &r {widths: [16], me: *r}\n",
    "laughs.yaml": "a: &a [" + ", ".join(["1"] * 50) + "]\nb: &b [" + ", ".join(["*a"] * 50) + "]\n"
                   "model_kwargs: {widths: [" + ", ".join(["*b"] * 50) + "]}\n",
    "deep.yaml": "model_kwargs: " + "[" * 5000 + "\n",
    "huge-digits.yaml": f"epochs: {_HUGE}\n",
    "huge-digits-nested.yaml": f"model_kwargs: {{widths: [{_HUGE}]}}\n",
    "huge-digits.json": f'{{"epochs": {_HUGE}}}',
    "huge-digits-seeds.yaml": f"seeds: [0, {_HUGE}]\n",
    "head-flag.yaml": "method: standard\nhead_kwargs: {normalize_features: 'sure'}\n",
    "label0d.npz": {"y_train": np.array(3)},
    "label0d-test.npz": {"y_test": np.array(1)},
    "label2d.npz": {"y_train": (np.arange(20) % 4).reshape(20, 1)},
}
CASES += [
    (T + ["--config", "{D}/sexagesimal.yaml"], ["1:30.5", "decimal", "{D}/sexagesimal.yaml"]),
    (T + ["--config", "{D}/underscore-float.yaml"], ["1_0.5", "decimal", "{D}/underscore-float.yaml"]),
    (T + ["--set", "lr=1:30.5"], ["lr", "1:30.5"]),
    (T + ["--set", "model_kwargs.widths=[1:30.5]"], ["model_kwargs.widths", "decimal"]),
    (T + ["--config", "{D}/set-tag.yaml"], ["!!set", "{D}/set-tag.yaml"]),
    (T + ["--config", "{D}/merge-twice.yaml"], ["two << merge keys", "lines 4 and 5", "{D}/merge-twice.yaml"]),
    (T + ["--config", "{D}/recursive.yaml"], ["alias *r", "its own anchor", "{D}/recursive.yaml"]),
    (T + ["--set", "model_kwargs=&r {widths: [16], me: *r}"], ["model_kwargs", "its own anchor"]),
    (T + ["--config", "{D}/laughs.yaml"], ["aliases expand to", "{D}/laughs.yaml"]),
    (T + ["--config", "{D}/deep.yaml"], ["too deeply", "{D}/deep.yaml"]),
    (T + ["--config", "{D}/huge-digits.yaml"], ["epochs", "5000 digits", "{D}/huge-digits.yaml"]),
    (T + ["--config", "{D}/huge-digits-nested.yaml"], ["widths", "5000 digits", "{D}/huge-digits-nested.yaml"]),
    (T + ["--config", "{D}/huge-digits.json"], ["epochs", "5000 digits", "{D}/huge-digits.json"]),
    (C + ["--config", "{D}/huge-digits-seeds.yaml"], ["seeds", "5000 digits", "{D}/huge-digits-seeds.yaml"]),
    (T + ["--set", f"model_kwargs.widths=[{_HUGE}]"], ["model_kwargs.widths", "5000 digits"]),
    (T + ["--set", f"model_kwargs={{widths: [{_HUGE}]}}"], ["model_kwargs", "widths", "5000 digits"]),
    (C + ["--seeds", f"0,{_HUGE}"], ["seeds", "--seeds"]),
    (C + ["--methods", "standard", "--report-epochs", _HUGE], ["report_epochs", "too large", "--report-epochs"]),
    (C + ["--methods", "standard", "--grid", "lr=0.1,0.2", "--set", "grid=lr=0.3,0.4"],
     ["grid", "twice", "--grid", "--set grid"]),
    (C + ["--seeds", "2", "--set", "seeds=3"], ["seeds", "twice", "--seeds"]),
    (T + ["--epochs", "2", "--set", "epochs=3"], ["epochs", "twice", "--epochs"]),
    (T + ["--method", "standard", "--set", 'head_kwargs.normalize_weights="maybe"'],
     ["head_kwargs.normalize_weights", "true or false"]),
    (T + ["--method", "standard", "--set", "head_kwargs.bias=1"], ["head_kwargs.bias", "true or false"]),
    (T + ["--method", "nearest-etf", "--set", "head_kwargs.sync_distributed=none"],
     ["head_kwargs.sync_distributed", "true or false"]),
    (T + ["--config", "{D}/head-flag.yaml"], ["head_kwargs.normalize_features", "{D}/head-flag.yaml"]),
    (C + ["--methods", "standard", "--set", "device=cpu", "--grid", "amp=none,bf16"],
     ["'amp'", "device='cpu'", "--grid"]),
    (C + ["--methods", "standard", "--set", "schedule=step", "--grid", "gamma=0.1,0.5"],
     ["'gamma'", "step_milestones=[]", "--grid"]),
    (C + ["--methods", "standard", "--set", "head_kwargs.normalize_features=false", "--grid", "temperature=1,2"],
     ["'temperature'", "not scaled", "--grid"]),
    (T + ["--dataset", "npz:{D}/label0d.npz"], ["{D}/label0d.npz", "y_train", "1-D", "shape ()"]),
    (T + ["--dataset", "npz:{D}/label0d-test.npz"], ["{D}/label0d-test.npz", "y_test", "1-D"]),
    (T + ["--dataset", "npz:{D}/label2d.npz"], ["{D}/label2d.npz", "y_train", "1-D", "(20, 1)"]),
]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(("argv", "expected"), CASES, ids=[" ".join(a)[:70] for a, _ in CASES])
def test_bad_input_one_line_exit_2_nothing_written(argv, expected, tmp_path, capsys, monkeypatch):
    if any(a.startswith("/sys/") for a in argv) and not Path("/sys").is_dir():
        pytest.skip("needs /sys")
    d, out = tmp_path / "files", tmp_path / "out"
    d.mkdir()
    _make_files(d)
    monkeypatch.setenv("NCGUIDE_SYSTEM_DATA_DIR", str(d / "nodata"))  # no system copy of fashion-mnist
    monkeypatch.setenv("NCGUIDE_CACHE", str(d / "cache"))
    monkeypatch.delenv("NCGUIDE_TRACEBACK", raising=False)
    monkeypatch.chdir(tmp_path)  # `--out ""` would write here
    before = _tree(tmp_path)
    argv = [a.replace("{OUT}", str(out)).replace("{D}", str(d)) for a in argv]
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as e:  # allowed, with the same status
        status = e.code
    captured = capsys.readouterr()
    err = captured.err
    assert status == 2, (status, err)
    assert err.startswith("ncguide: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    for word in expected:
        assert word.replace("{D}", str(d)) in err, (word, err)
    assert "Traceback" not in err and "resume=False" not in err and len(err) < 1000, err[:2000]
    assert not out.exists() and _tree(tmp_path) == before, sorted(_tree(tmp_path) - before)
    assert "training" not in captured.out  # failed up front


def test_enough_cases():
    assert len(CASES) >= 200


def test_disk_full_while_writing_one_line_exit_1(tmp_path, capsys, monkeypatch):
    """A checkpoint that cannot be written (ENOSPC) is one line naming the file, exit 1, no torch traceback."""
    def no_space(obj, f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", no_space)
    out = tmp_path / "o"
    assert main(["train", *TINY, "--method", "standard", "--epochs", "1", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ncguide: error: cannot write") and err.count("\n") == 1, err
    assert str(out / "checkpoint.pt") in err and os.strerror(errno.ENOSPC) in err
    assert not list(out.glob(".checkpoint.pt.*"))  # no temporary file left


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_atomic_write_reports_the_os_error_torch_hides(tmp_path, monkeypatch):
    """torch.save turns a failed write into a RuntimeError; atomic_write gives back the OSError with the path."""
    from ncguide.experiments import files

    real_fdopen = os.fdopen

    def full(fd, mode):
        os.close(fd)
        return real_fdopen(os.open("/dev/full", os.O_WRONLY), mode)

    monkeypatch.setattr(files.os, "fdopen", full)
    with pytest.raises(OSError) as info:
        files.atomic_write(tmp_path / "x.pt", lambda f: torch.save({"a": torch.zeros(100_000)}, f))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "x.pt")


def test_resume_under_another_thread_count_warns(tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["train", *TINY, "--method", "standard", "--epochs", "1", "--out", str(out)]
    assert main(argv) == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["num_threads"] == torch.get_num_threads()
    ckpt["num_threads"], ckpt["finished"] = torch.get_num_threads() + 1, False  # as if stopped at the end
    torch.save(ckpt, out / "checkpoint.pt")
    capsys.readouterr()
    assert main(argv) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "threads" in line]
    assert len(warning) == 1 and warning[0].startswith("ncguide: warning: resuming"), warning


def test_resume_error_words_its_advice_per_caller():
    e = checkpoint.ResumeError("out/checkpoint.pt was written by a different config (differs in: lr)")
    assert str(e).endswith("pass resume=False to start over, or use another out_dir")
    assert e.advice("--no-resume", "--out") == "pass --no-resume to start over, or use another --out"
