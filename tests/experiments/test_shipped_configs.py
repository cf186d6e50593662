"""Configs shipped inside the package, found by name (``--config demo``, ``--config paper/ufm-k10``)."""

import os

import pytest

from ncguide.experiments.cli import main
from ncguide.experiments.config import load_config
from ncguide.experiments.shipped_configs import CONFIG_DIR, find_config, shipped_configs


def test_config_dir_is_inside_the_package():
    import ncguide

    assert CONFIG_DIR.parent.samefile(os.path.dirname(ncguide.__file__))
    assert "demo" in shipped_configs() and "mnist1d" in shipped_configs()


def test_a_name_finds_the_shipped_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file of that name here
    assert find_config("demo") == CONFIG_DIR / "demo.yaml"
    assert load_config("demo") == load_config(CONFIG_DIR / "demo.yaml")
    assert find_config("paper/ufm-k10") == CONFIG_DIR / "paper" / "ufm-k10.yaml"


@pytest.mark.parametrize("name,meant", [("./demo.yaml", "demo"), ("/demo", "demo"), ("demo.yaml", "demo"),
                                        ("./paper/ufm-k10.yml", "paper/ufm-k10"), ("~/no/such/demo.json", "demo"),
                                        ("./mine.yaml", None)])
def test_a_missing_path_is_an_error_not_a_shipped_config(name, meant, tmp_path, monkeypatch):
    """Anything that looks like a path is a path only: missing, it is named, with the shipped name it may mean."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ValueError, match="not found") as e:
        find_config(name)
    msg = str(e.value)
    assert repr(name) in msg and "\n" not in msg
    assert (f"did you mean --config {meant} " in msg) if meant else "did you mean" not in msg


def test_a_folder_named_like_a_shipped_config_does_not_hide_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    (tmp_path / "paper" / "ufm-k10").mkdir(parents=True)
    assert find_config("demo") == CONFIG_DIR / "demo.yaml"
    assert find_config("paper/ufm-k10") == CONFIG_DIR / "paper" / "ufm-k10.yaml"
    with pytest.raises(ValueError, match="'./demo' is a directory, not a file; did you mean --config demo "):
        find_config("./demo")
    assert main(["train", "--config", "demo", "--method", "standard", "--print-config"]) == 0
    assert "dataset: mnist1d" in capsys.readouterr().out


def test_nested_names_and_listing(tmp_path):
    root = tmp_path / "configs"
    (root / "paper").mkdir(parents=True)
    (root / "paper" / "ufm-k10.yaml").write_text("epochs: 1\n")
    (root / "demo.yaml").write_text("epochs: 2\n")
    (root / "notes.txt").write_text("not a config\n")
    assert shipped_configs(root) == ["demo", "paper/ufm-k10"]
    assert find_config("paper/ufm-k10", root) == root / "paper" / "ufm-k10.yaml"
    with pytest.raises(ValueError, match="did you mean --config paper/ufm-k10 "):
        find_config("paper/ufm-k10.yaml", root)  # a suffix makes it a path
    with pytest.raises(ValueError, match=r"not found.*shipped: demo, paper/ufm-k10\)"):
        find_config("ufm-k10", root)  # only by its full name
    with pytest.raises(ValueError, match="not found"):
        find_config("paper/../../configs/demo", root / "paper")  # no escape from the root


def test_a_file_path_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_text("epochs: 7\n")
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "ufm-k10").write_text("epochs: 8\n")
    assert find_config("demo").resolve() == tmp_path / "demo" and load_config("demo") == {"epochs": 7}
    assert load_config("paper/ufm-k10") == {"epochs": 8}
    with pytest.raises(ValueError, match="is a directory"):
        find_config(str(tmp_path))


@pytest.mark.parametrize("command", ["train", "compare"])
@pytest.mark.parametrize("config,words", [("", ["--config is empty"]),
                                          ("./demo.yaml", ["'./demo.yaml' not found", "did you mean --config demo"])])
def test_cli_empty_or_missing_config_is_one_line(command, config, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = ["--method", "standard"] if command == "train" else []
    assert main([command, *run, "--config", config, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ncguide: error:") and err.count("\n") == 1 and all(w in err for w in words), err
    assert not (tmp_path / "out").exists()


def test_cli_unknown_name_is_one_line_listing_the_names(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "--config", "dmeo", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ncguide: error: config 'dmeo' not found") and err.count("\n") == 1
    assert all(name in err for name in shipped_configs())
    assert not (tmp_path / "out").exists()


def test_cli_runs_a_shipped_config_by_name(capsys):
    assert main(["train", "--config", "digits", "--method", "standard", "--print-config"]) == 0
    assert "dataset: digits" in capsys.readouterr().out


PAPER_AND_DEMO = ["demo", *(n for n in shipped_configs() if n.startswith("paper/"))]


@pytest.mark.parametrize("name", PAPER_AND_DEMO)
def test_shipped_configs_warn_about_no_ignored_key(name, tmp_path, capsys):
    """A shipped config's keys that some of its methods use are not the user's mistake: `compare` and `train` of
    each of its methods print no "ignored" warning."""
    data = tmp_path / "data"  # imagenet's folders, for the configs that need them
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (data / split / cls).mkdir(parents=True)
    extra = ["--data-dir", str(data)] if "imagenet" in name else []
    assert main(["compare", "--config", name, *extra, "--print-config"]) == 0
    for method in load_config(name)["methods"]:
        assert main(["train", "--config", name, "--method", method, *extra, "--print-config"]) == 0
    err = capsys.readouterr().err
    assert "ignored" not in err, err


@pytest.mark.parametrize("command", [["train", "--method", "standard"], ["compare", "--methods", "standard"]])
def test_a_key_the_user_sets_for_no_run_still_warns(command, capsys):
    """--set delta for standard only is the user's mistake; fixed_etf of paper/ufm-k10 (its fixed-etf method's) is
    not, for `train --method standard` (compare --methods standard: no run of the comparison uses it, it warns)."""
    assert main([*command, "--config", "paper/ufm-k10", "--set", "delta=0.5", "--print-config"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "ignored" in line]
    assert any(line.startswith("ncguide: warning: delta is not used with method='standard'") and "delta=0.5" in line
               or "every run" in line and "delta" in line for line in warned), warned
    assert any("fixed_etf" in line for line in warned) == (command[0] == "compare"), warned


def test_a_folder_that_is_no_shipped_name_is_named_a_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    with pytest.raises(ValueError, match="'mine' is a directory here and not a shipped config"):
        find_config("mine")
