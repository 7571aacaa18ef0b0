"""Per-layer sparsity distributions: pure functions from layer shapes and a global sparsity to per-layer densities.

- ``uniform``: every sparse layer gets the same density.
- ``er`` (Erdos-Renyi; Mocanu et al. 2018, "Scalable training of artificial neural networks with adaptive sparse
  connectivity inspired by network science", arXiv:1707.04780): density proportional to ``(n_in + n_out) / (n_in *
  n_out)``.
- ``erk`` (Erdos-Renyi-Kernel; Evci et al. 2020, "Rigging the Lottery: Making All Tickets Winners",
  arXiv:1911.11134): density proportional to ``sum(shape) / prod(shape)``, kernel dimensions included.

The global sparsity is met exactly, to one weight: :func:`layer_nnz` turns densities into integer nonzero counts
whose sum is ``round((1 - sparsity) * total)`` over the sparse layers. Layers named in ``dense`` are kept dense and
lie outside that budget. :data:`DISTRIBUTION_SCALES` is the registry; :data:`DISTRIBUTIONS` lists its names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Literal

from sparse_rl.nn.masks import check_sparsity
from sparse_rl.topology._deprecation import renamed

__all__ = [
    "DISTRIBUTIONS", "DISTRIBUTION_SCALES", "Distribution", "Shapes", "check_sparsity", "constant_fan_in_nnz",
    "layer_densities", "layer_nnz",
]

Distribution = Literal["uniform", "er", "erk"]
"""Name of a per-layer sparsity distribution."""
Shapes = Mapping[str, Sequence[int]]


def _uniform_scale(shape: Sequence[int]) -> float:
    return 1.0


def _er_scale(shape: Sequence[int]) -> float:
    n_out, n_in = shape[0], shape[1]
    return (n_out + n_in) / (n_out * n_in)


def _erk_scale(shape: Sequence[int]) -> float:
    return sum(shape) / math.prod(shape)


DISTRIBUTION_SCALES: dict[str, Callable[[Sequence[int]], float]] = {
    "uniform": _uniform_scale, "er": _er_scale, "erk": _erk_scale,
}
"""Registry: distribution name -> unnormalised density of a layer of a given weight shape."""
DISTRIBUTIONS: tuple[str, ...] = tuple(DISTRIBUTION_SCALES)


def _check_distribution(distribution: str) -> None:
    if distribution not in DISTRIBUTION_SCALES:
        raise ValueError(f"unknown distribution {distribution!r}; choose one of {list(DISTRIBUTIONS)}")


def layer_densities(
    shapes: Shapes, sparsity: float, distribution: Distribution = "erk", dense: Collection[str] = (), *,
    method: Distribution | None = None,
) -> dict[str, float]:
    """Per-layer densities (in (0, 1]) whose weighted mean over the non-``dense`` layers is ``1 - sparsity``.

    Follows the iterative scheme of Evci et al.: a layer whose ER/ERK density would exceed 1 is made dense and the
    rest is rescaled, until every density fits.

    :param shapes: layer name -> weight shape (``[out, in]`` or ``[out, in, kh, kw]``)
    :param sparsity: global fraction of zero weights over the sparse layers, in [0, 1)
    :param distribution: ``"uniform"``, ``"er"`` or ``"erk"``
    :param dense: names of layers kept dense (outside the budget)
    :param method: former name of ``distribution`` (deprecated: it warns, and goes in the next release)
    :return: layer name -> density
    :raises ValueError: for a sparsity outside [0, 1), an unknown distribution, or ``dense`` names not in ``shapes``
    """
    distribution = renamed("method", "distribution", method, distribution, "erk")
    return _densities(shapes, sparsity, distribution, dense)


def _densities(shapes: Shapes, sparsity: float, distribution: str, dense: Collection[str]) -> dict[str, float]:
    sparsity = check_sparsity(sparsity)
    _check_distribution(distribution)
    unknown = set(dense) - set(shapes)
    if unknown:
        raise ValueError(f"dense layers {sorted(unknown)} are not among the layers {sorted(shapes)}")
    densities = {name: 1.0 for name in dense}
    sparse = {name: shape for name, shape in shapes.items() if name not in dense}
    if not sparse:
        return densities
    density = 1.0 - sparsity
    if distribution == "uniform":  # exact: no rescaling round-off
        return densities | {name: density for name in sparse}
    scale = DISTRIBUTION_SCALES[distribution]
    numel = {name: math.prod(shape) for name, shape in sparse.items()}
    budget = density * sum(numel.values())
    forced_dense: set[str] = set()
    epsilon = 0.0
    while True:
        free = [name for name in sparse if name not in forced_dense]
        if not free:
            break
        remaining = budget - sum(numel[name] for name in forced_dense)
        weighted = sum(scale(sparse[name]) * numel[name] for name in free)
        epsilon = remaining / weighted
        overflow = [name for name in free if epsilon * scale(sparse[name]) > 1.0]
        if not overflow:
            break
        forced_dense.update(overflow)
    for name in sparse:
        densities[name] = 1.0 if name in forced_dense else epsilon * scale(sparse[name])
    return densities


def layer_nnz(
    shapes: Shapes, sparsity: float, distribution: Distribution = "erk", dense: Collection[str] = (), *,
    method: Distribution | None = None,
) -> dict[str, int]:
    """Integer nonzero counts per layer: the sparse layers together hold exactly ``round((1 - s) * total)`` weights.

    Rounding uses largest remainders, every sparse layer keeps at least one weight and at most all of them.

    :param shapes: layer name -> weight shape
    :param sparsity: global fraction of zero weights over the sparse layers, in [0, 1)
    :param distribution: ``"uniform"``, ``"er"`` or ``"erk"``
    :param dense: names of layers kept dense (all their weights, outside the budget)
    :param method: former name of ``distribution`` (deprecated: it warns, and goes in the next release)
    :return: layer name -> number of stored weights
    :raises ValueError: as :func:`layer_densities`, or when the layers cannot hold the budget
    """
    distribution = renamed("method", "distribution", method, distribution, "erk")
    densities = _densities(shapes, sparsity, distribution, dense)
    numel = {name: math.prod(shape) for name, shape in shapes.items()}
    counts = {name: numel[name] for name in dense}
    sparse = [name for name in shapes if name not in dense]
    if not sparse:
        return counts
    target = round((1.0 - sparsity) * sum(numel[name] for name in sparse))
    target = max(target, len(sparse))
    exact = {name: densities[name] * numel[name] for name in sparse}
    floor = {name: min(numel[name], max(1, math.floor(exact[name]))) for name in sparse}
    missing = target - sum(floor.values())
    # Hand out (or take back) single weights by largest remainder, never exceeding a layer's size.
    order = sorted(sparse, key=lambda n: exact[n] - math.floor(exact[n]), reverse=missing > 0)
    step = 1 if missing > 0 else -1
    while missing:
        progressed = False
        for name in order:
            if missing == 0:
                break
            if (step > 0 and floor[name] < numel[name]) or (step < 0 and floor[name] > 1):
                floor[name] += step
                missing -= step
                progressed = True
        if not progressed:
            raise ValueError(f"cannot place {target} nonzeros in layers of sizes {numel}")
    return counts | floor


def constant_fan_in_nnz(shapes: Shapes, nnz: Mapping[str, int]) -> dict[str, int]:
    """Round each layer's nonzero count to a multiple of its rows (every output keeps the same fan-in).

    Layers are rounded one by one (layers of one shape, such as twin critics, get the same fan-in), so the total can
    miss ``sum(nnz)``: by up to half a row count per layer, and by more when a fan-in of 1 already holds more than the
    budget (a 64 x 64 layer at 99 %). Callers compare the total and say so.

    :param shapes: layer name -> weight shape
    :param nnz: layer name -> nonzero count (e.g. from :func:`layer_nnz`)
    :return: layer name -> ``rows * fan_in``, ``1 <= fan_in <= cols``
    """
    result = {}
    for name, count in nnz.items():
        rows, cols = shapes[name][0], math.prod(shapes[name][1:])
        result[name] = rows * min(cols, max(1, round(count / rows)))
    return result
