"""Portable backend on ``torch.sparse`` CSR tensors, with a hand-written backward.

Forward ``y = (W x^T)^T + b`` and the gradient to the inputs ``(W^T dy^T)^T`` are CSR-times-dense products (the
transposed matrix comes from the cached CSC layout); the gradient to the values is a sampled dense-dense product
(``torch.sparse.sampled_addmm``) evaluated only at the stored positions, so nothing is densified.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch as th

from sparse_rl.nn.backends._common import csc_layout
from sparse_rl.nn.backends.base import KernelBackend

if TYPE_CHECKING:
    from sparse_rl.nn.base import SparseLayer
    from sparse_rl.nn.layers import SparseLinear

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
_SAMPLED_CHUNK = 1 << 22  # elements of a gathered [nnz-chunk, B] block when sampled_addmm is unsupported


def _index(layer: SparseLayer) -> tuple[th.Tensor, th.Tensor]:
    """int64 ``(crow, col)`` of the layer (torch.sparse needs matching index dtypes), cached per topology."""
    return layer.cached("torch_csr_index", lambda: (layer.indptr.long(), layer.indices.long()))


def _csr(crow: th.Tensor, col: th.Tensor, values: th.Tensor, shape: tuple[int, int]) -> th.Tensor:
    return th.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _grad_values(layer: SparseLayer, values: th.Tensor, x2: th.Tensor, dy: th.Tensor) -> th.Tensor:
    """``dv[k] = sum_b dy[b, row_k] x[b, col_k]`` without forming the dense ``dy^T x``."""
    crow, col = _index(layer)
    if values.device.type == "cuda" or values.dtype in (th.float32, th.float64):
        try:
            pattern = _csr(crow, col, th.zeros_like(values), layer.matrix_shape)
            sampled: th.Tensor = th.sparse.sampled_addmm(pattern, dy.t(), x2, beta=0.0)
            return sampled.values()
        except (RuntimeError, NotImplementedError):
            pass
    rows_of, out = layer.row_indices(), th.empty_like(values)
    step = max(1, _SAMPLED_CHUNK // max(1, x2.shape[0]))
    dyt, xt = dy.t(), x2.t()
    for start in range(0, values.numel(), step):
        sl = slice(start, start + step)
        out[sl] = (dyt[rows_of[sl]] * xt[col[sl]]).sum(1)
    return out


class _LinearFn(th.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x2: th.Tensor, values: th.Tensor, bias: th.Tensor | None, layer: SparseLayer) -> th.Tensor:
        ctx.layer = layer
        ctx.csc = csc_layout(layer) if ctx.needs_input_grad[0] else None
        ctx.index = _index(layer)
        ctx.save_for_backward(x2, values)
        ctx.has_bias = bias is not None
        return _forward(layer, x2, values, bias)

    @staticmethod
    @th.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: th.Tensor) -> tuple[th.Tensor | None, ...]:
        x2, values = ctx.saved_tensors
        layer = ctx.layer
        rows, cols = layer.matrix_shape
        dy = grad_out.to(values.dtype)
        dx = dv = db = None
        if ctx.needs_input_grad[0]:
            colptr, rowidx, perm = ctx.csc
            wt = _csr(colptr, rowidx, values[perm], (cols, rows))
            dx = th.sparse.mm(wt, dy.t()).t()
        if ctx.needs_input_grad[1]:
            dv = _grad_values(layer, values, x2, dy)
        if ctx.needs_input_grad[2] and ctx.has_bias:
            db = dy.sum(0)
        return dx, dv, db, None


def _forward(layer: SparseLayer, x2: th.Tensor, values: th.Tensor, bias: th.Tensor | None) -> th.Tensor:
    crow, col = _index(layer)
    w = _csr(crow, col, values, layer.matrix_shape)
    if bias is None:
        product: th.Tensor = th.sparse.mm(w, x2.t())
        return product.t()
    return th.addmm(bias.unsqueeze(1), w, x2.t()).t()


class TorchCsrBackend(KernelBackend["SparseLinear"]):
    """``torch.sparse`` CSR products on any device torch supports them on; convolutions use the reference path."""

    name = "torch_csr"

    def available(self, device: th.device | str) -> bool:
        return th.device(device).type in ("cpu", "cuda") and (th.device(device).type == "cpu" or th.cuda.is_available())

    def prepare(self, layer: SparseLinear, inputs: th.Tensor) -> SparseLinear | None:
        if inputs.dtype != layer.values.dtype or not inputs.is_floating_point() or inputs.is_meta:
            return None  # torch.sparse has no meta kernels: shapes from the reference path
        return layer

    def forward(self, state: SparseLinear, x2: th.Tensor, values: th.Tensor, bias: th.Tensor | None) -> th.Tensor:
        return _forward(state, x2, values, bias)

    def forward_with_grad(self, state: SparseLinear, x2: th.Tensor, values: th.Tensor, bias: th.Tensor | None) -> th.Tensor:
        y: th.Tensor = _LinearFn.apply(x2, values, bias, state)  # type: ignore[no-untyped-call]
        return y
