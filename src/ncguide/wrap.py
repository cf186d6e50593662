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
"""

from __future__ import annotations

from torch import nn

from .heads import build_head

__all__ = ["CLASSIFIER_NAMES", "HeadedModel", "find_classifier", "replace_classifier"]

# attribute names that hold the final classifier in torchvision, timm and most hand-written models
CLASSIFIER_NAMES = ("fc", "classifier", "head", "heads")
# modules that may follow the final Linear inside a Sequential classifier (they leave features as they are
# in evaluation, or only reshape them)
_HARMLESS_AFTER = (nn.Dropout, nn.Identity, nn.Flatten)


class HeadedModel(nn.Module):
    """``backbone`` (a model whose classifier was replaced by ``nn.Identity``) followed by ``head``.

    ``forward(x, targets=None) -> head(backbone(x), targets)``; ``features(x)`` is ``backbone(x)``, the
    ``(N, d)`` features the head sees before its own ``transform``; ``after_step()`` is the head's.
    ``replaced`` names the layer that was replaced (e.g. ``"fc"``, ``"classifier.6"``)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, replaced: str = ""):
        super().__init__()
        self.backbone, self.head, self.replaced = backbone, head, replaced

    def forward(self, x, targets=None):
        return self.head(self.backbone(x), targets)

    def features(self, x):
        return self.backbone(x)

    def after_step(self) -> None:
        self.head.after_step()


def find_classifier(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Linear]:
    """``(dotted name, layer)`` of the final ``nn.Linear`` of ``model``.

    ``layer`` names it (or a ``Sequential`` ending in it) explicitly. Otherwise, in this order: a timm
    model's ``get_classifier()`` when it is a Linear; then the first of ``CLASSIFIER_NAMES`` that is a child
    of ``model`` and a Linear, or a ``Sequential`` whose last Linear is followed only by dropout, identity or
    flatten (torchvision's VGG, EfficientNet, MobileNet, ViT). ``ValueError`` when none is found or the
    named layer is not such a layer."""
    if layer is not None:
        try:
            module = model.get_submodule(layer)
        except AttributeError:
            raise ValueError(f"model {type(model).__name__} has no layer {layer!r}") from None
        found = _linear_in(layer, module)
        if found is None:
            raise ValueError(f"layer {layer!r} of {type(model).__name__} is a {type(module).__name__}, not a Linear "
                             "layer or a Sequential ending in one")
        return found
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
            return f"{name}.{items[last][0]}", items[last][1]
    return None


def replace_classifier(model: nn.Module, head: nn.Module | str, *, layer: str | None = None,
                       **head_options) -> HeadedModel:
    """Replace the final Linear layer of ``model`` (in place) by ``nn.Identity`` and put ``head`` on top.

    ``head``: a head module whose ``feature_dim`` is the Linear's ``in_features``, or a method name of
    ``ncguide.METHODS`` (built with ``feature_dim = in_features``, ``num_classes = out_features`` and
    ``head_options``, on the Linear's device). ``layer``: the dotted name of the Linear when it is not
    found by the usual names (:func:`find_classifier`). ``ValueError`` for a missing layer or a head of
    another feature dimension."""
    name, linear = find_classifier(model, layer)
    d, k = linear.in_features, linear.out_features
    if isinstance(head, str):
        head = build_head(head, d, k, **head_options).to(linear.weight.device)
    elif head_options:
        raise ValueError(f"head options {sorted(head_options)} apply to a head built by name; this head is built")
    elif getattr(head, "feature_dim", d) != d:
        raise ValueError(f"the head takes {head.feature_dim} features but {name} of {type(model).__name__} reads "
                         f"{d}; build the head with feature_dim={d}")
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
    return HeadedModel(model, head, name)
