"""Truly sparse layers (PyTorch only, no SB3 import): CSR storage, kernel backends, initial masks."""

from sparse_rl.nn.base import InitScale, SparseLayer, SparseWeightMixin
from sparse_rl.nn.fused import SparseSequential, fuse_sequentials
from sparse_rl.nn.layers import SparseConv2d, SparseLinear
from sparse_rl.nn.masks import check_sparsity, random_mask

__all__ = [
    "InitScale", "SparseConv2d", "SparseLayer", "SparseLinear", "SparseSequential", "SparseWeightMixin", "check_sparsity",
    "fuse_sequentials", "random_mask",
]
