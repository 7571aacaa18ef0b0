"""The traceable path: what a sparse layer computes under tracing, export and compilation.

The kernel backends call compiled code on raw pointers (``data_ptr()``) or build ``torch.sparse`` tensors, and keep
caches keyed on storage pointers: ``torch.jit.trace`` (and so the TorchScript ONNX exporter) records such a call as a
constant, and ``torch.export`` / ``torch.compile`` / the dynamo ONNX exporter run the layer on fake tensors that have no
storage at all. Under any of those the layers take this path instead (:func:`is_tracing` decides, once per call): the
dense weight is scattered from ``values`` at the CSR positions, then ``F.linear`` / ``F.conv2d``. Every op is a plain
ATen op with static shapes that ONNX (``ScatterElements``, ``CumSum``, ``Gemm``/``Conv``) and ONNX Runtime run, the
values stay parameters of the graph, and the output depends on the input. Exported graphs are therefore densified:
ONNX Runtime folds the scatter into a dense weight when it loads the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch as th
import torch.nn.functional as F

from sparse_rl.nn.backends import ops

if TYPE_CHECKING:
    from sparse_rl.nn.base import SparseLayer
    from sparse_rl.nn.layers import SparseConv2d, SparseLinear

_Tensor = th.Tensor
_is_jit_tracing = th._C._is_tracing
_is_compiling = getattr(getattr(th, "compiler", None), "is_compiling", lambda: False)


class _CompilerFlag:
    """Stand-in for ``torch.compiler`` where it has no ``_is_compiling_flag``: asks the public function."""

    @property
    def _is_compiling_flag(self) -> bool:
        return _is_compiling()


# Dynamo sees torch.compiler._is_compiling_flag set while it traces (torch.compile, strict torch.export). Reading it
# costs a fraction of a call to torch.compiler.is_compiling(), which matters on every batch-1 layer call; it must be
# read before torch._C._is_tracing, an op dynamo cannot trace.
compiler_state: Any = th.compiler if hasattr(th.compiler, "_is_compiling_flag") else _CompilerFlag()


def is_tracing(inputs: th.Tensor) -> bool:
    """Whether this call is being traced, exported or compiled rather than run eagerly.

    True for fake / functional tensors (``torch.export``, the dynamo ONNX exporter, any tensor subclass), under
    dynamo (``torch.compile``, strict ``torch.export``) and under ``torch.jit.trace`` (the TorchScript ONNX exporter).
    The layers inline the same test in their ``forward`` (it costs well under 0.1 microseconds eagerly).

    :param inputs: the layer's input
    """
    return type(inputs) is not _Tensor or compiler_state._is_compiling_flag or _is_jit_tracing()


def flat_indices(layer: SparseLayer) -> th.Tensor:
    """Position of each stored value in the flattened dense matrix, int64, computed with static shapes only.

    Real tensors (``torch.jit.trace``) reuse the layer's cached positions, which the trace records as a constant; fake
    tensors and dynamo compute them from ``indptr`` and ``indices`` without a cache, with ops of known output size:
    the row of entry ``k`` is the number of row ends ``indptr[1:]`` at or before ``k`` (a scatter-add of ones at the
    row ends, then a cumulative sum), so no ``repeat_interleave`` with data-dependent size enters the graph.

    :param layer: a sparse layer (:class:`~sparse_rl.nn.base.SparseLayer`)
    """
    indices = layer.indices
    if not (_is_compiling() or type(indices) is not _Tensor):
        return layer.flat_indices()
    nnz = layer.values.numel()
    row_ends = layer.indptr[1:].long()
    marks = th.zeros(nnz + 1, dtype=th.long, device=indices.device).scatter_add(0, row_ends, th.ones_like(row_ends))
    return marks[:nnz].cumsum(0) * layer.matrix_shape[1] + indices.long()


def dense_weight(layer: SparseLayer) -> th.Tensor:
    """The layer's dense weight (zeros at pruned positions), differentiable in ``values``, from traceable ops only.

    Sizes come from the layer's shape only (``torch.jit.trace`` would warn about any taken from a tensor).

    :param layer: a sparse layer (:class:`~sparse_rl.nn.base.SparseLayer`)
    """
    values = layer.values
    flat = values.new_zeros(layer.numel_dense).scatter(0, flat_indices(layer), values)
    return flat.view(layer.weight_shape)


_record: list[bool] = [False]


@contextmanager
def record_operators(enabled: bool = True) -> Iterator[None]:
    """Within the block, traced, exported and compiled ``SparseLinear`` calls record the CPU operators instead of the
    dense scatter: ``torch.ops.sparse_rl.spmm`` (forward only: ``torch.export`` of a policy for inference), or
    ``torch.ops.sparse_rl.linear`` when a gradient is needed and the layer has run eagerly once (``torch.compile`` of a
    training step; its CSC layout comes from that call). The graph then keeps the sparse kernel, and the program runs
    on any machine where the operators load. ONNX has no such operator: export ONNX outside this block (the default
    path, a dense weight scattered from the stored values).

    :param enabled: ``False`` restores the default inside a block that enabled it
    :raises RuntimeError: when the operators are not available here
    """
    if enabled and not ops.available():
        raise RuntimeError("the sparse_rl PyTorch operators are not available here: nothing to record")
    previous = _record[0]
    _record[0] = enabled
    try:
        yield
    finally:
        _record[0] = previous


def linear(layer: SparseLinear, inputs: th.Tensor) -> th.Tensor:
    """``SparseLinear``'s output on the traceable path (the operators inside :func:`record_operators`).

    :param layer: a :class:`~sparse_rl.nn.layers.SparseLinear`
    :param inputs: ``[*, in_features]``
    :return: ``[*, out_features]``
    """
    values, bias = layer.values, layer.bias
    if _record[0] and inputs.device.type == "cpu" and values.dtype in (th.float32, th.float64) and inputs.dim() >= 1:
        x2 = inputs.reshape(-1, layer.in_features)
        fast = layer._fast
        grad = th.is_grad_enabled() and (inputs.requires_grad or values.requires_grad)
        if grad and fast is not None and fast.version == layer.topology_version:
            csc = fast.csc()
            y: th.Tensor = th.ops.sparse_rl.linear(x2, values, bias, fast.indptr, fast.indices, fast.blocks, csc.colptr,
                                                   csc.rowidx, csc.perm, csc.cblocks, 0, False)
            return y.reshape(*inputs.shape[:-1], layer.out_features)
        if not grad:
            y = th.ops.sparse_rl.spmm(x2, values, bias, layer.indptr, layer.indices, None, 0, False)
            return y.reshape(*inputs.shape[:-1], layer.out_features)
    return F.linear(inputs, dense_weight(layer), bias)


def conv2d(layer: SparseConv2d, inputs: th.Tensor) -> th.Tensor:
    """``SparseConv2d``'s output on the traceable path.

    :param layer: a :class:`~sparse_rl.nn.layers.SparseConv2d`
    :param inputs: ``[N, C_in, H, W]``
    :return: ``[N, C_out, H_out, W_out]``
    """
    return F.conv2d(inputs, dense_weight(layer), layer.bias, **layer.conv_kwargs())
