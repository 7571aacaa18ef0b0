"""Sparse SB3 policies: construction, layer allocation, targets, init, validation, report."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.dqn.policies import DQNPolicy
from stable_baselines3.sac.policies import SACPolicy
from stable_baselines3.td3.policies import TD3Policy
from torch import nn

import sparse_rl.sb3 as sb3
from sparse_rl.nn.layers import SparseConv2d, SparseLayer, SparseLinear
from sparse_rl.sb3 import (
    SparseActorCriticCnnPolicy,
    SparseActorCriticPolicy,
    SparseDQNCnnPolicy,
    SparseDQNPolicy,
    SparseSACPolicy,
    SparseTD3Policy,
    TopologyCallback,
    sparsity_report,
)
from sparse_rl.sb3.builders import same_topology, sparse_layers, target_pairs

th.set_num_threads(1)

BOX_OBS = gym.spaces.Box(-1.0, 1.0, (11,), np.float32)
BOX_ACT = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
DISCRETE = gym.spaces.Discrete(4)
IMAGE_OBS = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)


def lr(_: float) -> float:
    return 1e-3


def sac(**kwargs) -> SparseSACPolicy:
    return SparseSACPolicy(BOX_OBS, BOX_ACT, lr, **{"net_arch": [64, 64], **kwargs})


def total_of(policy: nn.Module, prefix: str) -> tuple[int, int]:
    layers = {n: m for n, m in sparse_layers(policy).items() if n.startswith(prefix)}
    return sum(m.nnz for m in layers.values()), sum(m.numel_dense for m in layers.values())


def test_public_api() -> None:
    for name in ["SparseSACPolicy", "SparseTD3Policy", "SparseDQNPolicy", "SparseDQNCnnPolicy", "SparseActorCriticPolicy",
                 "SparseActorCriticCnnPolicy", "TopologyCallback", "sparsity_report"]:
        assert hasattr(sb3, name)


@pytest.mark.parametrize(
    "sparse_cls, dense_cls, obs, act",
    [(SparseSACPolicy, SACPolicy, BOX_OBS, BOX_ACT), (SparseTD3Policy, TD3Policy, BOX_OBS, BOX_ACT),
     (SparseDQNPolicy, DQNPolicy, BOX_OBS, DISCRETE), (SparseActorCriticPolicy, ActorCriticPolicy, BOX_OBS, DISCRETE)],
)
def test_sparsity_zero_is_sb3_policy(sparse_cls, dense_cls, obs, act) -> None:
    th.manual_seed(0)
    sparse = sparse_cls(obs, act, lr, sparsity=0.0)
    th.manual_seed(0)
    dense = dense_cls(obs, act, lr)
    assert not any(isinstance(m, SparseLayer) for m in sparse.modules())
    a, b = sparse.state_dict(), dense.state_dict()
    assert a.keys() == b.keys()  # no topology-state entry while there is no topology state
    assert all(th.equal(a[k], b[k]) for k in a)


def test_sac_layers_heads_dense_and_exact_sparsity() -> None:
    policy = sac(sparsity=0.9)
    names = set(sparse_layers(policy))
    assert names == {"actor.latent_pi.0", "actor.latent_pi.2", "critic.qf0.0", "critic.qf0.2", "critic.qf1.0", "critic.qf1.2"}
    assert isinstance(policy.actor.mu, nn.Linear) and isinstance(policy.actor.log_std, nn.Linear)
    assert isinstance(policy.critic.qf0[4], nn.Linear)
    for prefix in ("actor.", "critic."):
        nnz, numel = total_of(policy, prefix)
        assert nnz == round(0.1 * numel)
    # ERK gives the small input layer a higher density than the 64x64 hidden layer
    assert policy.actor.latent_pi[0].density > policy.actor.latent_pi[2].density


def test_actor_critic_overrides_and_uniform() -> None:
    policy = sac(sparsity=0.5, actor_sparsity=0.8, critic_sparsity=0.95, distribution="uniform")
    nnz, numel = total_of(policy, "actor.")
    assert nnz == round(0.2 * numel)
    nnz, numel = total_of(policy, "critic.")
    assert nnz == round(0.05 * numel)
    assert policy.critic.qf0[0].density == pytest.approx(0.05, abs=0.01)
    assert policy.critic.qf0[2].density == pytest.approx(0.05, abs=0.01)
    only_actor = sac(sparsity=0.0, actor_sparsity=0.9)
    assert all(n.startswith("actor.") for n in sparse_layers(only_actor))


@pytest.mark.parametrize("policy_fn", [
    lambda: sac(sparsity=0.9),
    lambda: SparseTD3Policy(BOX_OBS, BOX_ACT, lr, sparsity=0.9, net_arch=[32, 32]),
    lambda: SparseTD3Policy(BOX_OBS, BOX_ACT, lr, sparsity=0.9, net_arch=[32, 32], share_features_extractor=True),
    lambda: SparseDQNPolicy(BOX_OBS, DISCRETE, lr, sparsity=0.9),
])
def test_targets_carry_online_masks_after_construction(policy_fn) -> None:
    policy = policy_fn()
    pairs = list(target_pairs(policy))
    assert pairs, "expected sparse target layers"
    for online, target in pairs:
        assert online is not target
        assert same_topology(online, target)
        assert th.equal(online.mask, target.mask)
        assert th.equal(online.dense_weight(), target.dense_weight())


def test_td3_heads() -> None:
    policy = SparseTD3Policy(BOX_OBS, BOX_ACT, lr, sparsity=0.9, net_arch=[32, 32])
    assert isinstance(policy.actor.mu[4], nn.Linear) and isinstance(policy.actor.mu[0], SparseLinear)
    every = SparseTD3Policy(BOX_OBS, BOX_ACT, lr, sparsity=0.9, net_arch=[32, 32], dense_layers=())
    assert isinstance(every.actor.mu[4], SparseLinear) and isinstance(every.critic.qf1[4], SparseLinear)


def test_dense_layers_aliases_and_prefixes() -> None:
    policy = sac(sparsity=0.9, dense_layers=["input", "output"])
    assert set(sparse_layers(policy)) == {"actor.latent_pi.2", "critic.qf0.2", "critic.qf1.2"}
    policy = sac(sparsity=0.9, dense_layers=["critic", "actor.latent_pi.0"])
    assert set(sparse_layers(policy)) == {"actor.latent_pi.2", "actor.mu", "actor.log_std"}
    with pytest.raises(ValueError, match="dense_layers"):
        sac(sparsity=0.9, dense_layers=["critic.qf9"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(sparsity=1.0), "sparsity"), (dict(sparsity=-0.1), "sparsity"), (dict(sparsity="0.9"), "sparsity"),
    (dict(actor_sparsity=1.5), "actor_sparsity"), (dict(critic_sparsity=1.0), "critic_sparsity"),
    (dict(sparsity=0.9, distribution="gaussian"), "distribution"), (dict(sparsity=0.9, backend="cuda-magic"), "backend"),
    (dict(sparsity=0.9, init_scale="big"), "init_scale"),
    (dict(start_dense="False"), "start_dense must be True or False"),  # built fully dense
    (dict(constant_fan_in="no"), "constant_fan_in must be True or False"),  # built constant fan-in
])
def test_bad_policy_kwargs(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        sac(**kwargs)


def test_an_override_for_a_network_the_policy_lacks_is_an_error() -> None:
    """DQN's q-network is its critic: actor_sparsity was accepted and ignored."""
    with pytest.raises(ValueError, match=r"actor_sparsity=0.5: this policy has no actor network .* critic_sparsity"):
        SparseDQNPolicy(BOX_OBS, DISCRETE, lr, actor_sparsity=0.5)
    assert SparseDQNPolicy(BOX_OBS, DISCRETE, lr, critic_sparsity=0.5).sparse_config.critic_sparsity == 0.5


@pytest.mark.parametrize("net_arch, sparsity", [([32, 32], 0.95), ([64, 64], 0.99)])
def test_constant_fan_in_says_when_whole_fan_ins_miss_the_sparsity(net_arch, sparsity) -> None:
    """Each layer's fan-in is rounded on its own, and nothing was said: [64, 64] at 99 % holds 3x the budget."""
    with pytest.warns(UserWarning, match=r"constant_fan_in: the \d+ layers at sparsity") as caught:
        policy = sac(net_arch=net_arch, sparsity=sparsity, constant_fan_in=True)
    achieved = {f"sparsity {1 - nnz / numel:.4f}" for nnz, numel in (total_of(policy, "actor"), total_of(policy, "critic"))}
    assert any(text in str(w.message) for w in caught for text in achieved)
    for layer in sparse_layers(policy).values():  # every row keeps the same fan-in
        rows = layer.mask.reshape(layer.matrix_shape).sum(dim=1)
        assert th.all(rows == rows[0])
    import warnings

    with warnings.catch_warnings():  # within half a percentage point: no warning
        warnings.simplefilter("error")
        sac(net_arch=[256, 256], sparsity=0.9, constant_fan_in=True)


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="magic"), "method"), (dict(drop_schedule="exp"), "drop_schedule"), (dict(update_every=0), "update_every"),
    (dict(drop_fraction=1.5), "drop_fraction"),
    # accepted, then failed inside learn() or did something else (end=1.5 meant step 1; ablation_threshold is SRigL's)
    (dict(start=-1), "start must be a whole number"), (dict(end="0.8"), "end must be"), (dict(end=1.5), "end must be"),
    (dict(seed="a"), "seed must be an integer"), (dict(ablation_threshold=0.5), "method='rigl' has none"),
])
def test_bad_callback_args(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        TopologyCallback(**kwargs)


def test_constant_fan_in_and_start_dense() -> None:
    policy = sac(sparsity=0.9, constant_fan_in=True)
    for layer in sparse_layers(policy).values():
        counts = layer.mask.reshape(layer.matrix_shape).sum(dim=1)
        assert (counts == counts[0]).all()
    dense_start = sac(sparsity=0.9, start_dense=True)
    for name, layer in sparse_layers(dense_start).items():
        assert layer.density == 1.0
        assert 0.0 < dense_start.sparse_config.target_sparsity[name] < 1.0


def test_constructor_parameters_keep_sparse_kwargs() -> None:
    policy = sac(sparsity=0.8, critic_sparsity=0.9, distribution="er", dense_layers=["output"], constant_fan_in=True)
    data = policy._get_constructor_parameters()
    assert data["sparsity"] == 0.8 and data["critic_sparsity"] == 0.9 and data["distribution"] == "er"
    assert data["constant_fan_in"] is True and tuple(data["dense_layers"]) == ("output",)


def test_cnn_policies_sparse_extractor() -> None:
    policy = SparseDQNCnnPolicy(IMAGE_OBS, DISCRETE, lr, sparsity=0.9)
    fe = policy.q_net.features_extractor
    assert all(isinstance(fe.cnn[i], SparseConv2d) for i in (0, 2, 4))
    assert isinstance(fe.linear[0], SparseLinear) and fe.linear[0].matrix_shape == (512, 3136)
    assert isinstance(policy.q_net.q_net[0], nn.Linear)  # the Q-value head stays dense
    assert all(same_topology(o, t) for o, t in target_pairs(policy))
    ppo = SparseActorCriticCnnPolicy(IMAGE_OBS, DISCRETE, lr, sparsity=0.9)
    assert isinstance(ppo.features_extractor.cnn[0], SparseConv2d)
    assert ppo.pi_features_extractor is ppo.features_extractor
    obs = th.randint(0, 255, (2, *IMAGE_OBS.shape), dtype=th.uint8).float()
    assert ppo(obs)[0].shape == (2,)


def sparse_row_norms(layer: SparseLayer) -> th.Tensor:
    return layer.dense_weight().reshape(layer.matrix_shape).norm(dim=1)


def test_ppo_orthogonal_init_on_sparse_layers() -> None:
    th.manual_seed(0)
    policy = SparseActorCriticPolicy(BOX_OBS, DISCRETE, lr, sparsity=0.9, dense_layers=(), net_arch=[128, 128])
    hidden = policy.mlp_extractor.policy_net[2]
    assert isinstance(hidden, SparseLinear) and isinstance(policy.action_net, SparseLinear)
    for layer, gain in [(hidden, math.sqrt(2)), (policy.mlp_extractor.value_net[2], math.sqrt(2)),
                        (policy.action_net, 0.01), (policy.value_net, 1.0)]:
        assert th.all(layer.bias == 0)
        assert sparse_row_norms(layer).mean().item() == pytest.approx(gain, rel=0.35)
    # nothing is stored at pruned positions, and the optimizer owns exactly the policy's parameters
    assert hidden.values.numel() == hidden.nnz == int(hidden.mask.sum())
    owned = {id(p) for group in policy.optimizer.param_groups for p in group["params"]}
    assert owned == {id(p) for p in policy.parameters()}
    # without ortho_init: the sparse-fan-in uniform init (bias not zero)
    plain = SparseActorCriticPolicy(BOX_OBS, DISCRETE, lr, sparsity=0.9, ortho_init=False, net_arch=[128, 128])
    layer = plain.mlp_extractor.policy_net[2]
    bound = 1.0 / math.sqrt(128 * layer.density)
    assert layer.values.abs().max().item() <= bound + 1e-6
    assert layer.values.abs().max().item() > 0.5 * bound
    # init_scale="dense" under ortho_init: the dense orthogonal matrix's entries, not rescaled by the row density
    # (it was ignored: both scales gave the same weights)
    norms = {}
    for scale in ("sparse", "dense"):
        th.manual_seed(0)
        built = SparseActorCriticPolicy(BOX_OBS, DISCRETE, lr, sparsity=0.9, init_scale=scale, net_arch=[128, 128])
        norms[scale] = sparse_row_norms(built.mlp_extractor.policy_net[2]).mean().item()
    assert norms["sparse"] == pytest.approx(math.sqrt(2), rel=0.35)
    assert norms["dense"] == pytest.approx(math.sqrt(2) * math.sqrt(0.1), rel=0.35)
    # SB3's init_weights hook handles sparse layers too
    SparseActorCriticPolicy.init_weights(layer, gain=1.0)
    assert th.all(layer.bias == 0)


class _SparseExtractor(BaseFeaturesExtractor):
    """A user's own features extractor built from a sparse layer (SB3's orthogonal init reaches it through
    ``init_weights``)."""

    def __init__(self, observation_space: gym.Space) -> None:
        super().__init__(observation_space, features_dim=128)
        self.net = nn.Sequential(nn.Linear(11, 128), nn.ReLU(), SparseLinear(128, 128, sparsity=0.9), nn.ReLU())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.net(observations)


def test_init_scale_reaches_a_users_sparse_features_extractor() -> None:
    """SB3's static init_weights hook rescaled a supplied sparse layer by the sparse row density whatever init_scale."""
    norms = {}
    for scale in ("sparse", "dense"):
        th.manual_seed(0)
        policy = SparseActorCriticPolicy(BOX_OBS, DISCRETE, lr, sparsity=0.9, init_scale=scale, net_arch=[64],
                                         features_extractor_class=_SparseExtractor)
        norms[scale] = sparse_row_norms(policy.features_extractor.net[2]).mean().item()
    assert norms["sparse"] == pytest.approx(math.sqrt(2), rel=0.35)
    assert norms["dense"] == pytest.approx(math.sqrt(2) * math.sqrt(0.1), rel=0.35)


def test_sparsity_report() -> None:
    policy = sac(sparsity=0.9)
    report = sparsity_report(policy)
    layers = report["layers"]
    assert not any(name.startswith("critic_target") for name in layers)
    assert layers["actor.mu"]["density"] == 1.0
    assert layers["critic.qf0.2"]["numel"] == 64 * 64
    assert report["total"]["nnz"] == sum(v["nnz"] for v in layers.values())
    assert report["total"]["numel"] == sum(v["numel"] for v in layers.values())
    assert 0.0 < report["total"]["density"] < 1.0
    assert set(report["total"]) == {"nnz", "numel", "density"}
    with pytest.raises(ValueError):
        sparsity_report(42)


def test_topology_state_in_state_dict_as_tensors_only() -> None:
    policy = sac(sparsity=0.9)
    generator = th.Generator().manual_seed(3).get_state()
    policy.topology_state = {"method": "rigl", "next_update_step": 150, "updater": {"generator": generator, "last": None}}
    state = policy.state_dict()
    assert all(isinstance(value, th.Tensor) for value in state.values())
    assert {k for k in state if k.startswith("topology_state.")} == {"topology_state._json",
                                                                   "topology_state.updater.generator"}
    other = sac(sparsity=0.9)
    other.load_state_dict(state)
    assert other.topology_state["method"] == "rigl" and other.topology_state["next_update_step"] == 150
    assert th.equal(other.topology_state["updater"]["generator"], generator)
    assert other.topology_state["updater"]["last"] is None
    assert all(th.equal(a.indices, b.indices) for a, b in zip(sparse_layers(policy).values(), sparse_layers(other).values()))


def test_policy_save_load(tmp_path) -> None:
    policy = sac(sparsity=0.9, distribution="uniform", critic_sparsity=0.8)
    policy.save(tmp_path / "policy.pth")
    loaded = SparseSACPolicy.load(tmp_path / "policy.pth")
    assert loaded.sparse_config.kwargs() == policy.sparse_config.kwargs()
    for (name, a), (_, b) in zip(sparse_layers(policy).items(), sparse_layers(loaded).items()):
        assert th.equal(a.indices, b.indices) and th.equal(a.values, b.values), name
    obs = th.rand(5, *BOX_OBS.shape) * 2 - 1
    assert th.equal(policy(obs, deterministic=True), loaded(obs, deterministic=True))


# ------------------------------------------------------------------------------------------ sparse by default (a)
@pytest.mark.parametrize("policy_fn", [
    lambda: SparseSACPolicy(BOX_OBS, BOX_ACT, lr),
    lambda: SparseTD3Policy(BOX_OBS, BOX_ACT, lr),
    lambda: SparseDQNPolicy(BOX_OBS, DISCRETE, lr),
    lambda: SparseActorCriticPolicy(BOX_OBS, DISCRETE, lr),
])
def test_sparse_policy_without_sparsity_is_90_percent_sparse(policy_fn) -> None:
    policy = policy_fn()
    assert policy.sparse_config.sparsity == 0.9
    layers = sparse_layers(policy)
    assert layers, "a Sparse*Policy built without sparsity must be sparse"
    nnz, numel = sum(m.nnz for m in layers.values()), sum(m.numel_dense for m in layers.values())
    assert nnz / numel == pytest.approx(0.1, abs=0.01)


def test_sparse_mlp_alias_without_sparsity_builds_sparse_network() -> None:
    from stable_baselines3 import SAC

    model = SAC("SparseMlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[32, 32]), buffer_size=100)
    assert sparse_layers(model.policy) and model.policy.sparse_config.sparsity == 0.9


# ------------------------------------------------------------------------------- sub-networks saved alone (d)
def _same_sparse_layers(a: nn.Module, b: nn.Module) -> None:
    layers_a = {n: m for n, m in a.named_modules() if isinstance(m, SparseLayer)}
    layers_b = {n: m for n, m in b.named_modules() if isinstance(m, SparseLayer)}
    assert layers_a and layers_a.keys() == layers_b.keys()
    for name, layer in layers_a.items():
        assert type(layers_b[name]) is type(layer), name
        assert th.equal(layer.mask, layers_b[name].mask) and th.equal(layer.values, layers_b[name].values), name


@pytest.mark.parametrize("make, attr, obs_space, act_space", [
    (lambda: sac(sparsity=0.9, net_arch=[32, 32]), "actor", BOX_OBS, BOX_ACT),
    (lambda: sac(sparsity=0.9, net_arch=[32, 32]), "critic", BOX_OBS, BOX_ACT),
    (lambda: SparseTD3Policy(BOX_OBS, BOX_ACT, lr, sparsity=0.9, net_arch=[32, 32]), "actor", BOX_OBS, BOX_ACT),
    (lambda: SparseTD3Policy(BOX_OBS, BOX_ACT, lr, sparsity=0.9, net_arch=[32, 32]), "critic", BOX_OBS, BOX_ACT),
    (lambda: SparseDQNPolicy(BOX_OBS, DISCRETE, lr, sparsity=0.9, net_arch=[32, 32]), "q_net", BOX_OBS, DISCRETE),
    (lambda: SparseDQNCnnPolicy(IMAGE_OBS, DISCRETE, lr, sparsity=0.9), "q_net", IMAGE_OBS, DISCRETE),
])
def test_sub_network_saved_alone_loads_sparse(tmp_path, make, attr, obs_space, act_space) -> None:
    net = getattr(make(), attr)
    net.save(tmp_path / "net.pth")
    loaded = type(net).load(tmp_path / "net.pth")
    _same_sparse_layers(net, loaded)
    obs = th.as_tensor(np.stack([obs_space.sample() for _ in range(4)])).float()
    if attr == "critic":
        actions = th.rand(4, *act_space.shape) * 2 - 1
        assert all(th.equal(a, b) for a, b in zip(net(obs, actions), loaded(obs, actions)))
        return
    kwargs = dict(deterministic=True) if hasattr(net, "latent_pi") else {}  # SAC's actor samples by default
    assert th.equal(net(obs, **kwargs), loaded(obs, **kwargs))
    np.testing.assert_array_equal(net.predict(obs.numpy(), deterministic=True)[0],
                                  loaded.predict(obs.numpy(), deterministic=True)[0])


def test_sub_network_saved_alone_keeps_pruned_nnz(tmp_path) -> None:
    policy = sac(sparsity=0.9, start_dense=True, net_arch=[32, 32])
    layer = policy.actor.latent_pi[2]
    keep = th.zeros(layer.matrix_shape, dtype=th.bool)
    keep[:, :3] = True
    layer.rewire(keep, th.arange(layer.nnz).view(layer.matrix_shape)[keep])  # prune to 3 inputs per unit
    policy.actor.save(tmp_path / "actor.pth")
    loaded = type(policy.actor).load(tmp_path / "actor.pth")
    assert loaded.latent_pi[2].nnz == 32 * 3
    _same_sparse_layers(policy.actor, loaded)


# ------------------------------------------------------------------------ loaded sparsity restated in config (f)
def test_loading_weights_of_another_sparsity_restates_sparse_config() -> None:
    th.manual_seed(1)
    source = SparseDQNPolicy(BOX_OBS, DISCRETE, lr, sparsity=0.9, net_arch=[64, 64])
    fresh = SparseDQNPolicy(BOX_OBS, DISCRETE, lr, sparsity=0.5, net_arch=[64, 64])
    fresh.load_state_dict(source.state_dict())
    assert fresh.sparse_config.sparsity == 0.9
    assert fresh.sparse_config.critic_sparsity is None and fresh.sparse_config.actor_sparsity is None
    assert fresh.sparse_config.target_sparsity == source.sparse_config.target_sparsity
    same = SparseDQNPolicy(BOX_OBS, DISCRETE, lr, sparsity=0.9, net_arch=[64, 64])
    same.load_state_dict(source.state_dict())  # same sparsity, other masks: the nominal value stays
    assert same.sparse_config.sparsity == 0.9 and same.sparse_config.target_sparsity == source.sparse_config.target_sparsity


def test_loading_weights_with_other_actor_and_critic_sparsity_restates_each() -> None:
    source = sac(sparsity=0.5, actor_sparsity=0.8, critic_sparsity=0.95)
    fresh = sac(sparsity=0.5)
    fresh.load_state_dict(source.state_dict())
    config = fresh.sparse_config
    assert (config.group_sparsity("actor"), config.group_sparsity("critic")) == (0.8, 0.95)
    assert config.target_sparsity == source.sparse_config.target_sparsity


def test_loading_gmp_pruned_weights_into_fresh_policy_restates_sparsity() -> None:
    pruned = sac(sparsity=0.9, start_dense=True, net_arch=[32, 32])
    from sparse_rl.topology.updaters import create_updater

    gmp = create_updater("gmp", update_every=10, start=0, end=10, final_sparsity=0.95)
    gmp.update(sparse_layers(pruned), 10)  # the whole ramp at once: every sparse layer at 95 %
    fresh = sac(sparsity=0.5, net_arch=[32, 32])
    fresh.load_state_dict(pruned.state_dict())
    assert fresh.sparse_config.sparsity == 0.95
    for name, layer in sparse_layers(fresh).items():
        assert fresh.sparse_config.target_sparsity[name] == pytest.approx(layer.sparsity)
        assert layer.sparsity == pytest.approx(0.95, abs=0.01)


# -------------------------------------------------------------------------- topology state: old format (e)
def test_state_dict_with_old_extra_state_restores_topology_state() -> None:
    policy = sac(sparsity=0.9)
    state = {k: v for k, v in policy.state_dict().items()}
    generator = th.Generator().manual_seed(5).get_state()
    state["_extra_state"] = {"method": "set", "next_update_step": 300, "updater": {"generator": generator}}
    other = sac(sparsity=0.9)
    other.load_state_dict(state)  # strict: the old key is consumed, not unexpected
    assert other.topology_state["method"] == "set" and th.equal(other.topology_state["updater"]["generator"], generator)
    assert not any(k.startswith("topology_state") or k == "_extra_state" for k in sac(sparsity=0.9).state_dict())


# ------------------------------------------------------------------------------ Dict observations (c)
DICT_OBS = gym.spaces.Dict({"observation": gym.spaces.Box(-1.0, 1.0, (5,), np.float32),
                            "desired_goal": gym.spaces.Box(-1.0, 1.0, (3,), np.float32)})


@pytest.mark.parametrize("policy_fn", [
    lambda: sb3.policies.SparseSACMultiInputPolicy(DICT_OBS, BOX_ACT, lr, net_arch=[32, 32]),
    lambda: sb3.policies.SparseTD3MultiInputPolicy(DICT_OBS, BOX_ACT, lr, net_arch=[32, 32]),
    lambda: sb3.policies.SparseDQNMultiInputPolicy(DICT_OBS, DISCRETE, lr, net_arch=[32, 32]),
    lambda: sb3.policies.SparseMultiInputActorCriticPolicy(DICT_OBS, DISCRETE, lr, net_arch=[32, 32]),
])
def test_multi_input_policies_are_sparse_and_act(policy_fn) -> None:
    from sparse_rl.sb3.flops import policy_flops_for_space

    policy = policy_fn()
    assert sparse_layers(policy)
    action, _ = policy.predict({k: s.sample() for k, s in DICT_OBS.spaces.items()}, deterministic=True)
    assert action is not None
    flops = policy_flops_for_space(policy, DICT_OBS)
    assert 0.0 < flops["inference_vs_dense"] < 1.0


def test_sparse_multi_input_alias_registered() -> None:
    from stable_baselines3 import A2C, DQN, PPO, SAC, TD3

    expected = {SAC: "SparseSACMultiInputPolicy", TD3: "SparseTD3MultiInputPolicy", DQN: "SparseDQNMultiInputPolicy",
                PPO: "SparseMultiInputActorCriticPolicy", A2C: "SparseMultiInputActorCriticPolicy"}
    for algo, name in expected.items():
        assert algo.policy_aliases["SparseMultiInputPolicy"].__name__ == name


def test_sample_observation_any_space() -> None:
    from sparse_rl.sb3.flops import sample_observation

    space = gym.spaces.Dict({
        "box": gym.spaces.Box(1.0, 2.0, (2,), np.float32), "discrete": gym.spaces.Discrete(3, start=2),
        "multi": gym.spaces.MultiDiscrete([2, 3]), "binary": gym.spaces.MultiBinary(4),
        "image": gym.spaces.Box(0, 255, (3, 8, 8), np.uint8),
    })
    obs = sample_observation(space)
    assert space.contains(obs)
    assert obs["box"].tolist() == [1.0, 1.0] and int(obs["discrete"]) == 2
