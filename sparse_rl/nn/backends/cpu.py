"""Compiled CPU backend: C++ CSR kernels (``csrc/csr_kernels.cpp``) called through ctypes.

Forward, gradient to the inputs (through a cached CSC layout), gradient to the values and the bias all run in the
kernel, single- or multi-threaded following ``torch.get_num_threads()``. Calls that need no gradient (acting under
``torch.no_grad()``) skip autograd and go straight to the kernel, so batch-1 calls cost little more than the kernel.
Each call hands the kernel one struct of named fields (:mod:`sparse_rl.nn.backends._abi`); the matrix structs are built
once per topology.
"""

from __future__ import annotations

import ctypes
import threading
from typing import TYPE_CHECKING, Any

import torch as th

from sparse_rl.nn.backends import _abi, _build
from sparse_rl.nn.backends._common import csc_layout
from sparse_rl.nn.backends.base import KernelBackend

if TYPE_CHECKING:
    from sparse_rl.nn.base import SparseLayer
    from sparse_rl.nn.layers import SparseLinear

_local = threading.local()
_csc_lock = threading.Lock()
BLOCK_COLUMNS = 256  # columns per block: with a 64-wide batch chunk, a 64 KiB slice of the input (measured best of 64-512)
MIN_BLOCK_ENTRIES = 8  # fewer entries per row per block on average and re-reading partial sums outweighs the gain


def column_blocks(indptr: th.Tensor, indices: th.Tensor, rows: int, cols: int) -> tuple[th.Tensor | None, int]:
    """Where each row's entries of each column block start: int32 ``[(nblk + 1) * rows]`` and ``nblk``.

    Entry ``c * rows + r`` is the first slot of row ``r`` with column ``>= c * width`` (the last block ends at
    ``indptr[r + 1]``). The kernel then sweeps one column block at a time over a group of rows, so the block's slice
    of the input stays in cache while every row of the group uses it (a cache-blocked SpMM). ``(None, 0)`` when
    blocks would hold too few entries to pay, or when the columns are not sorted within rows.

    :param indptr: ``[rows + 1]`` row pointers (CPU)
    :param indices: ``[nnz]`` column of each entry (CPU)
    :param rows: rows of the matrix
    :param cols: columns of the matrix
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
    """Per-topology handles (kept in ``layer.cached``): the matrix structs, the tensors they point into, the dtype code."""

    def __init__(self, layer: SparseLayer, lib: ctypes.CDLL) -> None:
        self.forward_entry, self.backward_entry = lib.srl_forward, lib.srl_backward
        self.rows, self.cols = layer.matrix_shape
        self.dtype = layer.values.dtype
        self.dtype_code = _abi.VALUE_DTYPES[self.dtype]
        self.indices, self.indptr = layer.indices, layer.indptr  # the struct points into them: keep them alive
        self.blocks, self.nblk = column_blocks(layer.indptr.cpu(), layer.indices.cpu(), self.rows, self.cols)
        self.csr = _abi.Csr(indptr=self.indptr.data_ptr(), indices=self.indices.data_ptr(), perm=None,
                            blocks=_ptr(self.blocks), nblk=self.nblk, rows=self.rows, cols=self.cols,
                            index_dtype=_abi.INDEX_DTYPES[layer.indices.dtype])
        self.csr_address = ctypes.addressof(self.csr)
        self._layer: SparseLayer | None = layer
        self._csc: _abi.Csr | None = None
        self._csc_tensors: tuple[th.Tensor | None, ...] = ()

    def csc(self) -> _abi.Csr:
        """The CSC layout for the gradient to the inputs: the CSR of ``W^T`` (int32, column-blocked when it pays)."""
        if self._csc is None:
            with _csc_lock:  # built once, even when two threads train through the same layer
                if self._csc is None:
                    assert self._layer is not None
                    colptr, rowidx, perm = (t.to(th.int32) for t in csc_layout(self._layer))
                    blocks, nblk = column_blocks(colptr, rowidx, self.cols, self.rows)
                    self._csc_tensors = (colptr, rowidx, perm, blocks)  # the struct points into them
                    self._csc = _abi.Csr(indptr=colptr.data_ptr(), indices=rowidx.data_ptr(), perm=perm.data_ptr(),
                                         blocks=_ptr(blocks), nblk=nblk, rows=self.cols, cols=self.rows,
                                         index_dtype=_abi.INT32)
                    self._layer = None  # drop the reference once built
        return self._csc


def _ptr(t: th.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _scratch(numel: int, dtype: th.dtype, slot: str) -> th.Tensor:
    """A reusable per-thread buffer of at least ``numel`` elements (fresh buffers cost page faults on every call)."""
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    buf: th.Tensor | None = pool.get((dtype, slot))
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
    args = _abi.ForwardArgs(weight=kern.csr_address, dtype=kern.dtype_code, values=values.data_ptr(), bias=_ptr(bias),
                            x=x2.data_ptr(), batch=batch, x_stride_batch=sb, x_stride_feature=sj, x_chunked=_ptr(xt),
                            y=y.data_ptr(), threads=th.get_num_threads())
    status = kern.forward_entry(ctypes.addressof(args))
    if status:
        _abi.raise_for_status(status, "srl_forward")
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
        args = _abi.BackwardArgs(
            weight=kern.csr_address, weight_t=ctypes.addressof(kern.csc()) if need_x else None, dtype=kern.dtype_code,
            values=values.data_ptr(), dy=grad_out.data_ptr(), batch=batch, dy_stride_batch=sb, dy_stride_feature=sj,
            dy_chunked=_ptr(_chunk_buffer(grad_out, kern.rows, "dy")), x=_ptr(x), x_stride_batch=0, x_stride_feature=0,
            x_chunked=_ptr(xt), dx=_ptr(dx), dvalues=_ptr(dv), dbias=_ptr(db), threads=th.get_num_threads(),
        )
        status = kern.backward_entry(ctypes.addressof(args))
        if status:
            _abi.raise_for_status(status, "srl_backward")
        return dx, dv, db, None


class CpuBackend(KernelBackend[_Kernel]):
    """C++ CSR kernels for ``SparseLinear`` on CPU (float32/float64); convolutions use the reference path."""

    name = "cpu"

    def available(self, device: th.device | str) -> bool:
        return th.device(device).type == "cpu" and _build.load() is not None

    def supports(self, layer: SparseLayer) -> bool:
        """Whether the layer's dtypes run on the kernel (else calls fall back to the reference path)."""
        return layer.values.dtype in _abi.VALUE_DTYPES and layer.indices.dtype in _abi.INDEX_DTYPES and layer.nnz < 2**31

    def kernel(self, layer: SparseLayer) -> _Kernel | None:
        """The layer's kernel handles (kept in ``layer.cached``), or None when its dtypes/device are unsupported."""
        return layer.cached("cpu_kernel", lambda: self._make_kernel(layer))

    def _make_kernel(self, layer: SparseLayer) -> _Kernel | None:
        """Handles for real CPU tensors of supported dtypes (fake tensors under torch.export have no pointer)."""
        real = type(layer.values.data) is th.Tensor and type(layer.indices) is th.Tensor
        lib = _build.load()
        if not (real and layer.values.device.type == "cpu" and self.supports(layer) and lib is not None):
            return None
        return _Kernel(layer, lib)

    def prepare(self, layer: SparseLinear, inputs: th.Tensor) -> _Kernel | None:
        kern = self.kernel(layer)
        if kern is None or inputs.dtype != kern.dtype or inputs.device.type != "cpu":
            return None
        return kern

    def forward(self, state: _Kernel, x2: th.Tensor, values: th.Tensor, bias: th.Tensor | None) -> th.Tensor:
        return _forward(state, x2, values, bias, keep=False)[0]

    def forward_with_grad(self, state: _Kernel, x2: th.Tensor, values: th.Tensor, bias: th.Tensor | None) -> th.Tensor:
        state.csc()  # built now, from the topology this forward uses
        y: th.Tensor = _LinearFn.apply(x2, values, bias, state)  # type: ignore[no-untyped-call]
        return y
