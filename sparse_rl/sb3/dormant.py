"""Dormant neurons: the fraction of hidden units whose activation has (almost) died, for dense and sparse agents.

Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep Reinforcement Learning" (arXiv 2302.12902): the score of
hidden unit ``i`` of layer ``l`` over a batch of states is ``s_i = E|h_i| / mean_k E|h_k|`` (a convolution channel
counts as one unit, averaged over positions); the unit is *tau-dormant* when ``s_i <= tau``. The paper reports
``tau = 0`` and ``0.1`` and resets (ReDo) at ``0.025``; the defaults here measure all three.

Hidden layers are the outputs of the activation modules (``nn.ReLU``, ``nn.Tanh``, ...) of each network that acts or
is trained (target networks excluded): ``actor``, ``critic``, ``q_net``, ``mlp_extractor.policy_net``,
``mlp_extractor.value_net``, ``features_extractor``. The measurement draws its batch with its own generator and runs
the networks deterministically under ``no_grad``: it never changes the course of training.
"""

from __future__ import annotations

import csv
import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from torch import nn

from sparse_rl.sb3.tensorboard import network_of

ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.ELU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Softplus, nn.Mish)
TAUS = (0.0, 0.025, 0.1)
CSV_NAME = "dormant.csv"
FIELDS = ("timesteps", "network", "tau", "fraction", "units")


def _unit_means(output: th.Tensor) -> th.Tensor:
    """``E|h|`` per unit: ``[B, H] -> [H]``, ``[B, C, H, W] -> [C]``."""
    values = output.detach().abs()
    return values.mean(dim=0) if values.dim() == 2 else values.transpose(0, 1).reshape(values.shape[1], -1).mean(dim=1)


def _run_networks(policy: nn.Module, obs: Any, actions: th.Tensor) -> None:
    """One deterministic forward pass of every trained network of an SB3 policy (no sampling, no RNG)."""
    if hasattr(policy, "actor") and hasattr(policy, "critic"):  # SAC, TD3
        if "deterministic" in inspect.signature(policy.actor.forward).parameters:
            policy.actor(obs, deterministic=True)
        else:
            policy.actor(obs)
        policy.critic(obs, actions)
    elif hasattr(policy, "q_net"):  # DQN
        policy.q_net(obs)
    elif hasattr(policy, "quantile_net"):  # QR-DQN (sb3-contrib)
        policy.quantile_net(obs)
    elif hasattr(policy, "lstm_actor"):  # RecurrentPPO (sb3-contrib): each state starts its own sequence, zero LSTM state
        layers, _, hidden = policy.lstm_hidden_state_shape
        zeros = th.zeros(layers, len(actions), hidden, device=policy.device)
        starts = th.ones(len(actions), device=policy.device)
        policy.get_distribution(obs, (zeros, zeros), starts)
        policy.predict_values(obs, (zeros, zeros), starts)
    elif hasattr(policy, "mlp_extractor"):  # PPO, A2C, MaskablePPO
        policy.get_distribution(obs)
        policy.predict_values(obs)
    else:
        raise ValueError(f"no dormant-neuron measurement for {type(policy).__name__}")


def dormant_fractions(policy: nn.Module, obs: Any, actions: th.Tensor, taus: Sequence[float] = TAUS
                      ) -> dict[str, dict[str, float]]:
    """Fraction of tau-dormant hidden units of each network of ``policy`` over a batch of states.

    :param policy: an SB3 policy (dense or ``Sparse*Policy``)
    :param obs: a batch of observations as the policy takes them (tensor ``[B, ...]`` or dict of tensors)
    :param actions: ``[B, action_dim]`` actions for the critics of SAC / TD3 (unused otherwise)
    :param taus: thresholds of the normalised score (Sokar et al.: 0.025; 0.1 for MuJoCo)
    :return: ``{network: {"units": n, "tau=0.025": fraction, ...}}``
    """
    means: dict[str, list[th.Tensor]] = {}
    handles = []
    for name, module in policy.named_modules():
        if isinstance(module, ACTIVATIONS) and not name.split(".", 1)[0].endswith("_target"):
            def hook(_module: nn.Module, _inputs: Any, output: th.Tensor, name: str = name) -> None:
                means.setdefault(name, []).append(_unit_means(output))
            handles.append(module.register_forward_hook(hook))
    try:
        with th.no_grad():
            _run_networks(policy, obs, actions)
    finally:
        for handle in handles:
            handle.remove()
    result: dict[str, dict[str, float]] = {}
    for name, calls in means.items():
        unit_mean = th.stack(calls).mean(dim=0)  # a shared extractor seen by several heads: averaged
        score = unit_mean / unit_mean.mean().clamp_min(1e-12)
        entry = result.setdefault(network_of(name), {"units": 0.0})
        entry["units"] += score.numel()
        for tau in taus:
            entry[f"tau={tau:g}"] = entry.get(f"tau={tau:g}", 0.0) + float((score <= tau).sum())
    for entry in result.values():
        for key in entry:
            if key != "units":
                entry[key] /= max(entry["units"], 1.0)
    return result


def _stored_batch(model: Any, generator: np.random.Generator, batch_size: int) -> tuple[Any, th.Tensor] | None:
    """Observations and actions from the replay / rollout buffer, drawn with ``generator`` (never the global RNG)."""
    buffer = getattr(model, "rollout_buffer", None) if isinstance(model, OnPolicyAlgorithm) else \
        getattr(model, "replay_buffer", None)
    if buffer is None:
        return None
    size = buffer.buffer_size if buffer.full else buffer.pos
    if size == 0:
        return None
    rows = generator.integers(0, size, batch_size)
    envs = generator.integers(0, buffer.n_envs, batch_size)
    normalize = model.get_vec_normalize_env()
    # a rollout buffer that handed out minibatches (RigL's dense gradient at rollout end, or train()) is flattened to
    # [n_steps * n_envs, ...] in SB3's swap_and_flatten order (env-major)
    flat = bool(getattr(buffer, "generator_ready", False))

    def pick(array: np.ndarray) -> np.ndarray:
        return array[envs * buffer.buffer_size + rows] if flat else array[rows, envs]

    if isinstance(buffer.observations, dict):
        obs_np = {key: pick(value) for key, value in buffer.observations.items()}
    else:
        obs_np = pick(buffer.observations)
    if normalize is not None and not isinstance(model, OnPolicyAlgorithm):  # replay buffers store raw observations
        obs_np = normalize.normalize_obs(obs_np)
    obs, _ = model.policy.obs_to_tensor(obs_np)
    return obs, th.as_tensor(pick(buffer.actions), device=model.device).float()


class DormantNeuronCallback(BaseCallback):
    """Measure the dormant-neuron fraction of every network every ``every`` environment steps.

    Logged under ``dormant/<network>_tau<tau>`` (TensorBoard) and appended to ``<log_dir>/dormant.csv`` (columns
    ``timesteps, network, tau, fraction, units``); on a resumed run the rows after the resumed step are dropped first.
    Off-policy algorithms measure on a replay-buffer batch, on-policy ones on the rollout just collected.

    :param every: environment steps between measurements
    :param log_dir: folder of ``dormant.csv`` (``None``: TensorBoard only)
    :param taus: thresholds (Sokar et al. 2023, arXiv 2302.12902)
    :param batch_size: states per measurement
    :param seed: seed of the batch generator (the measurement at env step t draws with seed ``[seed, t]``, so a resumed
        run measures on the batches of an uninterrupted one)
    """

    def __init__(self, every: int, log_dir: str | Path | None = None, taus: Sequence[float] = TAUS,
                 batch_size: int = 256, seed: int = 0) -> None:
        super().__init__()
        if every <= 0:
            raise ValueError(f"every must be a positive number of environment steps, got {every}")
        self.every, self.taus, self.batch_size = every, tuple(taus), batch_size
        self.path = Path(log_dir) / CSV_NAME if log_dir is not None else None
        self.seed = seed
        self.next_step = every
        self._last_measured = -1

    def _init_callback(self) -> None:
        self.next_step = (self.model.num_timesteps // self.every + 1) * self.every
        if self.path is not None and self.path.is_file():  # resumed: later rows are measured again
            with open(self.path) as f:
                rows = [row for row in csv.DictReader(f) if int(row["timesteps"]) <= self.model.num_timesteps]
            self._write(rows, mode="w")

    def _write(self, rows: list[dict[str, Any]], mode: str = "a") -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = mode == "w" or not self.path.is_file()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}") if mode == "w" else self.path
        with open(tmp, mode, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                writer.writeheader()
            writer.writerows(rows)
        if tmp != self.path:
            os.replace(tmp, self.path)

    def measure(self) -> dict[str, dict[str, float]]:
        batch = _stored_batch(self.model, np.random.default_rng([self.seed, self.num_timesteps]), self.batch_size)
        if batch is None:
            return {}
        self._last_measured = self.num_timesteps
        fractions = dormant_fractions(self.model.policy, *batch, taus=self.taus)
        rows = []
        for network, entry in fractions.items():
            for tau in self.taus:
                value = entry[f"tau={tau:g}"]
                self.logger.record(f"dormant/{network}_tau{tau:g}", value)
                rows.append({"timesteps": self.num_timesteps, "network": network, "tau": tau, "fraction": value,
                             "units": int(entry["units"])})
        if self.path is not None:
            self._write(rows)
        return fractions

    def _on_step(self) -> bool:
        if not isinstance(self.model, OnPolicyAlgorithm) and self.num_timesteps >= self.next_step:
            self.measure()
            self.next_step = (self.num_timesteps // self.every + 1) * self.every
        return True

    def _on_rollout_end(self) -> None:
        if isinstance(self.model, OnPolicyAlgorithm) and self.num_timesteps >= self.next_step:
            self.measure()
            self.next_step = (self.num_timesteps // self.every + 1) * self.every

    def _on_training_end(self) -> None:
        """One last measurement when training ends off the grid (evaluations do the same)."""
        if self.num_timesteps % self.every and self.num_timesteps != self._last_measured:
            self.measure()
