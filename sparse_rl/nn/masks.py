"""Initial connectivity: random masks (optionally constant fan-in), nonzero counts, index dtypes, sparsity checks."""

from __future__ import annotations

import torch as th

INT16_MAX_COLS = 32767


def index_dtype_for(n_cols: int) -> th.dtype:
    """Narrowest integer dtype that holds a column index of a matrix with ``n_cols`` columns."""
    return th.int16 if n_cols <= INT16_MAX_COLS else th.int32


def random_mask(
    rows: int, cols: int, nnz: int, constant_fan_in: bool = False, generator: th.Generator | None = None
) -> th.Tensor:
    """A random boolean ``[rows, cols]`` mask with exactly ``nnz`` active entries.

    :param constant_fan_in: give every row the same number of inputs (``nnz`` must then be a multiple of ``rows``).
    """
    if not 0 <= nnz <= rows * cols:
        raise ValueError(f"nnz={nnz} must lie in [0, {rows * cols}] for a {rows}x{cols} matrix")
    mask = th.zeros(rows, cols, dtype=th.bool)
    if constant_fan_in:
        if nnz % rows:
            raise ValueError(f"constant fan-in needs nnz ({nnz}) to be a multiple of the number of rows ({rows})")
        k = nnz // rows
        order = th.rand(rows, cols, generator=generator).argsort(dim=1)[:, :k]
        mask.scatter_(1, order, True)
    else:
        mask.view(-1)[th.randperm(rows * cols, generator=generator)[:nnz]] = True
    return mask


def nnz_for_density(rows: int, cols: int, density: float, constant_fan_in: bool = False) -> int:
    """Number of nonzeros for a density (at least one per layer, or one per row with constant fan-in)."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must lie in (0, 1], got {density}; sparsity = 1 - density must lie in [0, 1)")
    if constant_fan_in:
        return rows * min(cols, max(1, round(density * cols)))
    return min(rows * cols, max(1, round(density * rows * cols)))


def check_sparsity(sparsity: object) -> float:
    """Return ``sparsity`` as a float in [0, 1), or raise a ``ValueError`` that says what is expected."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be a number in [0, 1) (the fraction of zero weights), got {sparsity!r}")
    return float(sparsity)
