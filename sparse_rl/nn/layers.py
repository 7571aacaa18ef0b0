"""Truly sparse layers: only the nonzero weights are stored.

A layer's weight is kept as a matrix view ``[rows, cols]`` (``[out, in]`` for a linear layer,
``[out, in / groups * kh * kw]`` for a convolution) in compressed sparse row (CSR) form:

- ``values``: ``nn.Parameter`` with exactly ``nnz`` entries, ordered row by row, columns ascending;
- ``indices``: column index of each value (int16 when the matrix has at most 32767 columns, else int32);
- ``indptr``: ``rows + 1`` row pointers (int32).

Topology changes (drop/grow in :mod:`sparse_rl.topology`) go through :meth:`SparseWeightMixin.rewire`, which keeps
the ``values`` Parameter object (optimizers stay valid), rewrites values and indices, and bumps
``topology_version`` so that every backend cache built from the indices is rebuilt (see :meth:`cached`).

Traced, exported or compiled calls (``torch.jit.trace``, ``torch.export``, ``torch.compile``, ONNX) take
:mod:`sparse_rl.nn.backends.traceable` instead of a kernel; on the ``meta`` device a forward gives shapes only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch as th
from torch import nn

from sparse_rl.nn import backends
from sparse_rl.nn.backends import traceable
from sparse_rl.nn.backends.traceable import _is_jit_tracing, _Tensor, compiler_state
from sparse_rl.nn.masks import check_sparsity, index_dtype_for, nnz_for_density, random_mask

__all__ = ["SparseConv2d", "SparseLayer", "SparseLinear", "SparseWeightMixin", "check_sparsity", "random_mask"]


class SparseWeightMixin(nn.Module):
    """CSR storage, topology rewiring, caches and dense-gradient capture shared by the sparse layers.

    Subclasses set ``weight_shape`` (the dense shape) and ``matrix_shape`` (rows, cols) and call
    :meth:`_init_sparse_storage`.
    """

    weight_shape: tuple[int, ...]
    matrix_shape: tuple[int, int]
    values: nn.Parameter
    indices: th.Tensor
    indptr: th.Tensor

    def _init_sparse_storage(self, mask: th.Tensor, init_bound: float | None, device: Any, dtype: Any) -> None:
        rows, cols = self.matrix_shape
        mask = mask.reshape(rows, cols).to(th.bool).cpu()
        counts = mask.sum(dim=1)
        indptr = th.zeros(rows + 1, dtype=th.int32)
        indptr[1:] = counts.cumsum(0)
        cols_idx = mask.nonzero()[:, 1]
        nnz = int(indptr[-1])
        values = th.empty(nnz, device=device, dtype=dtype or th.get_default_dtype())
        if init_bound is not None:
            nn.init.uniform_(values, -init_bound, init_bound)
        self.values = nn.Parameter(values)
        self.register_buffer("indices", cols_idx.to(device=device, dtype=index_dtype_for(cols)))
        self.register_buffer("indptr", indptr.to(device=device))
        self.topology_version = 0
        self._cache: dict[str, tuple[Any, Any]] = {}
        self.capture_dense_grad = False
        self.dense_grad: th.Tensor | None = None

    # ----------------------------------------------------------------------------------------------- inspection
    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def numel_dense(self) -> int:
        return self.matrix_shape[0] * self.matrix_shape[1]

    @property
    def density(self) -> float:
        return self.nnz / self.numel_dense

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def row_indices(self) -> th.Tensor:
        """Row of each stored value (int64, cached per topology)."""

        def build() -> th.Tensor:
            counts = (self.indptr[1:] - self.indptr[:-1]).long()
            rows = th.arange(self.matrix_shape[0], device=self.indptr.device)
            return th.repeat_interleave(rows, counts, output_size=self.nnz)  # a known size: works on meta / fake tensors

        return self.cached("rows", build)

    def flat_indices(self) -> th.Tensor:
        """Position of each stored value in the flattened dense matrix (int64, cached per topology)."""
        return self.cached("flat", lambda: self.row_indices() * self.matrix_shape[1] + self.indices.long())

    @property
    def mask(self) -> th.Tensor:
        """Boolean view of the connectivity, shaped like the dense weight (read-only copy)."""
        flat = th.zeros(self.numel_dense, dtype=th.bool, device=self.values.device)
        flat[self.flat_indices()] = True
        return flat.view(self.weight_shape)

    def dense_weight(self) -> th.Tensor:
        """The dense weight with zeros at pruned positions; differentiable with respect to ``values``."""
        flat = self.values.new_zeros(self.numel_dense).scatter(0, self.flat_indices(), self.values)
        return flat.view(self.weight_shape)

    def stored_bytes(self) -> int:
        """Bytes held by the layer's own tensors: values, indices, row pointers and bias."""
        tensors = [self.values, self.indices, self.indptr]
        if getattr(self, "bias", None) is not None:
            tensors.append(self.bias)
        return sum(t.numel() * t.element_size() for t in tensors)

    # ------------------------------------------------------------------------------------------------- caching
    def cached(self, key: str, build: Callable[[], Any]) -> Any:
        """Return a structure derived from the indices, rebuilt whenever the topology, device or dtype changes.

        Every backend keeps its derived layouts here, so a topology update can never leave a stale cache.
        """
        values = self._parameters["values"]  # the dicts, not nn.Module.__getattr__: this runs on every batch-1 call
        try:
            stamp = (self.topology_version, values.device, values.dtype, self._buffers["indices"].data_ptr())
        except RuntimeError:  # a fake / functional tensor (torch.export): no storage to key a cache on, nothing to keep
            return build()
        hit = self._cache.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        value = build()
        self._cache[key] = (stamp, value)
        return value

    def __getstate__(self) -> dict[str, Any]:
        """Pickle / deepcopy without the derived caches (they may hold kernel handles); they are rebuilt on use."""
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {**state, "_cache": {}}

    def _topology_changed(self) -> None:
        self.topology_version += 1
        self._cache.clear()

    # ------------------------------------------------------------------------------------------------ rewiring
    def rewire(self, new_mask: th.Tensor, source: th.Tensor, grown_values: th.Tensor | None = None) -> None:
        """Replace the connectivity in place.

        :param new_mask: boolean ``[rows, cols]`` (or dense-shaped) mask of the new topology.
        :param source: for each new nonzero, in CSR order, the slot of the old ``values`` it keeps (``-1`` for a
            grown connection). Optimizer state must be remapped with the same ``source``
            (:func:`sparse_rl.topology.optim.remap_optimizer_state`).
        :param grown_values: values of grown connections (zeros when ``None``).

        When nnz changes (gradual pruning), ``values`` becomes a new Parameter; swap it into the optimizers with
        :func:`sparse_rl.topology.optim.replace_parameter`.
        """
        rows, cols = self.matrix_shape
        new_mask = new_mask.reshape(rows, cols).to(self.values.device)
        nnz = int(new_mask.sum())
        if source.numel() != nnz:
            raise ValueError(f"source has {source.numel()} entries but the new mask has {nnz} nonzeros")
        kept = source >= 0
        with th.no_grad():
            new_values = self.values.new_zeros(nnz)
            new_values[kept] = self.values[source[kept]]
            if grown_values is not None:
                new_values[~kept] = grown_values.to(new_values)
            if nnz == self.nnz:
                self.values.copy_(new_values)
            else:  # a new Parameter: autograd may still hold the old one's size (optimizers: replace_parameter)
                self.values = nn.Parameter(new_values, requires_grad=self.values.requires_grad)
            self.values.grad = None
            counts = new_mask.sum(dim=1)
            self.indptr[0] = 0
            self.indptr[1:] = counts.cumsum(0).to(th.int32)
            new_indices = new_mask.nonzero()[:, 1].to(self.indices.dtype)
            if new_indices.numel() == self.indices.numel():
                self.indices.copy_(new_indices)
            else:
                self.indices = new_indices
        self._topology_changed()

    def copy_topology_from(self, other: SparseWeightMixin) -> None:
        """Take ``other``'s connectivity (indices) without touching the values (used for target networks)."""
        if other.matrix_shape != self.matrix_shape:
            raise ValueError(f"cannot copy a {other.matrix_shape} topology into a {self.matrix_shape} layer")
        with th.no_grad():
            if other.nnz != self.nnz:
                self.values = nn.Parameter(self.values.new_zeros(other.nnz), requires_grad=self.values.requires_grad)
                self.indices = other.indices.clone()
            else:
                self.indices.copy_(other.indices)
            self.indptr.copy_(other.indptr)
        self._topology_changed()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        """Accept a checkpoint whose nnz differs (e.g. gradual pruning) and invalidate caches after loading."""
        indptr = state_dict.get(prefix + "indptr")
        if indptr is not None and indptr.numel() != self.matrix_shape[0] + 1:
            error_msgs.append(f"{prefix or 'layer'}: the checkpoint has {indptr.numel() - 1} output rows but this layer has "
                              f"{self.matrix_shape[0]}: it was saved from another architecture (check net_arch)")
            return
        key = prefix + "values"
        if key in state_dict and state_dict[key].shape != self.values.shape:
            with th.no_grad():
                self.values.data = self.values.new_empty(state_dict[key].shape)
                self.indices = self.indices.new_empty(state_dict[prefix + "indices"].shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        self._topology_changed()

    # ------------------------------------------------------------------------------------------- dense gradient
    def _dense_grad_from(self, inputs: th.Tensor, grad_output: th.Tensor) -> th.Tensor:
        raise NotImplementedError

    def _maybe_capture(self, inputs: th.Tensor, output: th.Tensor) -> th.Tensor:
        """When ``capture_dense_grad`` is on, accumulate dL/dW (dense, matrix view) into ``dense_grad`` on backward."""
        if not (self.capture_dense_grad and th.is_grad_enabled() and output.requires_grad):
            return output
        saved = inputs.detach()

        def hook(grad_output: th.Tensor) -> None:
            grad = self._dense_grad_from(saved, grad_output).reshape(self.matrix_shape)
            self.dense_grad = grad if self.dense_grad is None else self.dense_grad + grad

        output.register_hook(hook)
        return output

    def _backend_name(self) -> str:
        return backends.resolve(self.backend, self)

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` cannot compile the kernel dispatch: say what works instead, in one line."""
        raise RuntimeError(f"{type(self).__name__} cannot be scripted with torch.jit.script: use torch.jit.trace, "
                           "torch.export.export or torch.onnx.export, which take the layer's traceable path")


class SparseLinear(SparseWeightMixin):
    """``nn.Linear`` that stores only its nonzero weights (CSR) and runs on a pluggable sparse kernel backend.

    :param in_features: size of each input sample
    :param out_features: size of each output sample
    :param bias: whether to learn an additive bias
    :param sparsity: fraction of zero weights, in [0, 1) (ignored when ``mask`` is given)
    :param mask: optional boolean ``[out, in]`` initial connectivity
    :param constant_fan_in: every output neuron gets the same number of inputs (SRigL-style)
    :param init_scale: ``"sparse"`` draws weights with bound ``1/sqrt(fan_in * density)`` (the sparse fan-in, as in
        Graesser et al. 2022), ``"dense"`` with ``1/sqrt(fan_in)`` like ``nn.Linear``
    :param backend: kernel backend name (``"auto"``, ``"reference"``, ...; see :mod:`sparse_rl.nn.backends`)
    :param generator: random generator for the initial mask
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        sparsity: float = 0.9,
        mask: th.Tensor | None = None,
        constant_fan_in: bool = False,
        init_scale: str = "sparse",
        backend: str = "auto",
        generator: th.Generator | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_shape = (out_features, in_features)
        self.matrix_shape = (out_features, in_features)
        if mask is None:
            nnz = nnz_for_density(out_features, in_features, 1.0 - check_sparsity(sparsity), constant_fan_in)
            mask = random_mask(out_features, in_features, nnz, constant_fan_in, generator)
        elif tuple(mask.shape) != self.weight_shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match the weight shape {self.weight_shape}")
        density = float(mask.sum()) / mask.numel()
        if init_scale not in ("sparse", "dense"):
            raise ValueError(f"init_scale must be 'sparse' or 'dense', got {init_scale!r}")
        fan_in = in_features * (density if init_scale == "sparse" else 1.0)
        bound = 1.0 / math.sqrt(max(fan_in, 1.0))
        self._init_sparse_storage(mask, bound, device, dtype)
        if bias:
            self.bias = nn.Parameter(th.empty(out_features, device=device, dtype=self.values.dtype))
            nn.init.uniform_(self.bias, -1.0 / math.sqrt(in_features), 1.0 / math.sqrt(in_features))
        else:
            self.register_parameter("bias", None)
        self.backend = backends.check_name(backend)

    @classmethod
    def from_dense(cls, linear: nn.Linear, mask: th.Tensor | None = None, backend: str = "auto") -> SparseLinear:
        """Build from an ``nn.Linear``, keeping its weights at ``mask`` (default: its nonzero weights)."""
        weight = linear.weight.detach()
        mask = (weight != 0) if mask is None else mask.to(th.bool)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, mask=mask.cpu(), backend=backend,
                    device=weight.device, dtype=weight.dtype)
        with th.no_grad():
            layer.values.copy_(weight[mask.to(weight.device)])
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def forward(self, inputs: th.Tensor) -> th.Tensor:
        if type(inputs) is not _Tensor or compiler_state._is_compiling_flag or _is_jit_tracing():  # is_tracing, inlined
            return self._maybe_capture(inputs, traceable.linear(self, inputs))
        output = backends.get(self._backend_name()).linear(self, inputs)
        return self._maybe_capture(inputs, output)

    def _dense_grad_from(self, inputs: th.Tensor, grad_output: th.Tensor) -> th.Tensor:
        return grad_output.reshape(-1, self.out_features).t().to(inputs.dtype) @ inputs.reshape(-1, self.in_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}" + (
            f", density={self.density:.4f}, nnz={self.nnz}, backend={self.backend!r}"
        )


class SparseConv2d(SparseWeightMixin):
    """``nn.Conv2d`` with only its nonzero weights stored (CSR over ``[out, in / groups * kh * kw]``).

    Same parameters as :class:`SparseLinear` for the sparsity, and as ``nn.Conv2d`` for the convolution.
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
        init_scale: str = "sparse",
        backend: str = "auto",
        generator: th.Generator | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        pair = nn.modules.utils._pair
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = pair(kernel_size), pair(stride)
        self.padding, self.dilation = pair(padding), pair(dilation)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups")
        self.weight_shape = (out_channels, in_channels // groups, *self.kernel_size)
        fan_in = in_channels // groups * self.kernel_size[0] * self.kernel_size[1]
        self.matrix_shape = (out_channels, fan_in)
        if mask is None:
            nnz = nnz_for_density(out_channels, fan_in, 1.0 - check_sparsity(sparsity), constant_fan_in)
            mask = random_mask(out_channels, fan_in, nnz, constant_fan_in, generator)
        elif mask.numel() != out_channels * fan_in:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match the weight shape {self.weight_shape}")
        density = float(mask.sum()) / mask.numel()
        scale_fan_in = fan_in * (density if init_scale == "sparse" else 1.0)
        self._init_sparse_storage(mask, 1.0 / math.sqrt(max(scale_fan_in, 1.0)), device, dtype)
        if bias:
            self.bias = nn.Parameter(th.empty(out_channels, device=device, dtype=self.values.dtype))
            nn.init.uniform_(self.bias, -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))
        else:
            self.register_parameter("bias", None)
        self.backend = backends.check_name(backend)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, mask: th.Tensor | None = None, backend: str = "auto") -> SparseConv2d:
        """Build from an ``nn.Conv2d``, keeping its weights at ``mask`` (default: its nonzero weights)."""
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("SparseConv2d supports numeric zero padding only")
        weight = conv.weight.detach()
        mask = (weight != 0) if mask is None else mask.to(th.bool)
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, mask=mask.cpu(), backend=backend, device=weight.device,
                    dtype=weight.dtype)
        with th.no_grad():
            layer.values.copy_(weight[mask.to(weight.device)])
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer

    def conv_kwargs(self) -> dict[str, Any]:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def forward(self, inputs: th.Tensor) -> th.Tensor:
        if type(inputs) is not _Tensor or compiler_state._is_compiling_flag or _is_jit_tracing():  # is_tracing, inlined
            return self._maybe_capture(inputs, traceable.conv2d(self, inputs))
        output = backends.get(self._backend_name()).conv2d(self, inputs)
        return self._maybe_capture(inputs, output)

    def _dense_grad_from(self, inputs: th.Tensor, grad_output: th.Tensor) -> th.Tensor:
        return th.nn.grad.conv2d_weight(inputs, self.weight_shape, grad_output.to(inputs.dtype), **self.conv_kwargs())

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, density={self.density:.4f}, nnz={self.nnz}, backend={self.backend!r}"
        )


SparseLayer = SparseLinear | SparseConv2d
