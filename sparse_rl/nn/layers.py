"""Truly sparse layers: ``nn.Linear`` and ``nn.Conv2d`` that store only their nonzero weights.

The storage (CSR ``values`` / ``indices`` / ``indptr``), rewiring and caches live in the base class
:class:`~sparse_rl.nn.base.SparseLayer`; this module adds the two layer types and their dispatch to a kernel backend
(:mod:`sparse_rl.nn.backends`).

Traced, exported or compiled calls (``torch.jit.trace``, ``torch.export``, ``torch.compile``, ONNX) take
:mod:`sparse_rl.nn.backends.traceable` instead of a kernel; on the ``meta`` device a forward gives shapes only.
"""

from __future__ import annotations

import math
from typing import Any

import torch as th
from torch import nn
from torch.nn import grad as nn_grad

from sparse_rl.nn import backends
from sparse_rl.nn.backends import traceable
from sparse_rl.nn.backends.traceable import _is_jit_tracing, _Tensor, compiler_state
from sparse_rl.nn.base import InitScale, SparseLayer, SparseWeightMixin, init_bound
from sparse_rl.nn.masks import check_sparsity, random_mask


def _spmm_op(*args: Any) -> th.Tensor:
    """``torch.ops.sparse_rl.spmm`` (bound on first use: the operators load with the CPU backend)."""
    global _spmm_op
    _spmm_op = th.ops.sparse_rl.spmm.default
    out: th.Tensor = _spmm_op(*args)
    return out


def _linear_op(*args: Any) -> th.Tensor:
    """``torch.ops.sparse_rl.linear`` (bound on first use)."""
    global _linear_op
    _linear_op = th.ops.sparse_rl.linear.default
    out: th.Tensor = _linear_op(*args)
    return out

__all__ = [
    "InitScale", "SparseConv2d", "SparseLayer", "SparseLinear", "SparseWeightMixin", "check_sparsity", "random_mask",
]

class SparseLinear(SparseLayer):
    """``nn.Linear`` that stores only its nonzero weights (CSR) and runs on a pluggable sparse kernel backend.

    ``y = x W^T + b`` with ``W`` held as ``values`` at the positions ``indices`` / ``indptr`` (see
    :class:`~sparse_rl.nn.base.SparseLayer`). Gradients reach only the stored weights.

    :param in_features: size of each input sample
    :param out_features: size of each output sample
    :param bias: whether to learn an additive bias
    :param sparsity: fraction of zero weights, in [0, 1) (ignored when ``mask`` is given)
    :param mask: optional boolean ``[out_features, in_features]`` initial connectivity
    :param constant_fan_in: every output neuron gets the same number of inputs (for SRigL)
    :param init_scale: ``"sparse"`` draws weights with bound ``1/sqrt(fan_in * density)`` (the sparse fan-in, as in
        Graesser et al. 2022, arXiv:2206.10369), ``"dense"`` with ``1/sqrt(fan_in)`` like ``nn.Linear``
    :param backend: kernel backend name (``"auto"``, ``"reference"``, ``"cpu"``...; see :mod:`sparse_rl.nn.backends`)
    :param generator: random generator for the initial mask (the weights use torch's global generator)
    :param device: device of the parameters and buffers
    :param dtype: dtype of the weights and bias (default: torch's default dtype)
    :raises ValueError: for a sparsity outside [0, 1), a mask of another shape, an unknown ``init_scale`` or backend

    Shape:
        - Input: ``(*, in_features)``, ``*`` any number of leading dimensions (including none)
        - Output: ``(*, out_features)``

    Example::

        >>> layer = SparseLinear(64, 32, sparsity=0.9)
        >>> layer(th.randn(8, 64)).shape
        torch.Size([8, 32])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        sparsity: float = 0.9,
        mask: th.Tensor | None = None,
        constant_fan_in: bool = False,
        init_scale: InitScale = "sparse",
        backend: str = "auto",
        generator: th.Generator | None = None,
        device: th.device | str | None = None,
        dtype: th.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_shape = (out_features, in_features)
        self.matrix_shape = (out_features, in_features)
        mask = self._initial_mask(out_features, in_features, sparsity, mask, constant_fan_in, generator, self.weight_shape)
        bound = init_bound(in_features, float(mask.sum()) / max(mask.numel(), 1), init_scale)
        self._init_sparse_storage(mask, bound, device, dtype)
        if bias:
            self.bias = nn.Parameter(th.empty(out_features, device=device, dtype=self.values.dtype))
            nn.init.uniform_(self.bias, -1.0 / math.sqrt(in_features), 1.0 / math.sqrt(in_features))
        else:
            self.register_parameter("bias", None)
        self.backend = backends.check_name(backend)

    @classmethod
    def from_dense(cls, linear: nn.Linear, mask: th.Tensor | None = None, backend: str = "auto") -> SparseLinear:
        """Build from an ``nn.Linear``, keeping its weights at ``mask`` (default: its nonzero weights).

        :param linear: the dense layer (its device and dtype are kept)
        :param mask: boolean ``[out_features, in_features]`` connections to keep
        :param backend: kernel backend name
        """
        weight = linear.weight.detach()
        mask = (weight != 0) if mask is None else mask.to(th.bool)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, mask=mask.cpu(), backend=backend,
                    device=weight.device, dtype=weight.dtype)
        with th.no_grad():
            layer.values.copy_(weight[mask.to(weight.device)])
            if linear.bias is not None and layer.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def forward(self, inputs: th.Tensor) -> th.Tensor:
        """``inputs W^T + bias``.

        :param inputs: ``(*, in_features)``
        :return: ``(*, out_features)``
        """
        if type(inputs) is not _Tensor or compiler_state._is_compiling_flag or _is_jit_tracing():  # is_tracing, inlined
            return self._maybe_capture(inputs, traceable.linear(self, inputs))
        fast = self._fast  # the CPU operators' arguments, set by the backend on a first call of this topology
        if (fast is not None and fast.version == self.topology_version and fast.backend == self.backend
                and inputs.dtype == fast.dtype and inputs.dim() == 2 and inputs.shape[0] and not self.capture_dense_grad):
            params = self._parameters  # the dict, not nn.Module.__getattr__: this runs on every batch-1 call
            values, bias = params["values"], params["bias"]
            if th.is_grad_enabled() and (inputs.requires_grad or values.requires_grad  # type: ignore[union-attr]
                                         or (bias is not None and bias.requires_grad)):
                csc = fast.csc()
                out: th.Tensor = _linear_op(inputs, values, bias, fast.indptr, fast.indices, fast.blocks, csc.colptr,
                                            csc.rowidx, csc.perm, csc.cblocks, 0, False)
                return out
            out = _spmm_op(inputs, values, bias, fast.indptr, fast.indices, fast.blocks, 0, False)
            return out
        return self._maybe_capture(inputs, backends.get(self._backend_name()).linear(self, inputs))

    def _dense_grad_from(self, inputs: th.Tensor, grad_output: th.Tensor) -> th.Tensor:
        return grad_output.reshape(-1, self.out_features).t().to(inputs.dtype) @ inputs.reshape(-1, self.in_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}" + (
            f", density={self.density:.4f}, nnz={self.nnz}, backend={self.backend!r}"
        )


class SparseConv2d(SparseLayer):
    """``nn.Conv2d`` with only its nonzero weights stored (CSR over ``[out_channels, in_channels / groups * kh * kw]``).

    Same parameters as :class:`SparseLinear` for the sparsity, and as ``nn.Conv2d`` for the convolution (numeric zero
    padding only). Every backend computes convolutions on the dense reference path; the storage stays sparse.

    :param in_channels: channels of the input image
    :param out_channels: channels of the output
    :param kernel_size: size of the kernel (``kh``, ``kw``)
    :param stride: stride of the convolution
    :param padding: zero padding added on both sides
    :param dilation: spacing between kernel elements
    :param groups: blocked connections from input to output channels
    :param bias: whether to learn an additive bias
    :param sparsity: fraction of zero weights, in [0, 1) (ignored when ``mask`` is given)
    :param mask: optional boolean initial connectivity, ``[out, in / groups, kh, kw]`` or ``[out, in / groups * kh * kw]``
    :param constant_fan_in: every output channel gets the same number of inputs
    :param init_scale: ``"sparse"`` or ``"dense"`` fan-in scaling of the initial weights (see :class:`SparseLinear`)
    :param backend: kernel backend name
    :param generator: random generator for the initial mask
    :param device: device of the parameters and buffers
    :param dtype: dtype of the weights and bias
    :raises ValueError: for channels not divisible by ``groups``, a bad sparsity, mask, ``init_scale`` or backend

    Shape:
        - Input: ``(N, C_in, H_in, W_in)`` or ``(C_in, H_in, W_in)``
        - Output: ``(N, C_out, H_out, W_out)`` or ``(C_out, H_out, W_out)``, with ``H_out``, ``W_out`` as in ``nn.Conv2d``
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        sparsity: float = 0.9,
        mask: th.Tensor | None = None,
        constant_fan_in: bool = False,
        init_scale: InitScale = "sparse",
        backend: str = "auto",
        generator: th.Generator | None = None,
        device: th.device | str | None = None,
        dtype: th.dtype | None = None,
    ) -> None:
        super().__init__()
        pair = nn.modules.utils._pair
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size: tuple[int, int] = pair(kernel_size)
        self.stride: tuple[int, int] = pair(stride)
        self.padding: tuple[int, int] = pair(padding)
        self.dilation: tuple[int, int] = pair(dilation)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups")
        self.weight_shape = (out_channels, in_channels // groups, *self.kernel_size)
        fan_in = in_channels // groups * self.kernel_size[0] * self.kernel_size[1]
        self.matrix_shape = (out_channels, fan_in)
        mask = self._initial_mask(out_channels, fan_in, sparsity, mask, constant_fan_in, generator, self.weight_shape)
        bound = init_bound(fan_in, float(mask.sum()) / max(mask.numel(), 1), init_scale)
        self._init_sparse_storage(mask, bound, device, dtype)
        if bias:
            self.bias = nn.Parameter(th.empty(out_channels, device=device, dtype=self.values.dtype))
            nn.init.uniform_(self.bias, -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))
        else:
            self.register_parameter("bias", None)
        self.backend = backends.check_name(backend)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, mask: th.Tensor | None = None, backend: str = "auto") -> SparseConv2d:
        """Build from an ``nn.Conv2d``, keeping its weights at ``mask`` (default: its nonzero weights).

        :param conv: the dense convolution (numeric zero padding; its device and dtype are kept)
        :param mask: boolean connections to keep, shaped like ``conv.weight``
        :param backend: kernel backend name
        :raises ValueError: for string or non-zero padding modes
        """
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("SparseConv2d supports numeric zero padding only")
        weight = conv.weight.detach()
        mask = (weight != 0) if mask is None else mask.to(th.bool)
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,  # type: ignore[arg-type]
                    conv.dilation, conv.groups, conv.bias is not None, mask=mask.cpu(), backend=backend,  # type: ignore[arg-type]
                    device=weight.device, dtype=weight.dtype)
        with th.no_grad():
            layer.values.copy_(weight[mask.to(weight.device)])
            if conv.bias is not None and layer.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer

    def conv_kwargs(self) -> dict[str, Any]:
        """``stride``, ``padding``, ``dilation`` and ``groups``, as ``F.conv2d`` takes them."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def forward(self, inputs: th.Tensor) -> th.Tensor:
        """The convolution of ``inputs`` with the sparse kernel.

        :param inputs: ``(N, C_in, H_in, W_in)``
        :return: ``(N, C_out, H_out, W_out)``
        """
        if type(inputs) is not _Tensor or compiler_state._is_compiling_flag or _is_jit_tracing():  # is_tracing, inlined
            return self._maybe_capture(inputs, traceable.conv2d(self, inputs))
        return self._maybe_capture(inputs, backends.get(self._backend_name()).conv2d(self, inputs))

    def _dense_grad_from(self, inputs: th.Tensor, grad_output: th.Tensor) -> th.Tensor:
        if inputs.dim() == 3:  # an unbatched (C, H, W) image, as nn.Conv2d accepts
            inputs, grad_output = inputs.unsqueeze(0), grad_output.unsqueeze(0)
        grad: th.Tensor = nn_grad.conv2d_weight(inputs, self.weight_shape, grad_output.to(inputs.dtype), **self.conv_kwargs())
        return grad

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, density={self.density:.4f}, nnz={self.nnz}, backend={self.backend!r}"
        )
