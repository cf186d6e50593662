"""Penultimate features from any ``nn.Module``, by a forward hook on a named layer.

So the NC metrics work on models we did not write: name the layer whose output (``which="output"``)
or input (``which="input"``) holds the features. For a torchvision ResNet the penultimate features
are the input of ``"fc"``; for an ``nn.Sequential`` they are the output of the layer before the last.
Layer names are those of ``model.named_modules()`` (``"layer4.1.conv2"``, ``"3"``, ...).

    with capture(model, "fc", which="input") as store:
        logits = model(x)
    h = store.pop()                                   # (B, d)

    h, y = extract_features(model, "fc", loader, which="input", return_labels=True)
    nc_metrics_streaming(lambda: iter_features(model, "fc", loader, which="input"), W, b)

These give the raw features ``h``; apply ``head.transform`` first when the head normalises them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["capture", "iter_features", "extract_features"]

_WHICH = ("output", "input")


def _find_module(model: nn.Module, layer_name: str) -> nn.Module:
    modules = dict(model.named_modules())
    modules.pop("", None)
    if layer_name in modules:
        return modules[layer_name]
    names = list(modules)
    close = difflib.get_close_matches(layer_name, names, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    shown = ", ".join(map(repr, names[:12])) + (", ..." if len(names) > 12 else "")
    raise ValueError(
        f"{type(model).__name__} has no layer named {layer_name!r}.{hint} "
        f"Valid names ({len(names)}): {shown or 'none (the model has no submodules)'}"
    )


@contextmanager
def capture(
    model: nn.Module, layer_name: str, which: str = "output", detach: bool = True
) -> Iterator[list[torch.Tensor]]:
    """Record the output (``which="output"``) or first input (``which="input"``) of ``model.<layer_name>`` on
    every forward call.

    Yields a list that gets one tensor per call of the layer (tuple outputs: their first element);
    the hook is removed on exit. ``detach=False`` keeps the autograd graph.
    """
    if which not in _WHICH:
        raise ValueError(f"which must be one of {_WHICH}; got {which!r}")
    module = _find_module(model, layer_name)
    store: list[torch.Tensor] = []

    def hook(mod: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        if which == "output":
            x = output
        else:
            x = args[0] if args else next(iter(kwargs.values()), None)
        if isinstance(x, (tuple, list)) and x:
            x = x[0]
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"layer {layer_name!r} {which} is a {type(x).__name__}, not a tensor")
        store.append(x.detach() if detach else x)

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        yield store
    finally:
        handle.remove()


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _batches(inputs: torch.Tensor | Iterable, batch_size: int) -> Iterator[tuple[torch.Tensor, object]]:
    """``(x, y)`` pairs from a tensor (split into batches) or a loader of tensors / (x, y, ...) tuples."""
    if isinstance(inputs, torch.Tensor):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        for x in inputs.split(batch_size):
            yield x, None
        return
    for batch in inputs:
        if isinstance(batch, torch.Tensor):
            yield batch, None
        elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
            yield batch[0], (batch[1] if len(batch) > 1 else None)
        else:
            raise ValueError(
                f"each batch must be a tensor or an (inputs, labels, ...) tuple; got {type(batch).__name__}"
            )


def iter_features(
    model: nn.Module,
    layer_name: str,
    inputs: torch.Tensor | Iterable,
    *,
    which: str = "output",
    batch_size: int = 256,
    device: torch.device | str | None = None,
    flatten: bool = True,
    eval_mode: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield ``(features, labels)`` per batch (labels None when the batches carry none): the output
    (``which="output"``) or first input (``which="input"``) of ``model.<layer_name>`` (a dotted name, as in
    ``model.named_modules()``).

    ``inputs``: a tensor (split into ``batch_size`` rows) or an iterable of tensors or
    ``(inputs, labels, ...)`` tuples. Runs under ``torch.no_grad()``, in eval mode unless
    ``eval_mode=False`` (every module's training flag is restored afterwards), with inputs moved to
    ``device`` (default: the model's). ``flatten`` reshapes features to ``(B, -1)``.
    """
    if which not in _WHICH:
        raise ValueError(f"which must be one of {_WHICH}; got {which!r}")
    _find_module(model, layer_name)  # fail now, not at the first batch
    device = _model_device(model) if device is None else torch.device(device)
    return _iter_features(model, layer_name, inputs, which, batch_size, device, flatten, eval_mode)


def _iter_features(
    model: nn.Module, layer_name: str, inputs: torch.Tensor | Iterable, which: str, batch_size: int,
    device: torch.device, flatten: bool, eval_mode: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    flags = {m: m.training for m in model.modules()}
    try:
        if eval_mode:
            model.eval()
        with capture(model, layer_name, which=which) as store, torch.no_grad():
            for x, y in _batches(inputs, batch_size):
                model(x.to(device))
                if len(store) != 1:
                    raise ValueError(
                        f"layer {layer_name!r} ran {len(store)} times in one forward pass; "
                        "name a layer that runs exactly once"
                    )
                h = store.pop()
                yield (h.flatten(1) if flatten else h), y
    finally:
        for m, flag in flags.items():
            m.training = flag


def extract_features(
    model: nn.Module,
    layer_name: str,
    inputs: torch.Tensor | Iterable,
    *,
    which: str = "output",
    batch_size: int = 256,
    device: torch.device | str | None = None,
    flatten: bool = True,
    eval_mode: bool = True,
    return_labels: bool = False,
    out_device: torch.device | str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """All features of ``inputs`` at ``model.<layer_name>``, concatenated: ``(N, d)``.

    Arguments as ``iter_features``: ``which`` (``"output"`` or ``"input"``), ``batch_size``, ``device``,
    ``flatten``, ``eval_mode``; ``out_device`` (e.g. ``"cpu"``) collects them elsewhere.
    ``return_labels=True`` also returns the concatenated labels (the batches must carry them).
    For splits too large for memory feed ``iter_features`` to ``nc_metrics_streaming`` instead.
    """
    feats, labels = [], []
    for h, y in iter_features(
        model, layer_name, inputs, which=which, batch_size=batch_size, device=device,
        flatten=flatten, eval_mode=eval_mode,
    ):
        feats.append(h if out_device is None else h.to(out_device))
        if return_labels:
            if y is None:
                raise ValueError("return_labels=True needs batches of (inputs, labels); these carry no labels")
            labels.append(torch.as_tensor(y))
    if not feats:
        raise ValueError("no inputs: the tensor or loader is empty")
    out = torch.cat(feats)
    return (out, torch.cat(labels)) if return_labels else out
