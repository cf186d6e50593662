"""ncguide: classifier heads set to the nearest simplex ETF (Markou, Ajanthan, Gould, NeurIPS 2024).

The library, on your own backbone (needs only ``torch`` and ``numpy``)::

    from ncguide import NearestETFHead, nc_metrics, nearest_etf, etf_weight

- the inner problem and its solvers: ``nearest_etf``, ``polar_factor``, ``polar_target``, ``inner_objective``,
  ``SOLVERS``; the stateful warm route for training loops: ``WarmPolarSolver``, ``WarmSettings``;
- simplex-ETF algebra: ``etf_weight``, ``simplex_etf``, ``centering_matrix``, ``canonical_stiefel``,
  ``random_stiefel``;
- heads: ``NearestETFHead``, ``FixedETFHead``, ``StandardHead`` (``Head``), ``build_head``, ``METHODS``;
  the running class means they use: ``RunningClassMeans``;
- neural-collapse metrics: ``nc_metrics``, ``nc_metrics_streaming``, ``NCAccumulator``;
- features of models you did not write: ``extract_features``, ``iter_features``, ``capture``;
- a head in place of a model's final Linear layer: ``replace_classifier`` (``HeadedModel``, ``find_classifier``).

The experiments (data sets, backbones, training loop, comparisons, reports, the ``ncguide`` command)
live in :mod:`ncguide.experiments`. Maths and conventions: ``docs/`` in the repository.
"""

from .etf import canonical_stiefel, centering_matrix, etf_weight, random_stiefel, simplex_etf
from .features import capture, extract_features, iter_features
from .heads import METHODS, FixedETFHead, Head, NearestETFHead, StandardHead, build_head
from .means import RunningClassMeans
from .metrics import NCAccumulator, nc_metrics, nc_metrics_streaming
from .solve import SOLVERS, inner_objective, nearest_etf, polar_factor, polar_target
from .warm_polar import WarmPolarSolver, WarmSettings
from .wrap import HeadedModel, find_classifier, replace_classifier

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "SOLVERS",
    "FixedETFHead",
    "Head",
    "HeadedModel",
    "NCAccumulator",
    "NearestETFHead",
    "RunningClassMeans",
    "StandardHead",
    "WarmPolarSolver",
    "WarmSettings",
    "build_head",
    "canonical_stiefel",
    "capture",
    "centering_matrix",
    "etf_weight",
    "extract_features",
    "find_classifier",
    "inner_objective",
    "iter_features",
    "nc_metrics",
    "nc_metrics_streaming",
    "nearest_etf",
    "polar_factor",
    "polar_target",
    "random_stiefel",
    "replace_classifier",
    "simplex_etf",
]
