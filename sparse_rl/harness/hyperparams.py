"""RL-Zoo-style hyperparameter files, value parsing and the one rule for merging overrides into them.

A file maps env ids to SB3 constructor arguments plus RL Zoo's own keys (``n_timesteps``, ``policy``, ``n_envs``,
``normalize``, ``frame_stack``, ``env_wrapper``, ``vec_env_wrapper``, ``callback``, ``env_kwargs``,
``monitor_kwargs``, ``noise_type``, ``noise_std``), with ``atari`` and ``default`` fallbacks. Python-expression strings
(``policy_kwargs: "dict(net_arch=[64, 64])"``, ``normalize: "dict(norm_obs=True, norm_reward=False)"``) and ``lin_``
schedules are read as RL Zoo reads them. Which entry a run takes (the env's, ``atari``, RL Zoo's tuned one, ``default``):
:mod:`sparse_rl.harness.zoo_entries`. The sparse settings live in keys RL Zoo understands too: the sparse policy
alias (``SparseMlpPolicy``), ``sparsity`` / ``distribution`` in ``policy_kwargs`` and a ``TopologyCallback`` in
``callback``, so ``python -m rl_zoo3.train --gym-packages sparse_rl.sb3 -conf configs/sac.yml`` runs the same entry.

**The override rule** (``-params``, sweep grids, anything layered over a file entry): a key whose name ends in
``_kwargs`` (``policy_kwargs``, ``replay_buffer_kwargs``, ``env_kwargs``, ``monitor_kwargs``, ...) is merged key by
key: the keys the override names win, the others keep the entry's values (so overriding ``net_arch`` keeps the
entry's ``sparsity``); every other key is replaced. This differs from RL Zoo, whose ``-params`` replaces a whole
``policy_kwargs``; each merge is printed at start and saved with the run.
"""

from __future__ import annotations

import copy
import importlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from sparse_rl.harness.resources import data_dir

TOPOLOGY_CALLBACK = "sparse_rl.sb3.TopologyCallback"
RL_ZOO_KEYS = ("n_timesteps", "policy", "n_envs", "normalize", "normalize_kwargs", "frame_stack", "env_wrapper",
               "callback", "vec_env_wrapper", "env_kwargs", "monitor_kwargs", "noise_type", "noise_std")
#: keys whose string values are Python expressions (RL Zoo evaluates these)
EXPRESSION_KEYS = ("policy_kwargs", "replay_buffer_kwargs", "monitor_kwargs", "env_kwargs", "normalize_kwargs",
                   "rollout_buffer_kwargs")
SCHEDULE_KEYS = ("learning_rate", "clip_range", "clip_range_vf")


def default_config_file(algo: str) -> Path:
    """The packaged config of an algorithm (``configs/<algo>.yml``)."""
    return data_dir("configs") / f"{algo}.yml"


def read_yaml(path: Path, what: str, hint: str = "") -> Any:
    """Parse a YAML file, or raise a one-line ``ValueError`` naming ``what`` is missing or malformed."""
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r} not found" + (f": {hint}" if hint else ""))
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{what} {str(path)!r} is not valid YAML: {str(error).splitlines()[0]}") from None


def read_entries(path: Path) -> dict[str, Any]:
    """The entries of a hyperparameter file (env id -> settings), or a one-line ``ValueError``."""
    entries = read_yaml(path, "config file", "pass an existing YAML file with -conf")
    if not isinstance(entries, dict):
        raise ValueError(f"config file {str(path)!r} must map env ids to hyperparameters (RL Zoo schema)")
    return entries


def entry_of(entries: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    """A copy of entry ``key`` of a file's ``entries``, checked to be a mapping."""
    entry = entries[key]
    if not isinstance(entry, dict):
        raise ValueError(f"entry {key!r} of {str(path)!r} must be a mapping of hyperparameters")
    return copy.deepcopy(entry)


def parse_value(text: str) -> Any:
    """A ``-params key:value`` value: YAML scalars and lists, or a Python expression such as ``dict(...)``; a number
    that YAML 1.1 leaves a string (``1e-3``) is a float, as RL Zoo's ``-params`` (which evaluates) reads it."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value.strip()):
        return float(value)
    return value


def _namespace() -> dict[str, Any]:
    import torch as th
    from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike

    # RL Zoo's names too (its A2C Atari entry: optimizer_class=RMSpropTFLike)
    return {"__builtins__": {}, "dict": dict, "list": list, "tuple": tuple, "nn": th.nn, "th": th, "True": True,
            "False": False, "None": None, "float": float, "int": int, "RMSpropTFLike": RMSpropTFLike}


def evaluate_expression(value: Any, key: str) -> Any:
    """A Python-expression string of a config (``"dict(net_arch=[64, 64])"``) as its value; other values unchanged."""
    if not isinstance(value, str):
        return value
    try:
        return eval(value, _namespace())  # noqa: S307  (RL Zoo's schema: configs hold Python expressions)
    except Exception as error:  # a malformed config string gets one clear line
        raise ValueError(f"{key} {value!r} is not a valid Python expression: {error}") from None


def kwargs_dict(value: Any, key: str = "policy_kwargs") -> dict[str, Any]:
    """A ``*_kwargs`` value as a dict (``None`` -> ``{}``; strings evaluated as RL Zoo does)."""
    if value is None:
        return {}
    result = evaluate_expression(value, key)
    if not isinstance(result, Mapping):
        raise ValueError(f"{key} must be a dict (or a string such as \"dict(a=1)\"), got {value!r}")
    return dict(result)


def policy_kwargs_dict(value: Any) -> dict[str, Any]:
    """``policy_kwargs`` as a dict: RL Zoo allows a Python string such as ``"dict(net_arch=[256, 256])"``."""
    return kwargs_dict(value, "policy_kwargs")


def to_expression(value: Any) -> str:
    """A Python expression that :func:`evaluate_expression` (and RL Zoo) read back as ``value``: dicts as
    ``dict(k=v)``, torch classes as ``nn.ReLU`` / ``th.optim.RMSprop``; anything else as its ``repr``."""
    import torch as th

    if isinstance(value, Mapping):
        if all(isinstance(k, str) and k.isidentifier() for k in value):
            return "dict(" + ", ".join(f"{k}={to_expression(v)}" for k, v in value.items()) + ")"
        return "{" + ", ".join(f"{to_expression(k)}: {to_expression(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(to_expression(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(to_expression(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, type):
        for prefix, module in (("nn", th.nn), ("th.optim", th.optim)):
            if getattr(module, value.__name__, None) is value:
                return f"{prefix}.{value.__name__}"
        if _namespace().get(value.__name__) is value:
            return value.__name__
    return repr(value)


def merge_overrides(entry: dict[str, Any], overrides: Mapping[str, Any], source: str) -> tuple[dict[str, Any], list[str]]:
    """Layer ``overrides`` over ``entry`` by the override rule (``*_kwargs`` keys merged, others replaced).

    :return: the merged hyperparameters and one line per key that was merged or replaced (for the user)
    """
    merged, notes = dict(entry), []
    for key, value in overrides.items():
        if key.endswith("_kwargs") and key in entry and entry[key] is not None and value is not None:
            base, new = kwargs_dict(entry[key], key), kwargs_dict(value, key)
            kept = sorted(set(base) - set(new))
            merged[key] = {**base, **new}
            notes.append(f"{key}: {source} sets {sorted(new)}" + (f", keeps {kept} from the config" if kept else ""))
        else:
            if key in entry and entry[key] != value:
                notes.append(f"{key}: {source} replaces {entry[key]!r} with {value!r}")
            merged[key] = value
    return merged, notes


def normalizes(value: Any) -> bool:
    """Whether a resolved ``normalize`` value (VecNormalize arguments, or ``False``) asks for VecNormalize: an empty
    dict does (``normalize: true`` without ``gamma`` resolves to VecNormalize's defaults)."""
    return isinstance(value, Mapping)


def normalize_settings(hyperparams: Mapping[str, Any]) -> dict[str, Any] | None:
    """VecNormalize arguments exactly as RL Zoo derives them, or ``None`` without normalisation.

    ``normalize`` may be ``true``, a dict or a Python string such as ``"dict(norm_obs=True, norm_reward=False)"``;
    ``normalize_kwargs`` (when given) are merged in, and the algorithm's ``gamma`` is passed on, so the reward
    statistics discount like the agent does (VecNormalize's own default is 0.99).
    """
    normalize = evaluate_expression(hyperparams.get("normalize", False), "normalize")
    if isinstance(normalize, Mapping):
        kwargs = dict(normalize)
    elif normalize is True:
        kwargs = {}
    elif normalize in (False, None):
        return None
    else:
        raise ValueError(f"normalize must be true/false, a dict or a string such as \"dict(norm_obs=True)\", "
                         f"got {normalize!r}")
    kwargs.update(kwargs_dict(hyperparams.get("normalize_kwargs"), "normalize_kwargs"))
    if "gamma" in hyperparams:
        kwargs["gamma"] = float(hyperparams["gamma"])
    import inspect

    from stable_baselines3.common.vec_env import VecNormalize

    allowed = set(inspect.signature(VecNormalize.__init__).parameters) - {"self", "venv"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(f"normalize: unknown VecNormalize arguments {unknown}; allowed: {sorted(allowed)}")
    return kwargs


def resolved_normalize(hyperparams: Mapping[str, Any]) -> dict[str, Any] | bool:
    """:func:`normalize_settings` as a run stores it: the VecNormalize arguments (an empty dict: its defaults), or
    ``False`` without normalisation."""
    settings = normalize_settings(hyperparams)
    return False if settings is None else settings


def linear_schedule(initial: float) -> Callable[[float], float]:
    """RL Zoo's ``lin_<value>``: decays linearly from ``initial`` to 0 over training."""

    def schedule(progress_remaining: float) -> float:
        return progress_remaining * initial

    return schedule


def resolve_schedules(hyperparams: dict[str, Any]) -> dict[str, Any]:
    """Turn ``lin_X`` strings of learning rates and clip ranges into schedules."""
    result = dict(hyperparams)
    for key in SCHEDULE_KEYS:
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


def import_object(name: str, what: str) -> Any:
    """``package.module.Name`` imported, or a one-line error naming ``what`` it was meant to be."""
    module_name, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"{what} {name!r} cannot be imported: give 'package.module.ClassName'") from None


def class_specs(value: Any, what: str) -> list[tuple[Any, dict[str, Any]]]:
    """RL Zoo's class lists (``callback``, ``env_wrapper``, ``vec_env_wrapper``): a name, ``{name: kwargs}`` or a
    list of those, as ``[(class, kwargs)]``."""
    if value is None:
        return []
    result = []
    for spec in value if isinstance(value, list) else [value]:
        name, kwargs = next(iter(spec.items())) if isinstance(spec, dict) else (spec, {})
        if not isinstance(name, str):
            raise ValueError(f"{what} entries must be 'package.module.ClassName' or {{name: kwargs}}, got {spec!r}")
        result.append((import_object(name, what), dict(kwargs or {})))
    return result


def build_callbacks(specs: list[Any]) -> list[Any]:
    """Instantiate RL Zoo callback specs (``"module.Class"`` or ``{"module.Class": kwargs}``)."""
    return [cls(**kwargs) for cls, kwargs in class_specs(specs, "callback")]
