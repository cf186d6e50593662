"""A dispatch-mode detector of the operators that make a GPU wait (shared by the solver tests)."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class HostReads(TorchDispatchMode):
    """Records every operator that decomposes a matrix, copies a device value to the host, or has a
    data-dependent output shape (which makes CUDA wait: nonzero, masked_select, unique, boolean indexing)."""

    FORBIDDEN = ("linalg_", "_linalg_", "svd", "eig", "_local_scalar_dense", "is_nonzero", "item",
                 "nonzero", "masked_select", "unique")

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__
        if any(f in name for f in self.FORBIDDEN) and "vector_norm" not in name and "matrix_norm" not in name:
            self.seen.append(name)
        indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
        if name.startswith("index") and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices):
            self.seen.append(name + " with a boolean mask")
        return func(*args, **(kwargs or {}))
