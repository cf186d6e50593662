"""The experiment machinery around the library: data sets, backbones, configs, optimisers, the training
loop, comparisons of methods × seeds, reports and the ``ncguide`` command.

    from ncguide.experiments import TrainConfig, run_compare, train
    record = train(TrainConfig(method="nearest-etf", dataset="digits", epochs=10), "out/run")
    summary = run_compare({"dataset": "digits", "epochs": 10}, ["standard", "nearest-etf"], seeds=2, out_dir="out")

It imports the library (``ncguide``); the library never imports it. YAML configs, figures, progress
bars and some data sets need the ``experiments`` extra (``pip install 'ncguide[experiments]'``).
"""

from .build import build_backbone, build_run_head, head_kwargs, load_data, make_loaders, steps_per_epoch
from .checkpoint import is_finished, load_checkpoint
from .compare import run_compare
from .config import TrainConfig, apply_overrides, load_config
from .data import DATASETS, load_dataset
from .evaluate import evaluate
from .models import MODELS, build_model
from .optim import AGD
from .train import NonFiniteLossError, train

__all__ = [
    "AGD",
    "DATASETS",
    "MODELS",
    "NonFiniteLossError",
    "TrainConfig",
    "apply_overrides",
    "build_backbone",
    "build_model",
    "build_run_head",
    "evaluate",
    "head_kwargs",
    "is_finished",
    "load_checkpoint",
    "load_config",
    "load_data",
    "load_dataset",
    "make_loaders",
    "run_compare",
    "steps_per_epoch",
    "train",
]
