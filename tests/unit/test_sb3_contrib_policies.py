"""Sparse policies for sb3-contrib (TQC, QR-DQN, CrossQ, RecurrentPPO, MaskablePPO): construction, aliases, exact
density, targets, dense parts, sub-networks saved alone, the optional extra, and the action-mask wrapper."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from torch import nn

pytest.importorskip("sb3_contrib")

from sb3_contrib import QRDQN, TQC, CrossQ, MaskablePPO, RecurrentPPO  # noqa: E402
from sb3_contrib.common.envs import InvalidActionEnvDiscrete  # noqa: E402
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy  # noqa: E402
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy  # noqa: E402
from sb3_contrib.crossq.policies import CrossQPolicy  # noqa: E402
from sb3_contrib.qrdqn.policies import QRDQNPolicy  # noqa: E402
from sb3_contrib.tqc.policies import TQCPolicy  # noqa: E402

from sparse_rl.nn.layers import SparseLayer, SparseLinear  # noqa: E402
from sparse_rl.sb3.builders import same_topology, sparse_layers, target_pairs  # noqa: E402
from sparse_rl.sb3.contrib import (  # noqa: E402
    ActionMasks,
    SparseCrossQPolicy,
    SparseMaskableActorCriticPolicy,
    SparseQRDQNCnnPolicy,
    SparseQRDQNPolicy,
    SparseRecurrentActorCriticPolicy,
    SparseTQCMultiInputPolicy,
    SparseTQCPolicy,
)
from tests.unit.test_sb3_policies import BOX_ACT, BOX_OBS, DISCRETE, IMAGE_OBS, lr  # noqa: E402


def tqc(**kwargs: Any) -> SparseTQCPolicy:
    return SparseTQCPolicy(BOX_OBS, BOX_ACT, lr, **{"net_arch": [64, 64], "n_quantiles": 5, **kwargs})


def qrdqn(**kwargs: Any) -> SparseQRDQNPolicy:
    return SparseQRDQNPolicy(BOX_OBS, DISCRETE, lr, **{"net_arch": [64, 64], "n_quantiles": 5, **kwargs})


def crossq(**kwargs: Any) -> SparseCrossQPolicy:
    return SparseCrossQPolicy(BOX_OBS, BOX_ACT, lr, **{"net_arch": [64, 64], **kwargs})


def recurrent(**kwargs: Any) -> SparseRecurrentActorCriticPolicy:
    return SparseRecurrentActorCriticPolicy(BOX_OBS, DISCRETE, lr, **{"net_arch": [64, 64], "lstm_hidden_size": 16,
                                                                      **kwargs})


def maskable(**kwargs: Any) -> SparseMaskableActorCriticPolicy:
    return SparseMaskableActorCriticPolicy(BOX_OBS, DISCRETE, lr, **{"net_arch": [64, 64], **kwargs})


def test_aliases_registered_for_each_algorithm() -> None:
    expected = {
        TQC: {"SparseMlpPolicy": "SparseTQCPolicy", "SparseCnnPolicy": "SparseTQCCnnPolicy",
              "SparseMultiInputPolicy": "SparseTQCMultiInputPolicy"},
        QRDQN: {"SparseMlpPolicy": "SparseQRDQNPolicy", "SparseCnnPolicy": "SparseQRDQNCnnPolicy",
                "SparseMultiInputPolicy": "SparseQRDQNMultiInputPolicy"},
        CrossQ: {"SparseMlpPolicy": "SparseCrossQPolicy"},
        RecurrentPPO: {"SparseMlpPolicy": "SparseRecurrentActorCriticPolicy",
                       "SparseMlpLstmPolicy": "SparseRecurrentActorCriticPolicy",
                       "SparseCnnLstmPolicy": "SparseRecurrentActorCriticCnnPolicy",
                       "SparseMultiInputLstmPolicy": "SparseRecurrentMultiInputActorCriticPolicy"},
        MaskablePPO: {"SparseMlpPolicy": "SparseMaskableActorCriticPolicy",
                      "SparseCnnPolicy": "SparseMaskableActorCriticCnnPolicy",
                      "SparseMultiInputPolicy": "SparseMaskableMultiInputActorCriticPolicy"},
    }
    for algo, aliases in expected.items():
        for alias, name in aliases.items():
            assert algo.policy_aliases[alias].__name__ == name, (algo.__name__, alias)
        assert algo.policy_aliases["MlpPolicy" if algo is not RecurrentPPO else "MlpLstmPolicy"].__module__.startswith(
            "sb3_contrib"), "sb3-contrib's own aliases are never replaced"


def test_tqc_alias_with_sparsity_builds_quantile_critics() -> None:
    """The failure of the issue: TQC with a sparse policy had no ``quantiles_total`` (SAC's critic)."""
    model = TQC("SparseMlpPolicy", "Pendulum-v1", policy_kwargs=dict(sparsity=0.9, net_arch=[32, 32]), buffer_size=100)
    assert model.critic.quantiles_total == 50 and sparse_layers(model.policy)


@pytest.mark.parametrize("sparse_cls, dense_cls, obs, act, kwargs", [
    (SparseTQCPolicy, TQCPolicy, BOX_OBS, BOX_ACT, {}),
    (SparseQRDQNPolicy, QRDQNPolicy, BOX_OBS, DISCRETE, {}),
    (SparseCrossQPolicy, CrossQPolicy, BOX_OBS, BOX_ACT, {}),
    (SparseRecurrentActorCriticPolicy, RecurrentActorCriticPolicy, BOX_OBS, DISCRETE, dict(enable_critic_lstm=False)),
    (SparseMaskableActorCriticPolicy, MaskableActorCriticPolicy, BOX_OBS, DISCRETE, {}),
])
def test_sparsity_zero_is_the_sb3_contrib_policy(sparse_cls, dense_cls, obs, act, kwargs) -> None:
    th.manual_seed(0)
    sparse = sparse_cls(obs, act, lr, sparsity=0.0, **kwargs)
    th.manual_seed(0)
    dense = dense_cls(obs, act, lr, **kwargs)
    assert not any(isinstance(m, SparseLayer) for m in sparse.modules())
    a, b = sparse.state_dict(), dense.state_dict()
    assert a.keys() == b.keys()
    assert all(th.equal(a[k], b[k]) for k in a)


def _exact(policy: nn.Module, prefixes: tuple[str, ...], density: float) -> None:
    layers = [m for n, m in sparse_layers(policy).items() if n.startswith(prefixes)]
    assert layers, prefixes
    nnz, numel = sum(m.nnz for m in layers), sum(m.numel_dense for m in layers)
    assert nnz == round(density * numel), (prefixes, nnz, numel)


def test_tqc_actor_and_quantile_critics_exact_density_heads_dense() -> None:
    policy = tqc(sparsity=0.5, actor_sparsity=0.8, critic_sparsity=0.9)
    assert set(sparse_layers(policy)) == {"actor.latent_pi.0", "actor.latent_pi.2", "critic.qf0.0", "critic.qf0.2",
                                          "critic.qf1.0", "critic.qf1.2"}
    _exact(policy, ("actor.",), 0.2)
    _exact(policy, ("critic.",), 0.1)
    assert isinstance(policy.critic.qf0[4], nn.Linear) and policy.critic.qf0[4].out_features == 5  # the quantiles
    assert isinstance(policy.actor.mu, nn.Linear)
    assert all(a is b for a, b in zip(policy.critic.q_networks, (policy.critic.qf0, policy.critic.qf1)))


@pytest.mark.parametrize("make", [tqc, qrdqn, lambda: SparseQRDQNCnnPolicy(IMAGE_OBS, DISCRETE, lr, n_quantiles=5)])
def test_targets_carry_online_masks_after_construction(make) -> None:
    policy = make()
    pairs = list(target_pairs(policy))
    assert pairs
    for online, target in pairs:
        assert online is not target and same_topology(online, target)
        assert th.equal(online.dense_weight(), target.dense_weight())


def test_qrdqn_quantile_net_sparse_and_cnn() -> None:
    policy = qrdqn(sparsity=0.9)
    assert set(sparse_layers(policy)) == {"quantile_net.quantile_net.0", "quantile_net.quantile_net.2"}
    _exact(policy, ("quantile_net.",), 0.1)
    cnn = SparseQRDQNCnnPolicy(IMAGE_OBS, DISCRETE, lr, n_quantiles=5)
    assert isinstance(cnn.quantile_net.features_extractor.linear[0], SparseLinear)
    assert isinstance(cnn.quantile_net.quantile_net[0], nn.Linear)  # the quantile head stays dense


def test_crossq_batch_renorm_dense_and_no_target() -> None:
    from sb3_contrib.common.torch_layers import BatchRenorm1d

    policy = crossq(sparsity=0.9)
    assert set(sparse_layers(policy)) == {"actor.latent_pi.1", "actor.latent_pi.4", "critic.qf0.1", "critic.qf0.4",
                                          "critic.qf1.1", "critic.qf1.4"}
    assert isinstance(policy.critic.qf0[0], BatchRenorm1d) and isinstance(policy.critic.qf0[7], nn.Linear)
    _exact(policy, ("actor.",), 0.1)
    _exact(policy, ("critic.",), 0.1)
    assert not list(target_pairs(policy))


def test_recurrent_lstms_dense_mlp_sparse_and_critic_linear() -> None:
    policy = recurrent(sparsity=0.9)
    assert isinstance(policy.lstm_actor, nn.LSTM) and isinstance(policy.lstm_critic, nn.LSTM)
    assert set(sparse_layers(policy)) == {f"mlp_extractor.{side}_net.{i}" for side in ("policy", "value") for i in (0, 2)}
    no_critic_lstm = recurrent(sparsity=0.9, critic_sparsity=0.8, enable_critic_lstm=False)
    assert isinstance(no_critic_lstm.critic, SparseLinear)
    assert no_critic_lstm.sparsity_group("critic") == "critic"
    _exact(no_critic_lstm, ("mlp_extractor.value_net", "critic"), 0.2)
    _exact(no_critic_lstm, ("mlp_extractor.policy_net",), 0.1)
    owned = {id(p) for group in no_critic_lstm.optimizer.param_groups for p in group["params"]}
    assert owned == {id(p) for p in no_critic_lstm.parameters()}, "the optimizer owns the sparse and the LSTM parameters"
    obs = th.rand(3, *BOX_OBS.shape)
    actions, _ = no_critic_lstm.predict(obs.numpy(), deterministic=True)
    assert actions.shape == (3,)


def test_maskable_orthogonal_init_and_optimizer() -> None:
    policy = maskable(sparsity=0.9, dense_layers=())
    assert isinstance(policy.action_net, SparseLinear)
    for layer, gain in [(policy.mlp_extractor.policy_net[2], np.sqrt(2)), (policy.action_net, 0.01)]:
        assert th.all(layer.bias == 0)
        assert layer.dense_weight().reshape(layer.matrix_shape).norm(dim=1).mean().item() == pytest.approx(gain, rel=0.35)
    owned = {id(p) for group in policy.optimizer.param_groups for p in group["params"]}
    assert owned == {id(p) for p in policy.parameters()}


def test_constructor_parameters_keep_sparse_and_lstm_kwargs(tmp_path) -> None:
    policy = recurrent(sparsity=0.8, distribution="uniform", lstm_hidden_size=12, n_lstm_layers=2)
    data = policy._get_constructor_parameters()
    assert data["sparsity"] == 0.8 and data["distribution"] == "uniform" and data["lstm_hidden_size"] == 12
    policy.save(tmp_path / "policy.pth")
    loaded = SparseRecurrentActorCriticPolicy.load(tmp_path / "policy.pth")
    assert loaded.lstm_actor.num_layers == 2 and loaded.sparse_config.kwargs() == policy.sparse_config.kwargs()
    for (name, a), (_, b) in zip(sparse_layers(policy).items(), sparse_layers(loaded).items()):
        assert th.equal(a.indices, b.indices) and th.equal(a.values, b.values), name


@pytest.mark.parametrize("make, attr", [(tqc, "actor"), (tqc, "critic"), (qrdqn, "quantile_net"), (crossq, "actor"),
                                        (crossq, "critic")])
def test_sub_network_saved_alone_loads_sparse(tmp_path, make, attr) -> None:
    extra = dict(n_critics=3) if make is tqc else {}  # a non-default value that the loaded critic must keep
    policy = make(sparsity=0.9, net_arch=[16, 16], **extra)
    net = getattr(policy, attr)
    net.set_training_mode(False)
    net.save(tmp_path / "net.pth")
    loaded = type(net).load(tmp_path / "net.pth")
    loaded.set_training_mode(False)
    assert set(loaded.sparse_layout()) == set(net.sparse_layout()) and net.sparse_layout()
    for name in net.sparse_layout():
        a, b = net.get_submodule(name), loaded.get_submodule(name)
        assert th.equal(a.mask, b.mask) and th.equal(a.values, b.values), name
    obs = th.rand(4, *BOX_OBS.shape) * 2 - 1
    with th.no_grad():
        if attr == "critic":
            actions = th.rand(4, *BOX_ACT.shape) * 2 - 1
            out_a, out_b = net(obs, actions), loaded(obs, actions)
            assert all(th.equal(x, y) for x, y in zip(out_a, out_b))
            assert loaded.n_critics == net.n_critics
        elif attr == "actor":
            assert th.equal(net(obs, deterministic=True), loaded(obs, deterministic=True))
        else:
            assert th.equal(net(obs), loaded(obs))


def test_multi_input_tqc_acts() -> None:
    space = gym.spaces.Dict({"observation": gym.spaces.Box(-1.0, 1.0, (5,), np.float32),
                             "desired_goal": gym.spaces.Box(-1.0, 1.0, (3,), np.float32)})
    policy = SparseTQCMultiInputPolicy(space, BOX_ACT, lr, net_arch=[32, 32])
    assert sparse_layers(policy)
    action, _ = policy.predict({k: s.sample() for k, s in space.spaces.items()}, deterministic=True)
    assert action.shape == BOX_ACT.shape


def test_action_masks_wrapper() -> None:
    wrapped = ActionMasks(gym.make("CartPole-v1"))
    assert wrapped.action_masks().tolist() == [True, True]
    own = InvalidActionEnvDiscrete(dim=6, n_invalid_actions=3)
    own.reset(seed=0)
    masks = ActionMasks(own).action_masks()
    assert sum(masks) == 3 and list(masks) == list(own.action_masks())
    with pytest.raises(ValueError, match="Discrete"):
        ActionMasks(gym.make("Pendulum-v1"))


def test_without_sb3_contrib_aliases_absent_and_errors_name_the_extra() -> None:
    """sb3-contrib is optional: ``import sparse_rl.sb3`` works without it, and the contrib algorithms say what to
    install."""
    code = textwrap.dedent("""
        import sys
        sys.modules["sb3_contrib"] = None  # as if it were not installed: importing it raises ImportError
        import sparse_rl.sb3 as sb3
        from stable_baselines3 import SAC
        from sparse_rl.harness.resolve import algo_class
        assert not sb3.HAS_CONTRIB and SAC.policy_aliases["SparseMlpPolicy"].__name__ == "SparseSACPolicy"
        try:
            algo_class("tqc")
        except ValueError as error:
            print("algo:", error)
        try:
            import sparse_rl.sb3.contrib
        except ImportError as error:
            print("import:", error)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "algo: --algo tqc needs sb3-contrib, the contrib extra: pip install 'sparse_rl[contrib]'" in result.stdout
    assert "import: sparse_rl.sb3.contrib needs sb3-contrib: pip install 'sparse_rl[contrib]'" in result.stdout


def test_the_dense_lstms_count_in_the_sparsity_report():
    """The report left RecurrentPPO's LSTMs out, overstating how sparse the policy is."""
    from sb3_contrib import RecurrentPPO

    from sparse_rl.sb3 import sparsity_report

    model = RecurrentPPO("SparseMlpLstmPolicy", "CartPole-v1", n_steps=16, policy_kwargs=dict(lstm_hidden_size=16))
    layers = sparsity_report(model)["layers"]
    assert layers["lstm_actor"] == {"nnz": 4 * 16 * (4 + 16), "numel": 4 * 16 * (4 + 16), "density": 1.0}
    assert "lstm_critic" in layers
