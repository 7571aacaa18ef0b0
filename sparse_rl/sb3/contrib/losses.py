"""RigL's dense gradients for sb3-contrib's algorithms, from each algorithm's own training loss on a fresh batch.

RigL (Evci et al. 2020, "Rigging the Lottery") grows the connections with the largest dense gradient of the training
loss (Graesser et al. 2022 in deep RL). The losses mirror the ``train()`` code of sb3-contrib 2.9:

- TQC (Kuznetsov et al. 2020): the quantile Huber loss of the critics against the truncated mixture of target
  quantiles (the top ``top_quantiles_to_drop_per_net`` of each net dropped), and the actor loss ``ent_coef * log_prob
  - mean quantile``, in two passes on one replay batch (critic layers: critic loss; actor layers: actor loss).
- QR-DQN (Dabney et al. 2018): the quantile Huber loss summed over quantiles, with the greedy action of the target
  quantile network.
- CrossQ (Bhatt et al. 2024): no target network; the critic loss comes from CrossQ's joint forward pass of
  ``(s, a)`` and ``(s', a')`` with the critics' BatchRenorm in training mode (batch statistics over both halves), the
  actor loss with the actor's BatchRenorm in training mode and the critics' in evaluation mode, as ``CrossQ.train``.
- RecurrentPPO: PPO's clipped loss on one minibatch of *sequences* of the recurrent rollout buffer, run through the
  LSTMs from the stored hidden states with the episode starts, padded steps masked out.
- MaskablePPO: PPO's clipped loss with the rollout's action masks applied to the distribution.

These passes run inside :func:`sparse_rl.sb3.losses.compute_dense_gradients`, which restores every running statistic
(BatchRenorm's ``ra_mean`` / ``ra_var`` / ``steps``) and every module's training mode afterwards: measuring a gradient
never changes the networks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch as th
import torch.nn.functional as F
from gymnasium import spaces
from sb3_contrib import QRDQN, TQC, CrossQ, MaskablePPO, RecurrentPPO
from sb3_contrib.common.utils import quantile_huber_loss

from sparse_rl.nn.layers import SparseLayer

Layers = Mapping[str, SparseLayer]
Passes = list[tuple[dict[str, SparseLayer], Callable[[], th.Tensor]]]


def _discounts(model: Any, batch: Any) -> Any:
    return batch.discounts if getattr(batch, "discounts", None) is not None else model.gamma


def _ent_coef(model: Any) -> th.Tensor:
    if model.ent_coef_optimizer is not None and model.log_ent_coef is not None:
        return th.exp(model.log_ent_coef.detach())
    return model.ent_coef_tensor


def tqc_critic_loss(model: TQC, batch: Any) -> th.Tensor:
    """TQC's critic loss (``TQC.train``): quantile Huber loss against the truncated target quantiles."""
    ent_coef = _ent_coef(model)
    batch_size = batch.rewards.shape[0]
    with th.no_grad():
        next_actions, next_log_prob = model.actor.action_log_prob(batch.next_observations)
        next_quantiles = model.critic_target(batch.next_observations, next_actions)
        n_target_quantiles = model.critic.quantiles_total - model.top_quantiles_to_drop_per_net * model.critic.n_critics
        next_quantiles, _ = th.sort(next_quantiles.reshape(batch_size, -1))
        next_quantiles = next_quantiles[:, :n_target_quantiles]
        target_quantiles = next_quantiles - ent_coef * next_log_prob.reshape(-1, 1)
        target_quantiles = batch.rewards + (1 - batch.dones) * _discounts(model, batch) * target_quantiles
        target_quantiles.unsqueeze_(dim=1)
    current_quantiles = model.critic(batch.observations, batch.actions)
    return quantile_huber_loss(current_quantiles, target_quantiles, sum_over_quantiles=False)


def tqc_actor_loss(model: TQC, batch: Any) -> th.Tensor:
    """TQC's actor loss (``TQC.train``): ``ent_coef * log_prob`` minus the mean of all critics' quantiles."""
    ent_coef = _ent_coef(model)
    actions_pi, log_prob = model.actor.action_log_prob(batch.observations)
    qf_pi = model.critic(batch.observations, actions_pi).mean(dim=2).mean(dim=1, keepdim=True)
    return (ent_coef * log_prob.reshape(-1, 1) - qf_pi).mean()


def qrdqn_loss(model: QRDQN, batch: Any) -> th.Tensor:
    """QR-DQN's quantile Huber loss (``QRDQN.train``), summed over the quantiles."""
    batch_size, n_quantiles = batch.rewards.shape[0], model.n_quantiles
    with th.no_grad():
        next_quantiles = model.quantile_net_target(batch.next_observations)
        next_greedy_actions = next_quantiles.mean(dim=1, keepdim=True).argmax(dim=2, keepdim=True)
        next_greedy_actions = next_greedy_actions.expand(batch_size, n_quantiles, 1)
        next_quantiles = next_quantiles.gather(dim=2, index=next_greedy_actions).squeeze(dim=2)
        target_quantiles = batch.rewards + (1 - batch.dones) * _discounts(model, batch) * next_quantiles
    current_quantiles = model.quantile_net(batch.observations)
    actions = batch.actions[..., None].long().expand(batch_size, n_quantiles, 1)
    current_quantiles = th.gather(current_quantiles, dim=2, index=actions).squeeze(dim=2)
    return quantile_huber_loss(current_quantiles, target_quantiles, sum_over_quantiles=True)


def crossq_critic_loss(model: CrossQ, batch: Any) -> th.Tensor:
    """CrossQ's critic loss (``CrossQ.train``): one joint forward pass of the current and next state-actions, the
    critics' BatchRenorm in training mode, so its batch statistics cover both halves."""
    ent_coef = _ent_coef(model)
    batch_size = batch.rewards.shape[0]
    with th.no_grad():
        model.actor.set_bn_training_mode(False)
        next_actions, next_log_prob = model.actor.action_log_prob(batch.next_observations)
    all_obs = th.cat([batch.observations, batch.next_observations], dim=0)
    all_actions = th.cat([batch.actions, next_actions], dim=0)
    model.critic.set_bn_training_mode(True)
    all_q_values = th.cat(model.critic(all_obs, all_actions), dim=1)
    model.critic.set_bn_training_mode(False)
    current_q_values, next_q_values = th.split(all_q_values, batch_size, dim=0)
    current_q_values = current_q_values.T[..., None]
    with th.no_grad():
        next_q_values, _ = th.min(next_q_values.detach(), dim=1, keepdim=True)
        next_q_values = next_q_values - ent_coef * next_log_prob.reshape(-1, 1)
        target_q_values = batch.rewards + (1 - batch.dones) * _discounts(model, batch) * next_q_values
    return 0.5 * sum(F.mse_loss(current_q, target_q_values) for current_q in current_q_values)  # type: ignore[return-value]


def crossq_actor_loss(model: CrossQ, batch: Any) -> th.Tensor:
    """CrossQ's actor loss (``CrossQ.train``): actor BatchRenorm in training mode, critics' in evaluation mode."""
    ent_coef = _ent_coef(model)
    model.actor.set_bn_training_mode(True)
    actions_pi, log_prob = model.actor.action_log_prob(batch.observations)
    model.actor.set_bn_training_mode(False)
    model.critic.set_bn_training_mode(False)
    q_values_pi = th.cat(model.critic(batch.observations, actions_pi), dim=1)
    min_qf_pi, _ = th.min(q_values_pi, dim=1, keepdim=True)
    return (ent_coef * log_prob.reshape(-1, 1) - min_qf_pi).mean()


def _ppo_terms(model: Any, rollout_data: Any, values: th.Tensor, log_prob: th.Tensor, entropy: th.Tensor | None,
               mask: th.Tensor | None) -> th.Tensor:
    """PPO's clipped objective, value and entropy terms; ``mask`` selects the real (not padded) steps."""
    def mean(x: th.Tensor) -> th.Tensor:
        return th.mean(x if mask is None else x[mask])

    values = values.flatten()
    advantages = rollout_data.advantages
    if model.normalize_advantage:
        real = advantages if mask is None else advantages[mask]
        advantages = (advantages - real.mean()) / (real.std() + 1e-8)
    clip_range = model.clip_range(model._current_progress_remaining)
    ratio = th.exp(log_prob - rollout_data.old_log_prob)
    policy_loss = -mean(th.min(advantages * ratio, advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)))
    values_pred = values
    if model.clip_range_vf is not None:
        clip_range_vf = model.clip_range_vf(model._current_progress_remaining)
        values_pred = rollout_data.old_values + th.clamp(values - rollout_data.old_values, -clip_range_vf, clip_range_vf)
    value_loss = mean((rollout_data.returns - values_pred) ** 2)
    entropy_loss = -mean(-log_prob) if entropy is None else -mean(entropy)
    return policy_loss + model.ent_coef * entropy_loss + model.vf_coef * value_loss


def _actions(model: Any, rollout_data: Any) -> th.Tensor:
    if isinstance(model.action_space, spaces.Discrete):
        return rollout_data.actions.long().flatten()
    return rollout_data.actions


def recurrent_ppo_loss(model: RecurrentPPO) -> th.Tensor:
    """RecurrentPPO's loss (``RecurrentPPO.train``) on one minibatch of sequences: evaluated through the LSTMs from the
    stored hidden states, padded steps masked. Call it at rollout end only (full buffer, advantages computed)."""
    rollout_data = next(model.rollout_buffer.get(model.batch_size))
    values, log_prob, entropy = model.policy.evaluate_actions(rollout_data.observations, _actions(model, rollout_data),
                                                              rollout_data.lstm_states, rollout_data.episode_starts)
    return _ppo_terms(model, rollout_data, values, log_prob, entropy, rollout_data.mask > 1e-8)


def maskable_ppo_loss(model: MaskablePPO) -> th.Tensor:
    """MaskablePPO's loss (``MaskablePPO.train``) on one minibatch, with the rollout's action masks. Call it at rollout
    end only (full buffer, advantages computed)."""
    rollout_data = next(model.rollout_buffer.get(model.batch_size))
    values, log_prob, entropy = model.policy.evaluate_actions(rollout_data.observations, _actions(model, rollout_data),
                                                              action_masks=rollout_data.action_masks)
    return _ppo_terms(model, rollout_data, values, log_prob, entropy, None)


def _split(layers: Layers, prefix: str) -> dict[str, SparseLayer]:
    return {name: layer for name, layer in layers.items() if name.split(".", 1)[0] == prefix}


def _in_training_mode(loss: Callable[[], th.Tensor], policy: Any) -> Callable[[], th.Tensor]:
    """``loss`` run with the policy in training mode, as ``train()`` runs it (BatchRenorm, dropout)."""
    def run() -> th.Tensor:
        policy.set_training_mode(True)
        return loss()

    return run


def contrib_loss_passes(model: Any, layers: Layers) -> Passes | None:
    """(layers, loss function) pairs for an sb3-contrib algorithm, or ``None`` when ``model`` is none of them."""
    if isinstance(model, RecurrentPPO):
        passes: Passes = [(dict(layers), lambda: recurrent_ppo_loss(model))]
    elif isinstance(model, MaskablePPO):
        passes = [(dict(layers), lambda: maskable_ppo_loss(model))]
    elif isinstance(model, (TQC, QRDQN, CrossQ)):
        batch = model.replay_buffer.sample(model.batch_size, env=model._vec_normalize_env)  # type: ignore[union-attr]
        if isinstance(model, QRDQN):
            passes = [(dict(layers), lambda: qrdqn_loss(model, batch))]
        elif isinstance(model, TQC):
            passes = [(_split(layers, "critic"), lambda: tqc_critic_loss(model, batch)),
                      (_split(layers, "actor"), lambda: tqc_actor_loss(model, batch))]
        else:
            passes = [(_split(layers, "critic"), lambda: crossq_critic_loss(model, batch)),
                      (_split(layers, "actor"), lambda: crossq_actor_loss(model, batch))]
    else:
        return None
    return [(group, _in_training_mode(loss, model.policy)) for group, loss in passes]
