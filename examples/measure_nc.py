"""Measure neural collapse (NC1-NC4) on a trained model you did not write for ncguide.

    python examples/measure_nc.py --epochs 20

A plain MLP with an ordinary Linear classifier trains with cross-entropy; before and after, a forward
hook (`ncguide.extract_features`) takes the penultimate features (the input of the last layer) and
`ncguide.nc_metrics` measures them against that layer's weight and bias. With one of our heads, measure
`head.transform(h)` against `head.weight, head.bias` instead (the features the head's classifier sees).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from ncguide import extract_features, nc_metrics


def make_data(k: int = 5, per_class: int = 200, dim: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g)
    y = torch.arange(k).repeat_interleave(per_class)
    return centres[y] + torch.randn(len(y), dim, generator=g), y


def measure(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    last = str(len(model) - 1)  # the classifier's name in the Sequential: its input is the feature
    h = extract_features(model, last, x, which="input")  # eval mode, no_grad; modes restored afterwards
    return nc_metrics(h, y, model[-1].weight.detach(), model[-1].bias.detach())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    x, y = make_data()
    k = int(y.max()) + 1
    model = nn.Sequential(nn.Linear(x.shape[1], 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, k))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    before = measure(model, x, y)
    for _ in range(args.epochs):
        order = torch.randperm(len(y))
        for i in range(0, len(y), 100):
            xb, yb = x[order[i:i + 100]], y[order[i:i + 100]]
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    after = measure(model, x, y)

    print(f"{'metric':<14}{'initial':>12}{f'after {args.epochs} epochs':>20}")
    for key in ("accuracy", "nc1", "nc2_w", "nc2_h", "nc3", "nc4"):
        print(f"{key:<14}{before[key]:>12.4f}{after[key]:>20.4f}")
    return {"before": before, "after": after}


if __name__ == "__main__":
    main()
