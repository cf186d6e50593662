"""Your own backbone with a plain training loop and the nearest-ETF head.

    python examples/own_backbone.py --epochs 10

The backbone is any module that returns (N, d) features; the head turns them into logits. In training
mode the head needs the targets (it keeps running class means), and `head.after_step()` goes after each
optimiser step. The data here are K Gaussian clusters; put your own loader in their place.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from ncguide import NearestETFHead, nc_metrics


def make_data(k: int = 5, per_class: int = 200, dim: int = 32, seed: int = 0):
    """K Gaussian clusters in `dim` dimensions: (x, y)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g)
    y = torch.arange(k).repeat_interleave(per_class)
    return centres[y] + torch.randn(len(y), dim, generator=g), y


def show(r: dict) -> None:
    print(f"epoch {r['epoch']:3d}  accuracy {r['accuracy']:.3f}  NC1 {r['nc1']:.4f}  NC2 (W) {r['nc2_w']:.1e}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=100)
    args = p.parse_args(argv)
    torch.manual_seed(0)

    x, y = make_data()
    k = int(y.max()) + 1
    backbone = nn.Sequential(nn.Linear(x.shape[1], 128), nn.ReLU(), nn.Linear(128, 64))
    head = NearestETFHead(feature_dim=64, num_classes=k)  # temperature 5, delta 1e-3 as in the paper
    opt = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.1, momentum=0.9)

    def measure() -> dict:
        backbone.eval(), head.eval()  # eval: the last solved ETF, bias from the running global mean
        with torch.no_grad():
            h = backbone(x)
            acc = (head(h).argmax(1) == y).float().mean().item()
            metrics = nc_metrics(head.transform(h), y, head.weight, head.bias)  # h~ = what the classifier sees
        backbone.train(), head.train()
        return {"accuracy": acc, "nc1": metrics["nc1"], "nc2_w": metrics["nc2_w"]}

    history = [{"epoch": 0, **measure()}]
    show(history[-1])
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(y))
        for i in range(0, len(y), args.batch_size):
            xb, yb = x[order[i:i + args.batch_size]], y[order[i:i + args.batch_size]]
            loss = F.cross_entropy(head(backbone(xb), yb), yb)  # the head takes the targets in training
            opt.zero_grad()
            loss.backward()
            opt.step()
            head.after_step()  # a no-op for the ETF heads; renormalises StandardHead's rows
        history.append({"epoch": epoch, **measure()})
        show(history[-1])
    return {"history": history, "num_classes": k}


if __name__ == "__main__":
    main()
