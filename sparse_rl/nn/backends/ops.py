"""The CPU kernels as PyTorch operators, ``torch.ops.sparse_rl.*``: loading, fake implementations, per-layer arguments.

The operators (``csrc/torch_ops.cpp``) are registered with ``torch.library`` from C++; their autograd is written in
C++ too, so an eager training call costs one dispatcher call and one graph node instead of a Python
``autograd.Function`` and a ctypes call. Every operator computes ``y = act(x W^T + bias)`` on logical shapes
(``x [B, cols] -> y [B, rows]``); the memory layout is only a matter of strides (see :func:`fm_ld`):

- ``spmm(x, values, bias, indptr, indices, blocks, act, out_fm)``: the forward, no autograd (acting, targets);
- ``linear(x, values, bias, indptr, indices, blocks, colptr, rowidx, perm, cblocks, act, out_fm)``: the same with its
  backward (gradients to ``x``, ``values`` and ``bias``; ``act`` 0 none, 1 ReLU, 2 Tanh fused into the kernel);
- ``spmm_fwd`` / ``spmm_backward``: the two halves ``linear`` calls through the dispatcher.

The fake (meta) implementations below give output shapes and strides without data, so ``torch.compile`` and
``torch.export`` can record the operators (:mod:`sparse_rl.nn.backends.traceable` decides when they are used).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, NamedTuple

import torch as th

from sparse_rl.nn.backends import _build
from sparse_rl.nn.backends._common import csc_arrays

if TYPE_CHECKING:
    from sparse_rl.nn.base import SparseLayer

__all__ = ["ACTIVATIONS", "Topology", "available", "fm_ld", "topology"]

ACTIVATIONS: dict[str, int] = {"none": 0, "relu": 1, "tanh": 2}
"""Activation codes of the operators' ``act`` argument."""
BLOCK_COLUMNS = 128  # columns per block: a 32 KiB slice of a 64-wide chunk, one L1 (measured best of 32-512)
MIN_BLOCK_ENTRIES = 8  # fewer entries per row per block on average and re-reading partial sums outweighs the gain
_lock = threading.Lock()
_registered: list[bool] = []


def available() -> bool:
    """Whether ``torch.ops.sparse_rl`` is loaded (building it on first use) and its fake implementations registered.

    ``SPARSE_RL_NO_OPS=1`` leaves them out (the CPU backend then calls the same kernels through ctypes).
    """
    if _registered:
        return _registered[0]
    with _lock:
        if not _registered:
            ok = os.environ.get("SPARSE_RL_NO_OPS", "") in ("", "0") and _build.load_ops()
            if ok:
                _register_fakes()
            _registered.append(ok)
    return _registered[0]


def fm_ld(batch: int, dtype: th.dtype = th.float32) -> int:
    """Row stride of a feature-major ``[n, batch]`` buffer as the kernels allocate it (``srl::fm_ld``).

    ``batch`` itself up to one chunk of 64 floats (32 doubles), else ``batch`` rounded up to an odd number of cache
    lines: a power-of-two stride (``batch = 256``: 1 KiB) maps the rows of a chunk onto a few cache sets only.
    """
    line = 64 // (8 if dtype == th.float64 else 4)
    if batch <= 4 * line:
        return batch
    lines = -(-batch // line)
    return (lines + 1 - lines % 2) * line


def _register_fakes() -> None:
    def out(x: th.Tensor, indptr: th.Tensor, values: th.Tensor, out_fm: bool) -> th.Tensor:
        batch, rows = x.shape[0], indptr.shape[0] - 1
        return values.new_empty((rows, batch)).t() if out_fm else values.new_empty((batch, rows))

    @th.library.register_fake("sparse_rl::spmm")  # type: ignore[untyped-decorator]
    def _spmm(x: th.Tensor, values: th.Tensor, bias: th.Tensor | None, indptr: th.Tensor, indices: th.Tensor,
              blocks: th.Tensor | None, act: int = 0, out_fm: bool = False) -> th.Tensor:
        return out(x, indptr, values, out_fm)

    @th.library.register_fake("sparse_rl::spmm_fwd")  # type: ignore[untyped-decorator]
    def _spmm_fwd(x: th.Tensor, values: th.Tensor, bias: th.Tensor | None, indptr: th.Tensor, indices: th.Tensor,
                  blocks: th.Tensor | None, act: int = 0, out_fm: bool = False) -> tuple[th.Tensor, th.Tensor]:
        fm = x.shape[0] == 1 or x.stride(0) == 1
        xfm = values.new_empty((0,)) if fm else values.new_empty((x.shape[1], x.shape[0])).t()
        return out(x, indptr, values, out_fm), xfm

    @th.library.register_fake("sparse_rl::spmm_backward")  # type: ignore[untyped-decorator]
    def _spmm_backward(grad: th.Tensor, x: th.Tensor, y: th.Tensor | None, values: th.Tensor, has_bias: bool,
                       indptr: th.Tensor, indices: th.Tensor, blocks: th.Tensor | None, colptr: th.Tensor,
                       rowidx: th.Tensor, perm: th.Tensor, cblocks: th.Tensor | None, act: int, dx_fm: bool,
                       need: list[bool]) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        empty = values.new_empty((0,))
        dx = (values.new_empty((x.shape[1], x.shape[0])).t() if dx_fm else values.new_empty(x.shape)) if need[0] else empty
        db = values.new_empty((indptr.shape[0] - 1,)) if need[2] and has_bias else empty
        return dx, values.new_empty(values.shape) if need[1] else empty, db

    @th.library.register_fake("sparse_rl::linear")  # type: ignore[untyped-decorator]
    def _linear(x: th.Tensor, values: th.Tensor, bias: th.Tensor | None, indptr: th.Tensor, indices: th.Tensor,
                blocks: th.Tensor | None, colptr: th.Tensor, rowidx: th.Tensor, perm: th.Tensor,
                cblocks: th.Tensor | None, act: int = 0, out_fm: bool = False) -> th.Tensor:
        return out(x, indptr, values, out_fm)


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


class Csc(NamedTuple):
    """The CSC layout the backward's gradient to the inputs needs (int32), with its column blocks."""

    colptr: th.Tensor
    rowidx: th.Tensor
    perm: th.Tensor
    cblocks: th.Tensor | None


class Topology:
    """A layer's operator arguments for one topology (kept in ``layer.cached``): CSR, column blocks, lazy CSC.

    ``version``, ``dtype`` and ``backend`` are the layer's topology version, values dtype and backend name when it was
    built: the layers' lean call path checks them before using it (see ``SparseLinear.forward``).
    """

    __slots__ = ("_csc", "_layer", "backend", "blocks", "dtype", "indices", "indptr", "nblk", "version")

    def __init__(self, layer: SparseLayer) -> None:
        rows, cols = layer.matrix_shape
        self.version, self.dtype, self.backend = layer.topology_version, layer.values.dtype, layer.backend
        self.indptr, self.indices = layer.indptr, layer.indices
        self.blocks, self.nblk = column_blocks(layer.indptr, layer.indices, rows, cols)
        self._layer: SparseLayer | None = layer
        self._csc: Csc | None = None

    def csc(self) -> Csc:
        """The CSC layout (built once per topology, on the first call that needs a gradient)."""
        if self._csc is None:
            with _lock:
                if self._csc is None:
                    layer = self._layer
                    assert layer is not None
                    rows, cols = layer.matrix_shape
                    colptr, rowidx, perm = csc_arrays(layer, th.int32)  # int32 only: no int64 copy is kept
                    cblocks, _ = column_blocks(colptr, rowidx, cols, rows)
                    self._csc = Csc(colptr, rowidx, perm, cblocks)
                    self._layer = None
        return self._csc


def topology(layer: SparseLayer) -> Topology:
    """The layer's :class:`Topology` (cached per topology, device and dtype)."""
    return layer.cached("ops_topology", lambda: Topology(layer))
