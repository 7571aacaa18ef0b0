"""The reference backend: materialise the dense weight from values/indices, then ``F.linear`` / ``F.conv2d``.

Exact and simple; every faster kernel is tested against it. Gradients flow to ``values`` through the scatter that
builds the dense weight, so pruned positions never receive an update.
"""

from __future__ import annotations

from typing import Any

import torch as th
import torch.nn.functional as F


class ReferenceBackend:
    """Dense materialisation; runs on any device and dtype."""

    name = "reference"

    def available(self, device: th.device) -> bool:
        return True

    def linear(self, layer: Any, inputs: th.Tensor) -> th.Tensor:
        return F.linear(inputs, layer.dense_weight(), layer.bias)

    def conv2d(self, layer: Any, inputs: th.Tensor) -> th.Tensor:
        return F.conv2d(inputs, layer.dense_weight(), layer.bias, **layer.conv_kwargs())
