"""A head on a model you did not write: its final ``nn.Linear`` becomes the head.

    model = torchvision.models.resnet18(num_classes=10)         # any classifier ending in a Linear layer
    model = ncguide.replace_classifier(model, "nearest-etf")   # or a head you built: NearestETFHead(512, 10)
    logits = model(x, y)       # training: the targets reach the head (its running class means)
    logits = model(x)          # evaluation
    model.after_step()         # after each optimiser step (the head's; a no-op for the ETF heads)

``replace_classifier`` finds the final Linear layer (:func:`find_classifier`), puts ``nn.Identity()`` in its
place, so that the model returns the ``d`` features the Linear read, and returns a :class:`HeadedModel`
whose ``forward(x, targets=None)`` is ``head(model(x), targets)`` — the heads' one interface, unchanged.
The model is changed in place (the returned module holds it as ``backbone``). A head given by method
name is built with ``d = linear.in_features`` and ``K = linear.out_features`` (``build_head``).

The contract: the model's ``forward`` returns the Linear's output as it is (through dropout, identity or
flatten at most). A model that post-processes it (``self.fc(x) * scale``, ``log_softmax(self.fc(x))``),
returns something else, or reads the Linear's ``weight`` itself cannot be wrapped this way: replacing the
Linear would change its maths. Without an input at hand this is checked on every forward of the
:class:`HeadedModel` (an identity test of two tensors, no copy): the first forward of such a model raises
``ValueError`` and puts the Linear back. Write a backbone that returns the features and build
``HeadedModel(backbone, head)`` by hand instead.
"""

from __future__ import annotations

import inspect
import threading
import weakref

import torch
from torch import nn

from .heads import build_head

__all__ = ["CLASSIFIER_NAMES", "HeadedModel", "find_classifier", "replace_classifier"]

# attribute names that hold the final classifier in torchvision, timm and most hand-written models
CLASSIFIER_NAMES = ("fc", "classifier", "head", "heads")
# modules that may follow the final Linear inside a Sequential classifier (they leave features as they are
# in evaluation, or only reshape them)
_HARMLESS_AFTER = (nn.Dropout, nn.Identity, nn.Flatten)


def _compiling() -> bool:
    return torch.compiler.is_compiling()


class _ReadReplacedLayer(AttributeError):
    """The model's forward read an attribute (``weight``, ...) of the Linear that ``replace_classifier`` removed."""


class _Replaced(nn.Identity):
    """What ``replace_classifier`` puts in place of the Linear: the identity; reading the Linear's attributes
    from it (a forward that uses ``fc.weight``) says what happened."""

    def __init__(self, name: str):
        super().__init__()
        self._replaced_name = name

    def __getattr__(self, attr: str):
        try:
            return super().__getattr__(attr)
        except AttributeError:
            raise _ReadReplacedLayer(f"the model reads {self.__dict__.get('_replaced_name', '?')}.{attr}, but "
                                     "replace_classifier replaced that Linear layer by the head") from None


class _Probe:
    """A forward hook that keeps (weakly, per thread) the output of the module it is on, and what to put back
    when the model turns out not to return it."""

    def __init__(self, restore: tuple[nn.Module, str, nn.Module] | None = None):
        self.out: dict[int, object] = {}
        self.restore, self.handle = restore, None

    def __call__(self, module, args, output) -> None:
        if not _compiling():
            ref = weakref.ref(output) if isinstance(output, torch.Tensor) else (lambda: output)
            self.out[threading.get_ident()] = ref

    def take(self):
        """The output seen last in this thread (None: none, or no longer alive), forgotten."""
        ref = self.out.pop(threading.get_ident(), None)
        return ref() if ref is not None else None

    def __getstate__(self) -> dict:  # pickling and deepcopy: a fresh probe, the Linear no longer restorable
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()


class HeadedModel(nn.Module):
    """``backbone`` (a model whose classifier was replaced by ``nn.Identity``) followed by ``head``.

    ``forward(x, targets=None) -> head(backbone(x), targets)``; ``features(x)`` is ``backbone(x)``, the
    ``(N, d)`` features the head sees before its own ``transform``; ``after_step()`` is the head's.
    ``replaced`` names the layer that was replaced (e.g. ``"fc"``, ``"classifier.6"``). Built by
    :func:`replace_classifier`, each forward checks that the backbone returned the replaced layer's input
    (the module docstring); built by hand, ``backbone`` is trusted to return the features."""

    def __init__(self, backbone: nn.Module, head: nn.Module, replaced: str = ""):
        """Args:
            backbone: a module whose ``forward(x)`` returns the ``(N, d)`` features.
            head: a head (``ncguide.Head``): ``forward(features, targets=None)`` and ``after_step()``.
            replaced: the dotted name of the layer the head replaced, for the record (``""``: none).
        """
        super().__init__()
        self.backbone, self.head, self.replaced = backbone, head, replaced
        self._probe: _Probe | None = None

    def forward(self, x, targets=None):
        return self.head(self.features(x), targets)

    def features(self, x):
        probe = getattr(self, "_probe", None)
        if probe is None or _compiling():
            return self.backbone(x)
        probe.take()  # a stale output (the backbone called on its own) is not this forward's
        try:
            out = self.backbone(x)
        except _ReadReplacedLayer as e:
            self._put_back(probe)
            raise ValueError(f"{e}: the model computes with the layer itself, so the head cannot stand in for it; "
                             f"{self.replaced} is back in the model. {_BY_HAND}") from None
        except Exception as e:
            ran = threading.get_ident() in probe.out  # the replaced layer's hook fired (its output may be freed)
            probe.take()
            if not ran:
                raise  # it failed before the replaced layer ran: not the replacement's doing
            # it failed after the replaced layer ran, on the features where logits were expected (e.g. a
            # .view(N, K) of fc's output): the model post-processes that output
            self._put_back(probe)
            raise ValueError(f"{type(self.backbone).__name__}'s forward failed after {self.replaced} "
                             f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}): it "
                             f"post-processes {self.replaced}'s output, so the head cannot stand in for it; "
                             f"{self.replaced} is back in the model. {_BY_HAND}") from e
        if probe.take() is not out:
            self._put_back(probe)
            raise ValueError(f"{type(self.backbone).__name__}'s forward does not return what {self.replaced} "
                             f"computes (it post-processes it, e.g. scales it or applies log_softmax, or returns "
                             f"something else), so the head cannot stand in for it; {self.replaced} is back in the "
                             f"model. {_BY_HAND}")
        return out

    def _put_back(self, probe: _Probe) -> None:
        if probe.handle is not None:
            probe.handle.remove()
        if probe.restore is not None:
            parent, attr, linear = probe.restore
            setattr(parent, attr, linear)
        self._probe = None

    def after_step(self) -> None:
        self.head.after_step()


_BY_HAND = "Build ncguide.HeadedModel(backbone, head) by hand, with a backbone that returns the features"


def find_classifier(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Linear]:
    """``(dotted name, layer)`` of the final ``nn.Linear`` of ``model``.

    ``layer`` names it (or a ``Sequential`` ending in it) explicitly. Otherwise, in this order: a timm
    model's ``get_classifier()`` when it is a Linear; then the first of ``CLASSIFIER_NAMES`` that is a child
    of ``model`` and a Linear, or a ``Sequential`` whose last Linear is followed only by dropout, identity or
    flatten (torchvision's VGG, EfficientNet, MobileNet, ViT); then, when ``model`` is itself a
    ``Sequential``, its last Linear under the same rule (``nn.Sequential(nn.Flatten(), nn.Linear(...))``).
    ``ValueError`` when none is found or the named layer is not such a layer."""
    if layer is not None:
        if not isinstance(layer, str) or not layer.strip(".").strip():
            raise ValueError(f"layer={layer!r} names no layer: give the dotted name of the final Linear (e.g. 'fc', "
                             "'classifier.6'), or leave layer out to have it found")
        try:
            module = model.get_submodule(layer)
        except AttributeError:
            raise ValueError(f"model {type(model).__name__} has no layer {layer!r}") from None
        found = _linear_in(layer, module)
        if found is None:
            raise ValueError(f"layer {layer!r} of {type(model).__name__} is a {type(module).__name__}, not a Linear "
                             "layer or a Sequential ending in one")
        return found
    if isinstance(model, nn.Linear):
        raise ValueError("the model is itself a Linear layer: there are no features to put a head on")
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):  # timm
        module = get_classifier()
        name = next((n for n, m in model.named_modules() if m is module), None)
        if isinstance(module, nn.Linear) and name:
            return name, module
    for name in CLASSIFIER_NAMES:
        module = model._modules.get(name)
        found = _linear_in(name, module) if module is not None else None
        if found is not None:
            return found
    found = _linear_in("", model) if isinstance(model, nn.Sequential) else None
    if found is not None:
        return found
    children = ", ".join(n for n, _ in model.named_children()) or "none"
    raise ValueError(f"no final Linear layer found in {type(model).__name__}: none of {', '.join(CLASSIFIER_NAMES)} "
                     f"is a Linear layer or a Sequential ending in one (its children: {children}); name it with "
                     "layer='...'")


def _linear_in(name: str, module: nn.Module) -> tuple[str, nn.Linear] | None:
    if isinstance(module, nn.Linear):
        return name, module
    if isinstance(module, nn.Sequential):
        items = list(module.named_children())
        last = max((i for i, (_, m) in enumerate(items) if isinstance(m, nn.Linear)), default=None)
        if last is not None and all(isinstance(m, _HARMLESS_AFTER) for _, m in items[last + 1:]):
            return f"{name}.{items[last][0]}" if name else items[last][0], items[last][1]
    return None


def _check_head(head: nn.Module, name: str, model: nn.Module, d: int, k: int) -> None:
    """ValueError unless ``head`` takes ``(features, targets)``, has ``after_step`` and fits ``d`` and ``k``."""
    what = f"{name} of {type(model).__name__}"
    try:
        takes_targets = callable(getattr(head, "after_step", None)) and bool(inspect.signature(head.forward).bind(
            None, None))
    except (TypeError, ValueError):
        takes_targets = False
    if not isinstance(head, nn.Module) or not takes_targets:
        raise ValueError(f"head {type(head).__name__} is not a head: a head's forward takes (features, targets) and "
                         "it has after_step() (an ncguide.Head); give a method name ('standard' for a linear "
                         "classifier) or a head module")
    if getattr(head, "feature_dim", d) != d:
        raise ValueError(f"the head takes {head.feature_dim} features but {what} reads {d}; build the head with "
                         f"feature_dim={d}")
    if getattr(head, "num_classes", k) != k:
        raise ValueError(f"the head has {head.num_classes} classes but {what} has {k} outputs (out_features); build "
                         f"the head with num_classes={k}, or the model with {head.num_classes} classes")


def replace_classifier(model: nn.Module, head: nn.Module | str, *, layer: str | None = None,
                       **head_options) -> HeadedModel:
    """Replace the final Linear layer of ``model`` (in place) by ``nn.Identity`` and put ``head`` on top.

    ``head``: a head module (``forward(features, targets)``, ``after_step()``; a plain ``nn.Linear`` is
    refused) whose ``feature_dim`` and ``num_classes`` are the Linear's ``in_features`` and
    ``out_features``, or a method name of ``ncguide.METHODS`` (built with those and ``head_options``, on
    the Linear's device). ``layer``: the dotted name of the Linear when it is not found by the usual names
    (:func:`find_classifier`). The model must return the Linear's output unchanged (the module docstring:
    checked on each forward). ``ValueError``, with the model left as it was, for a missing layer, an
    uninitialised ``nn.LazyLinear``, or a head that is not one or does not fit."""
    if any(isinstance(m, _Replaced) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} already has a layer replaced by a head (replace_classifier was "
                         "called on it before): use the HeadedModel that call returned")
    name, linear = find_classifier(model, layer)
    if isinstance(linear, nn.modules.lazy.LazyModuleMixin) and linear.has_uninitialized_params():
        raise ValueError(f"{name} of {type(model).__name__} is an uninitialised nn.LazyLinear (its in_features are "
                         "not known yet): run one forward pass through the model first, or build it with sizes")
    d, k = linear.in_features, linear.out_features
    if isinstance(head, str):
        head = build_head(head, d, k, **head_options).to(linear.weight.device)
    elif head_options:
        raise ValueError(f"head options {sorted(head_options)} apply to a head built by name; this head is built")
    else:
        _check_head(head, name, model, d, k)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, _Replaced(name))
    wrapped = HeadedModel(model, head, name)
    # the module whose output the model must return: the Sequential the Linear ends (its dropout or flatten
    # after it run on the features now), else the Linear's stand-in
    wrapped._probe = _Probe((parent, attr, linear))
    probed = parent if isinstance(parent, nn.Sequential) else parent._modules[attr]
    wrapped._probe.handle = probed.register_forward_hook(wrapped._probe)
    return wrapped
