"""Compiled CPU backend: C++ CSR kernels (``csrc/csr_kernels.cpp``) called through ctypes.

Forward, gradient to the inputs (through a cached CSC layout), gradient to the values and the bias all run in the
kernel, single- or multi-threaded following ``torch.get_num_threads()``. Calls that need no gradient (acting under
``torch.no_grad()``) skip autograd and go straight to the kernel, so batch-1 calls cost little more than the kernel.
"""

from __future__ import annotations

import threading
from typing import Any

import torch as th

from sparse_rl.nn.backends import _build
from sparse_rl.nn.backends._common import csc_layout, flatten_inputs
from sparse_rl.nn.backends.reference import ReferenceBackend

_DTYPES = {th.float32: "f32", th.float64: "f64"}
_INDEX = {th.int16: "i16", th.int32: "i32"}
_reference = ReferenceBackend()
_local = threading.local()
BLOCK_COLUMNS = 256  # columns per block: with a 64-wide batch chunk, a 64 KiB slice of the input (measured best of 64-512)
MIN_BLOCK_ENTRIES = 8  # fewer entries per row per block on average and re-reading partial sums outweighs the gain


def column_blocks(indptr: th.Tensor, indices: th.Tensor, rows: int, cols: int) -> tuple[th.Tensor | None, int]:
    """Where each row's entries of each column block start: int32 ``[(nblk + 1) * rows]`` and ``nblk``.

    Entry ``c * rows + r`` is the first slot of row ``r`` with column ``>= c * width`` (the last block ends at
    ``indptr[r + 1]``). The kernel then sweeps one column block at a time over a group of rows, so the block's slice
    of the input stays in cache while every row of the group uses it (a cache-blocked SpMM). ``(None, 0)`` when
    blocks would hold too few entries to pay, or when the columns are not sorted within rows.
    """
    nnz = indices.numel()
    nblk = min(-(-cols // BLOCK_COLUMNS), nnz // max(1, MIN_BLOCK_ENTRIES * rows))
    if nblk < 2:
        return None, 0
    width = -(-cols // nblk)
    counts = (indptr[1:] - indptr[:-1]).long()
    row_of = th.repeat_interleave(th.arange(rows), counts)
    cols_of = indices.long()
    if nnz > 1 and not bool(((cols_of[1:] > cols_of[:-1]) | (row_of[1:] != row_of[:-1])).all()):
        return None, 0
    per_block = th.bincount(row_of * nblk + cols_of // width, minlength=rows * nblk).view(rows, nblk)
    starts = th.zeros(rows, nblk + 1, dtype=th.long)
    starts[:, 1:] = per_block.cumsum(1)
    starts += indptr[:-1].long().unsqueeze(1)
    return starts.t().contiguous().to(th.int32).reshape(-1), nblk


class _Kernel:
    """Per-topology handles (kept in ``layer.cached``): kernel functions for the layer's dtypes, index pointers, CSC."""

    def __init__(self, layer: Any, lib: Any) -> None:
        """Bind the kernel functions for the layer's value and index dtypes."""
        suffix = f"{_DTYPES[layer.values.dtype]}_{_INDEX[layer.indices.dtype]}"
        self.forward = getattr(lib, f"srl_forward_{suffix}")
        self.backward = getattr(lib, f"srl_backward_{suffix}")
        self.rows, self.cols = layer.matrix_shape
        self.dtype = layer.values.dtype
        self.indices, self.indptr = layer.indices, layer.indptr
        self.indices_ptr, self.indptr_ptr = self.indices.data_ptr(), self.indptr.data_ptr()
        self.blocks, self.nblk = column_blocks(layer.indptr.cpu(), layer.indices.cpu(), self.rows, self.cols)
        self._layer: Any = layer
        self._csc: tuple[Any, ...] | None = None

    def csc(self) -> tuple[Any, ...]:
        """``(colptr, rowidx, perm, blocks, nblk)`` for the gradient to the inputs (int32; blocks may be None)."""
        if self._csc is None:
            colptr, rowidx, perm = (t.to(th.int32) for t in csc_layout(self._layer))
            self._csc = (colptr, rowidx, perm, *column_blocks(colptr, rowidx, self.cols, self.rows))
            self._layer = None  # drop the reference once built
        return self._csc


def _ptr(t: th.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _scratch(numel: int, dtype: th.dtype, slot: str) -> th.Tensor:
    """A reusable per-thread buffer of at least ``numel`` elements (fresh buffers cost page faults on every call)."""
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    buf = pool.get((dtype, slot))
    if buf is None or buf.numel() < numel:
        buf = pool[(dtype, slot)] = th.empty(max(numel, 1 << 12), dtype=dtype)
    return buf


def _chunk_buffer(t: th.Tensor, n: int, slot: str) -> th.Tensor | None:
    """Scratch for the chunked feature-major copy of ``t [B, n]``, or None when ``t`` already is one (one row)."""
    batch, (_, stride) = t.shape[0], t.stride()
    return None if batch == 1 and (stride == 1 or n == 1) else _scratch(n * batch, t.dtype, slot)


def _forward(
    kern: _Kernel, x2: th.Tensor, values: th.Tensor, bias: th.Tensor | None, keep: bool
) -> tuple[th.Tensor, th.Tensor | None]:
    """Run the forward kernel: ``(y [B, rows], xt)``, xt the chunked input when it had to be built.

    ``keep``: xt is saved for the backward (a fresh tensor, as large as x), else it lives in a scratch buffer.
    """
    sb, sj = x2.stride()
    batch = x2.shape[0]
    y = th.empty(batch, kern.rows, dtype=x2.dtype)
    xt = _chunk_buffer(x2, kern.cols, "x")
    if xt is not None and keep:
        xt = th.empty(kern.cols * batch, dtype=x2.dtype)
    kern.forward(x2.data_ptr(), batch, kern.cols, sb, sj, _ptr(xt), values.data_ptr(), kern.indices_ptr,
                 kern.indptr_ptr, _ptr(kern.blocks), kern.nblk, kern.rows, _ptr(bias), y.data_ptr(),
                 th.get_num_threads())
    return y, xt


class _LinearFn(th.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x2: th.Tensor, values: th.Tensor, bias: th.Tensor | None, kern: _Kernel) -> th.Tensor:
        y, xt = _forward(kern, x2, values, bias, keep=True)
        ctx.kern, ctx.has_bias, ctx.chunked = kern, bias is not None, xt is not None
        ctx.save_for_backward(x2 if xt is None else xt, values)
        return y

    @staticmethod
    @th.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: th.Tensor) -> tuple[th.Tensor | None, ...]:
        saved_x, values = ctx.saved_tensors
        kern: _Kernel = ctx.kern
        need_x, need_v, need_b = ctx.needs_input_grad[:3]
        grad_out = grad_out.to(values.dtype)
        batch = grad_out.shape[0]
        sb, sj = grad_out.stride()
        x, xt = (None, saved_x) if ctx.chunked else (saved_x, None)
        dx = th.empty(batch, kern.cols, dtype=values.dtype) if need_x else None
        dv = th.empty_like(values) if need_v else None
        db = th.empty(kern.rows, dtype=values.dtype) if need_b and ctx.has_bias else None
        cptr, cidx, perm, cblocks, ncblk = kern.csc() if need_x else (None, None, None, None, 0)
        kern.backward(grad_out.data_ptr(), batch, kern.rows, sb, sj, _ptr(_chunk_buffer(grad_out, kern.rows, "dy")),
                      _ptr(x), kern.cols, 0, 0, _ptr(xt), values.data_ptr(), kern.indices_ptr, kern.indptr_ptr,
                      _ptr(kern.blocks), kern.nblk, _ptr(cptr), _ptr(cidx), _ptr(perm), _ptr(cblocks),
                      ncblk, _ptr(dx), _ptr(dv), _ptr(db), th.get_num_threads())
        return dx, dv, db, None


class CpuBackend:
    """C++ CSR kernels for ``SparseLinear`` on CPU (float32/float64); convolutions use the reference path."""

    name = "cpu"

    def available(self, device: th.device) -> bool:
        return th.device(device).type == "cpu" and _build.load() is not None

    def supports(self, layer: Any) -> bool:
        """Whether the layer's dtypes run on the kernel (else calls fall back to the reference path)."""
        return layer.values.dtype in _DTYPES and layer.indices.dtype in _INDEX and layer.nnz < 2**31

    def kernel(self, layer: Any) -> _Kernel | None:
        """The layer's kernel handles (kept in ``layer.cached``), or None when its dtypes/device are unsupported."""
        return layer.cached("cpu_kernel", lambda: _Kernel(layer, _build.load()) if self._usable(layer) else None)

    def _usable(self, layer: Any) -> bool:
        """Real CPU tensors of supported dtypes (fake tensors under torch.export have no pointer to hand the kernel)."""
        real = type(layer.values.data) is th.Tensor and type(layer.indices) is th.Tensor
        return real and layer.values.device.type == "cpu" and self.supports(layer) and _build.load() is not None

    def linear(self, layer: Any, inputs: th.Tensor) -> th.Tensor:
        kern = self.kernel(layer)
        params = layer._parameters
        values, bias = params["values"], params["bias"]
        if kern is None or inputs.dtype != kern.dtype or inputs.device.type != "cpu":
            return _reference.linear(layer, inputs)
        x2 = inputs
        if inputs.dim() != 2 or inputs.shape[1] != kern.cols:
            x2 = flatten_inputs(layer, inputs)[0]
        if x2.shape[0] == 0:
            return _reference.linear(layer, inputs)
        grad = inputs.requires_grad or values.requires_grad or (bias is not None and bias.requires_grad)
        if grad and th.is_grad_enabled():
            kern.csc()  # built now, from the topology this forward uses
            y = _LinearFn.apply(x2, values, bias, kern)
        else:
            y = _forward(kern, x2, values, bias, keep=False)[0]
        return y if inputs.dim() == 2 else y.reshape(*inputs.shape[:-1], kern.rows)

    def conv2d(self, layer: Any, inputs: th.Tensor) -> th.Tensor:
        return _reference.conv2d(layer, inputs)
