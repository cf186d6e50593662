"""Save a trained backbone and head, and load them back with `torch.load(..., weights_only=True)`.

    python examples/save_and_load.py --out model.pt

A head's `state_dict()` holds all of its state — for the nearest-ETF head the running class means, the
last solved rotation U and the running global mean of the features — as plain tensors, so the safe
`weights_only=True` loader reads it. Load into a head built with the same arguments.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ncguide import NearestETFHead


def make_backbone(in_dim: int = 32, feature_dim: int = 64) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, 128), nn.ReLU(), nn.Linear(128, feature_dim))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="file to write (default: a temporary one)")
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    x, y = torch.randn(200, 32), torch.arange(200) % 4

    backbone, head = make_backbone(), NearestETFHead(64, 4)
    opt = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.1, momentum=0.9)
    for _ in range(args.steps):
        loss = F.cross_entropy(head(backbone(x), y), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        head.after_step()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.out or Path(tmp) / "model.pt")
        torch.save({"backbone": backbone.state_dict(), "head": head.state_dict()}, path)

        state = torch.load(path, weights_only=True)  # tensors only: no code runs while loading
        backbone2, head2 = make_backbone(), NearestETFHead(64, 4)  # same arguments as when saved
        backbone2.load_state_dict(state["backbone"])
        head2.load_state_dict(state["head"])

    for m in (backbone, head, backbone2, head2):
        m.eval()
    with torch.no_grad():
        logits, reloaded = head(backbone(x)), head2(backbone2(x))
    equal = torch.equal(logits, reloaded)
    print(f"saved and reloaded {len(state['head'])} head tensors ({', '.join(state['head'])}); "
          f"logits equal: {equal}")
    return {"equal": equal, "logits": logits, "reloaded": reloaded, "head_keys": sorted(state["head"])}


if __name__ == "__main__":
    main()
