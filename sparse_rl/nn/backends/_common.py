"""Helpers shared by the sparse backends: the transposed (CSC) layout and input flattening."""

from __future__ import annotations

from typing import Any

import torch as th


def csc_layout(layer: Any) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
    """``(colptr, rowidx, perm)`` of the layer's matrix in CSC order, int64, cached per topology.

    ``perm[k]`` is the CSR slot of the k-th CSC entry, so ``values[perm]`` are the CSC values (i.e. the CSR values of
    the transposed matrix).
    """

    def build() -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        rows, cols = layer.matrix_shape
        row_of = layer.row_indices()
        col_of = layer.indices.long()
        perm = th.sort(col_of * rows + row_of).indices
        colptr = th.zeros(cols + 1, dtype=th.long, device=col_of.device)
        colptr[1:] = th.bincount(col_of, minlength=cols).cumsum(0)
        return colptr, row_of[perm], perm

    return layer.cached("csc", build)


def flatten_inputs(layer: Any, inputs: th.Tensor) -> tuple[th.Tensor, tuple[int, ...]]:
    """Inputs ``[..., in]`` as a 2-D ``[B, in]`` tensor (a view when possible) and the leading shape."""
    cols = layer.matrix_shape[1]
    if inputs.shape[-1] != cols:
        raise ValueError(f"expected inputs with last dimension {cols}, got shape {tuple(inputs.shape)}")
    lead = tuple(inputs.shape[:-1])
    return (inputs if inputs.dim() == 2 else inputs.reshape(-1, cols)), lead


def needs_grad(layer: Any, inputs: th.Tensor) -> bool:
    """Whether autograd must track this call."""
    if not th.is_grad_enabled():
        return False
    bias = layer.bias
    return inputs.requires_grad or layer.values.requires_grad or (bias is not None and bias.requires_grad)
