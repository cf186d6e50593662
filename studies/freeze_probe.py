"""Probe: the nearest-ETF head with its classifier frozen after a given epoch (hypothesis test for the
MNIST-1D test-accuracy gap; not a method of the package).

    python studies/freeze_probe.py OUT --config configs/mnist1d.yaml --freeze-epoch 10 --seeds 0,1,2

Trains ``nearest-etf`` with ``ncguide.experiments.train`` into ``OUT/runs/nearest-etf/seed-<s>/`` (the
layout of ``ncguide compare``), with :class:`FrozenAfter` as the head: from the first step of epoch
``freeze_epoch + 1`` on, its ``solve`` returns the stored ``U`` (the last solution) instead of solving,
so the head is a fixed ETF at the nearest-ETF's own ``U`` (the running means and global mean keep
updating; eval is unchanged). ``--freeze-epoch 0`` freezes ``U`` at its initial value (the canonical
``U_0``, an axis-aligned fixed ETF).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ncguide import NearestETFHead
from ncguide.experiments import TrainConfig, apply_overrides, load_config, train
from ncguide.experiments.build import build_backbone, head_kwargs, load_data


class FrozenAfter(NearestETFHead):
    """A nearest-ETF head that stops solving after ``freeze_at`` training solves and keeps its ``U``."""

    def __init__(self, *args, freeze_at: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.freeze_at, self.solves = freeze_at, 0

    def solve(self, Hbar: torch.Tensor) -> torch.Tensor:
        self.solves += 1
        if self.solves > self.freeze_at:
            return self.U.detach().clone()
        return super().solve(Hbar)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--config", required=True)
    p.add_argument("--freeze-epoch", type=int, required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--method", default="nearest-etf")
    p.add_argument("--set", action="append", default=[])
    a = p.parse_args()
    base = apply_overrides(load_config(a.config), ["device=cpu", *a.set])
    base = {k: v for k, v in base.items() if k not in ("methods", "seeds")}
    for seed in [int(s) for s in a.seeds.split(",")]:
        cfg = TrainConfig.from_dict({**base, "method": a.method, "seed": seed})
        ds = load_data(cfg)
        spe = -(-len(ds.y_train) // cfg.batch_size)  # steps per epoch (single process)
        d = int(build_backbone(cfg, ds).feature_dim)  # its size only: train() builds (and seeds) its own
        head = FrozenAfter(d, ds.num_classes, freeze_at=a.freeze_epoch * spe, **head_kwargs(cfg))
        out = a.out / "runs" / a.method / f"seed-{seed}"
        rec = train(cfg, out, resume=False, progress="none", head=head)
        (out / "probe.json").write_text(json.dumps({"freeze_epoch": a.freeze_epoch, "freeze_at_step": head.freeze_at}))
        print(
            f"seed {seed}: train acc {rec['train_acc']:.4f} test acc {rec['test_acc']:.4f} "
            f"(frozen after step {head.freeze_at})",
            flush=True,
        )


if __name__ == "__main__":
    main()
