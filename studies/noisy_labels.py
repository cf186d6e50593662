"""A data set whose training accuracy does not saturate within a few epochs: MNIST-1D with symmetric label
noise, written as an ``npz:`` file for ``ncguide compare``.

    python studies/noisy_labels.py OUT.npz [--dataset mnist1d] [--noise 0.2] [--seed 0]

A fraction ``noise`` of the training labels (drawn once, seeded) is replaced by a uniformly drawn *other*
class; the test labels stay clean. Reaching 100% training accuracy then means memorising the flipped
samples, so every method needs many epochs and the paper's table (training accuracy at fixed epochs)
separates them. The file records ``noise``, ``seed`` and which samples were flipped (``flipped``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ncguide.experiments.data import load_dataset
from ncguide.experiments.files import atomic_write


def noisy_labels(y: np.ndarray, num_classes: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, flipped)``: ``round(noise·N)`` samples, chosen without replacement, get a uniformly drawn
    class other than their own."""
    rng = np.random.default_rng(seed)
    flipped = np.zeros(len(y), dtype=bool)
    flipped[rng.choice(len(y), size=round(noise * len(y)), replace=False)] = True
    shift = rng.integers(1, num_classes, size=len(y))  # 1..K-1: never the sample's own class
    return np.where(flipped, (y + shift) % num_classes, y), flipped


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--dataset", default="mnist1d")
    p.add_argument("--noise", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if not 0 <= a.noise < 1:
        p.error(f"--noise must lie in [0, 1); got {a.noise}")
    ds = load_dataset(a.dataset, seed=0)
    y, flipped = noisy_labels(ds.y_train.numpy(), ds.num_classes, a.noise, a.seed)
    arrays = dict(x_train=ds.x_train.numpy(), y_train=y, x_test=ds.x_test.numpy(), y_test=ds.y_test.numpy(),
                  flipped=flipped, noise=np.float64(a.noise), seed=np.int64(a.seed))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(a.out, lambda f: np.savez(f, **arrays))
    print(f"{a.out}: {a.dataset}, {flipped.sum()} of {len(y)} training labels flipped ({a.noise:g})")


if __name__ == "__main__":
    main()
