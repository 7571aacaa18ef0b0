"""SB3 policies on the fused path in training: gradients equal the plain per-layer path's, before and after RigL updates.

The RigL update runs through the real ``TopologyCallback`` machinery's layer calls (dense-gradient capture, drop / grow,
rewiring); the fused and the plain path must then give the same losses and gradients (a pruned connection has no
stored value and contributes nothing: the layers' densified weights are exactly zero there).
"""

from __future__ import annotations

import pytest
import torch as th

from sparse_rl.nn import SparseLinear, SparseSequential, backends
from sparse_rl.nn.backends import ops

pytestmark = pytest.mark.skipif(not ops.available(), reason="the sparse_rl operators did not build here")


def _losses(policy, obs: th.Tensor, actions: th.Tensor) -> th.Tensor:
    q = th.cat(policy.critic(obs, actions), dim=1)
    mean_actions, log_std, _ = policy.actor.get_action_dist_params(obs)
    return q.pow(2).mean() + mean_actions.pow(2).mean() + log_std.mean()


def _grads(policy, obs: th.Tensor, actions: th.Tensor, fused: bool) -> tuple[th.Tensor, list[th.Tensor]]:
    """Loss and gradients on the fused CPU-operator path, or on the plain path with the reference backend (dense
    matrix products on the densified weights: an independent check, no kernel cache shared with the fused path)."""
    from sparse_rl.sb3.builders import sparse_layers

    layers = list(sparse_layers(policy).values())
    backends = [layer.backend for layer in layers]
    SparseSequential.fused = fused
    try:
        if not fused:
            for layer in layers:
                layer.backend = "reference"
        policy.zero_grad(set_to_none=True)
        loss = _losses(policy, obs, actions)
        loss.backward()
    finally:
        SparseSequential.fused = True
        for layer, backend in zip(layers, backends):
            layer.backend = backend
    return loss.detach(), [p.grad.clone() for p in policy.parameters() if p.grad is not None]


def test_sac_policy_trains_identically_fused_and_plain_across_rigl_updates() -> None:
    import gymnasium as gym

    from sparse_rl.sb3 import SparseSACPolicy
    from sparse_rl.sb3.builders import sparse_layers
    from sparse_rl.topology import capture_dense_grad

    env = gym.make("Pendulum-v1")
    th.manual_seed(0)
    policy = SparseSACPolicy(env.observation_space, env.action_space, lambda _: 1e-3, net_arch=[128, 128], sparsity=0.9,
                             distribution="uniform")
    assert any(type(m) is SparseSequential for m in policy.modules())
    obs, actions = th.randn(64, 3), th.rand(64, 1) * 2 - 1
    layers = [m for m in sparse_layers(policy).values() if isinstance(m, SparseLinear)]
    assert layers and all(backends.resolve(layer.backend, layer) == "cpu" for layer in layers), "not on the fused path"
    for update in range(3):
        (loss_f, grads_f), (loss_p, grads_p) = _grads(policy, obs, actions, True), _grads(policy, obs, actions, False)
        th.testing.assert_close(loss_f, loss_p, atol=1e-5, rtol=1e-5, msg=f"loss after {update} updates")
        assert len(grads_f) == len(grads_p)
        for got, want in zip(grads_f, grads_p):
            th.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, msg=f"gradients after {update} updates")
        with capture_dense_grad(layers):  # RigL's dense gradient: exact, whatever the path
            policy.zero_grad(set_to_none=True)
            _losses(policy, obs, actions).backward()
        for layer in layers:  # RigL-like: drop the weakest 20 %, grow where the dense gradient is largest
            assert layer.dense_grad is not None
            mask, dense_grad = layer.mask.reshape(-1), layer.dense_grad.reshape(-1).abs()
            n_drop = layer.nnz // 5
            magnitude = th.full_like(dense_grad, float("inf"))
            magnitude[layer.flat_indices()] = layer.values.detach().abs()
            keep = mask.clone()
            keep[magnitude.topk(n_drop, largest=False).indices] = False
            grow = dense_grad.masked_fill(mask, -1.0).topk(n_drop).indices
            new_mask = keep.clone()
            new_mask[grow] = True
            slot_of = th.full_like(dense_grad, -1, dtype=th.long)
            slot_of[layer.flat_indices()] = th.arange(layer.nnz)
            source = slot_of[new_mask.nonzero().squeeze(1)]
            source[~keep[new_mask.nonzero().squeeze(1)]] = -1
            layer.rewire(new_mask.view(layer.matrix_shape), source, th.zeros(int((source < 0).sum())))
            assert bool((layer.mask.reshape(-1) == new_mask).all())
