"""The experiment machinery around the library: data sets, backbones, configs, optimisers, the training
loop, comparisons of methods × seeds, reports and the ``ncguide`` command.

    from ncguide.experiments import TrainConfig, load_config, run_compare, train
    record = train(TrainConfig(method="nearest-etf", dataset="digits", epochs=10), "out/run")
    summary = run_compare(load_config("configs/demo.yaml"), out_dir="demo-out")

It imports the library (``ncguide``); the library never imports it. YAML configs, figures, progress
bars and some data sets need the ``experiments`` extra (``pip install 'ncguide[experiments]'``).
"""

from .compare import run_compare
from .config import TrainConfig, apply_overrides, load_config
from .data import DATASETS, load_dataset
from .models import MODELS, build_model
from .optim import AGD
from .train import NonFiniteLossError, is_finished, train

__all__ = [
    "AGD",
    "DATASETS",
    "MODELS",
    "NonFiniteLossError",
    "TrainConfig",
    "apply_overrides",
    "build_model",
    "is_finished",
    "load_config",
    "load_dataset",
    "run_compare",
    "train",
]
