"""The experiment configs shipped inside the package, found by name.

    find_config("demo")                 # <package>/configs/demo.yaml
    find_config("paper/ufm-k10")        # <package>/configs/paper/ufm-k10.yaml
    find_config("my/own.yaml")          # a file path is used as it is

``ncguide --config NAME`` goes through :func:`find_config`: an existing file wins, otherwise ``NAME`` (with or
without ``.yaml``) names a file under ``ncguide/configs/`` (``CONFIG_DIR``, installed with the wheel), and
anything else is a one-line ``ValueError`` listing the shipped names.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CONFIG_DIR", "shipped_configs", "find_config"]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
_SUFFIXES = (".yaml", ".yml")


def shipped_configs(root: str | os.PathLike = CONFIG_DIR) -> list[str]:
    """The names of the configs under ``root`` (``demo``, ``paper/ufm-k10``, ...), sorted."""
    root = Path(root)
    files = [p for s in _SUFFIXES for p in root.rglob(f"*{s}") if p.is_file()]
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in files)


def find_config(name: str | os.PathLike, root: str | os.PathLike = CONFIG_DIR) -> Path:
    """The config file ``name`` means: an existing file, else the shipped config of that name under ``root``.

    ``ValueError`` (one line) for a directory, or for a name that is neither a file nor a shipped config."""
    path, root = Path(name), Path(root)
    if path.is_file():
        return path
    if path.is_dir():
        raise ValueError(f"config {str(name)!r} is a directory, not a file; pass a YAML file or a shipped config name")
    stem = str(name).replace("\\", "/").strip("/")
    for suffix in _SUFFIXES:
        stem = stem.removesuffix(suffix)
    if stem and ".." not in stem.split("/"):
        for suffix in _SUFFIXES:
            candidate = root / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    names = shipped_configs(root)
    raise ValueError(f"config {str(name)!r} not found: neither a file nor a shipped config (shipped: "
                     f"{', '.join(names) or 'none'}); pass a YAML file or one of those names")
