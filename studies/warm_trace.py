"""Probe: the warm solver route step by step along real training runs — which steps were exact refreshes,
which warm steps fell back to ``U_prev``, and how far the ``U`` the head used was from the exact solve.

    python studies/warm_trace.py OUT --config mnist1d --seeds 5,8 [--set key=value ...]

Trains ``nearest-etf`` with ``solver=warm`` through ``ncguide.experiments.train`` into
``OUT/runs/nearest-etf/seed-<s>/`` (the layout of ``ncguide compare``; the same run as
``ncguide compare ... --set solver=warm``: the head is built as ``train`` builds it, and a forward hook on
``head.warm`` only reads). Per solver call the hook records, to ``trace.jsonl`` next to the run's logs:
``step``, ``epoch`` (the training epoch it belongs to), ``refresh`` (an exact refresh), ``fallback`` (a warm
step whose certificate ``η`` exceeded ``hard_tol`` and that was not solved again: its ``U`` used up to
``accept_tol``, else ``U_prev``; on the CPU such a step is solved again at once and shows as a refresh),
``eta`` (the step's certificate ``max|UᵀU − I|``; 0 on refreshes), ``err`` (``max|U − polar(Z)|`` of the
``U`` the head used against a float64 SVD polar factor of the same ``Z``), ``cond`` (σ_max/σ_min of ``Z``), ``drift``
(``‖S − S_prev‖_F/‖S‖_F`` with ``S = ZᵀZ``, from the previous solver call; the route's own drift test uses
it at refreshes, with ``drift_max``) and the refresh interval of the policy. Prints per seed: the largest
``err``, ``eta`` and ``drift`` on warm steps that did not fall back, and every fallback step.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ncguide import NearestETFHead, polar_factor
from ncguide.experiments import (
    TrainConfig,
    apply_overrides,
    build_backbone,
    head_kwargs,
    load_config,
    load_data,
    steps_per_epoch,
    train,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--config", required=True)
    p.add_argument("--seeds", default="0")
    p.add_argument("--set", action="append", default=[])
    a = p.parse_args()
    base = apply_overrides(load_config(a.config), ["device=cpu", "solver=warm", *a.set])
    base = {k: v for k, v in base.items() if k not in ("methods", "seeds")}
    for seed in [int(s) for s in a.seeds.split(",")]:
        cfg = TrainConfig.from_dict({**base, "method": "nearest-etf", "seed": seed})
        ds = load_data(cfg)
        spe = steps_per_epoch(cfg, ds)  # single process, no batch-norm drop-last rule
        d = int(build_backbone(cfg, ds).feature_dim)  # its size only: train() builds (and seeds) its own
        head = NearestETFHead(d, ds.num_classes, **head_kwargs(cfg, spe))
        trace: list[dict] = []
        seen: dict = {"fallbacks": 0, "S": None}

        def hook(module, inputs, output, trace=trace, seen=seen, spe=spe):
            Z = inputs[0].detach().double()
            s = torch.linalg.svdvals(Z)
            S = Z.T @ Z
            drift = float("nan") if seen["S"] is None else float((S - seen["S"]).norm() / S.norm())
            seen["S"] = S
            fallbacks = int(module.fallbacks)
            step = int(module.steps)
            trace.append({
                "step": step, "epoch": (step - 1) // spe + 1, "refresh": bool(module.last_refreshed),
                "fallback": fallbacks > seen["fallbacks"], "eta": float(module.eta),
                "err": float((output.detach().double() - polar_factor(Z)).abs().max()),
                "cond": float(s[0] / s[-1]), "drift": drift, "interval": module.get_extra_state()["policy"]["interval"],
            })
            seen["fallbacks"] = fallbacks

        head.warm.register_forward_hook(hook)
        out = a.out / "runs" / "nearest-etf" / f"seed-{seed}"
        train(cfg, out, resume=False, progress="none", head=head)
        (out / "trace.jsonl").write_text("".join(json.dumps(r) + "\n" for r in trace))
        warm = [r for r in trace if not r["refresh"] and not r["fallback"]]
        falls = [r for r in trace if r["fallback"]]
        worst = max(warm, key=lambda r: r["err"]) if warm else None
        print(f"seed {seed}: {len(trace)} solver calls, {sum(r['refresh'] for r in trace)} refreshes, "
              f"{len(falls)} fallbacks; largest err on a warm step: "
              + (f"{worst['err']:.2e} (step {worst['step']}, epoch {worst['epoch']}, eta {worst['eta']:.1e})"
                 if worst else "—")
              + f"; largest eta on a warm step: {max((r['eta'] for r in warm), default=float('nan')):.2e}"
              + f"; largest drift on a warm step: {max((r['drift'] for r in warm), default=float('nan')):.3f}")
        for r in falls:
            i = r["step"] - 1
            before = trace[max(0, i - 3):i]
            prev = ", ".join(f"{b['step']}{' (refresh)' if b['refresh'] else ''} eta {b['eta']:.1e} "
                             f"drift {b['drift']:.3f}" for b in before)
            print(f"  fallback at step {r['step']} (epoch {r['epoch']}): eta {r['eta']:.2e}, err of the U used "
                  f"(U_prev) {r['err']:.2e}, cond(Z) {r['cond']:.3g}, drift {r['drift']:.3f}, "
                  f"interval {r['interval']}; previous steps: {prev}")


if __name__ == "__main__":
    main()
