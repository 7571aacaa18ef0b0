"""The sparse layers' base class: CSR storage, topology rewiring, derived caches and dense-gradient capture.

A layer's weight is kept as a matrix view ``[rows, cols]`` (``[out, in]`` for a linear layer,
``[out, in / groups * kh * kw]`` for a convolution) in compressed sparse row (CSR) form:

- ``values``: ``nn.Parameter`` with exactly ``nnz`` entries, ordered row by row, columns ascending;
- ``indices``: column index of each value (int16 when the matrix has at most 32767 columns, else int32);
- ``indptr``: ``rows + 1`` row pointers (int32).

These three names (and ``bias``) are the state-dict keys of every saved model: never rename them.

Topology changes (drop/grow in :mod:`sparse_rl.topology`) go through :meth:`SparseLayer.rewire`, which keeps the
``values`` Parameter object (optimizers stay valid), rewrites values and indices, and bumps ``topology_version`` so
that every backend cache built from the indices is rebuilt (see :meth:`SparseLayer.cached`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, get_args

import torch as th
from torch import nn

from sparse_rl.nn import backends
from sparse_rl.nn.masks import check_sparsity, index_dtype_for, nnz_for_density, random_mask

__all__ = ["INIT_SCALES", "InitScale", "SparseLayer", "SparseWeightMixin", "init_bound"]

InitScale = Literal["sparse", "dense"]
"""How the initial weights are scaled: by the sparse fan-in (``"sparse"``) or the dense one (``"dense"``)."""
INIT_SCALES: tuple[str, ...] = get_args(InitScale)
T = TypeVar("T")


def init_bound(fan_in: int, density: float, init_scale: str) -> float:
    """Bound ``b`` of the uniform initial weights ``U(-b, b)``: ``1/sqrt(fan_in * density)`` or ``1/sqrt(fan_in)``.

    ``"sparse"`` uses the number of inputs a unit actually has (Graesser et al. 2022, "The State of Sparse Training in
    Deep Reinforcement Learning", arXiv:2206.10369), so sparse layers start with the output scale of dense ones;
    ``"dense"`` matches ``nn.Linear`` / ``nn.Conv2d``.

    :param fan_in: inputs per output unit of the dense layer (``in_features``, or ``in / groups * kh * kw``)
    :param density: fraction of connections present, in [0, 1]
    :param init_scale: ``"sparse"`` or ``"dense"``
    :raises ValueError: for another ``init_scale``
    """
    if init_scale not in INIT_SCALES:
        raise ValueError(f"init_scale must be one of {list(INIT_SCALES)}, got {init_scale!r}")
    effective = fan_in * (density if init_scale == "sparse" else 1.0)
    return 1.0 / math.sqrt(max(effective, 1.0))


class SparseLayer(nn.Module):
    """Base class of the sparse layers: CSR storage, rewiring, caches and dense-gradient capture.

    Subclasses (:class:`~sparse_rl.nn.layers.SparseLinear`, :class:`~sparse_rl.nn.layers.SparseConv2d`) set
    ``weight_shape`` and ``matrix_shape``, call :meth:`_init_sparse_storage` and implement :meth:`_dense_grad_from`.

    Attributes:
        values: ``[nnz]`` the stored weights (a Parameter), row by row, columns ascending within a row
        indices: ``[nnz]`` column of each stored weight (int16 up to 32767 columns, else int32)
        indptr: ``[rows + 1]`` int32 row pointers: row ``r`` holds ``values[indptr[r]:indptr[r + 1]]``
        bias: ``[rows]`` or ``None``
        weight_shape: the dense weight's shape (``[out, in]``, or ``[out, in / groups, kh, kw]``)
        matrix_shape: ``(rows, cols)`` of the matrix view the CSR describes
        topology_version: bumped by every topology change; keys every derived cache
        capture_dense_grad: when set (see :func:`sparse_rl.topology.capture_dense_grad`), each backward pass adds the
            dense ``dL/dW`` (``matrix_shape``) into ``dense_grad``
        backend: kernel backend name (``"auto"`` or one of :func:`sparse_rl.nn.backends.names`)
    """

    weight_shape: tuple[int, ...]
    matrix_shape: tuple[int, int]
    values: nn.Parameter
    indices: th.Tensor
    indptr: th.Tensor
    bias: th.Tensor | None
    backend: str

    def _init_sparse_storage(self, mask: th.Tensor, init_bound: float | None, device: th.device | str | None,
                             dtype: th.dtype | None) -> None:
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
        self._fast: Any = None  # a kernel backend's handles for the lean call path (see SparseLinear.forward)
        self.capture_dense_grad = False
        #: without autograd, the reference path keeps the materialised weight until the values change in place or
        #: the topology does; writes through ``values.data`` (SB3's Polyak update of target networks) are not seen,
        #: so layers written that way must set this False (the sparse SB3 policies do it for their target networks)
        self.frozen_weight_cache = True
        self.dense_grad: th.Tensor | None = None

    @staticmethod
    def _initial_mask(rows: int, cols: int, sparsity: float, mask: th.Tensor | None, constant_fan_in: bool,
                      generator: th.Generator | None, weight_shape: tuple[int, ...]) -> th.Tensor:
        """``mask`` checked against the weight, or a random connected mask at ``sparsity``."""
        if mask is None:
            nnz = nnz_for_density(rows, cols, 1.0 - check_sparsity(sparsity), constant_fan_in)
            return random_mask(rows, cols, nnz, constant_fan_in, generator)
        if mask.numel() != rows * cols or (len(weight_shape) == 2 and tuple(mask.shape) != weight_shape):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match the weight shape {weight_shape}")
        return mask

    # ----------------------------------------------------------------------------------------------- inspection
    @property
    def nnz(self) -> int:
        """Number of stored weights."""
        return self.values.numel()

    @property
    def numel_dense(self) -> int:
        """Number of weights of the dense layer (``rows * cols``)."""
        return self.matrix_shape[0] * self.matrix_shape[1]

    @property
    def density(self) -> float:
        """Fraction of the dense weights that are stored, in [0, 1]."""
        return self.nnz / self.numel_dense

    @property
    def sparsity(self) -> float:
        """Fraction of the dense weights that are absent (``1 - density``)."""
        return 1.0 - self.density

    def row_indices(self) -> th.Tensor:
        """Row of each stored value, ``[nnz]`` int64 (computed on each call: 8 bytes per nonzero are not worth keeping)."""
        counts = (self.indptr[1:] - self.indptr[:-1]).long()
        rows = th.arange(self.matrix_shape[0], device=self.indptr.device)
        return th.repeat_interleave(rows, counts, output_size=self.nnz)  # a known size: works on meta / fake tensors

    def flat_indices(self) -> th.Tensor:
        """Position of each stored value in the flattened dense matrix, ``[nnz]`` int64 (cached per topology)."""
        return self.cached("flat", lambda: self.row_indices() * self.matrix_shape[1] + self.indices.long())

    @property
    def mask(self) -> th.Tensor:
        """Boolean view of the connectivity, shaped like the dense weight (``weight_shape``; a read-only copy)."""
        flat = th.zeros(self.numel_dense, dtype=th.bool, device=self.values.device)
        flat[self.flat_indices()] = True
        return flat.view(self.weight_shape)

    def dense_weight(self) -> th.Tensor:
        """The dense weight (``weight_shape``) with zeros at pruned positions; differentiable in ``values``."""
        flat = self.values.new_zeros(self.numel_dense).scatter(0, self.flat_indices(), self.values)
        return flat.view(self.weight_shape)

    def stored_bytes(self) -> int:
        """Bytes held by the layer's own tensors: values, indices, row pointers and bias."""
        tensors = [self.values, self.indices, self.indptr]
        bias = getattr(self, "bias", None)
        if bias is not None:
            tensors.append(bias)
        return sum(t.numel() * t.element_size() for t in tensors)

    # ------------------------------------------------------------------------------------------------- caching
    def cached(self, key: str, build: Callable[[], T]) -> T:
        """Return a structure derived from the indices, rebuilt whenever the topology, device or dtype changes.

        Every backend keeps its derived layouts here, so a topology update can never leave a stale cache.

        :param key: the structure's name (one per backend and structure)
        :param build: computes the structure from the current topology
        """
        values = self._parameters["values"]  # the dicts, not nn.Module.__getattr__: this runs on every batch-1 call
        assert values is not None
        try:
            stamp = (self.topology_version, values.device, values.dtype, self._buffers["indices"].data_ptr())  # type: ignore[union-attr]
        except RuntimeError:  # a fake / functional tensor (torch.export): no storage to key a cache on, nothing to keep
            return build()
        hit = self._cache.get(key)
        if hit is not None and hit[0] == stamp:
            result: T = hit[1]
            return result
        value = build()
        self._cache[key] = (stamp, value)
        return value

    def __getstate__(self) -> dict[str, Any]:
        """Pickle / deepcopy without the derived caches (they may hold kernel handles); they are rebuilt on use."""
        state: dict[str, Any] = super().__getstate__()  # type: ignore[no-untyped-call]
        return {**state, "_cache": {}, "_fast": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__({"_fast": None, **state})  # type: ignore[no-untyped-call]

    def _topology_changed(self) -> None:
        self.topology_version += 1
        self._cache.clear()
        self._fast = None

    def _apply(self, fn: Callable[[th.Tensor], th.Tensor], recurse: bool = True) -> SparseLayer:
        """``.to()`` / ``.double()`` / ``.cuda()``...: the derived caches are dropped (rebuilt for the new tensors)."""
        module: SparseLayer = super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        self._cache.clear()
        self._fast = None
        return module

    # ------------------------------------------------------------------------------------------------ rewiring
    def rewire(self, new_mask: th.Tensor, source: th.Tensor, grown_values: th.Tensor | None = None) -> None:
        """Replace the connectivity in place.

        When nnz changes (gradual pruning), ``values`` becomes a new Parameter; swap it into the optimizers with
        :func:`sparse_rl.topology.optim.replace_parameter`.

        :param new_mask: boolean ``matrix_shape`` (or ``weight_shape``) mask of the new topology
        :param source: ``[new nnz]`` for each new nonzero, in CSR order, the slot of the old ``values`` it keeps (``-1``
            for a grown connection). Optimizer state must be remapped with the same ``source``
            (:func:`sparse_rl.topology.optim.remap_optimizer_state`).
        :param grown_values: values of the grown connections, in CSR order (zeros when ``None``)
        :raises ValueError: when ``source`` does not have one entry per nonzero of ``new_mask``
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

    def copy_topology_from(self, other: SparseLayer) -> None:
        """Take ``other``'s connectivity (indices) without touching the values (used for target networks).

        :param other: a layer with the same ``matrix_shape``
        :raises ValueError: when the shapes differ
        """
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

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
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
        """``dL/dW`` (any shape with ``numel_dense`` elements) from a saved input and the output gradient."""
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


SparseWeightMixin = SparseLayer
"""The former name of :class:`SparseLayer` (kept so that code written against 0.1 keeps importing)."""
