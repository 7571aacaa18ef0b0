"""Drop and grow scores. A larger score means "keep" (for active connections) or "grow first" (for inactive ones).

- magnitude: ``|w|`` of the stored values (drop criterion of SET and RigL);
- random: uniform noise from a seeded generator (grow criterion of SET, Mocanu et al. 2018, arXiv:1707.04780);
- gradient: ``|dL/dW|`` of the dense weight (grow criterion of RigL, Evci et al. 2020, arXiv:1911.11134), captured
  only at update steps with :func:`capture_dense_grad`, so every other training step stays sparse.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch as th

from sparse_rl.nn.base import SparseLayer


def magnitude_score(layer: SparseLayer) -> th.Tensor:
    """``|w|`` for each stored connection.

    :return: ``[nnz]``, in CSR order
    """
    return layer.values.detach().abs()


def random_score(layer: SparseLayer, generator: th.Generator) -> th.Tensor:
    """Uniform random scores over the dense matrix view (drawn on the CPU generator, moved to the layer's device).

    :return: ``[rows, cols]`` (``layer.matrix_shape``)
    """
    return th.rand(layer.matrix_shape, generator=generator).to(layer.values.device)


def gradient_score(layer: SparseLayer) -> th.Tensor:
    """``|dL/dW|`` over the dense matrix view; needs a gradient from :func:`capture_dense_grad`.

    :return: ``[rows, cols]`` (``layer.matrix_shape``)
    :raises RuntimeError: when no dense gradient was captured
    """
    if layer.dense_grad is None:
        raise RuntimeError(
            "the gradient grow criterion needs a dense gradient: run a forward/backward pass of the loss inside "
            "`with capture_dense_grad(layers):` before the update"
        )
    return layer.dense_grad.abs()


@contextmanager
def capture_dense_grad(layers: Iterable[SparseLayer]) -> Iterator[None]:
    """Within the block, each backward pass through ``layers`` accumulates the dense dL/dW into ``layer.dense_grad``.

    The gradient is the outer product of the saved input and the output gradient (``conv2d_weight`` for
    convolutions), computed only here; ``dense_grad`` (``[rows, cols]``, the layer's ``matrix_shape``) is reset when the
    block starts and summed over the backward passes inside it.

    :param layers: the sparse layers whose dense gradient the grow criterion needs
    """
    layers = list(layers)
    for layer in layers:
        layer.dense_grad = None
        layer.capture_dense_grad = True
    try:
        yield
    finally:
        for layer in layers:
            layer.capture_dense_grad = False
