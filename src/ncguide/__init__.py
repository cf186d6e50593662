"""ncguide: classifier heads set to the nearest simplex ETF (Markou, Gould, Ajanthan, NeurIPS 2024).

Public API (DESIGN §4)::

    from ncguide import nearest_etf, etf_weight
"""

from .etf import canonical_stiefel, centering_matrix, etf_weight, random_stiefel, simplex_etf
from .solve import inner_objective, nearest_etf, polar_factor

__version__ = "0.1.0"

__all__ = [
    "canonical_stiefel",
    "centering_matrix",
    "etf_weight",
    "inner_objective",
    "nearest_etf",
    "polar_factor",
    "random_stiefel",
    "simplex_etf",
]
