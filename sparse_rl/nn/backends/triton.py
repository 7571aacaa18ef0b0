"""Triton backend for CUDA GPUs: CSR forward, CSC gradient to the inputs and a sampled product for the values.

Available only with a CUDA device and an importable triton; float64 layers fall back to the reference path.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

import torch as th

from sparse_rl.nn.backends._common import csc_layout
from sparse_rl.nn.backends.base import KernelBackend

if TYPE_CHECKING:
    from sparse_rl.nn.base import SparseLayer
    from sparse_rl.nn.layers import SparseLinear

_DTYPES = (th.float32, th.float16, th.bfloat16)
BLOCK_K = 32
_kernels: Any = None


def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def _k() -> Any:
    global _kernels
    if _kernels is None:
        from sparse_rl.nn.backends import _triton_kernels

        _kernels = _triton_kernels
    return _kernels


def _block_b(batch: int) -> int:
    return int(min(128, max(16, 1 << (batch - 1).bit_length())))


def _index(layer: SparseLayer) -> dict[str, th.Tensor]:
    """Device int32 index arrays (CSR row of each entry, CSC layout), cached per topology."""

    def build() -> dict[str, th.Tensor]:
        colptr, rowidx, perm = csc_layout(layer)
        return {"rows": layer.row_indices().int(), "colptr": colptr.int(), "rowidx": rowidx.int(), "perm": perm.int()}

    return layer.cached("triton_index", build)


def _spmm(xt: th.Tensor, values: th.Tensor, idx: th.Tensor, ptr: th.Tensor, perm: th.Tensor | None,
          bias: th.Tensor | None, n_out: int, batch: int) -> th.Tensor:
    """``y [B, n_out]`` from feature-major ``xt [n_in, B]`` and a CSR (optionally permuted values) matrix."""
    y = th.empty(batch, n_out, device=xt.device, dtype=xt.dtype)
    if n_out == 0:
        return y
    block_b = _block_b(batch)
    grid = (n_out, (batch + block_b - 1) // block_b)
    _k().spmm_kernel[grid](xt, values, idx, ptr, perm if perm is not None else ptr, bias if bias is not None else values,
                           y, batch, n_out, HAS_BIAS=bias is not None, HAS_PERM=perm is not None, BLOCK_B=block_b,
                           BLOCK_K=BLOCK_K)
    return y


class _LinearFn(th.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x2: th.Tensor, values: th.Tensor, bias: th.Tensor | None, layer: SparseLayer) -> th.Tensor:
        xt = x2.t().contiguous()
        rows, cols = layer.matrix_shape
        ctx.index, ctx.indices, ctx.shape = _index(layer), layer.indices, (rows, cols)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(xt, values)
        return _spmm(xt, values, layer.indices, layer.indptr, None, bias, rows, x2.shape[0])

    @staticmethod
    @th.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: th.Tensor) -> tuple[th.Tensor | None, ...]:
        xt, values = ctx.saved_tensors
        rows, cols = ctx.shape
        index = ctx.index
        batch = grad_out.shape[0]
        dyt = grad_out.to(values.dtype).t().contiguous()
        dx = dv = db = None
        if ctx.needs_input_grad[0]:
            dx = _spmm(dyt, values, index["rowidx"], index["colptr"], index["perm"], None, cols, batch)
        if ctx.needs_input_grad[1]:
            dv = th.empty_like(values)
            if values.numel() and batch:
                grid = ((values.numel() + BLOCK_K - 1) // BLOCK_K,)
                _k().sddmm_kernel[grid](dyt, xt, index["rows"], ctx.indices, dv, values.numel(), batch,
                                        BLOCK_K=BLOCK_K, BLOCK_B=_block_b(batch))
            else:
                dv.zero_()
        if ctx.needs_input_grad[2] and ctx.has_bias:
            db = dyt.sum(1)
        return dx, dv, db, None


class TritonBackend(KernelBackend["SparseLinear"]):
    """Triton CSR kernels for ``SparseLinear`` on CUDA; convolutions use the reference path."""

    name = "triton"

    def available(self, device: th.device | str) -> bool:
        return th.device(device).type == "cuda" and th.cuda.is_available() and _triton_importable()

    def supports(self, layer: SparseLayer) -> bool:
        """Whether the layer's dtype runs on the kernels (else calls fall back to the reference path)."""
        return layer.values.dtype in _DTYPES

    def prepare(self, layer: SparseLinear, inputs: th.Tensor) -> SparseLinear | None:
        ok = self.supports(layer) and inputs.dtype == layer.values.dtype and inputs.is_cuda and layer.values.is_cuda
        return layer if ok else None

    def forward(self, state: SparseLinear, x2: th.Tensor, values: th.Tensor, bias: th.Tensor | None) -> th.Tensor:
        return _spmm(x2.t().contiguous(), values, state.indices, state.indptr, None, bias, state.matrix_shape[0],
                     x2.shape[0])

    def forward_with_grad(self, state: SparseLinear, x2: th.Tensor, values: th.Tensor, bias: th.Tensor | None) -> th.Tensor:
        y: th.Tensor = _LinearFn.apply(x2, values, bias, state)  # type: ignore[no-untyped-call]
        return y
