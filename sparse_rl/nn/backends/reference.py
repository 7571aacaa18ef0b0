"""The reference backend: materialise the dense weight from values/indices, then ``F.linear`` / ``F.conv2d``.

Exact and simple; every faster kernel is tested against it. Gradients flow to ``values`` through the scatter that
builds the dense weight, so pruned positions never receive an update. A layer with every connection present (ERK often
makes small first layers fully dense) skips the scatter: its CSR values are the row-major dense weight already.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch as th

from sparse_rl.nn.backends._common import dense_conv2d, dense_linear
from sparse_rl.nn.backends.base import SparseBackend

if TYPE_CHECKING:
    from sparse_rl.nn.layers import SparseConv2d, SparseLinear


class ReferenceBackend(SparseBackend):
    """Dense materialisation; runs on any device and dtype."""

    name = "reference"

    def available(self, device: th.device | str) -> bool:
        return True

    def linear(self, layer: SparseLinear, inputs: th.Tensor) -> th.Tensor:
        return dense_linear(layer, inputs)

    def conv2d(self, layer: SparseConv2d, inputs: th.Tensor) -> th.Tensor:
        return dense_conv2d(layer, inputs)
