"""Which config entry a run takes, with RL Zoo's tuned entries for the envs the packaged configs do not list.

The packaged configs (``configs/<algo>.yml``) hold the benchmark envs. RL Zoo tunes many more (Hopper, Walker2d,
LunarLander, MountainCar, Acrobot, BipedalWalker... and A2C on Atari), and an RL Zoo user expects those settings, not
SB3's defaults: RL Zoo itself refuses an env it has no entry for. So a run takes, in this order:

1. the config's own entry for the env id (Atari ids: else its ``atari`` entry);
2. for the packaged config only, when ``rl_zoo3`` is installed: RL Zoo's entry for the env id (a MuJoCo ``-v5`` id:
   RL Zoo's ``-v4`` entry; Atari ids: its ``atari`` entry), its dense settings unchanged, with the sparse settings of
   the config's ``default`` entry on top: the sparse policy alias, the sparse ``policy_kwargs`` keys (sparsity,
   distribution...) and its ``TopologyCallback``;
3. the config's ``default`` entry: generic settings (SB3's defaults, plus the sparse ones).

Steps 2 and 3 print one line naming the entry used and why (saved in ``resolved.yml``'s notes and sources).
"""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path
from typing import Any

import gymnasium as gym

from sparse_rl.harness import hyperparams as hp

#: RL Zoo's hyperparameter file of each algorithm (RL Zoo has none for MaskablePPO: its PPO settings, as
#: configs/ppo_mask.yml takes them)
RL_ZOO_FILES = {"a2c": "a2c", "dqn": "dqn", "ppo": "ppo", "sac": "sac", "td3": "td3", "qrdqn": "qrdqn", "tqc": "tqc",
                "crossq": "crossq", "ppo_lstm": "ppo_lstm", "ppo_mask": "ppo"}


def rl_zoo_file(algo: str) -> Path | None:
    """RL Zoo's ``hyperparams/<algo>.yml`` when ``rl_zoo3`` is installed (found without importing it)."""
    spec = importlib.util.find_spec("rl_zoo3")
    if spec is None or spec.origin is None or algo not in RL_ZOO_FILES:
        return None
    path = Path(spec.origin).parent / "hyperparams" / f"{RL_ZOO_FILES[algo]}.yml"
    return path if path.is_file() else None


def _zoo_key(entries: dict[str, Any], env_id: str, atari: bool) -> tuple[str, str] | None:
    """The RL Zoo entry for ``env_id`` and a note when it is another id's."""
    if env_id in entries:
        return env_id, ""
    match = re.fullmatch(r"(.+)-v5", env_id)
    spec = gym.registry.get(env_id)
    if match and spec is not None and "mujoco" in str(spec.entry_point) and f"{match[1]}-v4" in entries:
        return f"{match[1]}-v4", f" (RL Zoo tunes {match[1]}-v4; its settings used for {env_id})"
    if atari and "atari" in entries:
        return "atari", ""
    return None


def with_sparse_settings(dense: dict[str, Any], sparse: dict[str, Any], sparse_aliases: dict[str, str],
                         sparse_keys: tuple[str, ...]) -> dict[str, Any]:
    """RL Zoo's ``dense`` entry with the sparse settings of ``sparse`` (a packaged entry): the sparse alias of the
    policy, the sparse ``policy_kwargs`` keys, the ``TopologyCallback`` and this package's own env wrappers (MaskablePPO's
    ``ActionMasks``, applied after RL Zoo's); every other setting stays RL Zoo's."""
    entry = copy.deepcopy(dense)
    ours = [w for w in _as_list(sparse.get("env_wrapper")) if str(next(iter(w), "") if isinstance(w, dict) else w)
            .startswith("sparse_rl.")]
    if ours:
        entry["env_wrapper"] = [*_as_list(entry.get("env_wrapper")), *ours]
    policy = entry.get("policy", "MlpPolicy")
    entry["policy"] = sparse_aliases.get(policy, policy)
    kwargs = hp.policy_kwargs_dict(entry.get("policy_kwargs"))
    kwargs.update({k: v for k, v in hp.policy_kwargs_dict(sparse.get("policy_kwargs")).items() if k in sparse_keys})
    entry["policy_kwargs"] = kwargs
    topology, _ = hp.topology_callback_kwargs(sparse.get("callback"))
    if topology is not None:
        entry["callback"] = [*_as_list(entry.get("callback")), {hp.TOPOLOGY_CALLBACK: topology}]
    return entry


def _as_list(value: Any) -> list[Any]:
    """An RL Zoo ``env_wrapper`` / ``callback`` value (one item or a list; ``None``) as a list."""
    return [] if value is None else list(value) if isinstance(value, list) else [value]


def config_entry(config_file: str | Path, env_id: str, atari: bool, algo: str | None, sparse_aliases: dict[str, str],
                 sparse_keys: tuple[str, ...]) -> tuple[dict[str, Any], str, list[str]]:
    """The entry a run takes (see the module docstring): ``(entry, origin, notes)``.

    :param algo: the algorithm whose RL Zoo file may supply the entry (``None``: a user's ``-conf`` file, which RL Zoo
        never completes)
    """
    path = Path(config_file)
    entries = hp.read_entries(path)
    for key in (env_id, "atari" if atari else None):
        if key is not None and key in entries:
            return hp.entry_of(entries, key, path), f"{path} [{key}]", []
    zoo = rl_zoo_file(algo) if algo is not None else None
    if zoo is not None and "default" in entries:
        zoo_entries = hp.read_yaml(zoo, "RL Zoo hyperparameter file")
        found = _zoo_key(zoo_entries, env_id, atari)
        if found is not None:
            key, alias = found
            origin = f"RL Zoo's {zoo} [{key}] + sparse settings of {path} [default]"
            note = (f"hyperparameters: {path.name} has no entry for {env_id}: RL Zoo's tuned entry [{key}]{alias} for "
                    "the dense settings; a sparse run takes the sparse ones (policy, sparsity, distribution, "
                    "TopologyCallback) from its [default] entry")
            dense = hp.entry_of(zoo_entries, key, zoo)
            return with_sparse_settings(dense, entries["default"], sparse_aliases, sparse_keys), origin, [note]
    if "default" in entries:
        why = ("RL Zoo has none either" if zoo is not None else
               "rl_zoo3, which tunes many more envs, is not installed: pip install rl_zoo3" if algo in RL_ZOO_FILES else
               "RL Zoo has no file for this algorithm" if algo is not None else "a -conf file is used as it is")
        note = (f"note: no tuned hyperparameters for {env_id} ({path.name} has no entry; {why}): its generic [default] "
                "entry is used (SB3's defaults); pass -conf FILE with tuned settings")
        return hp.entry_of(entries, "default", path), f"{path} [default]", [note]
    raise ValueError(f"no hyperparameters for {env_id!r} in {str(path)!r} (and no 'default' entry): add an entry")
