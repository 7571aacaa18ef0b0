"""Initial connectivity: random masks (optionally constant fan-in), nonzero counts, index dtypes, sparsity checks."""

from __future__ import annotations

import torch as th

INT16_MAX_COLS = 32767


def index_dtype_for(n_cols: int) -> th.dtype:
    """Narrowest integer dtype that holds a column index of a matrix with ``n_cols`` columns (int16 or int32)."""
    return th.int16 if n_cols <= INT16_MAX_COLS else th.int32


def random_mask(
    rows: int, cols: int, nnz: int, constant_fan_in: bool = False, generator: th.Generator | None = None,
    connected: bool = True,
) -> th.Tensor:
    """A random boolean ``[rows, cols]`` mask with exactly ``nnz`` active entries.

    :param rows: rows of the mask (output units)
    :param cols: columns of the mask (inputs)
    :param nnz: number of active entries, in [0, rows * cols]
    :param constant_fan_in: give every row the same number of inputs (``nnz`` must then be a multiple of ``rows``).
    :param generator: random generator (``None``: torch's global one)
    :param connected: every row (output unit) and every column (input) gets at least one entry whenever ``nnz`` allows
        it (``nnz >= max(rows, cols)``; otherwise as many rows and columns as ``nnz`` can cover). A plain random mask
        at 90 % leaves inputs of small layers unconnected (a 16x4 layer at density 0.1 loses a given input with
        probability 0.19), and an input without any connection is never seen by the network. The covering entries are
        one random matching of rows to columns (rows and columns taken in random order, cycled); the rest is drawn
        uniformly among the remaining positions. ``False`` gives the uniform draw over all positions.
    :return: ``[rows, cols]`` boolean
    :raises ValueError: for ``nnz`` outside [0, rows * cols], or not a multiple of ``rows`` with ``constant_fan_in``
    """
    if not 0 <= nnz <= rows * cols:
        raise ValueError(f"nnz={nnz} must lie in [0, {rows * cols}] for a {rows}x{cols} matrix")
    if constant_fan_in and nnz % rows:
        raise ValueError(f"constant fan-in needs nnz ({nnz}) to be a multiple of the number of rows ({rows})")
    scores = th.rand(rows, cols, generator=generator)
    if connected and nnz > 0:
        cover = th.arange(min(max(rows, cols), nnz))
        row_order, col_order = th.randperm(rows, generator=generator), th.randperm(cols, generator=generator)
        scores[row_order[cover % rows], col_order[cover % cols]] = 2.0  # above every uniform score: chosen first
    mask = th.zeros(rows, cols, dtype=th.bool)
    if constant_fan_in:
        # Each row holds at most ceil(min(max(rows, cols), nnz) / rows) <= nnz / rows covering entries.
        mask.scatter_(1, scores.argsort(dim=1, descending=True)[:, : nnz // rows], True)
    elif nnz > 0:
        mask.view(-1)[th.topk(scores.view(-1), nnz, sorted=False).indices] = True
    return mask


def uncovered(mask: th.Tensor) -> tuple[int, int]:
    """Numbers of rows (output units) and of columns (inputs) of a boolean ``[rows, cols]`` mask without any entry."""
    return int((~mask.any(dim=1)).sum()), int((~mask.any(dim=0)).sum())


def nnz_for_density(rows: int, cols: int, density: float, constant_fan_in: bool = False) -> int:
    """Number of nonzeros for a density (at least one per layer, or one per row with constant fan-in).

    :param rows: rows of the matrix
    :param cols: columns of the matrix
    :param density: fraction of entries present, in (0, 1]
    :param constant_fan_in: round to a multiple of ``rows`` (the same number per row)
    :raises ValueError: for a density outside (0, 1]
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must lie in (0, 1], got {density}; sparsity = 1 - density must lie in [0, 1)")
    if constant_fan_in:
        return rows * min(cols, max(1, round(density * cols)))
    return min(rows * cols, max(1, round(density * rows * cols)))


def check_sparsity(sparsity: object) -> float:
    """Return ``sparsity`` as a float in [0, 1).

    :raises ValueError: for anything else (booleans and non-numbers included), with a message that says what is expected
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be a number in [0, 1) (the fraction of zero weights), got {sparsity!r}")
    return float(sparsity)
