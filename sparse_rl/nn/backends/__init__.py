"""Kernel backends for the sparse layers, behind a typed registry.

A backend is a :class:`~sparse_rl.nn.backends.base.SparseBackend`: ``name``, ``available(device)``,
``supports(layer)``, ``linear(layer, inputs)`` and ``conv2d(layer, inputs)``. Kernel backends derive from
:class:`~sparse_rl.nn.backends.base.KernelBackend`, which writes the ``linear`` call once (reference fallback, input
flattening, autograd or no-grad path) around their kernels. Derived index structures are kept in
``layer.cached(key, build)``, rebuilt after every topology change. Backends serve eager calls only: traced, exported
and compiled calls take :mod:`sparse_rl.nn.backends.traceable` (plain ATen ops) instead.

Built-in backends: ``reference`` (dense materialisation, any device), ``cpu`` (the compiled C++ kernel), ``torch_csr``
(``torch.sparse``), ``triton`` (CUDA) and ``semi_structured`` (2:4 sparse tensor cores); ``"auto"`` picks one per layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, TypeVar

import torch as th

from sparse_rl.nn.backends.base import KernelBackend, SparseBackend
from sparse_rl.nn.backends.cpu import CpuBackend
from sparse_rl.nn.backends.reference import ReferenceBackend
from sparse_rl.nn.backends.semi_structured import SemiStructuredBackend
from sparse_rl.nn.backends.torch_csr import TorchCsrBackend
from sparse_rl.nn.backends.triton import TritonBackend

if TYPE_CHECKING:
    from sparse_rl.nn.base import SparseLayer

__all__ = [
    "AUTO", "BackendName", "KernelBackend", "SparseBackend", "available", "check_name", "get", "names", "register",
    "resolve",
]

BackendName = Literal["auto", "reference", "cpu", "torch_csr", "triton", "semi_structured"]
"""The built-in backend names and ``"auto"`` (:func:`register` may add more: layers take any ``str``)."""

BackendT = TypeVar("BackendT", bound=SparseBackend)
_REGISTRY: dict[str, SparseBackend] = {}
AUTO = "auto"


def register(backend: BackendT) -> BackendT:
    """Add a backend instance to the registry (its ``name`` is the key; a later one replaces an earlier one).

    :param backend: the backend
    :return: the same backend
    """
    _REGISTRY[backend.name] = backend
    return backend


register(ReferenceBackend())
register(CpuBackend())
register(TorchCsrBackend())
register(TritonBackend())
register(SemiStructuredBackend())


def names() -> list[str]:
    """Every registered backend name, available here or not."""
    return sorted(_REGISTRY)


def available(device: th.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device`` on this machine.

    :param device: a device or its name
    """
    device = th.device(device)
    return [name for name, backend in sorted(_REGISTRY.items()) if backend.available(device)]


def check_name(name: str) -> str:
    """Validate a backend name.

    :param name: ``"auto"`` or a registered name
    :return: ``name``
    :raises ValueError: for any other name (the message lists the choices)
    """
    if name != AUTO and name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; choose one of {[AUTO, *names()]}")
    return name


def get(name: str) -> SparseBackend:
    """The backend registered under ``name``.

    :raises ValueError: for an unknown name (``"auto"`` included: :func:`resolve` it first)
    """
    backend = _REGISTRY.get(name)
    if backend is None:
        raise ValueError(f"unknown backend {name!r}; choose one of {names()} (resolve 'auto' with backends.resolve)")
    return backend


def resolve(name: str, layer: SparseLayer) -> str:
    """Concrete backend for a layer: ``"auto"`` picks the fastest available for its device, dtype and shape.

    :param name: ``"auto"`` or a registered name (returned as is)
    :param layer: the layer the backend is for (the choice is cached per topology)
    """
    if name != AUTO:
        return name
    return layer.cached("auto_backend", lambda: _auto_select(layer))


# Above this density dense MKL (~3x the multiply-add rate of a gathered sparse product) is as fast as the kernel.
CPU_MAX_DENSITY = 0.25
# Without the compiled kernel, torch.sparse beats dense MKL only on big, very sparse layers (1024x1024 at 99%: ~7x
# forward and ~3.5x forward+backward at batch 256, on par at batch 1; at 90% it loses to dense).
TORCH_CSR_MAX_DENSITY = 0.02
TORCH_CSR_MIN_NUMEL = 1 << 19
# Below this density the triton kernel is expected to beat cuBLAS on the dense weight (untuned: no GPU was at hand).
TRITON_MAX_DENSITY = 0.2


def _auto_select(layer: SparseLayer) -> str:
    """Fastest available backend for the layer's device, dtype and shape (cached per topology by ``resolve``).

    Convolutions always run on the reference path (every backend delegates ``conv2d`` to it). On CPU the compiled
    kernel beats dense ``nn.Linear`` from batch 1 up once sparsity reaches ~75-80% (see
    ``scripts/results/bench_kernels.md``); denser layers stay on the reference path. Without the kernel, torch.sparse
    is used only for big layers at >= 98% sparsity, else the reference (dense MKL) path. On CUDA: 2:4
    semi-structured when the layout allows it, else triton at high sparsity.
    """
    from sparse_rl.nn.layers import SparseLinear  # here: the layers import this package

    if not isinstance(layer, SparseLinear):
        return "reference"
    device = layer.values.device
    if device.type == "cpu":
        cpu = _REGISTRY["cpu"]
        if cpu.supports(layer) and cpu.available(device) and layer.density <= CPU_MAX_DENSITY:
            return "cpu"
        big = layer.numel_dense >= TORCH_CSR_MIN_NUMEL and layer.density <= TORCH_CSR_MAX_DENSITY
        return "torch_csr" if big and layer.values.dtype in (th.float32, th.float64) else "reference"
    if device.type == "cuda":
        semi = _REGISTRY["semi_structured"]
        if semi.available(device) and semi.supports(layer):
            return "semi_structured"
        triton = _REGISTRY["triton"]
        if triton.available(device) and triton.supports(layer) and layer.density <= TRITON_MAX_DENSITY:
            return "triton"
    return "reference"
