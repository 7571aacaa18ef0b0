"""The backend interface: what a kernel backend implements, and the ``linear`` call written once for all of them.

:class:`SparseBackend` is the interface the layers and the registry use. :class:`KernelBackend` is the base of the
kernel backends (``cpu``, ``torch_csr``, ``triton``, ``semi_structured``): it owns the whole ``linear`` call (falling
back to the reference path, flattening leading dimensions, choosing the autograd or the no-grad path, restoring the
shape), so a backend only says whether it takes a call (:meth:`KernelBackend.prepare`) and runs its kernels
(:meth:`KernelBackend.forward`, :meth:`KernelBackend.forward_with_grad`).
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

import torch as th

from sparse_rl.nn.backends._common import dense_conv2d, dense_linear, flatten_inputs

if TYPE_CHECKING:
    from sparse_rl.nn.base import SparseLayer
    from sparse_rl.nn.layers import SparseConv2d, SparseLinear

StateT = TypeVar("StateT")


class SparseBackend(abc.ABC):
    """A way to compute the sparse layers' outputs (registered by :attr:`name` in :mod:`sparse_rl.nn.backends`).

    Both compute methods must be differentiable with respect to the inputs, ``layer.values`` and ``layer.bias``, and
    keep any structure derived from the indices in ``layer.cached(key, build)`` (rebuilt after every topology change).
    Backends serve eager calls only: traced, exported and compiled calls take :mod:`sparse_rl.nn.backends.traceable`.
    """

    name: ClassVar[str]

    @abc.abstractmethod
    def available(self, device: th.device | str) -> bool:
        """Whether this backend can run on ``device`` on this machine (its library or hardware is there).

        :param device: a device or its name (``"cpu"``, ``"cuda"``, ``"cuda:1"``...)
        """

    def supports(self, layer: SparseLayer) -> bool:
        """Whether the layer's dtypes and shape run on this backend's kernels (other calls take the reference path).

        :param layer: a sparse layer
        """
        return True

    @abc.abstractmethod
    def linear(self, layer: SparseLinear, inputs: th.Tensor) -> th.Tensor:
        """The output of a :class:`~sparse_rl.nn.layers.SparseLinear`.

        :param layer: the layer
        :param inputs: ``[*, in_features]``
        :return: ``[*, out_features]``
        """

    def conv2d(self, layer: SparseConv2d, inputs: th.Tensor) -> th.Tensor:
        """The output of a :class:`~sparse_rl.nn.layers.SparseConv2d` (every backend uses the dense reference here).

        :param layer: the layer
        :param inputs: ``[N, C_in, H, W]``
        :return: ``[N, C_out, H_out, W_out]``
        """
        return dense_conv2d(layer, inputs)


class KernelBackend(SparseBackend, Generic[StateT]):
    """A backend with its own kernels for ``SparseLinear``; ``StateT`` is what :meth:`prepare` hands to them.

    Subclasses implement :meth:`prepare`, :meth:`forward` and :meth:`forward_with_grad`; :meth:`linear` is shared.
    """

    @abc.abstractmethod
    def prepare(self, layer: SparseLinear, inputs: th.Tensor) -> StateT | None:
        """What the kernels need for this call (e.g. cached kernel handles), or ``None`` to run it on the reference path.

        Called on every forward: return ``None`` for dtypes, devices or shapes the kernels do not take.

        :param layer: the layer
        :param inputs: the call's input, ``[*, in_features]``
        """

    @abc.abstractmethod
    def forward(self, state: StateT, x2: th.Tensor, values: th.Tensor, bias: th.Tensor | None) -> th.Tensor:
        """``x2 W^T + bias`` without autograd (no gradient is needed).

        :param state: what :meth:`prepare` returned
        :param x2: ``[B, in_features]``, ``B >= 1``, any strides
        :param values: the layer's ``values`` ``[nnz]``
        :param bias: ``[out_features]`` or ``None``
        :return: ``[B, out_features]``
        """

    @abc.abstractmethod
    def forward_with_grad(self, state: StateT, x2: th.Tensor, values: th.Tensor, bias: th.Tensor | None) -> th.Tensor:
        """The same output, recorded by autograd (through a ``torch.autograd.Function``).

        :param state: what :meth:`prepare` returned
        :param x2: ``[B, in_features]``, ``B >= 1``
        :param values: the layer's ``values`` ``[nnz]``
        :param bias: ``[out_features]`` or ``None``
        :return: ``[B, out_features]``
        """

    def linear(self, layer: SparseLinear, inputs: th.Tensor) -> th.Tensor:
        state = self.prepare(layer, inputs)
        if state is None:
            return dense_linear(layer, inputs)
        x2 = inputs
        if inputs.dim() != 2 or inputs.shape[1] != layer.matrix_shape[1]:
            x2 = flatten_inputs(layer, inputs)[0]
        if x2.shape[0] == 0:
            return dense_linear(layer, inputs)
        params = layer._parameters  # the dict, not nn.Module.__getattr__: this runs on every batch-1 call
        values, bias = params["values"], params["bias"]
        assert values is not None
        grad = inputs.requires_grad or values.requires_grad or (bias is not None and bias.requires_grad)
        if grad and th.is_grad_enabled():
            y = self.forward_with_grad(state, x2, values, bias)
        else:
            y = self.forward(state, x2, values, bias)
        return y if inputs.dim() == 2 else y.reshape(*inputs.shape[:-1], y.shape[1])
