"""The operators at batch 1 (the acting SpMV path) and small batches: every row length around the kernels' 8-entry
steps, int16 and int32 indices, every activation and layout, after a rewire; no input leaks into a row that does not
use it."""

from __future__ import annotations

import pytest
import torch as th
from torch import nn

from sparse_rl.nn import SparseLinear
from tests.unit.test_ops_and_fused import ACTS, _args, _close, _reference, needs_ops


def _mask_with_row_lengths(lengths: list[int], cols: int, seed: int) -> th.Tensor:
    gen = th.Generator().manual_seed(seed)
    mask = th.zeros(len(lengths), cols, dtype=th.bool)
    for r, n in enumerate(lengths):
        mask[r, th.randperm(cols, generator=gen)[:n]] = True
    return mask


ROW_LENGTHS = [0, 1, 7, 8, 9, 15, 16, 17, 23, 24, 25, 3, 0, 47, 48, 49, 64, 100]  # around the 8-entry steps and long rows


@needs_ops
@pytest.mark.parametrize("dtype", [th.float32, th.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cols", [37, 131, 40000], ids=lambda c: f"in{c}")
def test_operator_small_batches_every_row_length(dtype: th.dtype, cols: int) -> None:
    """Batch 1 (the SpMV path) and small batches (narrow chunks): rows of 0 .. many entries, in_features not a multiple
    of 8, int16 and int32 indices (40000 columns), every activation and layout, forward and gradients; then again after
    a topology rewire."""
    lengths = [min(n, cols) for n in ROW_LENGTHS] * 2 + [cols, 5]  # 38 rows: a partial group of 8 at the end
    layer = SparseLinear.from_dense(nn.Linear(cols, len(lengths), dtype=dtype), _mask_with_row_lengths(lengths, cols, cols))
    assert layer.indices.dtype == (th.int16 if cols < 32768 else th.int32)
    for rewired in (False, True):
        if rewired:
            keep = layer.mask.clone()
            new_mask = _mask_with_row_lengths(lengths[::-1], cols, cols + 1)
            slot_of = th.full((keep.numel(),), -1, dtype=th.long)
            slot_of[layer.flat_indices()] = th.arange(layer.nnz)
            layer.rewire(new_mask, slot_of[new_mask.reshape(-1).nonzero().squeeze(1)])
            with th.no_grad():
                layer.values.add_(th.randn(layer.nnz, dtype=dtype))
        for batch in range(1, 10):
            x, g = th.randn(batch, cols, dtype=dtype), th.randn(batch, len(lengths), dtype=dtype)
            for act in (0, 1, 2):
                want = _reference(layer, x, g, act)
                for x_fm, out_fm in ((False, False), (True, True)):
                    xin = (x.t().contiguous().t() if x_fm else x.clone()).requires_grad_(True)
                    values = layer.values.detach().clone().requires_grad_(True)
                    bias = layer.bias.detach().clone().requires_grad_(True)
                    indptr, indices, blocks, colptr, rowidx, perm, cblocks = _args(layer)
                    y = th.ops.sparse_rl.linear(xin, values, bias, indptr, indices, blocks, colptr, rowidx, perm, cblocks,
                                                act, out_fm)
                    y.backward(g)
                    what = f"rewired={rewired} batch={batch} act={act} x_fm={x_fm}"
                    _close([y.detach(), xin.grad, values.grad, bias.grad], want, what)
                    with th.no_grad():
                        y2 = th.ops.sparse_rl.spmm(xin, layer.values, None, indptr, indices, blocks, act, out_fm)
                        z = nn.functional.linear(x, layer.dense_weight())
                    _close([y2], [ACTS[act](z)], f"no-grad no-bias {what}")


@needs_ops
def test_batch_one_reads_no_input_a_row_does_not_use() -> None:
    """An infinite input reaches only the rows connected to it (the batch-1 path reads past a row's end, masked)."""
    cols = 37
    lengths = [1, 7, 9, 3, 12, 0, 5, 2, 8, 30]
    layer = SparseLinear.from_dense(nn.Linear(cols, len(lengths)), _mask_with_row_lengths(lengths, cols, 0))
    inf_cols = layer.indices[int(layer.indptr[4]):int(layer.indptr[5])].long()  # row 4's: read by rows 0..3's last steps
    x = th.randn(1, cols)
    x[0, inf_cols] = float("inf")
    with th.no_grad():
        y = th.ops.sparse_rl.spmm(x, layer.values, layer.bias, layer.indptr, layer.indices, None, 0, False)
        uses = layer.mask[:, inf_cols].any(1)
        assert not th.isfinite(y[0, uses]).any() and th.isfinite(y[0, ~uses]).all()
        finite = x.clone()
        finite[0, inf_cols] = 0
        want = nn.functional.linear(finite, layer.dense_weight(), layer.bias)
    _close([y[:, ~uses]], [want[:, ~uses]], "rows without the infinite inputs")
