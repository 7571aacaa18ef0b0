"""The non-weight state of a ``Sparse*Policy``: the topology schedule as tensors, and the sparsity after a load.

Topology state. :class:`~sparse_rl.sb3.TopologyCallback` keeps its schedule state in ``policy.topology_state`` (a
dict: method, updates done, last update step, next scheduled step, random generator, resolved schedule). The policy
writes it into its state dict as tensors only, so that every SB3 path (``model.save`` / ``Algo.load``,
``policy.save`` / ``load``, ``get_parameters`` / ``set_parameters``) carries it while tools that expect a state dict
of tensors (SB3's tests, tracing, ONNX export) keep working:

- ``topology_state._json``: the non-tensor fields, as UTF-8 JSON bytes in a ``uint8`` tensor;
- ``topology_state.<path>``: each tensor field (``topology_state.updater.generator``, the generator state).

The keys are there only when the policy has a topology state. Checkpoints written before this format kept a dict
under ``_extra_state``; they still load (:func:`pop_topology_state`).

Sparsity after a load. Loading weights of another sparsity (a gradually pruned checkpoint into a fresh policy)
changes the layers' nnz; :func:`restate_sparsity` then writes the loaded sparsity into ``policy.sparse_config``
(``sparsity``, the per-network overrides and ``target_sparsity``), so the config never states a stale value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, MutableMapping
from typing import Any

import torch as th
from torch import nn

from sparse_rl.sb3.builders import sparse_layers

STATE_KEY = "topology_state"
JSON_KEY = "_json"
LEGACY_KEY = "_extra_state"
TENSOR_TAG = "__tensor__"
GROUPS = ("actor", "critic", "shared")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return value.item()
    raise TypeError(f"topology_state holds a {type(value).__name__}, which cannot be saved: use ints, floats, "
                    "strings, None, lists, dicts and tensors")


def encode_topology_state(state: Mapping[str, Any]) -> dict[str, th.Tensor]:
    """The state-dict entries (relative to ``topology_state.``) of a topology state: tensors only."""
    tensors: dict[str, th.Tensor] = {}

    def strip(value: Any, path: str) -> Any:
        if isinstance(value, th.Tensor):
            tensors[path] = value.detach().cpu().clone()
            return {TENSOR_TAG: path}
        if isinstance(value, Mapping):
            return {str(key): strip(item, f"{path}.{key}" if path else str(key)) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [strip(item, f"{path}.{index}") for index, item in enumerate(value)]
        return value

    text = json.dumps(strip(state, ""), sort_keys=True, default=_json_default)
    tensors[JSON_KEY] = th.frombuffer(bytearray(text.encode("utf-8")), dtype=th.uint8).clone()
    return tensors


def decode_topology_state(entries: Mapping[str, th.Tensor]) -> dict[str, Any]:
    """The topology state dict back from its state-dict entries (tensors on the CPU)."""
    text = bytes(entries[JSON_KEY].detach().cpu().to(th.uint8).tolist()).decode("utf-8")

    def fill(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {TENSOR_TAG}:
                return entries[value[TENSOR_TAG]].detach().cpu().clone()
            return {key: fill(item) for key, item in value.items()}
        if isinstance(value, list):
            return [fill(item) for item in value]
        return value

    return fill(json.loads(text))


def write_topology_state(state: Mapping[str, Any] | None, destination: MutableMapping[str, Any], prefix: str) -> None:
    """Add the entries of ``state`` (nothing when it is empty) to a state dict being written."""
    if state:
        for key, value in encode_topology_state(state).items():
            destination[f"{prefix}{STATE_KEY}.{key}"] = value


def pop_topology_state(state_dict: MutableMapping[str, Any], prefix: str) -> dict[str, Any] | None:
    """Remove the topology-state entries from a state dict being loaded and return the state (``None``: none saved).

    Reads the current format (``topology_state.*`` tensors) and the old one (a dict under ``_extra_state``).
    """
    head = f"{prefix}{STATE_KEY}."
    entries = {key[len(head):]: state_dict.pop(key) for key in [k for k in state_dict if k.startswith(head)]}
    legacy = state_dict.pop(prefix + LEGACY_KEY, None)
    if JSON_KEY in entries:
        return decode_topology_state(entries)
    if isinstance(legacy, Mapping) and legacy:
        return dict(legacy)
    return None


def _implied_nnz(sparsity: float, numel: int) -> int:
    return round((1.0 - sparsity) * numel)


def nominal_sparsity(nnz: int, numel: int, layers: int = 1) -> float:
    """The shortest decimal sparsity (2 to 6 decimals) that gives ``nnz`` of ``numel`` weights up to the rounding of
    ``layers`` layers (each layer rounds its own nnz), e.g. 0.95 rather than 0.9504; below 1; else the exact value."""
    exact = 1.0 - nnz / max(numel, 1)
    for decimals in range(2, 7):
        value = round(exact, decimals)
        if value < 1.0 and abs((1.0 - value) * numel - nnz) <= max(layers, 1) / 2 + 0.5:
            return value
    return exact


def restate_sparsity(policy: nn.Module) -> bool:
    """Make ``policy.sparse_config`` state the sparsity of the layers as they are now (after ``load_state_dict``).

    A layer whose nnz differs from what its ``target_sparsity`` implies gets its measured sparsity as target (with
    ``start_dense``, the target is a final sparsity that the pruning ramp reaches later, so only a sparser layer
    changes it). Each group of layers with such a change (``actor``, ``critic``, ``shared``) gets its measured
    sparsity (:func:`nominal_sparsity`: 0.95, not 0.9504) in ``sparsity`` or in its override (``actor_sparsity`` /
    ``critic_sparsity``): ``sparsity`` takes the value of the groups that follow it, and an override is set only
    where a group then differs from ``sparsity``.

    :return: whether the config changed
    """
    config = policy.sparse_config
    totals: dict[str, list[int]] = {}
    changed: set[str] = set()
    for name, layer in sparse_layers(policy).items():
        group = policy.sparsity_group(name)
        total = totals.setdefault(group, [0, 0, 0])
        total[0] += layer.nnz
        total[1] += layer.numel_dense
        total[2] += 1
        target = config.target_sparsity.get(name)
        implied = None if target is None else _implied_nnz(target, layer.numel_dense)
        if implied is None or (layer.nnz < implied if config.start_dense else layer.nnz != implied):
            config.target_sparsity[name] = layer.sparsity
            changed.add(group)
    if not changed:
        return False
    new = {group: config.group_sparsity(group) for group in GROUPS}
    new.update({group: nominal_sparsity(*totals[group]) for group in changed})
    following = [g for g in ("shared", "critic", "actor") if g == "shared" or getattr(config, f"{g}_sparsity") is None]
    present = [group for group in following if group in totals]
    base = new[present[0]] if present else config.sparsity
    groups_built = {policy.sparsity_group(name) for name in config.seen_layers}
    config.sparsity = base
    for group in ("actor", "critic"):
        override = getattr(config, f"{group}_sparsity")
        if override is not None or (new[group] != base and group in groups_built):
            setattr(config, f"{group}_sparsity", new[group])
    return True
