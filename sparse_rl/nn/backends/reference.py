"""The reference backend: materialise the dense weight from values/indices, then ``F.linear`` / ``F.conv2d``.

Exact and simple; every faster kernel is tested against it. Gradients flow to ``values`` through the scatter that
builds the dense weight, so pruned positions never receive an update. A layer with every connection present (ERK often
makes small first layers fully dense) skips the scatter: its CSR values are the row-major dense weight already.
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
        return F.linear(inputs, _weight(layer), layer.bias)

    def conv2d(self, layer: Any, inputs: th.Tensor) -> th.Tensor:
        return F.conv2d(inputs, _weight(layer), layer.bias, **layer.conv_kwargs())


def _weight(layer: Any) -> th.Tensor:
    """The dense weight: a view of ``values`` when the layer is fully connected, else the scatter of ``values``."""
    values = layer.values
    if values.numel() == layer.numel_dense:
        return values.view(layer.weight_shape)
    return layer.dense_weight()
