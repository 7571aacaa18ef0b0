"""Hyperparameter checks: every value is checked before anything is built or written, with one clear line.

A bad value (a learning rate that is neither a number nor a ``lin_`` schedule, an env count below 1, a buffer of
size 0, a key the algorithm does not take) raises a ``ValueError`` naming the key, the value, where it came from and
what is allowed; the commands print it as ``error: ...`` and exit with code 2.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
from collections.abc import Callable, Mapping
from numbers import Integral, Real
from typing import Any

Check = Callable[[Any], bool]


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, Integral) or (isinstance(value, Real) and float(value).is_integer())


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _int_at_least(low: int) -> tuple[Check, str]:
    return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}"


def _number(low: float, high: float, low_open: bool = False, high_open: bool = False) -> tuple[Check, str]:
    def check(v: Any) -> bool:
        if not _is_number(v):
            return False
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    bounds = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return check, f"a number in {bounds}"


def _schedule(v: Any) -> bool:
    if callable(v):
        return True
    if isinstance(v, str) and v.startswith("lin_"):
        try:
            return float(v[4:]) > 0
        except ValueError:
            return False
    return _is_number(v) and v > 0


def _train_freq(v: Any) -> bool:
    if isinstance(v, (list, tuple)):
        return len(v) == 2 and _is_int(v[0]) and v[0] >= 1 and v[1] in ("step", "episode")
    return _is_int(v) and v >= 1


def _ent_coef(v: Any) -> bool:
    if isinstance(v, str):
        if v == "auto":
            return True
        if v.startswith("auto_"):
            try:
                return float(v[5:]) > 0
            except ValueError:
                return False
        return False
    return _is_number(v) and v >= 0


POSITIVE_SCHEDULE = "a positive number or 'lin_<positive number>' (a linear schedule)"
PROBABILITY = _number(0.0, 1.0)

CHECKS: dict[str, tuple[Check, str]] = {
    "n_timesteps": _int_at_least(1),
    "n_envs": _int_at_least(1),
    "learning_rate": (_schedule, POSITIVE_SCHEDULE),
    "buffer_size": _int_at_least(1),
    "learning_starts": _int_at_least(0),
    "batch_size": _int_at_least(1),
    "tau": _number(0.0, 1.0, low_open=True),
    "gamma": PROBABILITY,
    "train_freq": (_train_freq, "an integer >= 1 or [n, 'step' | 'episode']"),
    "gradient_steps": ((lambda v: _is_int(v) and (v >= 1 or v == -1)), "an integer >= 1, or -1 (as many as env steps)"),
    "n_steps": _int_at_least(1),
    "n_epochs": _int_at_least(1),
    "gae_lambda": PROBABILITY,
    "clip_range": (_schedule, POSITIVE_SCHEDULE),
    "clip_range_vf": ((lambda v: v is None or _schedule(v)), f"null or {POSITIVE_SCHEDULE}"),
    "ent_coef": (_ent_coef, "a number >= 0, or 'auto' / 'auto_<initial value>' (SAC)"),
    "vf_coef": _number(0.0, float("inf")),
    "max_grad_norm": _number(0.0, float("inf"), low_open=True),
    "target_update_interval": _int_at_least(1),
    "exploration_fraction": PROBABILITY,
    "exploration_initial_eps": PROBABILITY,
    "exploration_final_eps": PROBABILITY,
    "policy_delay": _int_at_least(1),
    "target_policy_noise": _number(0.0, float("inf")),
    "target_noise_clip": _number(0.0, float("inf")),
    "noise_type": ((lambda v: v in (None, "normal", "ornstein-uhlenbeck")), "'normal' or 'ornstein-uhlenbeck'"),
    "noise_std": _number(0.0, float("inf")),
    "frame_stack": ((lambda v: v is None or (_is_int(v) and v >= 1)), "an integer >= 1"),
    "sde_sample_freq": _int_at_least(-1),
    "target_kl": ((lambda v: v is None or (_is_number(v) and v > 0)), "null or a positive number"),
    "stats_window_size": _int_at_least(1),
    "use_sde": ((lambda v: isinstance(v, bool)), "true or false"),
    "use_sde_at_warmup": ((lambda v: isinstance(v, bool)), "true or false"),
    "normalize_advantage": ((lambda v: isinstance(v, bool)), "true or false"),
    "optimize_memory_usage": ((lambda v: isinstance(v, bool)), "true or false"),
    "policy": ((lambda v: isinstance(v, str) or isinstance(v, type)), "a policy name such as 'SparseMlpPolicy'"),
}
#: the integer settings, told by their checks: a whole float passes, a fraction does not
INTEGER_KEYS = frozenset(key for key, (check, _) in CHECKS.items() if check(2.0) and not check(2.5))
#: set by the command line, never by a config entry
COMMAND_LINE_KEYS = ("env", "seed", "verbose", "device", "tensorboard_log", "_init_setup_model")


def _origin(sources: Mapping[str, str], key: str) -> str:
    return f" (from {sources[key]})" if key in sources else ""


def whole_numbers_as_ints(hyperparams: dict[str, Any], notes: list[str]) -> None:
    """Integer settings given as whole floats (``-params buffer_size:1e4`` reads 10000.0, YAML ``!!float 1e6``) become
    ints, with a note: SB3 fails on a float batch size deep inside sampling, or names neither the key nor the value."""
    for key, value in hyperparams.items():
        if key in INTEGER_KEYS and isinstance(value, float) and value.is_integer():
            hyperparams[key] = int(value)
            if key != "n_timesteps":  # RL Zoo's own configs write it !!float 1e6
                notes.append(f"{key}: {value!r} taken as the integer {int(value)}")


def check_value(key: str, value: Any, sources: Mapping[str, str] | None = None) -> None:
    """Raise a one-line ``ValueError`` if ``value`` is not allowed for ``key`` (unknown keys pass)."""
    check = CHECKS.get(key)
    if check is not None and not check[0](value):
        hint = ""
        if isinstance(value, str) and numeric_text(value):
            hint = (f" (YAML reads {value} as a string: write it with a decimal point, e.g. {float(value)!r}, "
                    f"or as !!float {value})")
        raise ValueError(f"hyperparameter {key}={value!r}{_origin(sources or {}, key)} is not allowed: "
                         f"{key} must be {check[1]}{hint}")


def error_line(error: BaseException, default: str = "") -> str:
    """The first line of an exception's message (``default`` when it has none), for one-line errors."""
    return (str(error).strip().splitlines() or [default])[0]


def numeric_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def algo_parameters(algo_class: type) -> set[str]:
    """The constructor arguments of an SB3 algorithm."""
    return set(inspect.signature(algo_class.__init__).parameters) - {"self"}


def init_parameters(cls: type) -> set[str] | None:
    """Keyword arguments ``cls`` accepts through its ``__init__`` chain (``None``: it takes any ``**kwargs``)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        params = inspect.signature(klass.__init__).parameters
        names |= {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            return names
    return None


def _unknown(key: str, allowed: set[str], what: str, sources: Mapping[str, str]) -> ValueError:
    close = difflib.get_close_matches(key, sorted(allowed), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ValueError(f"unknown {what} {key!r}{_origin(sources, key)}{hint}")


def check_hyperparams(hyperparams: Mapping[str, Any], algo_class: type, extra_keys: tuple[str, ...],
                      sources: Mapping[str, str] | None = None) -> None:
    """Check every key and value of a resolved hyperparameter set for ``algo_class`` (SB3 or RL Zoo keys)."""
    sources = sources or {}
    allowed = algo_parameters(algo_class) | set(extra_keys)
    for key, value in hyperparams.items():
        if key in COMMAND_LINE_KEYS:
            raise ValueError(f"hyperparameter {key!r}{_origin(sources, key)} is set by the command line "
                             f"(--{key.replace('_', '-')}), not in a config entry")
        if key not in allowed:
            raise _unknown(key, allowed, f"hyperparameter for {algo_class.__name__}", sources)
        check_value(key, value, sources)
        if key.endswith("_kwargs") and not isinstance(value, Mapping):
            raise ValueError(f"hyperparameter {key}={value!r}{_origin(sources, key)} must be a dict")


def check_policy_kwargs(policy_kwargs: Mapping[str, Any], policy_class: type, sources: Mapping[str, str] | None = None
                        ) -> None:
    """Every ``policy_kwargs`` key must be an argument of the policy class (a typo fails here, not deep in SB3)."""
    allowed = init_parameters(policy_class)
    if allowed is None:
        return
    allowed -= {"observation_space", "action_space", "lr_schedule"}
    origin = {key: sources["policy_kwargs"] for key in policy_kwargs} if sources and "policy_kwargs" in sources else {}
    for key in policy_kwargs:
        if key not in allowed:
            raise _unknown(key, allowed, f"policy_kwargs key for {policy_class.__name__}", origin)
    net_arch = policy_kwargs.get("net_arch")
    parts = list(net_arch.values()) if isinstance(net_arch, Mapping) else [net_arch]
    if net_arch is not None and not (
            (not isinstance(net_arch, Mapping) or set(net_arch) <= {"pi", "vf", "qf"})
            and all(isinstance(part, (list, tuple)) and all(_is_int(w) and w >= 1 for w in part) for part in parts)):
        raise ValueError(f"policy_kwargs net_arch={net_arch!r}{_origin(origin, 'net_arch')} is not allowed: net_arch "
                         "must be a list of layer widths >= 1, or a dict of such lists keyed pi / vf (PPO, A2C) or "
                         "pi / qf (SAC, TD3) (e.g. dict(pi=[64, 64], vf=[64, 64]))")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, unless its help already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        nothing_to_show = default is None or default is False or default is argparse.SUPPRESS or default == []
        if "default" in text or nothing_to_show:
            return text
        return super()._get_help_string(action)


def run_device(device: str) -> str:
    """The torch device a ``--device`` value trains on (``auto``: CUDA when present, else CPU).

    :raises ValueError: for a name torch does not know, or a CUDA device on a machine without one (SB3 would fall
        back to the CPU without a word)
    """
    import torch as th

    if device == "auto":
        return "cuda" if th.cuda.is_available() else "cpu"
    try:
        parsed = th.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a torch device: use auto, cpu or cuda (cuda:N)") from None
    if parsed.type == "cuda" and not th.cuda.is_available():
        raise ValueError(f"--device {device}: this machine has no CUDA device (SB3 would train on the CPU instead); "
                         "use --device cpu or auto")
    return str(parsed)
