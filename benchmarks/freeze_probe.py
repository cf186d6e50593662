"""Probe: the nearest-ETF head with its classifier frozen after a given epoch (hypothesis test for the
MNIST-1D test-accuracy gap; not a method of the package).

    python benchmarks/freeze_probe.py OUT --config configs/mnist1d.yaml --freeze-epoch 10 --seeds 0,1,2

Trains ``nearest-etf`` with ``ncguide.experiments.train`` into ``OUT/runs/nearest-etf/seed-<s>/`` (the layout of
``ncguide compare``), but from the first step of epoch ``freeze_epoch + 1`` on, ``NearestETFHead.solve``
returns the stored ``U`` (the last solution) instead of solving: from then on the head is a fixed ETF at
the nearest-ETF's own ``U`` (the running means and global mean keep updating; eval is unchanged).
``--freeze-epoch 0`` freezes ``U`` at its initial value (the canonical ``U_0``, an axis-aligned fixed ETF).
The patch lives in this script only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ncguide import heads
from ncguide.experiments.config import TrainConfig, apply_overrides, load_config
from ncguide.experiments.train import _load_data, train


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
    orig = heads.NearestETFHead.solve
    state = {"calls": 0, "freeze_at": 0}

    def solve(self, Hbar):
        state["calls"] += 1
        if state["calls"] > state["freeze_at"]:
            return self.U.detach().clone()
        return orig(self, Hbar)

    heads.NearestETFHead.solve = solve
    for seed in [int(s) for s in a.seeds.split(",")]:
        cfg = TrainConfig.from_dict({**base, "method": a.method, "seed": seed})
        spe = -(-len(_load_data(cfg).y_train) // cfg.batch_size)  # steps per epoch (single process)
        state.update(calls=0, freeze_at=a.freeze_epoch * spe)
        out = a.out / "runs" / a.method / f"seed-{seed}"
        rec = train(cfg, out, resume=False, progress="none")
        probe = {"freeze_epoch": a.freeze_epoch, "freeze_at_step": state["freeze_at"]}
        (out / "probe.json").write_text(json.dumps(probe))
        print(
            f"seed {seed}: train acc {rec['train_acc']:.4f} test acc {rec['test_acc']:.4f} "
            f"(frozen after step {state['freeze_at']})",
            flush=True,
        )


if __name__ == "__main__":
    main()
