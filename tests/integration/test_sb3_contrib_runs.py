"""Real short sb3-contrib runs (TQC, QR-DQN, CrossQ, RecurrentPPO, MaskablePPO) with every topology update checked, and
RigL's dense gradients from each algorithm's own loss."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch as th

pytest.importorskip("sb3_contrib")

from sb3_contrib import QRDQN, TQC, CrossQ, MaskablePPO, RecurrentPPO  # noqa: E402
from sb3_contrib.common.envs import InvalidActionEnvDiscrete  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402

from sparse_rl.sb3 import TopologyCallback, sparsity_report  # noqa: E402
from sparse_rl.sb3.builders import sparse_layers  # noqa: E402
from sparse_rl.sb3.contrib.losses import (  # noqa: E402
    crossq_actor_loss,
    crossq_critic_loss,
    maskable_ppo_loss,
    qrdqn_loss,
    recurrent_ppo_loss,
    tqc_actor_loss,
    tqc_critic_loss,
)
from sparse_rl.sb3.losses import compute_dense_gradients  # noqa: E402
from tests.integration.test_sb3_gradients import (  # noqa: E402
    assert_dense_grads_equal,
    assert_rollout_dense_grads_equal,
    reference_grads,
)

OFF_POLICY = dict(learning_starts=50, batch_size=32, buffer_size=1000)
ON_POLICY = dict(n_steps=64, batch_size=32, n_epochs=2)


def masked_env() -> InvalidActionEnvDiscrete:
    return InvalidActionEnvDiscrete(dim=8, n_invalid_actions=4)


SETTINGS: dict[str, tuple[Any, Any, dict[str, Any], dict[str, Any]]] = {
    "tqc": (TQC, "Pendulum-v1", OFF_POLICY, dict(n_quantiles=5)),
    "qrdqn": (QRDQN, "CartPole-v1", {**OFF_POLICY, "train_freq": 1}, dict(n_quantiles=5)),
    "crossq": (CrossQ, "Pendulum-v1", OFF_POLICY, {}),
    "ppo_lstm": (RecurrentPPO, "CartPole-v1", ON_POLICY, dict(lstm_hidden_size=16)),
    "ppo_lstm_no_critic_lstm": (RecurrentPPO, "CartPole-v1", ON_POLICY, dict(lstm_hidden_size=16, enable_critic_lstm=False)),
    "ppo_mask": (MaskablePPO, masked_env, ON_POLICY, {}),
}


def method_kwargs(method: str) -> dict[str, Any]:
    return {"srigl": dict(constant_fan_in=True), "gmp": dict(start_dense=True)}.get(method, {})


def make(name: str, method: str = "rigl", sparsity: float = 0.9, net_arch: list[int] | None = None, **extra: Any) -> Any:
    algo, env, kwargs, policy_kwargs = SETTINGS[name]
    policy_kwargs = dict(sparsity=sparsity, net_arch=net_arch or [64, 64], **policy_kwargs, **method_kwargs(method))
    return algo("SparseMlpPolicy", env() if callable(env) else env, policy_kwargs=policy_kwargs, seed=0,
                **{**kwargs, **extra})


def masks(model: Any) -> dict[str, th.Tensor]:
    return {name: layer.mask.clone() for name, layer in sparse_layers(model.policy).items()}


@pytest.mark.parametrize("method", ["rigl", "set"])
@pytest.mark.parametrize("name", list(SETTINGS))
def test_short_run_invariants(name: str, method: str, checking_callback: Any) -> None:
    """Masks change, nnz stays constant, targets equal online, density exact, optimizer state sized to the values."""
    model = make(name, method)
    before = masks(model)
    density = sparsity_report(model)["total"]["density"]
    callback = checking_callback(method=method, update_every=50, drop_fraction=0.3, end=1.0, seed=0)
    model.learn(320 if name.startswith("ppo") else 220, callback=callback)
    assert callback.updater.num_updates >= 2
    assert all(callback.rollout_full), "on-policy updates happen at rollout end"
    assert len(set(callback.nnz_history)) == 1, "DST keeps nnz constant"
    assert callback.last_stats.changed_fraction > 0
    assert any(not th.equal(mask, masks(model)[layer]) for layer, mask in before.items()), "the masks changed"
    assert sparsity_report(model)["total"]["density"] == density
    for group, prefixes in (("actor", ("actor.",)), ("critic", ("critic.",))):
        layers = [m for n, m in sparse_layers(model.policy).items() if n.startswith(prefixes)]
        if layers:
            nnz, numel = sum(m.nnz for m in layers), sum(m.numel_dense for m in layers)
            assert nnz == round(0.1 * numel), group


@pytest.mark.parametrize("name, method", [("tqc", "gmp"), ("qrdqn", "srigl"), ("ppo_mask", "static"),
                                          ("ppo_lstm", "gmp")])
def test_other_methods(name: str, method: str, checking_callback: Any) -> None:
    model = make(name, method)
    callback = checking_callback(method=method, update_every=50, end=1.0, seed=0)
    model.learn(320 if name.startswith("ppo") else 220, callback=callback)
    if method == "static":
        assert callback.updater.num_updates == 0 and len(set(callback.nnz_history)) == 1
    elif method == "gmp":
        assert callback.nnz_history[-1] < 0.5 * callback.nnz_history[0]
    else:
        assert callback.updater.num_updates >= 2 and len(set(callback.nnz_history)) == 1


def test_recurrent_ppo_with_several_envs(checking_callback: Any) -> None:
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = RecurrentPPO("SparseMlpLstmPolicy", env, policy_kwargs=dict(net_arch=[32], lstm_hidden_size=8), seed=0,
                         **ON_POLICY)
    callback = checking_callback(method="rigl", update_every=128, end=10_000, seed=0)
    model.learn(512, callback=callback)
    assert callback.update_clock == [128, 256, 384, 512]


# ------------------------------------------------------------------------------------------------ dense gradients
def forget_last_distributions(model: Any) -> None:
    """The actors keep their last (non-leaf) distribution, which cannot be deep-copied: rebuilt at each forward."""
    for module in model.policy.modules():
        dist = module.__dict__.get("action_dist")
        if dist is not None:
            dist.distribution = None
            if hasattr(dist, "gaussian_actions"):
                dist.gaussian_actions = None


def reference_off_policy(model: Any, passes: list[tuple[str, Any]]) -> dict[str, th.Tensor]:
    """Dense dL/dW from each loss alone on the same batch and noise, by plain autograd on a dense copy."""
    forget_last_distributions(model)
    return reference_grads(model, passes, training_mode=True)


@pytest.mark.parametrize("name, passes", [
    ("tqc", [("critic", tqc_critic_loss), ("actor", tqc_actor_loss)]),
    ("qrdqn", [("quantile_net", qrdqn_loss)]),
    ("crossq", [("critic", crossq_critic_loss), ("actor", crossq_actor_loss)]),
])
def test_off_policy_dense_grads_from_own_loss(name: str, passes: Any) -> None:
    model = make(name, sparsity=0.8, net_arch=[32, 32], learning_starts=30, batch_size=16, buffer_size=500)
    model.learn(60)
    assert_dense_grads_equal(model, reference_off_policy(model, passes))


@pytest.mark.parametrize("name, loss", [("ppo_lstm", recurrent_ppo_loss), ("ppo_lstm_no_critic_lstm", recurrent_ppo_loss),
                                        ("ppo_mask", maskable_ppo_loss)])
def test_on_policy_dense_grads_from_own_loss(name: str, loss: Any) -> None:
    model = make(name, sparsity=0.8, net_arch=[32, 32], n_steps=32, batch_size=16, n_epochs=1)
    model.learn(32)  # the rollout buffer is full, with advantages computed
    assert_rollout_dense_grads_equal(model, loss)


def test_maskable_loss_uses_the_masks() -> None:
    """The action masks change the gradient: MaskablePPO's loss, not PPO's."""
    model = make("ppo_mask", sparsity=0.8, net_arch=[32, 32], n_steps=32, batch_size=32, n_epochs=1)
    model.learn(32)
    layer = model.policy.mlp_extractor.policy_net[0]
    grads = []
    for masked in (True, False):
        if not masked:
            model.rollout_buffer.action_masks[:] = 1.0
        np.random.seed(5)
        compute_dense_gradients(model, {"layer": layer})
        grads.append(layer.dense_grad.clone())
    assert not th.allclose(grads[0], grads[1])


def test_crossq_dense_gradient_pass_leaves_batch_renorm_and_modes_alone() -> None:
    """The dense-gradient pass runs CrossQ's BatchRenorm in training mode; its running statistics, step counters and
    every module's training mode are as before afterwards."""
    model = make("crossq", sparsity=0.8, net_arch=[32, 32], learning_starts=30, batch_size=16, buffer_size=500)
    model.learn(60)
    model.policy.set_training_mode(False)
    buffers = {name: buffer.clone() for name, buffer in model.policy.named_buffers() if "ra_" in name or "steps" in name}
    assert buffers
    modes = {name: module.training for name, module in model.policy.named_modules()}
    callback = TopologyCallback(method="rigl", update_every=10, start=0, end=10_000, drop_fraction=0.5)
    callback.init_callback(model)
    callback.update_topology()
    assert callback.last_stats.changed_fraction > 0
    for name, value in model.policy.named_buffers():
        if name in buffers:
            assert th.equal(value, buffers[name]), name
    assert {name: module.training for name, module in model.policy.named_modules()} == modes


@pytest.mark.parametrize("name", ["tqc", "ppo_lstm_no_critic_lstm"])
def test_optimizer_state_remapped(name: str) -> None:
    """Kept connections keep their Adam moments, grown ones start from zero, in whichever optimizer owns the layer."""
    from sparse_rl.sb3.builders import find_optimizers
    from tests.integration.test_sb3_gradients import exp_avg_dense

    model = make(name, sparsity=0.8, net_arch=[32, 32], **(dict(learning_starts=30, batch_size=16, buffer_size=500)
                                                            if name == "tqc" else dict(n_steps=32, batch_size=16)))
    model.learn(64)
    layers = sparse_layers(model.policy)
    owners = {name: next(o for o in find_optimizers(model) if layer.values in o.state) for name, layer in layers.items()}
    before = {name: (layer.mask.reshape(-1).clone(), exp_avg_dense(owners[name], layer)) for name, layer in layers.items()}
    callback = TopologyCallback(method="rigl", update_every=10, start=0, end=10_000, drop_fraction=0.5)
    callback.init_callback(model)
    callback.update_topology()
    grown_total = 0
    for layer_name, layer in layers.items():
        old_mask, old_avg = before[layer_name]
        new_mask, new_avg = layer.mask.reshape(-1), exp_avg_dense(owners[layer_name], layer)
        kept, grown = old_mask & new_mask, new_mask & ~old_mask
        assert th.equal(new_avg[kept], old_avg[kept]), layer_name
        assert th.all(new_avg[grown] == 0), layer_name
        grown_total += int(grown.sum())
    assert grown_total > 0
