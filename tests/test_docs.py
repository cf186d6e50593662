"""Every public class and function of the library documents each of its parameters where ``help()`` shows them:
the function's docstring, a class's own ``__init__`` docstring (``help(NearestETFHead)`` must not fall back to
torch's generic ``Module.__init__`` text), a dataclass's class docstring (its ``__init__`` is generated), and for
an autograd ``Function`` the class docstring (its interface is ``.apply``)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re

import pytest
import torch

MODULES = ["etf", "solve", "polar_iteration", "warm_polar", "means", "heads", "metrics", "features"]


def public_callables():
    for module_name in MODULES:
        module = importlib.import_module(f"ncguide.{module_name}")
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj) and getattr(obj, "__module__", "") == module.__name__:
                yield pytest.param(obj, id=f"{module_name}.{name}")


def documented(obj) -> tuple[str, list[str]]:
    """The text ``help()`` shows for ``obj``'s parameters, and the parameter names."""
    if inspect.isclass(obj) and issubclass(obj, torch.autograd.Function):
        params = list(inspect.signature(obj.forward).parameters)[1:]  # after ctx
        return obj.__doc__ or "", params
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return obj.__doc__ or "", []
    if dataclasses.is_dataclass(obj):
        return obj.__doc__ or "", [f.name for f in dataclasses.fields(obj)]
    if inspect.isclass(obj):
        init = obj.__dict__.get("__init__")
        if init is None:  # inherited: its parent's documentation is what help() shows, and is checked there
            return "", []
        return init.__doc__ or "", list(inspect.signature(init).parameters)[1:]
    return obj.__doc__ or "", list(inspect.signature(obj).parameters)


@pytest.mark.parametrize("obj", list(public_callables()))
def test_every_parameter_is_documented_where_help_shows_it(obj):
    doc, params = documented(obj)
    params = [p for p in params if p not in ("args", "kwargs")]
    missing = [p for p in params if not re.search(rf"\b{re.escape(p)}\b", doc)]
    assert not missing, f"{obj.__qualname__}: undocumented {missing}"


def test_help_of_the_head_shows_its_own_arguments():
    import pydoc

    from ncguide import NearestETFHead

    text = pydoc.render_doc(NearestETFHead, renderer=pydoc.plaintext)
    for name in ("delta", "alpha_min", "ema_alpha", "solve_dtype", "sync_distributed", "freeze_after"):
        assert re.search(rf"{name}:", text), name
    assert "Initialize internal Module state" not in text
