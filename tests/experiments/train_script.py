"""Helper for tests/experiments/test_train.py: run ``ncguide.experiments.train`` in a separate process
(or under torchrun).

    python tests/experiments/train_script.py OUT_DIR CONFIG_JSON [--sleep S --sleep-after N] [--no-resume]
    python tests/experiments/train_script.py cli --eval-sleep S --marker FILE -- ARGS...

``Probe`` wraps the configured backbone: it counts training forward calls in ``OUT_DIR/calls.txt``,
sleeps ``S`` seconds per training call after the first ``N`` (a window for the test to kill the
process inside an epoch), and can return NaN features at call ``nan_at`` or send itself SIGINT at
call ``sigint_at``; with ``eval_sleep`` it creates the file ``marker`` at its first evaluation call and
sleeps that long per evaluation call (a window inside the evaluation before training). None of this
changes the arithmetic of a run. The ``cli`` form runs ``ncguide ARGS...`` (``cli.main``) with every
backbone the training loop builds wrapped in such a probe.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn


class Probe(nn.Module):
    def __init__(self, inner: nn.Module, out_dir=None, sleep=0.0, sleep_after=0, nan_at=None, sigint_at=None,
                 eval_sleep=0.0, marker=None):
        super().__init__()
        self.inner = inner
        self.feature_dim = inner.feature_dim
        self.out_dir, self.sleep, self.sleep_after = out_dir, sleep, sleep_after
        self.nan_at, self.sigint_at = nan_at, sigint_at
        self.eval_sleep, self.marker = eval_sleep, marker
        self.calls = 0

    def forward(self, x):
        h = self.inner(x)
        if not self.training:
            if self.marker is not None and not Path(self.marker).exists():
                Path(self.marker).write_text("evaluating\n")
            time.sleep(self.eval_sleep)
            return h
        self.calls += 1
        if self.out_dir is not None:
            Path(self.out_dir, "calls.txt").write_text(str(self.calls))
        if self.sleep and self.calls > self.sleep_after:
            time.sleep(self.sleep)
        if self.sigint_at == self.calls:
            os.kill(os.getpid(), signal.SIGINT)
        if self.nan_at == self.calls:
            h = h * float("nan")
        return h


def build_probe(cfg, **kwargs) -> Probe:
    """The backbone ``train`` would build for ``cfg`` (same seed), wrapped in a ``Probe``."""
    from ncguide.experiments.data import load_dataset
    from ncguide.experiments.models import build_model

    ds = load_dataset(cfg.dataset, seed=cfg.seed, train_per_class=cfg.train_per_class)
    torch.manual_seed(cfg.seed)
    return Probe(build_model(cfg.model, ds.input_shape, ds.num_classes, **cfg.model_kwargs), **kwargs)


def cli(argv: list[str]) -> int:
    """``ncguide ARGS`` with the training loop's backbones wrapped in a ``Probe`` (``--eval-sleep``, ``--marker``)."""
    import importlib

    from ncguide.experiments.cli import main as ncguide

    train_mod = importlib.import_module("ncguide.experiments.train")  # the module (the package exports a function)

    p = argparse.ArgumentParser()
    p.add_argument("--eval-sleep", type=float, default=0.0)
    p.add_argument("--marker", default=None)
    p.add_argument("args", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    real = train_mod.build_backbone
    train_mod.build_backbone = lambda cfg, ds: Probe(real(cfg, ds), eval_sleep=args.eval_sleep, marker=args.marker)
    return ncguide(args.args[1:] if args.args[:1] == ["--"] else args.args)


def main() -> None:
    if sys.argv[1:2] == ["cli"]:
        sys.exit(cli(sys.argv[2:]))
    from ncguide.experiments.config import TrainConfig
    from ncguide.experiments.train import train

    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("config")
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--sleep-after", type=int, default=0)
    p.add_argument("--no-resume", action="store_true")
    args = p.parse_args()
    cfg = TrainConfig.from_dict(json.loads(args.config))
    out_dir = args.out if args.sleep else None  # the call counter is for the kill test only
    model = build_probe(cfg, out_dir=out_dir, sleep=args.sleep, sleep_after=args.sleep_after)
    train(cfg, args.out, resume=not args.no_resume, progress="none", model=model)


if __name__ == "__main__":
    sys.exit(main())
