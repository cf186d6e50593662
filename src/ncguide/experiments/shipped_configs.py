"""The experiment configs shipped inside the package, found by name.

    find_config("demo")                 # <package>/configs/demo.yaml
    find_config("paper/ufm-k10")        # <package>/configs/paper/ufm-k10.yaml
    find_config("./my/own.yaml")        # a path is used as it is

``ncguide --config X`` goes through :func:`find_config`, in this order:

1. an existing file ``X`` wins (``--config paper/ufm-k10`` reads ``./paper/ufm-k10`` if that file exists);
2. ``X`` that looks like a path — it starts with ``.``, ``/`` or ``~``, holds a ``\\``, or ends in ``.yaml``,
   ``.yml`` or ``.json`` — is a path only: a missing one is a one-line ``ValueError`` naming it (with "did you
   mean --config demo?" when a shipped config has that name);
3. any other ``X`` (``demo``, ``paper/ufm-k10``: no suffix, no leading ``./`` or ``/``) is the name of a file
   under ``ncguide/configs/`` (``CONFIG_DIR``, installed with the wheel), even when a folder ``X`` exists here;
   an unknown name is a one-line ``ValueError`` listing the shipped names.

An empty ``X`` is an error too.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CONFIG_DIR", "shipped_configs", "find_config", "looks_like_path"]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
_SUFFIXES = (".yaml", ".yml")
_PATH_SUFFIXES = (*_SUFFIXES, ".json")


def shipped_configs(root: str | os.PathLike = CONFIG_DIR) -> list[str]:
    """The names of the configs under ``root`` (``demo``, ``paper/ufm-k10``, ...), sorted."""
    root = Path(root)
    files = [p for s in _SUFFIXES for p in root.rglob(f"*{s}") if p.is_file()]
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in files)


def looks_like_path(name: str | os.PathLike) -> bool:
    """Whether ``name`` is a path only, never a shipped name: it starts with ``.``, ``/`` or ``~``, holds a
    backslash, or ends in ``.yaml``, ``.yml`` or ``.json`` (a ``Path`` object is always a path)."""
    if not isinstance(name, str):
        return True
    return (name.startswith((".", "/", "~")) or "\\" in name or os.path.isabs(name)
            or name.lower().endswith(_PATH_SUFFIXES))


def find_config(name: str | os.PathLike, root: str | os.PathLike = CONFIG_DIR) -> Path:
    """The config file ``name`` means (see the module docstring): an existing file, else for a bare name the
    shipped config of that name under ``root``. ``ValueError`` (one line) otherwise."""
    root = Path(root)
    if isinstance(name, str) and not name.strip():
        raise ValueError("--config is empty; give a YAML file or the name of a shipped config (e.g. --config demo)")
    path = Path(name).expanduser() if isinstance(name, str) else Path(name)
    if path.is_file():
        return path
    if looks_like_path(name):
        shipped = _shipped_name(str(name), root)
        hint = f"; did you mean --config {shipped} (the shipped config)?" if shipped else ""
        what = "is a directory, not a file" if path.is_dir() else "not found"
        raise ValueError(f"config file {str(name)!r} {what}{hint or '; check the path'}")
    candidate = _shipped_file(name, root)
    if candidate is not None:
        return candidate
    names = shipped_configs(root)
    if path.is_dir():
        raise ValueError(f"config {name!r} is a directory here and not a shipped config (shipped: "
                         f"{', '.join(names) or 'none'}); pass a YAML file or one of those names")
    raise ValueError(f"config {name!r} not found: neither a file nor a shipped config (shipped: "
                     f"{', '.join(names) or 'none'}); pass a YAML file or one of those names")


def _shipped_file(stem: str, root: Path) -> Path | None:
    """``root/STEM.yaml`` (or ``.yml``) for a bare name ``stem``; None if there is none (or it leaves ``root``)."""
    if not stem or ".." in stem.split("/") or stem.startswith("/"):
        return None
    return next((c for s in _SUFFIXES if (c := root / f"{stem}{s}").is_file()), None)


def _shipped_name(path: str, root: Path) -> str | None:
    """The shipped config a missing path may have meant: ``./demo.yaml``, ``/demo``, ``x/paper/ufm-k10.yml``."""
    stem = path.replace("\\", "/").lstrip("./~")
    for suffix in _PATH_SUFFIXES:
        stem = stem.removesuffix(suffix)
    parts = [p for p in stem.split("/") if p]
    for i in range(len(parts)):  # the longest tail that names a shipped config
        tail = "/".join(parts[i:])
        if _shipped_file(tail, root) is not None:
            return tail
    return None
