"""2:4 semi-structured backend: ``torch.sparse.to_sparse_semi_structured`` on GPUs with sparse tensor cores.

Usable for layouts where every group of 4 consecutive columns of every row holds at most 2 nonzeros (e.g. a
constant fan-in 2:4 mask) and shapes the hardware accepts; other layers run on the reference path. The forward uses
the compressed weight (recompressed when the values change); the backward is dense: ``dx = dy W`` and the gradient
to the values is ``dy^T x`` gathered at the stored positions.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch as th
import torch.nn.functional as F

from sparse_rl.nn.backends._common import dense_linear
from sparse_rl.nn.backends.base import KernelBackend

if TYPE_CHECKING:
    from sparse_rl.nn.base import SparseLayer
    from sparse_rl.nn.layers import SparseLinear

_DTYPES = (th.float16, th.bfloat16, th.float32)
_warned: list[bool] = []


def _to_semi_structured() -> Any:
    sparse = getattr(th, "sparse", None)
    return getattr(sparse, "to_sparse_semi_structured", None)


def is_two_four(layer: SparseLayer) -> bool:
    """Whether every aligned group of 4 columns in each row holds at most 2 stored weights (cached per topology)."""

    def build() -> bool:
        rows, cols = layer.matrix_shape
        if cols % 4:
            return False
        counts = th.zeros(rows * (cols // 4), dtype=th.int32, device=layer.values.device)
        counts.index_add_(0, layer.flat_indices() // 4, th.ones(layer.nnz, dtype=th.int32, device=counts.device))
        return bool((counts <= 2).all())

    return layer.cached("two_four", build)


def _compressed(layer: SparseLayer) -> Any:
    """The compressed weight, rebuilt when the topology or the values (their version counter) change."""
    holder: dict[str, Any] = layer.cached("semi_structured", dict)
    key = layer.values._version
    if holder.get("version") != key:
        with th.no_grad():
            holder["weight"] = _to_semi_structured()(layer.dense_weight().detach())
        holder["version"] = key
    return holder["weight"]


class _LinearFn(th.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x2: th.Tensor, values: th.Tensor, bias: th.Tensor | None, layer: SparseLayer) -> th.Tensor:
        ctx.flat, ctx.shape, ctx.has_bias = layer.flat_indices(), layer.matrix_shape, bias is not None
        ctx.save_for_backward(x2, values)
        return F.linear(x2, _compressed(layer), bias)

    @staticmethod
    @th.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: th.Tensor) -> tuple[th.Tensor | None, ...]:
        x2, values = ctx.saved_tensors
        dy = grad_out.to(values.dtype)
        dx = dv = db = None
        if ctx.needs_input_grad[0]:
            dense = values.new_zeros(ctx.shape[0] * ctx.shape[1]).scatter(0, ctx.flat, values).view(ctx.shape)
            dx = dy @ dense
        if ctx.needs_input_grad[1]:
            dv = (dy.t() @ x2).reshape(-1)[ctx.flat]
        if ctx.needs_input_grad[2] and ctx.has_bias:
            db = dy.sum(0)
        return dx, dv, db, None


class SemiStructuredBackend(KernelBackend["SparseLinear"]):
    """2:4 sparse tensor cores (CUDA, compute capability >= 8.0) for ``SparseLinear``; conv uses the reference path."""

    name = "semi_structured"

    def available(self, device: th.device | str) -> bool:
        device = th.device(device)
        if device.type != "cuda" or not th.cuda.is_available() or _to_semi_structured() is None:
            return False
        return th.cuda.get_device_capability(device)[0] >= 8

    def supports(self, layer: SparseLayer) -> bool:
        """A linear 2:4 layout with a dtype and shape the semi-structured kernels accept (rows % 32, cols % 64)."""
        rows, cols = layer.matrix_shape
        return (len(layer.weight_shape) == 2 and layer.values.dtype in _DTYPES and rows % 32 == 0 and cols % 64 == 0
                and is_two_four(layer))

    def prepare(self, layer: SparseLinear, inputs: th.Tensor) -> SparseLinear | None:
        ok = layer.values.is_cuda and inputs.dtype == layer.values.dtype and self.supports(layer)
        return layer if ok else None

    def forward(self, state: SparseLinear, x2: th.Tensor, values: th.Tensor, bias: th.Tensor | None) -> th.Tensor:
        return F.linear(x2, _compressed(state), bias)

    def forward_with_grad(self, state: SparseLinear, x2: th.Tensor, values: th.Tensor, bias: th.Tensor | None) -> th.Tensor:
        y: th.Tensor = _LinearFn.apply(x2, values, bias, state)  # type: ignore[no-untyped-call]
        return y

    def linear(self, layer: SparseLinear, inputs: th.Tensor) -> th.Tensor:
        """The shared call, falling back to the reference path (with one warning) when the sparse kernels reject it."""
        try:
            return super().linear(layer, inputs)
        except (RuntimeError, NotImplementedError) as err:  # e.g. a GPU/dtype/shape the sparse kernels reject
            if not _warned:
                warnings.warn(f"sparse_rl: semi_structured backend failed ({err}); using the reference path",
                              RuntimeWarning, stacklevel=2)
                _warned.append(True)
            return dense_linear(layer, inputs)
