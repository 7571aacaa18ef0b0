"""Compiled CPU backend: the C++ CSR kernels (``csrc/csr_core.h``), as PyTorch operators or through ctypes.

Forward, gradient to the inputs (through a cached CSC layout), gradient to the values and the bias all run in the
kernel, single- or multi-threaded following ``torch.get_num_threads()``. Calls that need no gradient (acting under
``torch.no_grad()``) skip autograd and go straight to the kernel, so batch-1 calls cost little more than the kernel.

The kernels are called as the operators ``torch.ops.sparse_rl.*`` (:mod:`sparse_rl.nn.backends.ops`: one dispatcher
call, autograd in C++) when they build; otherwise through ctypes, each call handing the kernel one struct of named
fields (:mod:`sparse_rl.nn.backends._abi`; the matrix structs are built once per topology).
"""

from __future__ import annotations

import ctypes
import threading
import warnings
from typing import TYPE_CHECKING, Any, Union

import torch as th

from sparse_rl.nn.backends import _abi, _build, ops
from sparse_rl.nn.backends._common import csc_arrays
from sparse_rl.nn.backends.base import KernelBackend
from sparse_rl.nn.backends.ops import column_blocks

if TYPE_CHECKING:
    from sparse_rl.nn.base import SparseLayer
    from sparse_rl.nn.layers import SparseLinear

_local = threading.local()
_csc_lock = threading.Lock()
__all__ = ["CpuBackend", "column_blocks"]


class _Kernel:
    """Per-topology ctypes handles (kept in ``layer.cached``): the matrix structs, the tensors they point into, the dtype
    code (the fallback path, when the operators do not build)."""

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
                    colptr, rowidx, perm = csc_arrays(self._layer, th.int32)
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
    """Scratch for the feature-major copy of ``t [B, n]``, or None when ``t`` is feature-major already (or one row)."""
    batch, (stride, _) = t.shape[0], t.stride()
    return None if batch == 1 or stride == 1 else _scratch(n * batch, t.dtype, slot)


def _forward(
    kern: _Kernel, x2: th.Tensor, values: th.Tensor, bias: th.Tensor | None, keep: bool
) -> tuple[th.Tensor, th.Tensor | None]:
    """Run the forward kernel: ``(y [B, rows], xt)``, xt the feature-major input when it had to be built.

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
        xsb, xsj = (0, 0) if x is None else x.stride()
        dx = th.empty(batch, kern.cols, dtype=values.dtype) if need_x else None
        dv = th.empty_like(values) if need_v else None
        db = th.empty(kern.rows, dtype=values.dtype) if need_b and ctx.has_bias else None
        args = _abi.BackwardArgs(
            weight=kern.csr_address, weight_t=ctypes.addressof(kern.csc()) if need_x else None, dtype=kern.dtype_code,
            values=values.data_ptr(), dy=grad_out.data_ptr(), batch=batch, dy_stride_batch=sb, dy_stride_feature=sj,
            dy_chunked=_ptr(_chunk_buffer(grad_out, kern.rows, "dy")), x=_ptr(x), x_stride_batch=xsb, x_stride_feature=xsj,
            x_chunked=_ptr(xt), dx=_ptr(dx), dvalues=_ptr(dv), dbias=_ptr(db), threads=th.get_num_threads(),
        )
        status = kern.backward_entry(ctypes.addressof(args))
        if status:
            _abi.raise_for_status(status, "srl_backward")
        return dx, dv, db, None


_Handles = Union[ops.Topology, _Kernel]
_warned: list[bool] = []


def _use_ops() -> bool:
    """Whether the operators are there; says once (one warning line) when only the ctypes kernel is."""
    if ops.available():
        return True
    if not _warned and _build.ops_unavailable_reason() and _build.load() is not None:
        _warned.append(True)
        warnings.warn_explicit(f"sparse_rl PyTorch operators unavailable ({_build.ops_unavailable_reason()}); using the "
                               "ctypes kernel", RuntimeWarning, "sparse_rl.nn.backends", 0)
    return False


class CpuBackend(KernelBackend[_Handles]):
    """C++ CSR kernels for ``SparseLinear`` on CPU (float32/float64); convolutions use the reference path."""

    name = "cpu"

    def available(self, device: th.device | str) -> bool:
        return th.device(device).type == "cpu" and (_use_ops() or _build.load() is not None)

    def supports(self, layer: SparseLayer) -> bool:
        """Whether the layer's dtypes run on the kernel (else calls fall back to the reference path)."""
        return layer.values.dtype in _abi.VALUE_DTYPES and layer.indices.dtype in _abi.INDEX_DTYPES and layer.nnz < 2**31

    def kernel(self, layer: SparseLayer) -> _Handles | None:
        """The layer's kernel handles (kept in ``layer.cached``), or None when its dtypes/device are unsupported:
        operator arguments (:class:`~sparse_rl.nn.backends.ops.Topology`) or, without the operators, ctypes structs."""
        return layer.cached("cpu_kernel", lambda: self._make_kernel(layer))

    def _make_kernel(self, layer: SparseLayer) -> _Handles | None:
        """Handles for real CPU tensors of supported dtypes (fake tensors under torch.export have no pointer)."""
        real = type(layer.values.data) is th.Tensor and type(layer.indices) is th.Tensor
        if not (real and layer.values.device.type == "cpu" and self.supports(layer)):
            return None
        if _use_ops():
            return ops.topology(layer)
        lib = _build.load()
        return None if lib is None else _Kernel(layer, lib)

    def prepare(self, layer: SparseLinear, inputs: th.Tensor) -> _Handles | None:
        kern = self.kernel(layer)
        if kern is None or inputs.dtype != layer.values.dtype or inputs.device.type != "cpu":
            return None
        if type(kern) is ops.Topology:
            layer._fast = kern  # the layer's lean path calls the operators directly from now on (same topology)
        return kern

    def forward(self, state: _Handles, x2: th.Tensor, values: th.Tensor, bias: th.Tensor | None) -> th.Tensor:
        if type(state) is ops.Topology:
            y: th.Tensor = th.ops.sparse_rl.spmm(x2, values, bias, state.indptr, state.indices, state.blocks)
            return y
        assert isinstance(state, _Kernel)
        return _forward(state, x2, values, bias, keep=False)[0]

    def forward_with_grad(self, state: _Handles, x2: th.Tensor, values: th.Tensor, bias: th.Tensor | None) -> th.Tensor:
        if type(state) is ops.Topology:
            csc = state.csc()
            y: th.Tensor = th.ops.sparse_rl.linear(x2, values, bias, state.indptr, state.indices, state.blocks, csc.colptr,
                                                  csc.rowidx, csc.perm, csc.cblocks)
            return y
        assert isinstance(state, _Kernel)
        state.csc()  # built now, from the topology this forward uses
        out: th.Tensor = _LinearFn.apply(x2, values, bias, state)  # type: ignore[no-untyped-call]
        return out
