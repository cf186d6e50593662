"""Run configuration (``experiments/config.py``): round trip, the schema every value is read by (one rule at every
entry point), the YAML/JSON loaders, ``head_kwargs`` shadowing, and the table of keys a run ignores."""

import contextlib
import json

import pytest
import torch

from ncguide.experiments import cli
from ncguide.experiments.build import build_run_head, head_kwargs, load_data
from ncguide.experiments.compare import parse_grid
from ncguide.experiments.config import (
    INT_MAX,
    RULES,
    SEED_MAX,
    USED_ONLY_WHEN,
    ConfigError,
    TrainConfig,
    apply_overrides,
    field_names,
    ignored_fields,
    ignored_reason,
    load_config,
    read_value,
)
from ncguide.experiments.optim import build_optimizer, lr_factor
from ncguide.heads import METHODS, head_option_types, head_options

BASE = dict(dataset="digits", model="mlp", model_kwargs={"widths": [64, 64]}, epochs=3, batch_size=64,
            optimizer="sgd", lr=0.05, device="cpu", seed=0)


def cfg_of(**kw) -> TrainConfig:
    return TrainConfig.from_dict({**BASE, **kw})


def test_config_round_trip_and_unknown_key():
    cfg = cfg_of(step_milestones=[2, 5])
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # as config.json stores it
    with pytest.raises(ValueError, match="unknown config key 'lrr'"):
        TrainConfig.from_dict({"lrr": 0.1})


def test_apply_overrides_reads_values_by_field_type(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: standard\nepochs: 5\nmodel_kwargs: {widths: [32]}\n")
    d = apply_overrides(load_config(path), [
        "epochs=7", "lr=1e-3", "nesterov=true", "train_per_class=none", "step_milestones=3,6",
        "model_kwargs.batch_norm=false", "augment=flip", "warmup_epochs=1",
    ])
    assert d == {"method": "standard", "epochs": 7, "lr": 1e-3, "nesterov": True, "train_per_class": None,
                 "step_milestones": [3, 6], "model_kwargs": {"widths": [32], "batch_norm": False},
                 "augment": "flip", "warmup_epochs": 1.0}
    assert isinstance(d["warmup_epochs"], float) and isinstance(d["epochs"], int)
    with pytest.raises(ValueError, match="unknown config key 'foo'"):
        apply_overrides({}, ["foo=1"])
    for bad in ("epochs=2.5", "nesterov=maybe", "lr=fast", "epochs"):
        with pytest.raises(ValueError, match="bad"):
            apply_overrides({}, [bad])


@pytest.mark.parametrize("key,value,match", [
    ("method", "nearest", "unknown method 'nearest'.*nearest-etf"),
    ("dataset", "mnist2", "unknown dataset 'mnist2'.*digits"),
    ("model", "resnet7", "unknown model 'resnet7'.*resnet18"),
    ("optimizer", "lbfgs", "unknown optimizer 'lbfgs'.*agd"),
    ("schedule", "linear", "unknown schedule.*cosine"),
])
def test_unknown_names_are_refused_with_valid_names(key, value, match):
    with pytest.raises(ValueError, match=match):
        cfg_of(**{key: value})


def test_malformed_set_value_is_a_value_error():
    with pytest.raises(ValueError, match="bad value"):
        apply_overrides({}, ["model_kwargs.width=[1,"])


# ---------------------------------------------------------------------------------------------- the schema


def test_every_field_has_a_rule_and_the_ignore_table_names_fields():
    """Adding a TrainConfig field takes its line in RULES; the table of ignored keys speaks of fields only."""
    assert list(RULES) == field_names()
    for name, conditions in USED_ONLY_WHEN.items():
        assert name in RULES and set(conditions) <= set(RULES), name
    for name, rule in RULES.items():
        if rule.choices is not None:
            assert getattr(TrainConfig(), name) in rule.choices or getattr(TrainConfig(), name) is None, name
    TrainConfig().validate()  # the defaults keep their own rules


@pytest.mark.parametrize("d, key, match", [
    # integers: never truncated, typed or text
    ({"epochs": 2.7}, "epochs", "bad value 2.7 for config key 'epochs'.*integer"),
    ({"epochs": 3.0}, "epochs", "integer"),
    ({"epochs": "3e0"}, "epochs", "integer"),
    ({"batch_size": "1.5e0"}, "batch_size", "integer"),
    ({"epochs": True}, "epochs", "integer"),
    ({"step_milestones": [1.5]}, "step_milestones", "list of integers"),
    ({"step_milestones": "1,2.5"}, "step_milestones", "list of integers"),
    ({"seed": 1.0}, "seed", "integer"),
    # other types
    ({"nesterov": 1}, "nesterov", "true or false"),
    ({"nesterov": "1"}, "nesterov", "true or false"),
    ({"lr": True}, "lr", "number"),
    ({"lr": "fast"}, "lr", "number"),
    ({"method": 5}, "method", "text"),
    ({"model_kwargs": [1]}, "model_kwargs", "mapping"),
    ({"model_kwargs": {1: 2}}, "model_kwargs", "mapping"),
    # ranges that say the true rule
    ({"epochs": -1}, "epochs", "epochs must be an integer >= 0; got -1"),
    ({"num_classes": 0}, "num_classes", "num_classes must be an integer >= 2; got 0"),
    ({"num_classes": 1}, "num_classes", ">= 2"),
    ({"batch_size": 0}, "batch_size", "batch_size must be an integer >= 1"),
    ({"train_per_class": 0}, "train_per_class", ">= 1 or none"),
    ({"lr": 0}, "lr", "lr must be > 0"),
    ({"momentum": 1}, "momentum", r"momentum must lie in \[0, 1\)"),
    ({"ema_alpha": 0}, "ema_alpha", r"ema_alpha must lie in \(0, 1\]"),
    ({"alpha_min": 1.5}, "alpha_min", r"alpha_min must lie in \[0, 1\]"),
    ({"warmup_epochs": -0.5}, "warmup_epochs", "warmup_epochs must be >= 0"),
    ({"step_milestones": [0, 2]}, "step_milestones", "step_milestones must be epochs >= 1; got 0"),
    ({"lr": float("nan")}, "lr", "lr must be a finite number"),
    ({"lr": 10**400}, "lr", "lr must be a finite number"),
    ({"lr": "1e400"}, "lr", "lr must be a finite number"),
    # integers beyond what torch holds
    ({"seed": SEED_MAX + 1}, "seed", f"seed must be an integer in 0..{SEED_MAX}; got {SEED_MAX + 1}"),
    ({"seed": -1}, "seed", "seed must be an integer in 0"),
    ({"seed": "99999999999999999999"}, "seed", "seed must be an integer in 0"),
    ({"epochs": INT_MAX + 1}, "epochs", "too large: integers stop at 9223372036854775807"),
    ({"step_milestones": [INT_MAX + 1]}, "step_milestones", "too large"),
    ({"epochs": "9" * 5000}, "epochs", "too large"),
    # between fields
    ({"warmup_epochs": 5, "epochs": 3}, "warmup_epochs", r"warmup_epochs must lie in \[0, epochs=3\]"),
    ({"nesterov": True, "optimizer": "adam"}, "nesterov", "nesterov=True needs optimizer='sgd'"),
    ({"freeze_after": 1, "method": "standard"}, "freeze_after", "nearest-etf and nearest-etf-nograd only"),
    ({"dataset": "ufm", "model": "ufm", "model_kwargs": {"feature_dim": 16}}, "model_kwargs.feature_dim",
     "set feature_dim, not model_kwargs.feature_dim"),
])
def test_from_dict_refuses_with_a_config_error_naming_the_key(d, key, match):
    with pytest.raises(ConfigError, match=match) as info:
        cfg_of(**d)
    assert info.value.key == key
    assert len(str(info.value).splitlines()) == 1 and len(str(info.value)) < 300


def test_head_kwargs_cannot_shadow_a_top_level_field():
    """Every field that build.head_kwargs passes to a head is refused inside head_kwargs, with the top-level key."""
    cfg = cfg_of(method="nearest-etf", freeze_after=1)
    passed = set(head_kwargs(cfg, steps_per_epoch=1)) | set(head_kwargs(cfg_of(method="fixed-etf"), 1))
    shadowing = passed & set(field_names())
    assert {"temperature", "delta", "solver", "alpha_min", "ema_alpha", "mean_schedule", "seed",
            "freeze_after"} <= shadowing
    for name in sorted(shadowing):
        value = getattr(cfg, name)
        with pytest.raises(ConfigError, match=f"set {name}.*not head_kwargs.{name}") as info:
            cfg_of(method="nearest-etf", head_kwargs={name: value})
        assert info.value.key == f"head_kwargs.{name}"
    kept = {"sync_distributed": False}  # a head option that is not a field
    assert cfg_of(method="fixed-etf", head_kwargs=kept).head_kwargs == kept


@pytest.mark.parametrize("method", METHODS)
def test_head_kwargs_entries_are_read_by_the_heads_declared_types(method, tmp_path):
    """Every bool option a head declares (and that is no field) is read as the bool fields are, at every entry:
    ``off`` (YAML, --set) and the text ``"off"`` (a quoted YAML value, JSON) are false; ``"maybe"``, ``1`` and
    ``None`` are refused naming ``head_kwargs.NAME``; a config built directly must hold a bool."""
    flags = [n for n, tp in head_option_types(method).items() if tp is bool and n not in field_names()]
    assert flags, method
    for name in flags:
        path = tmp_path / "c.yaml"
        path.write_text(f"method: {method}\nhead_kwargs: {{{name}: 'off'}}\n")
        entries = [load_config(path)["head_kwargs"], apply_overrides({}, [f"head_kwargs.{name}=off"])["head_kwargs"],
                   {name: "off"}, {name: "no"}]
        for hk in entries:
            assert cfg_of(method=method, head_kwargs=hk).head_kwargs == {name: False}, (name, hk)
        for bad in ("maybe", 1, 0.0, None, '"off"'):
            with pytest.raises(ConfigError, match=f"head_kwargs.{name}.*true or false") as info:
                cfg_of(method=method, head_kwargs={name: bad})
            assert info.value.key == f"head_kwargs.{name}"
        with pytest.raises(ConfigError) as info:
            TrainConfig(method=method, head_kwargs={name: "off"}).validate()
        assert info.value.key == f"head_kwargs.{name}"


def test_a_head_kwargs_flag_read_as_false_trains_as_false():
    """Oracle: ``head_kwargs.normalize_weights: "off"`` (text) builds the head ``False`` builds, not the default."""
    weights = {}
    for value in ("off", False, True):
        torch.manual_seed(0)
        cfg = cfg_of(method="standard", head_kwargs={"normalize_weights": value})
        head = build_run_head(cfg, 16, 4)
        weights[value] = head.weight.clone()
    assert torch.equal(weights["off"], weights[False]) and not torch.equal(weights["off"], weights[True])


def test_validate_checks_types_of_a_config_built_directly():
    """``TrainConfig(...)`` skips from_dict: validate() (which train() calls) refuses what from_dict would."""
    for bad, key in [(dict(epochs=2.7), "epochs"), (dict(epochs="3"), "epochs"), (dict(step_milestones=[1.5]),
                     "step_milestones"), (dict(nesterov="yes"), "nesterov"), (dict(seed=2**40), "seed")]:
        with pytest.raises(ConfigError) as info:
            TrainConfig(**bad).validate()
        assert info.value.key == key
    assert TrainConfig(step_milestones=(2, 3)).step_milestones == [2, 3]  # a tuple is copied into a list


def test_integers_by_text_are_decimal_and_exact():
    assert read_value("epochs", "010") == 10 and read_value("epochs", "+3") == 3 and read_value("epochs", " 7 ") == 7
    assert read_value("seed", str(SEED_MAX)) == SEED_MAX and read_value("epochs", str(INT_MAX)) == INT_MAX
    assert read_value("lr", 1) == 1.0 and isinstance(read_value("lr", 1), float)
    assert read_value("freeze_after", "none") is None and read_value("augment", "") is None
    for text in ("0x10", "1_000", "3.", "٣"):  # ٣: an Arabic-Indic 3, which int() would read
        with pytest.raises(ConfigError):
            read_value("epochs", text)


REFUSED = "refused"
# (key, text, what every entry point makes of it)
SAME_RULE = [
    ("epochs", "3", 3), ("epochs", "010", 10), ("epochs", "3e0", REFUSED), ("epochs", "2.7e0", REFUSED),
    ("epochs", "3.0", REFUSED), ("epochs", "-1", REFUSED), ("epochs", "99999999999999999999", REFUSED),
    ("batch_size", "1.5e0", REFUSED), ("batch_size", "64", 64), ("lr", "1e-3", 1e-3), ("lr", "0.5", 0.5),
    ("lr", "1", 1.0), ("lr", "0", REFUSED), ("lr", "inf", REFUSED), ("lr", "1e400", REFUSED),
    ("nesterov", "yes", True), ("nesterov", "false", False), ("nesterov", "1", REFUSED),
    ("train_per_class", "none", None), ("train_per_class", "null", None), ("train_per_class", "5", 5),
    ("freeze_after", "1.5", 1.5), ("seed", "4294967295", SEED_MAX), ("seed", "4294967296", REFUSED),
    ("temperature", "10", 10.0), ("momentum", "1", REFUSED), ("solver", "polar", "polar"), ("solver", "bogus", REFUSED),
]


def _outcomes(key: str, text: str, tmp_path) -> dict[str, object]:
    """What each entry point makes of ``key: text``: the value, or ``"refused"``."""
    def outcome(read):
        try:
            return read()
        except ValueError:
            return REFUSED

    yaml_file = tmp_path / f"{key}.yaml"
    yaml_file.write_text(f"{key}: {text}\n")
    out = {
        "read_value": outcome(lambda: read_value(key, text)),
        "--set": outcome(lambda: getattr(TrainConfig.from_dict(apply_overrides(BASE, [f"{key}={text}"])), key)),
        "yaml": outcome(lambda: getattr(TrainConfig.from_dict({**BASE, **load_config(yaml_file)}), key)),
        "from_dict": outcome(lambda: getattr(TrainConfig.from_dict({**BASE, key: text}), key)),  # a variant's text
    }
    if key not in ("seed",):  # a grid may not vary the seed
        out["--grid"] = outcome(lambda: parse_grid([f"{key}={text}"])[key][0])
    flag = {"epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "seed": "--seed"}.get(key)
    if flag:
        args = cli.build_parser().parse_args(["train", flag, text, "--out", "x"])
        out[flag] = outcome(lambda: getattr(TrainConfig.from_dict({**BASE, **cli.resolve_config(
            args, {"method": None, "seed": args.seed})[0]}), key))
    return out


@pytest.mark.parametrize("key, text, expected", SAME_RULE, ids=[f"{k}={t}" for k, t, _ in SAME_RULE])
def test_one_rule_at_every_entry_point(key, text, expected, tmp_path):
    """YAML file, --set, a flag, --grid, a variant's text and from_dict read a value alike: the same value or
    all refuse (the grid reads values before checking relations between fields)."""
    outcomes = _outcomes(key, text, tmp_path)
    assert all(o == expected and type(o) is type(expected) for o in outcomes.values()), outcomes


# ---------------------------------------------------------------------------------------------- the loaders


@pytest.mark.parametrize("text, where", [
    ("lr: 0.1\nepochs: 2\nlr: 0.2\n", "lines 1 and 3"),
    ("model_kwargs:\n  widths: [8]\n  widths: [16]\n", "lines 2 and 3"),
    ("model_kwargs: {widths: [8], widths: [16]}\n", "line 1"),
    ("variants:\n  v: {method: standard}\n  v: {method: fixed-etf}\n", "lines 2 and 3"),
])
def test_yaml_refuses_a_key_given_twice(tmp_path, text, where):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"given twice \\({where}\\); keep one") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_yaml_merge_keys_may_override_and_json_refuses_duplicates(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("base: &b {lr: 0.1, epochs: 2}\nrun:\n  <<: *b\n  lr: 0.2\n")
    assert load_config(path)["run"] == {"lr": 0.2, "epochs": 2}  # YAML's merge: explicit keys win, no duplicate
    path = tmp_path / "c.json"
    path.write_text('{"lr": 0.1, "model_kwargs": {"widths": [8], "widths": [9]}}')
    with pytest.raises(ValueError, match="'widths' is given twice"):
        load_config(path)


def test_yaml_numbers_are_read_as_written(tmp_path):
    """Integers in decimal only (YAML 1.1 reads 010 as 8 and 1:30 as 90), 1e-3 as a number (YAML 1.2)."""
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 010\nlr: 1e-3\ngamma: 1.0e3\ndelta: .5\nseed: +7\nnum_classes: -0\n")
    assert load_config(path) == {"epochs": 10, "lr": 1e-3, "gamma": 1000.0, "delta": 0.5, "seed": 7, "num_classes": 0}
    for text in ("epochs: 0x10\n", "epochs: 1_000\n", "epochs: 1:30\n"):
        path.write_text(text)
        with pytest.raises(ValueError, match="decimal"):
            load_config(path)
    path.write_text("epochs: 0o17\n")  # text to YAML 1.1, and so refused by the schema
    with pytest.raises(ConfigError, match="'0o17'.*integer"):
        TrainConfig.from_dict(load_config(path))
    for text in ("lr: 1:30.5\n", "lr: 1_0.5\n", "lr: !!float 1:30\n"):  # YAML 1.1: 90.5, 10.5, 90.0
        path.write_text(text)
        with pytest.raises(ValueError, match="decimal notation"):
            load_config(path)


@pytest.mark.parametrize("text,shown", [("slurm_time: 8:00:00\n", "8:00:00"), ("slurm_time: 1:30\n", "1:30"),
                                        ("lr: 1:30.5\n", "1:30.5"), ("slurm_time: -2:00\n", "-2:00"),
                                        ("epochs: 1:00:00.5\n", "1:00:00.5")])
def test_an_unquoted_time_is_refused_with_the_advice_to_quote_it(tmp_path, text, shown):
    """YAML 1.1 reads 8:00:00 as 28800 (base 60): the refusal says to quote it, not to write an integer."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=f'base 60.*quote it: "{shown}"') as e:
        load_config(path)
    assert "write it as one" not in str(e.value)
    path.write_text(text.replace(shown, f'"{shown}"'))
    assert list(load_config(path).values()) == [shown]  # quoted, it is the text


def test_yaml_words_dates_and_other_tags(tmp_path):
    """yes/no/on/off stay true/false (as the schema reads them from text), a date is text, and tags that would give
    other Python types are refused."""
    path = tmp_path / "c.yaml"
    path.write_text("nesterov: yes\nstratified: Off\ndata_dir: 2024-01-01\nlr: .5e-1\n")
    assert load_config(path) == {"nesterov": True, "stratified": False, "data_dir": "2024-01-01", "lr": 0.05}
    assert read_value("nesterov", "on") is True and read_value("stratified", "NO") is False  # same words from text
    for tag, value in [("set", "{1: null}"), ("binary", "aGk="), ("omap", "[{a: 1}]"), ("timestamp", "2024-01-01")]:
        path.write_text(f"model_kwargs: {{widths: !!{tag} {value}}}\n")
        with pytest.raises(ValueError, match=f"tag !!{tag} is not read"):
            load_config(path)


@pytest.mark.parametrize("text, match", [
    ("a: &a {lr: 0.1}\nb: &b {epochs: 2}\nrun:\n  <<: *a\n  <<: *b\n", r"two << merge keys.*lines 4 and 5"),
    ("model_kwargs: &r {widths: [16], me: *r}\n", r"alias \*r lies inside its own anchor &r"),
    ("grid: &g [1, *g]\n", r"alias \*g lies inside"),
    ("a: &a [" + ", ".join(["1"] * 50) + "]\nb: &b [" + ", ".join(["*a"] * 50) + "]\nc: [" + ", ".join(["*b"] * 50)
     + "]\n", r"aliases expand to \d+ values \(more than 100000\)"),
    ("a: " + "[" * 5000 + "\n", "too deeply"),
])
def test_yaml_refuses_aliases_that_hide_duplicates_or_recurse(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        load_config(path)
    assert str(path) in str(info.value) and len(str(info.value).splitlines()) == 1


def test_yaml_merges_and_shared_anchors_still_load(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a: &a {lr: 0.1}\nb: &b {epochs: 2}\nrun: {<<: [*a, *b], lr: 0.2}\nw: &w [8]\nv: [*w, *w]\n")
    d = load_config(path)
    assert d["run"] == {"lr": 0.2, "epochs": 2} and d["v"] == [[8], [8]]


@pytest.mark.parametrize("suffix, text", [
    (".yaml", "epochs: {N}\n"), (".yaml", "model_kwargs: {widths: [16, {N}]}\n"),
    (".json", '{"epochs": {N}}'), (".json", '{"model_kwargs": {"widths": [16, {N}]}}'),
])
def test_integers_beyond_pythons_digit_limit_name_their_key(tmp_path, suffix, text):
    """int() refuses more than 4300 digits with a message naming no key: the loaders name it."""
    path = tmp_path / f"c{suffix}"
    path.write_text(text.replace("{N}", "9" * 5000))
    key = "epochs" if "epochs" in text else "widths"
    with pytest.raises(ValueError, match=f"{key}: an integer of 5000 digits is too large") as info:
        load_config(path)
    assert len(str(info.value)) < 300
    with pytest.raises(ConfigError, match="an integer of 5000 digits is too large") as info:
        apply_overrides({}, ["model_kwargs.widths=[" + "9" * 5000 + "]"])
    assert info.value.key == "model_kwargs.widths" and len(str(info.value)) < 300


# ---------------------------------------------------------------------------------------------- ignored keys


def test_ignored_fields_examples():
    assert {"delta", "solver", "freeze_after", "mean_schedule", "ema_alpha", "num_classes", "samples_per_class",
            "feature_dim", "agd_gain", "step_milestones", "gamma", "num_workers"} <= ignored_fields(cfg_of(
                method="standard"))
    assert "temperature" in ignored_fields(cfg_of(method="standard-plain"))
    assert "temperature" not in ignored_fields(cfg_of(method="standard"))
    assert {"momentum", "nesterov"} <= ignored_fields(cfg_of(optimizer="adam"))
    assert "lr" in ignored_fields(cfg_of(optimizer="agd", weight_decay=0))
    ufm = cfg_of(dataset="ufm", model="ufm", model_kwargs={})
    assert not {"num_classes", "samples_per_class", "feature_dim"} & ignored_fields(ufm)
    assert "test_per_class" in ignored_fields(ufm)
    assert "samples_per_class" in ignored_fields(cfg_of(dataset="ufm", model="ufm", model_kwargs={}, train_per_class=5))
    assert ignored_reason(cfg_of(optimizer="adam"), "momentum") == "momentum is not used with optimizer='adam'"


@pytest.mark.parametrize("dataset", ["ufm", "digits", "npz"])
def test_data_dir_is_ignored_by_the_data_sets_that_read_no_files_from_it(dataset, tmp_path, capsys):
    """ufm, digits and npz:PATH load the same data with any data_dir and never look in it; the table says so, the
    settings line leaves it out and `ncguide train` warns. mnist1d caches its data there: used."""
    import numpy as np

    from ncguide.experiments.data import load_dataset
    from ncguide.experiments.progress import settings_line

    name = dataset
    if dataset == "npz":
        x = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)
        np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(12) % 3, x_test=x[:6], y_test=np.arange(6) % 3)
        name = f"npz:{tmp_path / 'd.npz'}"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    a, b = load_dataset(name, data_dir=data_dir), load_dataset(name, data_dir=None)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test) and not list(data_dir.iterdir())
    model = {"ufm": "ufm", "digits": "mlp", "npz": "mlp"}[dataset]
    cfg = TrainConfig.from_dict({"dataset": name, "model": model, "data_dir": str(data_dir)})
    assert "data_dir" in ignored_fields(cfg) and "data_dir=" not in settings_line(cfg)
    assert ignored_reason(cfg, "data_dir").startswith(f"data_dir is not used with dataset={name!r}")
    assert "data_dir" not in ignored_fields(TrainConfig.from_dict({"dataset": "mnist1d", "data_dir": "x"}))
    assert cli.main(["train", "--method", "standard", "--dataset", name, "--model", model, "--data-dir",
                     str(data_dir), "--print-config"]) == 0
    err = capsys.readouterr().err
    assert "data_dir is not used with dataset=" in err and "the value you set is ignored (from --data-dir)" in err


def test_ignored_head_fields_agree_with_the_heads_options():
    """A head field the table says a method uses is one its head takes (build.head_kwargs passes it); the method
    fields the heads take only for some methods are used exactly by those."""
    takes = set().union(*(head_options(m) for m in METHODS))
    head_fields = {name for name, when in USED_ONLY_WHEN.items() if "method" in when} & takes  # by the same name
    assert {"temperature", "delta", "solver", "mean_schedule", "alpha_min", "ema_alpha", "freeze_after"} <= head_fields
    for method in METHODS:
        options = head_options(method)
        for name in head_fields:
            cfg = cfg_of(method=method, mean_schedule="paper" if name != "ema_alpha" else "ema")
            used = name not in ignored_fields(cfg)
            if used:
                assert name in options, (method, name)
            elif name != "temperature":  # standard-plain's head takes a temperature it never applies
                assert name not in options, (method, name)


def _head_outputs(cfg: TrainConfig) -> list[torch.Tensor]:
    """Training logits of five batches, then the eval-mode weight and bias, of cfg's head on fixed features."""
    torch.manual_seed(0)
    head = build_run_head(cfg, 16, 4, steps_per_epoch=5)
    g = torch.Generator().manual_seed(1)
    outs = []
    for _ in range(5):
        h, y = torch.randn(12, 16, generator=g), torch.arange(12) % 4
        outs.append(head(h, y).detach())
    head.eval()
    return [*outs, head.weight.clone(), head.bias.clone()]


# (field, two values, extra settings): a head field the table conditions on method and mean schedule
HEAD_FIELDS = [("temperature", 1.0, 10.0, {}), ("delta", 1e-3, 0.5, {}), ("mean_schedule", "paper", "ema", {}),
               ("alpha_min", 1e-4, 0.9, {"mean_schedule": "paper"}), ("alpha_min", 1e-4, 0.9, {"mean_schedule": "ema"}),
               ("ema_alpha", 0.1, 0.9, {"mean_schedule": "ema"}), ("ema_alpha", 0.1, 0.9, {"mean_schedule": "paper"}),
               ("fixed_etf", "random", "canonical", {})]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name, a, b, extra", HEAD_FIELDS, ids=[f"{n}-{e}" for n, _, _, e in HEAD_FIELDS])
def test_a_field_is_ignored_exactly_when_it_cannot_change_the_head(method, name, a, b, extra):
    """Oracle: the head built from two configs that differ only in ``name`` gives identical outputs over five
    training batches and in eval mode iff ``ignored_fields`` says the run ignores ``name``."""
    cfg_a, cfg_b = cfg_of(method=method, **extra, **{name: a}), cfg_of(method=method, **extra, **{name: b})
    same = all(torch.equal(x, y) for x, y in zip(_head_outputs(cfg_a), _head_outputs(cfg_b)))
    assert same == (name in ignored_fields(cfg_a)), (method, name, extra)


def test_ignored_optimiser_schedule_and_data_fields_cannot_change_the_run():
    """Oracles for the other rows: the optimiser's update, the schedule's factor, the data set."""
    def steps(**kw):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(3))
        opt = build_optimizer(kw.pop("name"), [("w", w)], 0.1, **kw)
        for _ in range(3):
            opt.zero_grad()
            (w ** 2).sum().backward()
            opt.step()
        return w.detach().clone()

    assert torch.equal(steps(name="adam", momentum=0.1), steps(name="adam", momentum=0.9))
    assert "momentum" in ignored_fields(cfg_of(optimizer="adam"))
    assert not torch.equal(steps(name="sgd", momentum=0.1), steps(name="sgd", momentum=0.9))
    assert "momentum" not in ignored_fields(cfg_of(optimizer="sgd"))

    def factors(schedule, milestones, gamma):
        return [lr_factor(s, total_steps=20, schedule=schedule, milestones=milestones, gamma=gamma) for s in range(20)]

    assert factors("cosine", [5], 0.1) == factors("cosine", [10], 0.5)
    assert {"step_milestones", "gamma"} <= ignored_fields(cfg_of(schedule="cosine"))
    assert factors("step", [5], 0.1) != factors("step", [10], 0.5)
    assert not {"step_milestones", "gamma"} & ignored_fields(cfg_of(schedule="step", step_milestones=[5]))

    digits = [cfg_of(num_classes=3, samples_per_class=5), cfg_of(num_classes=4, samples_per_class=7)]
    assert torch.equal(load_data(digits[0]).y_train, load_data(digits[1]).y_train)
    assert {"num_classes", "samples_per_class"} <= ignored_fields(digits[0])
    ufm = dict(dataset="ufm", model="ufm", model_kwargs={})
    assert len(load_data(cfg_of(**ufm, num_classes=3)).y_train) != len(load_data(cfg_of(**ufm, num_classes=4)).y_train)
    fixed = [cfg_of(**ufm, train_per_class=5, samples_per_class=s) for s in (7, 9)]
    assert torch.equal(load_data(fixed[0]).y_train, load_data(fixed[1]).y_train)
    assert "samples_per_class" in ignored_fields(fixed[0])


def test_keys_ignored_because_of_another_value_cannot_change_the_run(tmp_path):
    """Oracles for the rows conditioned on a value: gamma without milestones (gamma**0), amp and check_every on the
    CPU (training in float32, checking every step), temperature when the standard head does not scale features."""
    from ncguide.experiments.train import train

    def factors(gamma):
        return [lr_factor(s, total_steps=20, schedule="step", milestones=[], gamma=gamma) for s in range(20)]

    assert factors(0.1) == factors(0.5)
    assert "gamma" in ignored_fields(cfg_of(schedule="step"))
    assert "gamma" not in ignored_fields(cfg_of(schedule="step", step_milestones=[1]))
    assert ignored_reason(cfg_of(schedule="step"), "gamma") == "gamma is not used with step_milestones=[]"

    tiny = dict(model_kwargs={"widths": [16]}, train_per_class=5, test_per_class=2, epochs=1, batch_size=16)
    logs = {}
    for name, extra in [("base", {}), ("amp", {"amp": "bf16"}), ("check_every", {"check_every": 7})]:
        cfg = cfg_of(**tiny, **extra)
        assert set(extra) <= ignored_fields(cfg)
        with pytest.warns(UserWarning, match="bf16") if extra.get("amp") else contextlib.nullcontext():
            train(cfg, tmp_path / name, progress="none")
        logs[name] = [{k: v for k, v in json.loads(line).items() if k not in ("wall_s", "time")}
                      for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert logs["amp"] == logs["base"] and logs["check_every"] == logs["base"]
    assert not {"amp", "check_every"} & ignored_fields(cfg_of(device="cuda"))
    assert ignored_reason(cfg_of(amp="bf16"), "amp") == \
        "amp is not used with device='cpu', where training runs on the CPU"

    plain = dict(method="standard", head_kwargs={"normalize_features": False})
    a, b = _head_outputs(cfg_of(**plain, temperature=1.0)), _head_outputs(cfg_of(**plain, temperature=10.0))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and "temperature" in ignored_fields(cfg_of(**plain))


def test_rerunning_from_resolved_files_warns_only_about_keys_set_to_other_values(tmp_path, capsys):
    """A resolved file lists every field at its value, defaults included (a run's config.json, a compare's
    config.yaml): fed back, it warns only about an ignored key whose value differs from its default."""
    saved = TrainConfig.from_dict({**BASE, "method": "standard"}).to_dict()  # as config.json stores it
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved))
    capsys.readouterr()
    assert cli.main(["train", "--config", str(path), "--print-config"]) == 0
    assert "ignored" not in capsys.readouterr().err
    path.write_text(json.dumps({**saved, "delta": 0.5, "optimizer": "adam", "momentum": 0.5}))
    assert cli.main(["train", "--config", str(path), "--print-config"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "ignored" in line]
    assert len(warned) == 2 and "delta" in warned[0] and "momentum" in warned[1], warned

    argv = ["compare", "--dataset", "digits", "--methods", "standard", "--seeds", "1", "--set", "optimizer=adam"]
    assert cli.main([*argv, "--print-config"]) == 0
    resolved = tmp_path / "config.yaml"
    resolved.write_text(capsys.readouterr().out)
    assert cli.main(["compare", "--config", str(resolved), "--print-config"]) == 0
    assert "ignored" not in capsys.readouterr().err
