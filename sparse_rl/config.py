"""RL-Zoo-style hyperparameter files: one YAML per algorithm, keyed by env id, with ``atari`` and ``default`` fallbacks.

An entry holds SB3 constructor arguments plus RL Zoo's own keys (``n_timesteps``, ``policy``, ``n_envs``,
``normalize``, ``frame_stack``, ``env_wrapper``, ``callback``, ``policy_kwargs`` as a Python string, ``lin_`` schedules).
The sparse settings live in keys RL Zoo understands too: the sparse policy alias (``SparseMlpPolicy`` /
``SparseCnnPolicy``), ``sparsity`` and ``distribution`` inside ``policy_kwargs``, and a ``TopologyCallback`` in
``callback``. So ``python -m rl_zoo3.train --gym-packages sparse_rl.sb3 -conf configs/sac.yml`` runs the same entry.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch as th
import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
TOPOLOGY_CALLBACK = "sparse_rl.sb3.TopologyCallback"
RL_ZOO_KEYS = ("n_timesteps", "policy", "n_envs", "normalize", "normalize_kwargs", "frame_stack", "env_wrapper", "callback",
               "vec_env_wrapper", "env_kwargs", "noise_type", "noise_std")


def default_config_file(algo: str) -> Path:
    """The packaged config of an algorithm (``configs/<algo>.yml``)."""
    return CONFIG_DIR / f"{algo}.yml"


def read_yaml(path: Path, what: str, hint: str = "") -> Any:
    """Parse a YAML file, or raise a one-line ``ValueError`` naming ``what`` is missing or malformed."""
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r} not found" + (f": {hint}" if hint else ""))
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{what} {str(path)!r} is not valid YAML: {str(error).splitlines()[0]}") from None


def load_entry(config_file: str | Path, env_id: str, atari: bool) -> dict[str, Any]:
    """The hyperparameters for ``env_id``: its own entry, else ``atari`` (Atari ids), else ``default``."""
    path = Path(config_file)
    entries = read_yaml(path, "config file", "pass an existing YAML file with -conf")
    if not isinstance(entries, dict):
        raise ValueError(f"config file {str(path)!r} must map env ids to hyperparameters (RL Zoo schema)")
    for key in (env_id, "atari" if atari else None, "default"):
        if key is not None and key in entries:
            entry = entries[key]
            if not isinstance(entry, dict):
                raise ValueError(f"entry {key!r} of {str(path)!r} must be a mapping of hyperparameters")
            return copy.deepcopy(entry)
    raise ValueError(f"no hyperparameters for {env_id!r} in {str(path)!r} (and no 'default' entry): add an entry")


def parse_value(text: str) -> Any:
    """A ``-params key:value`` value: YAML scalars and lists, or a Python expression such as ``dict(...)``."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def policy_kwargs_dict(value: Any) -> dict[str, Any]:
    """``policy_kwargs`` as a dict: RL Zoo allows a Python string such as ``"dict(net_arch=[256, 256])"``."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    try:
        result = eval(str(value), {"__builtins__": {}}, {"dict": dict, "nn": th.nn, "th": th, "list": list})  # noqa: S307
    except Exception as error:  # a malformed config string gets one clear line
        raise ValueError(f"policy_kwargs {value!r} is not a valid Python dict expression: {error}") from None
    if not isinstance(result, dict):
        raise ValueError(f"policy_kwargs must evaluate to a dict, got {type(result).__name__}")
    return result


def linear_schedule(initial: float) -> Any:
    """RL Zoo's ``lin_<value>``: decays linearly from ``initial`` to 0 over training."""

    def schedule(progress_remaining: float) -> float:
        return progress_remaining * initial

    return schedule


def resolve_schedules(hyperparams: dict[str, Any]) -> dict[str, Any]:
    """Turn ``lin_X`` strings of learning rates and clip ranges into schedules."""
    result = dict(hyperparams)
    for key in ("learning_rate", "clip_range", "clip_range_vf"):
        value = result.get(key)
        if isinstance(value, str) and value.startswith("lin_"):
            result[key] = linear_schedule(float(value[4:]))
    return result


def topology_callback_kwargs(callbacks: Any) -> tuple[dict[str, Any] | None, list[Any]]:
    """Split RL Zoo's ``callback`` value into the TopologyCallback's kwargs and the other callback specs."""
    if callbacks is None:
        return None, []
    specs = callbacks if isinstance(callbacks, list) else [callbacks]
    topology, others = None, []
    for spec in specs:
        if isinstance(spec, dict) and TOPOLOGY_CALLBACK in spec:
            topology = dict(spec[TOPOLOGY_CALLBACK] or {})
        elif spec == TOPOLOGY_CALLBACK:
            topology = {}
        else:
            others.append(spec)
    return topology, others


def build_callbacks(specs: list[Any]) -> list[Any]:
    """Instantiate RL Zoo callback specs (``"module.Class"`` or ``{"module.Class": kwargs}``)."""
    import importlib

    result = []
    for spec in specs:
        name, kwargs = (next(iter(spec.items())) if isinstance(spec, dict) else (spec, {}))
        module_name, _, class_name = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError, ValueError):
            raise ValueError(f"callback {name!r} cannot be imported: give 'package.module.ClassName'") from None
        result.append(cls(**(kwargs or {})))
    return result
