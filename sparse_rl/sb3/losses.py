"""Dense gradients for RigL's grow criterion, from each algorithm's own loss on a fresh batch.

RigL (Evci et al. 2020, "Rigging the Lottery") grows the connections with the largest dense gradient; in deep RL
(Graesser et al. 2022) that is the gradient of the agent's own training loss. The functions here mirror the loss
code of SB3's ``train()`` (SB3 2.9) for SAC, TD3/DDPG, DQN and PPO/A2C, and run one forward/backward pass inside
:func:`sparse_rl.topology.capture_dense_grad`, which fills ``layer.dense_grad`` (an outer product of saved inputs
and output gradients, computed only at update steps).

- SAC / TD3: a replay-buffer batch; the critic layers get the critic TD loss, the actor layers the actor loss, in two
  separate passes (the actor loss also flows through the critics, which do not capture during that pass).
- DQN: a replay-buffer batch and the Huber TD loss.
- PPO / A2C: a minibatch of the full rollout buffer at rollout end (returns and advantages already computed), the
  combined policy, entropy and value loss.
- sb3-contrib's TQC, QR-DQN, CrossQ, RecurrentPPO and MaskablePPO: their own losses, in
  :mod:`sparse_rl.sb3.contrib.losses` (imported only for those algorithms).

Afterwards every ``.grad`` of the policy is cleared, and every running statistic (BatchNorm / BatchRenorm buffers) and
training mode of the policy's modules is restored, so SB3's next ``train()`` starts from the state it expects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch as th
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3 import DQN, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from sparse_rl.nn.layers import SparseLayer
from sparse_rl.topology.criteria import capture_dense_grad

Layers = Mapping[str, SparseLayer]


def _replay_batch(model: Any) -> Any:
    return model.replay_buffer.sample(model.batch_size, env=model._vec_normalize_env)


def _discounts(model: Any, batch: Any) -> Any:
    return batch.discounts if getattr(batch, "discounts", None) is not None else model.gamma


def sac_critic_loss(model: SAC, batch: Any) -> th.Tensor:
    """SAC's critic loss (``SAC.train``): soft TD target from the target critics."""
    if model.ent_coef_optimizer is not None and model.log_ent_coef is not None:
        ent_coef = th.exp(model.log_ent_coef.detach())
    else:
        ent_coef = model.ent_coef_tensor
    with th.no_grad():
        next_actions, next_log_prob = model.actor.action_log_prob(batch.next_observations)
        next_q_values = th.cat(model.critic_target(batch.next_observations, next_actions), dim=1)
        next_q_values, _ = th.min(next_q_values, dim=1, keepdim=True)
        next_q_values = next_q_values - ent_coef * next_log_prob.reshape(-1, 1)
        target_q_values = batch.rewards + (1 - batch.dones) * _discounts(model, batch) * next_q_values
    current_q_values = model.critic(batch.observations, batch.actions)
    return 0.5 * sum(F.mse_loss(current_q, target_q_values) for current_q in current_q_values)  # type: ignore[return-value]


def sac_actor_loss(model: SAC, batch: Any) -> th.Tensor:
    """SAC's actor loss (``SAC.train``): ``ent_coef * log_prob - min Q``."""
    if model.ent_coef_optimizer is not None and model.log_ent_coef is not None:
        ent_coef = th.exp(model.log_ent_coef.detach())
    else:
        ent_coef = model.ent_coef_tensor
    actions_pi, log_prob = model.actor.action_log_prob(batch.observations)
    q_values_pi = th.cat(model.critic(batch.observations, actions_pi), dim=1)
    min_qf_pi, _ = th.min(q_values_pi, dim=1, keepdim=True)
    return (ent_coef * log_prob.reshape(-1, 1) - min_qf_pi).mean()


def td3_critic_loss(model: TD3, batch: Any) -> th.Tensor:
    """TD3's critic loss (``TD3.train``): clipped double-Q target with target policy smoothing."""
    with th.no_grad():
        noise = batch.actions.clone().data.normal_(0, model.target_policy_noise)
        noise = noise.clamp(-model.target_noise_clip, model.target_noise_clip)
        next_actions = (model.actor_target(batch.next_observations) + noise).clamp(-1, 1)
        next_q_values = th.cat(model.critic_target(batch.next_observations, next_actions), dim=1)
        next_q_values, _ = th.min(next_q_values, dim=1, keepdim=True)
        target_q_values = batch.rewards + (1 - batch.dones) * _discounts(model, batch) * next_q_values
    current_q_values = model.critic(batch.observations, batch.actions)
    return sum(F.mse_loss(current_q, target_q_values) for current_q in current_q_values)  # type: ignore[return-value]


def td3_actor_loss(model: TD3, batch: Any) -> th.Tensor:
    """TD3's actor loss (``TD3.train``): ``-Q1(s, actor(s))``."""
    return -model.critic.q1_forward(batch.observations, model.actor(batch.observations)).mean()


def dqn_loss(model: DQN, batch: Any) -> th.Tensor:
    """DQN's Huber TD loss (``DQN.train``)."""
    with th.no_grad():
        next_q_values = model.q_net_target(batch.next_observations)
        next_q_values, _ = next_q_values.max(dim=1)
        next_q_values = next_q_values.reshape(-1, 1)
        target_q_values = batch.rewards + (1 - batch.dones) * _discounts(model, batch) * next_q_values
    current_q_values = th.gather(model.q_net(batch.observations), dim=1, index=batch.actions.long())
    return F.smooth_l1_loss(current_q_values, target_q_values)


def on_policy_loss(model: OnPolicyAlgorithm) -> th.Tensor:
    """PPO's clipped loss (``PPO.train``) on one minibatch of the rollout buffer, or A2C's loss on the whole buffer.

    Call it at rollout end only: the buffer must be full, with returns and advantages computed.
    """
    batch_size = getattr(model, "batch_size", None)
    rollout_data = next(model.rollout_buffer.get(batch_size))
    actions = rollout_data.actions
    if isinstance(model.action_space, spaces.Discrete):
        actions = actions.long().flatten()
    values, log_prob, entropy = model.policy.evaluate_actions(rollout_data.observations, actions)
    values = values.flatten()
    advantages = rollout_data.advantages
    entropy_loss = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
    if not hasattr(model, "clip_range"):  # A2C
        if model.normalize_advantage:  # as A2C.train (no size check, unlike PPO's)
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        policy_loss = -(advantages * log_prob).mean()
        value_loss = F.mse_loss(rollout_data.returns, values)
        return policy_loss + model.ent_coef * entropy_loss + model.vf_coef * value_loss
    if model.normalize_advantage and len(advantages) > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    clip_range = model.clip_range(model._current_progress_remaining)
    ratio = th.exp(log_prob - rollout_data.old_log_prob)
    policy_loss = -th.min(advantages * ratio, advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)).mean()
    values_pred = values
    if model.clip_range_vf is not None:
        clip_range_vf = model.clip_range_vf(model._current_progress_remaining)
        values_pred = rollout_data.old_values + th.clamp(values - rollout_data.old_values, -clip_range_vf, clip_range_vf)
    value_loss = F.mse_loss(rollout_data.returns, values_pred)
    return policy_loss + model.ent_coef * entropy_loss + model.vf_coef * value_loss


def _split(layers: Layers, prefix: str) -> dict[str, SparseLayer]:
    return {name: layer for name, layer in layers.items() if name.split(".", 1)[0] == prefix}


def _is_contrib(model: BaseAlgorithm) -> bool:
    return any(cls.__module__.startswith("sb3_contrib.") for cls in type(model).__mro__)


def loss_passes(model: BaseAlgorithm, layers: Layers) -> list[tuple[dict[str, SparseLayer], Callable[[], th.Tensor]]]:
    """(layers, loss function) pairs: each loss is backpropagated with only its layers capturing."""
    if _is_contrib(model):  # sb3-contrib is installed: the model is one of its algorithms
        from sparse_rl.sb3.contrib.losses import contrib_loss_passes

        passes = contrib_loss_passes(model, layers)
        if passes is not None:
            return passes
        raise ValueError(
            f"no loss recomputation for {type(model).__name__}: gradient-based methods (rigl, srigl) support sb3-contrib's "
            "TQC, QRDQN, CrossQ, RecurrentPPO and MaskablePPO; use method='set' or 'static' for other algorithms"
        )
    if isinstance(model, OnPolicyAlgorithm):
        return [(dict(layers), lambda: on_policy_loss(model))]
    batch = _replay_batch(model)
    if isinstance(model, SAC):
        return [(_split(layers, "critic"), lambda: sac_critic_loss(model, batch)),
                (_split(layers, "actor"), lambda: sac_actor_loss(model, batch))]
    if isinstance(model, TD3):  # DDPG too
        return [(_split(layers, "critic"), lambda: td3_critic_loss(model, batch)),
                (_split(layers, "actor"), lambda: td3_actor_loss(model, batch))]
    if isinstance(model, DQN):
        return [(dict(layers), lambda: dqn_loss(model, batch))]
    raise ValueError(
        f"no loss recomputation for {type(model).__name__}: gradient-based methods (rigl, srigl) support SAC, TD3, DDPG, "
        "DQN, PPO and A2C (and sb3-contrib's TQC, QRDQN, CrossQ, RecurrentPPO, MaskablePPO); use method='set' or 'static' "
        "for other algorithms"
    )


@contextmanager
def kept_module_state(policy: th.nn.Module) -> Iterator[None]:
    """Within the block the policy's modules may change their running statistics (BatchNorm / BatchRenorm buffers) and
    training modes: both are restored when it ends. Sparse layers' index buffers are left alone (no forward pass
    changes them)."""
    modes = [(module, module.training) for module in policy.modules()]
    buffers = [(module, name, buffer.detach().clone()) for module in policy.modules() if not isinstance(module, SparseLayer)
               for name, buffer in module.named_buffers(recurse=False)]
    try:
        yield
    finally:
        with th.no_grad():
            for module, name, saved in buffers:
                getattr(module, name).copy_(saved)
        for module, training in modes:
            module.training = training


def compute_dense_gradients(model: BaseAlgorithm, layers: Layers) -> None:
    """Fill ``layer.dense_grad`` of every layer from the algorithm's own loss on a fresh batch, then clear ``.grad``;
    the policy's running statistics and training modes are as before."""
    with th.enable_grad(), kept_module_state(model.policy):
        for group, loss_fn in loss_passes(model, layers):
            if not group:
                continue
            with capture_dense_grad(group.values()):
                loss_fn().backward()
    model.policy.zero_grad(set_to_none=True)
    missing = [name for name, layer in layers.items() if layer.dense_grad is None]
    if missing:
        raise RuntimeError(f"no dense gradient reached layers {missing}: they do not take part in the training loss")
