"""Kernel backends for the sparse layers, behind a small registry.

A backend is an object with ``name``, ``available(device) -> bool``, ``linear(layer, inputs)`` and
``conv2d(layer, inputs)``; both compute functions must be differentiable with respect to ``inputs``,
``layer.values`` and ``layer.bias``. Derived index structures are kept in ``layer.cached(key, build)``, which is
rebuilt after every topology change.
"""

from __future__ import annotations

from typing import Any

import torch as th

from sparse_rl.nn.backends.reference import ReferenceBackend

_REGISTRY: dict[str, Any] = {}
AUTO = "auto"


def register(backend: Any) -> Any:
    """Add a backend instance to the registry (its ``name`` is the key)."""
    _REGISTRY[backend.name] = backend
    return backend


register(ReferenceBackend())


def names() -> list[str]:
    """Every registered backend name, available here or not."""
    return sorted(_REGISTRY)


def available(device: th.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device`` on this machine."""
    device = th.device(device)
    return [name for name, backend in sorted(_REGISTRY.items()) if backend.available(device)]


def check_name(name: str) -> str:
    """Validate a backend name (``"auto"`` or a registered one) with an error that lists the choices."""
    if name != AUTO and name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; choose one of {[AUTO, *names()]}")
    return name


def get(name: str) -> Any:
    """The backend registered under ``name``."""
    return _REGISTRY[check_name(name)]


def resolve(name: str, layer: Any) -> str:
    """Concrete backend for a layer: ``"auto"`` picks the fastest available for its device and shape."""
    if name != AUTO:
        return name
    return layer.cached("auto_backend", lambda: _auto_select(layer))


def _auto_select(layer: Any) -> str:
    return "reference"
