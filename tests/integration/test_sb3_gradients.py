"""RigL's dense gradients come from the algorithm's own loss; optimizer state is reset for changed entries."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch as th
from stable_baselines3 import A2C, DQN, PPO, SAC, TD3
from torch import nn

from sparse_rl.nn.layers import SparseLayer, SparseLinear
from sparse_rl.sb3 import SparseActorCriticPolicy, SparseDQNPolicy, SparseSACPolicy, SparseTD3Policy, TopologyCallback
from sparse_rl.sb3.builders import sparse_layers
from sparse_rl.sb3.losses import (
    compute_dense_gradients,
    dqn_loss,
    on_policy_loss,
    sac_actor_loss,
    sac_critic_loss,
    td3_actor_loss,
    td3_critic_loss,
)
from sparse_rl.topology.criteria import capture_dense_grad


def trained(algo: Any, policy: Any, env_id: str, **kwargs: Any) -> Any:
    model = algo(policy, env_id, learning_starts=30, batch_size=16, buffer_size=500, seed=0,
                 policy_kwargs=dict(sparsity=0.8, net_arch=[32, 32]), **kwargs)
    model.learn(60)
    return model


def dense_twin(model: Any) -> tuple[Any, dict[str, nn.Module]]:
    """A shallow copy of the algorithm whose policy is a deep copy with every sparse layer made a plain dense layer
    (weights equal to the sparse layer's dense weight), so plain autograd gives the reference dL/dW."""
    for module in model.policy.modules():  # backend caches may hold objects that cannot be deep-copied
        if isinstance(module, SparseLayer):
            module._cache.clear()
    if hasattr(model.policy, "action_dist"):  # SB3 keeps the last (non-leaf) distribution, rebuilt at each forward
        model.policy.action_dist.distribution = None
    policy = copy.deepcopy(model.policy)
    dense = {}
    for name, layer in list(policy.named_modules()):
        if not isinstance(layer, SparseLayer):
            continue
        if isinstance(layer, SparseLinear):
            replacement = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        else:
            replacement = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                                    layer.dilation, layer.groups, bias=layer.bias is not None)
        with th.no_grad():
            replacement.weight.copy_(layer.dense_weight())
            if layer.bias is not None:
                replacement.bias.copy_(layer.bias)
        parent, _, child = name.rpartition(".")
        setattr(policy.get_submodule(parent) if parent else policy, child, replacement)
        dense[name] = replacement
    twin = copy.copy(model)
    twin.policy = policy
    if hasattr(twin, "_create_aliases"):
        twin._create_aliases()
    return twin, dense


def reference_grads(model: Any, passes: list[tuple[str, Any]], training_mode: bool = False) -> dict[str, th.Tensor]:
    """Dense grads from each loss alone (same batch and noise as compute_dense_gradients), by plain autograd;
    ``training_mode``: the twin's policy in training mode (BatchRenorm layers use the batch's statistics)."""
    twin, dense = dense_twin(model)
    np.random.seed(3)
    th.manual_seed(3)
    batch = model.replay_buffer.sample(model.batch_size, env=model._vec_normalize_env)
    if training_mode:
        twin.policy.set_training_mode(True)
    grads = {}
    for prefix, loss_fn in passes:
        twin.policy.zero_grad(set_to_none=True)
        loss_fn(twin, batch).backward()
        for name, layer in dense.items():
            if name.split(".")[0] == prefix:
                grads[name] = layer.weight.grad.reshape(layer.weight.shape[0], -1).clone()
    return grads


@pytest.mark.parametrize("algo, policy, env_id, passes", [
    (SAC, SparseSACPolicy, "Pendulum-v1", [("critic", sac_critic_loss), ("actor", sac_actor_loss)]),
    (TD3, SparseTD3Policy, "Pendulum-v1", [("critic", td3_critic_loss), ("actor", td3_actor_loss)]),
    (DQN, SparseDQNPolicy, "CartPole-v1", [("q_net", dqn_loss)]),
])
def test_dense_grads_from_own_loss(algo: Any, policy: Any, env_id: str, passes: Any) -> None:
    model = trained(algo, policy, env_id)
    assert_dense_grads_equal(model, reference_grads(model, passes))


def assert_dense_grads_equal(model: Any, expected: dict[str, th.Tensor]) -> None:
    """compute_dense_gradients on the reference's batch and noise (seed 3) gives each layer exactly its own loss's
    dense gradient, and leaves no ``.grad`` behind."""
    np.random.seed(3)
    th.manual_seed(3)
    layers = sparse_layers(model.policy)
    compute_dense_gradients(model, layers)
    assert set(expected) == set(layers)
    for name, layer in layers.items():
        # critic layers get the critic TD loss only (the actor loss, which also runs through the critics, is not added)
        assert th.allclose(layer.dense_grad, expected[name], atol=1e-6), name
        assert layer.dense_grad.abs().sum() > 0
    assert all(p.grad is None for p in model.policy.parameters()), "training must not see the RigL gradients"


def test_capture_matches_sparse_autograd_on_active_entries() -> None:
    model = trained(SAC, SparseSACPolicy, "Pendulum-v1")
    batch = model.replay_buffer.sample(16)
    model.policy.zero_grad(set_to_none=True)  # train() leaves its last gradients in .grad
    critic_layers = {n: lay for n, lay in sparse_layers(model.policy).items() if n.startswith("critic.")}
    with capture_dense_grad(critic_layers.values()):
        sac_critic_loss(model, batch).backward()
    for layer in critic_layers.values():
        active = layer.dense_grad.reshape(-1)[layer.flat_indices()]
        assert th.allclose(active, layer.values.grad, atol=1e-6)


def exp_avg_dense(optimizer: th.optim.Optimizer, layer: Any) -> th.Tensor:
    dense = th.zeros(layer.numel_dense)
    dense[layer.flat_indices()] = optimizer.state[layer.values]["exp_avg"]
    return dense


def test_optimizer_state_reset_in_every_optimizer() -> None:
    model = trained(SAC, SparseSACPolicy, "Pendulum-v1")
    layers = sparse_layers(model.policy)
    owners = {"actor": model.actor.optimizer, "critic": model.critic.optimizer}
    before = {}
    for name, layer in layers.items():
        optimizer = owners[name.split(".")[0]]
        before[name] = (layer.mask.reshape(-1).clone(), exp_avg_dense(optimizer, layer))
    ent_state = {k: v.clone() for k, v in model.ent_coef_optimizer.state[model.log_ent_coef].items()}
    callback = TopologyCallback(method="rigl", update_every=10, start=0, end=10_000, drop_fraction=0.5)
    callback.init_callback(model)
    callback.update_topology()
    changed = 0
    for name, layer in layers.items():
        optimizer = owners[name.split(".")[0]]
        old_mask, old_avg = before[name]
        new_mask = layer.mask.reshape(-1)
        new_avg = exp_avg_dense(optimizer, layer)
        kept, grown = old_mask & new_mask, new_mask & ~old_mask
        assert th.equal(new_avg[kept], old_avg[kept]), "kept connections keep their Adam moments"
        assert th.all(new_avg[grown] == 0), "grown connections start with zero Adam moments"
        assert th.all(optimizer.state[layer.values]["exp_avg_sq"] >= 0)
        assert optimizer.state[layer.values]["exp_avg_sq"].numel() == layer.nnz
        assert th.all(layer.values.detach()[grown[layer.flat_indices()]] == 0), "grown weights start at 0"
        changed += int(grown.sum())
    assert changed > 0
    for key, value in model.ent_coef_optimizer.state[model.log_ent_coef].items():
        assert th.equal(value, ent_state[key])


@pytest.mark.parametrize("algo", [PPO, A2C])
def test_on_policy_dense_grads_from_rollout_loss(algo: Any) -> None:
    kwargs = dict(n_steps=32, batch_size=16, n_epochs=1) if algo is PPO else dict(n_steps=8)
    model = algo(SparseActorCriticPolicy, "CartPole-v1", seed=0, policy_kwargs=dict(sparsity=0.8, net_arch=[32, 32]),
                 **kwargs)
    model.learn(32 if algo is PPO else 8)  # the rollout buffer is full, with advantages computed
    assert_rollout_dense_grads_equal(model, on_policy_loss)


@pytest.mark.parametrize("normalize_advantage", [False, True])
def test_a2c_grows_by_the_loss_a2c_trains_on(normalize_advantage: bool) -> None:
    """RigL's A2C loss left the advantages unnormalised under normalize_advantage=True: another loss than A2C.train's.
    With learning rate 0 the loss A2C logged for its last rollout is the loss at the current weights."""
    model = A2C(SparseActorCriticPolicy, "CartPole-v1", seed=0, n_steps=8, learning_rate=0.0,
                normalize_advantage=normalize_advantage, policy_kwargs=dict(sparsity=0.8, net_arch=[32, 32]))
    model.learn(8)
    logged = model.logger.name_to_value
    trained = logged["train/policy_loss"] + model.ent_coef * logged["train/entropy_loss"] + \
        model.vf_coef * logged["train/value_loss"]
    assert on_policy_loss(model).item() == pytest.approx(trained, rel=1e-6)


def assert_rollout_dense_grads_equal(model: Any, loss: Any) -> None:
    """compute_dense_gradients at rollout end gives the gradient of ``loss`` on a dense copy (same minibatch: seed 5),
    and leaves no ``.grad`` behind."""
    twin, dense = dense_twin(model)
    np.random.seed(5)
    loss(twin).backward()
    np.random.seed(5)
    layers = sparse_layers(model.policy)
    compute_dense_gradients(model, layers)
    assert set(dense) == set(layers)
    for name, layer in layers.items():
        expected = dense[name].weight.grad.reshape(layer.matrix_shape)
        assert th.allclose(layer.dense_grad, expected, atol=1e-6), name
    assert all(p.grad is None for p in model.policy.parameters())


@pytest.mark.parametrize("algo", ["sac", "td3", "dqn"])
def test_target_networks_compute_with_their_polyak_averaged_weights(algo):
    """Under no_grad, target layers on the reference path (dense-ish ERK input layers) kept the weight cached at the
    last topology change: SB3's polyak_update writes through .data, which the cache did not see, so target values
    used stale weights (max error 2.7 on SAC's critic_target)."""
    from stable_baselines3 import DQN, SAC, TD3
    from stable_baselines3.common.utils import polyak_update

    from sparse_rl.sb3 import SparseDQNPolicy, SparseSACPolicy, SparseTD3Policy
    from sparse_rl.sb3.builders import target_pairs

    cls, policy, env = {"sac": (SAC, SparseSACPolicy, "Pendulum-v1"), "td3": (TD3, SparseTD3Policy, "Pendulum-v1"),
                        "dqn": (DQN, SparseDQNPolicy, "CartPole-v1")}[algo]
    model = cls(policy, env, buffer_size=100, policy_kwargs=dict(sparsity=0.5, net_arch=[64, 64], backend="reference"),
                seed=0)
    pairs = list(target_pairs(model.policy))
    x = {id(t): th.randn(8, t.in_features) for _, t in pairs}
    with th.no_grad():
        for _, target in pairs:
            target(x[id(target)])  # fills any cache
        for online, _ in pairs:
            online.values.add_(0.5)
        polyak_update([o.values for o, _ in pairs], [t.values for _, t in pairs], 1.0)
        for online, target in pairs:
            expected = th.nn.functional.linear(x[id(target)], online.dense_weight(), target.bias)
            th.testing.assert_close(target(x[id(target)]), expected)
