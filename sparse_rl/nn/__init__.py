"""Truly sparse layers (PyTorch only, no SB3 import)."""

from sparse_rl.nn.layers import SparseConv2d, SparseLayer, SparseLinear, SparseWeightMixin, check_sparsity, random_mask

__all__ = ["SparseConv2d", "SparseLayer", "SparseLinear", "SparseWeightMixin", "check_sparsity", "random_mask"]
