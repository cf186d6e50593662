"""Put the nearest-ETF head on an existing model: its final Linear layer becomes the head.

    python examples/replace_last_layer.py --source torchvision   # torchvision.models.resnet18
    python examples/replace_last_layer.py --source timm          # timm.create_model("resnet18")
    python examples/replace_last_layer.py --source ncguide       # our ResNet-18 trunk plus an `fc` layer

`ncguide.replace_classifier(model, "nearest-etf")` finds the final Linear (`fc`, `classifier`, `head`, ...),
replaces it by the identity and returns a module whose `forward(x, targets=None)` gives the head the
targets. torchvision and timm need a torch build that matches theirs (see the README's Install section).
The data are random class templates plus noise, 16x16 RGB; put your own loader in their place.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

import ncguide

SOURCES = ("ncguide", "torchvision", "timm")
PAIR = "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu"  # or .../whl/cu126


def need(module: str):
    """``import module``, or one line saying what is missing and how to install it, and exit 2."""
    try:
        return importlib.import_module(module)
    except (ImportError, RuntimeError) as e:  # RuntimeError: torchvision built for another torch
        why = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
        then = ", then pip install timm" if module == "timm" else ""
        print(f"--source {module} needs {module}, which does not import here ({why}); install torch and torchvision "
              f"as a matching pair from one index: {PAIR}{then} (see the README's Install section)", file=sys.stderr)
        raise SystemExit(2) from None


def existing_model(source: str, num_classes: int) -> nn.Module:
    """A ResNet-18 classifier as each library builds it (untrained here; load your weights as usual)."""
    if source == "torchvision":
        return need("torchvision").models.resnet18(num_classes=num_classes)
    if source == "timm":
        return need("timm").create_model("resnet18", pretrained=False, num_classes=num_classes)
    from ncguide.experiments.models import build_model

    trunk = build_model("resnet18", (3, 16, 16), num_classes, width=0.25)  # features only, no classifier
    return nn.Sequential(OrderedDict(trunk=trunk, fc=nn.Linear(trunk.feature_dim, num_classes)))


def make_images(k: int = 4, per_class: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(k, 3, 16, 16, generator=g)
    y = torch.arange(k).repeat_interleave(per_class)
    return templates[y] + 0.5 * torch.randn(len(y), 3, 16, 16, generator=g), y


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", choices=SOURCES, default="ncguide")
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    x, y = make_images()
    k = int(y.max()) + 1

    model = ncguide.replace_classifier(existing_model(args.source, k), "nearest-etf")
    head = model.head
    print(f"{args.source}: {model.replaced} replaced by {type(head).__name__}, "
          f"{head.feature_dim} features -> {head.num_classes} classes")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(y))
        for i in range(0, len(y), 32):
            xb, yb = x[order[i:i + 32]], y[order[i:i + 32]]
            loss = F.cross_entropy(model(xb, yb), yb)  # training: the head gets the targets
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.after_step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(x).argmax(1) == y).float().mean().item()  # evaluation: no targets
        print(f"epoch {epoch}  loss {loss.item():.3f}  accuracy {accuracy:.3f}")
    return {"accuracy": accuracy, "num_classes": k, "replaced": model.replaced,
            "feature_dim": model.head.feature_dim}


if __name__ == "__main__":
    main()
