"""Helpers shared by the backends: the dense reference computation, the transposed (CSC) layout, input flattening."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch as th
import torch.nn.functional as F

if TYPE_CHECKING:
    from sparse_rl.nn.base import SparseLayer
    from sparse_rl.nn.layers import SparseConv2d, SparseLinear


def dense_weight(layer: SparseLayer) -> th.Tensor:
    """The layer's dense weight: a view of ``values`` when every connection is present, else their scatter.

    A fully connected layer (ERK often makes small first layers dense) stores its values in row-major order already.

    :param layer: a sparse layer
    :return: ``layer.weight_shape``, differentiable with respect to ``layer.values``
    """
    values = layer.values
    if values.numel() == layer.numel_dense:
        return values.view(layer.weight_shape)
    return layer.dense_weight()


def dense_linear(layer: SparseLinear, inputs: th.Tensor) -> th.Tensor:
    """``F.linear`` on the materialised dense weight: the reference every kernel is tested against.

    Without autograd (acting) the materialised weight is kept until the values or the topology change, so repeated
    calls between optimizer steps skip the scatter (at batch 1 it cost more than the product). Layers whose values
    are written through ``.data`` (SB3's target networks, Polyak-averaged in place) opt out:
    ``layer.frozen_weight_cache = False``.

    :param layer: a sparse linear layer
    :param inputs: ``[*, in_features]``
    :return: ``[*, out_features]``
    """
    if th.is_grad_enabled() or not getattr(layer, "frozen_weight_cache", True):
        return F.linear(inputs, dense_weight(layer), layer.bias)
    return F.linear(inputs, frozen_dense_weight(layer), layer.bias)


def frozen_dense_weight(layer: SparseLayer) -> th.Tensor:
    """:func:`dense_weight` without autograd, rebuilt only when the values change (in place: their version counter;
    replaced: their storage) or the topology does (``layer.cached``)."""
    values = layer.values
    stamp = (values._version, values.data_ptr())
    kept: dict[str, object] = layer.cached("frozen_dense_weight", dict)
    if kept.get("stamp") != stamp:
        with th.no_grad():
            kept["weight"], kept["stamp"] = dense_weight(layer).detach(), stamp
    weight = kept["weight"]
    assert isinstance(weight, th.Tensor)
    return weight


def dense_conv2d(layer: SparseConv2d, inputs: th.Tensor) -> th.Tensor:
    """``F.conv2d`` on the materialised dense weight.

    :param layer: a sparse convolution
    :param inputs: ``[N, C_in, H, W]`` (or unbatched ``[C_in, H, W]``)
    :return: ``[N, C_out, H_out, W_out]``
    """
    return F.conv2d(inputs, dense_weight(layer), layer.bias, **layer.conv_kwargs())


def csc_arrays(layer: SparseLayer, dtype: th.dtype = th.long) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
    """``(colptr, rowidx, perm)`` of the layer's matrix in CSC order, computed now (not cached), of ``dtype``.

    ``perm[k]`` is the CSR slot of the k-th CSC entry, so ``values[perm]`` are the CSC values (i.e. the CSR values of
    the transposed matrix).

    :param layer: a sparse layer
    :param dtype: integer dtype of the three arrays (the int64 intermediates are freed on return)
    :return: ``colptr [cols + 1]``, ``rowidx [nnz]``, ``perm [nnz]``
    """
    rows, cols = layer.matrix_shape
    counts = (layer.indptr[1:] - layer.indptr[:-1]).long()
    row_of = th.repeat_interleave(th.arange(rows, device=counts.device), counts, output_size=layer.nnz)
    col_of = layer.indices.long()
    perm = th.sort(col_of * rows + row_of).indices
    colptr = th.zeros(cols + 1, dtype=th.long, device=col_of.device)
    colptr[1:] = th.bincount(col_of, minlength=cols).cumsum(0)
    return colptr.to(dtype), row_of[perm].to(dtype), perm.to(dtype)


def csc_layout(layer: SparseLayer) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
    """:func:`csc_arrays` in int64, cached per topology (the ``torch_csr`` backend's layout).

    :param layer: a sparse layer
    :return: ``colptr [cols + 1]``, ``rowidx [nnz]``, ``perm [nnz]``
    """
    return layer.cached("csc", lambda: csc_arrays(layer))


def flatten_inputs(layer: SparseLayer, inputs: th.Tensor) -> tuple[th.Tensor, tuple[int, ...]]:
    """Inputs ``[*, cols]`` as a 2-D ``[B, cols]`` tensor (a view when possible) and the leading shape ``*``.

    :param layer: a sparse layer (``cols`` is ``layer.matrix_shape[1]``)
    :param inputs: ``[*, cols]``
    :raises ValueError: when the last dimension of ``inputs`` is not ``cols``
    """
    cols = layer.matrix_shape[1]
    if inputs.shape[-1] != cols:
        raise ValueError(f"expected inputs with last dimension {cols}, got shape {tuple(inputs.shape)}")
    lead = tuple(inputs.shape[:-1])
    return (inputs if inputs.dim() == 2 else inputs.reshape(-1, cols)), lead
