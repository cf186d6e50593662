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


@pytest.mark.parametrize("name", ["demo", "demo.yaml", "/demo"])
def test_a_name_finds_the_shipped_file(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file of that name here
    assert find_config(name) == CONFIG_DIR / "demo.yaml"
    assert load_config(name) == load_config(CONFIG_DIR / "demo.yaml")


def test_nested_names_and_listing(tmp_path):
    root = tmp_path / "configs"
    (root / "paper").mkdir(parents=True)
    (root / "paper" / "ufm-k10.yaml").write_text("epochs: 1\n")
    (root / "demo.yaml").write_text("epochs: 2\n")
    (root / "notes.txt").write_text("not a config\n")
    assert shipped_configs(root) == ["demo", "paper/ufm-k10"]
    assert find_config("paper/ufm-k10", root) == root / "paper" / "ufm-k10.yaml"
    assert find_config("paper/ufm-k10.yaml", root) == root / "paper" / "ufm-k10.yaml"
    with pytest.raises(ValueError, match=r"not found.*shipped: demo, paper/ufm-k10\)"):
        find_config("ufm-k10", root)  # only by its full name
    with pytest.raises(ValueError, match="not found"):
        find_config("../configs/demo", root / "paper")  # no escape from the root


def test_a_file_path_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_text("epochs: 7\n")
    assert find_config("demo").resolve() == tmp_path / "demo" and load_config("demo") == {"epochs": 7}
    with pytest.raises(ValueError, match="is a directory"):
        find_config(str(tmp_path))


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
