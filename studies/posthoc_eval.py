"""Post-hoc evaluation of finished runs: is the nearest-ETF head's test-accuracy gap a train/eval
mismatch of the classifier (running U, running global mean) or a property of the learned features?

    python studies/posthoc_eval.py DIR [DIR ...]      (DIR = an `ncguide compare` output directory)

For every run (``DIR/runs/<method>/seed-<s>/checkpoint.pt``) the backbone is evaluated in eval mode on
the full train and test splits, ``h̃ = head.transform(model(x))``, and the test accuracy of these
classifiers is printed (median [min–max] over seeds):

- ``stored``:   the head as evaluated by the training loop (ETF heads: ``W`` of the last ``U``, ``b = -W μ_G``
                with the running global mean; standard: its learned ``W, b``)
- ``exact-b``:  the stored ``W`` with ``b = -W m`` (``m`` = exact mean of the training ``h̃``)
- ``refit-U``:  ``W`` of the nearest simplex ETF (δ = 0, polar factor) to the exact centred training class
                means, ``b = -W m`` — the classifier the head would hold with perfectly fresh means
- ``ncc``:      nearest class mean (Euclidean, exact training class means) — a classifier-free probe of the features
- ``test-nc1``: NC1 of the test features (within/between class variability; a feature-quality probe)
- ``cos(W, W_refit)``: mean cosine of matching rows of the stored and the refit classifier
- ``active units``: share of the ``d`` feature units that are positive on >= 1% of training samples
- ``W top-10``: share of ``‖W‖²_F`` on the 10 heaviest feature coordinates (Haar-random ``W``: ~0.08 at ``d = 256``)

No training: reads the checkpoints only (CPU, a few seconds per run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ncguide import nc_metrics, polar_factor
from ncguide.etf import center_classes, etf_weight
from ncguide.experiments import TrainConfig, build_backbone, build_run_head, load_checkpoint, load_data, steps_per_epoch
from tables import median_range, table_head


@torch.no_grad()
def features(model, head, x, bs=1024):
    return torch.cat([head.transform(model(x[i : i + bs]).float()) for i in range(0, len(x), bs)]).double()


@torch.no_grad()
def run_one(run: Path, cache: dict) -> dict:
    ck = load_checkpoint(run / "checkpoint.pt")
    cfg = TrainConfig.from_dict({**ck["config"], "device": "cpu"})
    key = (cfg.dataset, cfg.seed, cfg.train_per_class, cfg.test_per_class)
    if key not in cache:
        cache[key] = load_data(cfg)
    ds = cache[key]
    model = build_backbone(cfg, ds)
    head = build_run_head(cfg, int(model.feature_dim), ds.num_classes, steps_per_epoch(cfg, ds))  # the state is loaded
    model.load_state_dict(ck["model"])
    head.load_state_dict(ck["head"])
    model.eval()
    head.eval()
    htr = features(model, head, ds.x_train)
    hte = features(model, head, ds.x_test)
    ytr, yte = ds.y_train, ds.y_test
    K = ds.num_classes
    W, b = head.weight.double(), head.bias.double()
    m = htr.mean(0)
    means = torch.stack([htr[ytr == c].mean(0) for c in range(K)], 1)  # d×K
    out = {}

    def acc(h, y, W_, b_):
        return ((h @ W_.T + b_).argmax(1) == y).double().mean().item()

    out["stored"] = acc(hte, yte, W, b)
    out["stored-train"] = acc(htr, ytr, W, b)
    out["exact-b"] = acc(hte, yte, W, -(W @ m))
    Wr = etf_weight(polar_factor(center_classes(means - m[:, None])))
    out["refit-U"] = acc(hte, yte, Wr, -(Wr @ m))
    d2 = torch.cdist(hte, means.T)
    out["ncc"] = (d2.argmin(1) == yte).double().mean().item()
    out["test-nc1"] = nc_metrics(hte.float(), yte, W.float(), b.float())["nc1"]
    # how far the stored classifier is from the refit one (cosine of matched rows, mean)
    out["cos(W,Wrefit)"] = torch.nn.functional.cosine_similarity(W, Wr, dim=1).mean().item()
    # feature usage: units (coordinates of h) active (> 0) on at least 1% of training samples, and the
    # share of the classifier's energy on its 10 heaviest coordinates (Haar-random W: ~0.08 at d = 256)
    out["active-units"] = ((htr > 0).double().mean(0) >= 0.01).double().mean().item()
    e = (W**2).sum(0).sort(descending=True).values
    out["W-top10"] = (e[:10].sum() / e.sum()).item()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", type=Path)
    a = p.parse_args()
    torch.set_num_threads(1)
    cols = [
        "stored-train",
        "stored",
        "exact-b",
        "refit-U",
        "ncc",
        "test-nc1",
        "cos(W,Wrefit)",
        "active-units",
        "W-top10",
    ]
    print(table_head(["setting", "method", "seeds", "train acc % (stored)", "test acc % stored", "exact-b",
                      "refit-U", "ncc", "test NC1", "cos(W, W_refit)", "active units %", "W energy on top-10 coords"],
                     "llr" + "r" * len(cols)))
    cache: dict = {}
    for d in a.dirs:
        for mdir in sorted((d / "runs").iterdir()):
            res = [run_one(r, cache) for r in sorted(mdir.glob("seed-*")) if (r / "checkpoint.pt").is_file()]
            if not res:
                continue
            cells = []
            for c in cols:
                if c == "test-nc1":
                    cells.append(median_range([r[c] for r in res], "{:.2f}"))
                elif c.startswith("cos") or c == "W-top10":
                    cells.append(median_range([r[c] for r in res], "{:.3f}"))
                else:
                    cells.append(median_range([r[c] for r in res], scale=100))
            print(f"| {d.name} | `{mdir.name}` | {len(res)} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
