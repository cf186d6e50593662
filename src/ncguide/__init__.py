"""ncguide: classifier heads set to the nearest simplex ETF (Markou, Gould, Ajanthan, NeurIPS 2024).

Public API (DESIGN §4)::

    from ncguide import nearest_etf, etf_weight, NearestETFHead, nc_metrics

The solver, the heads and the metrics need only ``torch``; the experiment layer (``train``,
``compare``, reports) uses the optional ``experiments`` extra.
"""

from .config import TrainConfig, apply_overrides, load_config
from .data import DATASETS, TensorLoader, load_dataset
from .etf import canonical_stiefel, centering_matrix, etf_weight, random_stiefel, simplex_etf
from .features import capture, extract_features, iter_features
from .heads import METHODS, FixedETFHead, Head, NearestETFHead, StandardHead, build_head
from .means import RunningClassMeans, RunningMean
from .metrics import NCAccumulator, nc_metrics, nc_metrics_streaming
from .models import MODELS, build_model
from .optim import AGD
from .solve import SOLVERS, inner_objective, nearest_etf, polar_factor
from .train import NonFiniteLossError, is_finished, train

__version__ = "0.1.0"

__all__ = [
    "AGD",
    "DATASETS",
    "METHODS",
    "MODELS",
    "SOLVERS",
    "FixedETFHead",
    "Head",
    "NCAccumulator",
    "NearestETFHead",
    "NonFiniteLossError",
    "RunningClassMeans",
    "RunningMean",
    "StandardHead",
    "TensorLoader",
    "TrainConfig",
    "apply_overrides",
    "build_head",
    "build_model",
    "canonical_stiefel",
    "capture",
    "centering_matrix",
    "etf_weight",
    "extract_features",
    "inner_objective",
    "is_finished",
    "iter_features",
    "load_config",
    "load_dataset",
    "nc_metrics",
    "nc_metrics_streaming",
    "nearest_etf",
    "polar_factor",
    "random_stiefel",
    "simplex_etf",
    "train",
]
