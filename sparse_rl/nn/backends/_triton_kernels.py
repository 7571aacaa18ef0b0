"""Triton kernels for the ``triton`` backend (imported only when triton is importable).

Activations are feature-major (``xt: [cols, B]`` contiguous) so that each stored weight reads a contiguous run of
the batch. Accumulation is in float32.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def spmm_kernel(xt_ptr, vals_ptr, idx_ptr, ptr_ptr, perm_ptr, bias_ptr, y_ptr, B, ldy,
                HAS_BIAS: tl.constexpr, HAS_PERM: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """``y[b, r] = bias[r] + sum_k vals[perm[k]] * xt[idx[k], b]`` over row ``r``'s entries; grid (rows, B blocks)."""
    r = tl.program_id(0)
    offs_b = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = offs_b < B
    start = tl.load(ptr_ptr + r)
    end = tl.load(ptr_ptr + r + 1)
    acc = tl.zeros([BLOCK_B], dtype=tl.float32)
    for k0 in range(start, end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < end
        if HAS_PERM:
            slot = tl.load(perm_ptr + offs_k, mask=mask_k, other=0)
        else:
            slot = offs_k
        v = tl.load(vals_ptr + slot, mask=mask_k, other=0.0).to(tl.float32)
        c = tl.load(idx_ptr + offs_k, mask=mask_k, other=0).to(tl.int64)
        x = tl.load(xt_ptr + c[:, None] * B + offs_b[None, :], mask=mask_k[:, None] & mask_b[None, :], other=0.0)
        acc += tl.sum(v[:, None] * x.to(tl.float32), axis=0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + r).to(tl.float32)
    tl.store(y_ptr + offs_b.to(tl.int64) * ldy + r, acc.to(y_ptr.dtype.element_ty), mask=mask_b)


@triton.jit
def sddmm_kernel(dyt_ptr, xt_ptr, rows_ptr, idx_ptr, out_ptr, nnz, B, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr):
    """``out[k] = sum_b dyt[rows[k], b] * xt[idx[k], b]``; grid (nnz blocks,)."""
    offs_k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_k = offs_k < nnz
    r = tl.load(rows_ptr + offs_k, mask=mask_k, other=0).to(tl.int64)
    c = tl.load(idx_ptr + offs_k, mask=mask_k, other=0).to(tl.int64)
    acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    for b0 in range(0, B, BLOCK_B):
        offs_b = b0 + tl.arange(0, BLOCK_B)
        mask = mask_k[:, None] & (offs_b < B)[None, :]
        g = tl.load(dyt_ptr + r[:, None] * B + offs_b[None, :], mask=mask, other=0.0).to(tl.float32)
        x = tl.load(xt_ptr + c[:, None] * B + offs_b[None, :], mask=mask, other=0.0).to(tl.float32)
        acc += tl.sum(g * x, axis=1)
    tl.store(out_ptr + offs_k, acc.to(out_ptr.dtype.element_ty), mask=mask_k)
