"""TopologyCallback: compatibility checks with the policy, logging, clock restarts."""

from __future__ import annotations

import pytest
import torch as th
from stable_baselines3 import DQN, SAC
from stable_baselines3.dqn.policies import DQNPolicy

from sparse_rl.sb3 import SparseDQNPolicy, TopologyCallback

th.set_num_threads(1)


def dqn(policy=SparseDQNPolicy, **policy_kwargs) -> DQN:
    return DQN(policy, "CartPole-v1", learning_starts=10, batch_size=8, buffer_size=100, seed=0,
               policy_kwargs=dict(net_arch=[16], **policy_kwargs))


@pytest.mark.parametrize("policy_kwargs, method, match", [
    (dict(sparsity=0.9), "gmp", "start_dense"),
    (dict(sparsity=0.9, start_dense=True), "rigl", "start_dense"),
    (dict(sparsity=0.9), "srigl", "constant_fan_in"),
    (dict(sparsity=0.0), "set", "no sparse layer"),
])
def test_incompatible_policy(policy_kwargs, method, match) -> None:
    with pytest.raises(ValueError, match=match):
        dqn(**policy_kwargs).learn(5, callback=TopologyCallback(method=method))


def test_needs_sparse_policy() -> None:
    with pytest.raises(ValueError, match="sparse_rl policy"):
        dqn(policy=DQNPolicy).learn(5, callback=TopologyCallback(method="set"))


def test_logs_and_state() -> None:
    from stable_baselines3.common.logger import KVWriter, Logger

    class Capture(KVWriter):
        def __init__(self) -> None:
            self.dumps: list[dict] = []

        def write(self, key_values, key_excluded, step=0) -> None:  # noqa: ANN001
            self.dumps.append({**key_values, "_step": step})

    model = dqn(sparsity=0.9)
    capture = Capture()
    model.set_logger(Logger(folder=None, output_formats=[capture]))
    callback = TopologyCallback(method="rigl", update_every=10, end=10_000, seed=0)
    model.learn(40, callback=callback)
    assert callback.updater.num_updates == 3  # 20, 30, 40 (start = learning_starts = 10)
    callback.update_topology()
    logged = capture.dumps[-1]  # every update is dumped at its own step
    for key in ("sparsity/density", "sparsity/updates", "sparsity/drop_fraction", "sparsity/changed_fraction"):
        assert key in logged
    assert logged["sparsity/updates"] == 4 and logged["_step"] == model.num_timesteps
    assert 0.0 < logged["sparsity/density"] < 1.0
    assert [d["sparsity/updates"] for d in capture.dumps if "sparsity/drop_fraction" in d] == [1, 2, 3, 4]
    state = model.policy.topology_state
    assert state["method"] == "rigl" and state["updater"]["num_updates"] == 4


def test_clock_restart_starts_a_new_schedule(capsys) -> None:
    model = dqn(sparsity=0.9)
    model.learn(40, callback=TopologyCallback(method="set", update_every=10, end=10_000, seed=0))
    again = TopologyCallback(method="set", update_every=10, end=10_000, seed=0)
    model.learn(30, callback=again)  # reset_num_timesteps=True: the clock starts from 0 again
    assert again.updater.num_updates == 3 + 2  # updates at 20 and 30 of the new run
    other = TopologyCallback(method="static")
    model.learn(10, callback=other)  # another method is fine on a restarted clock
    late = TopologyCallback(method="set", update_every=5)
    capsys.readouterr()
    model.learn(10, callback=late)  # end = 0.8 * 10 = 8 comes before learning_starts = 10
    assert "no set update fits this run (the schedule ends (end=0.8 -> step 8) before it starts" in capsys.readouterr().out
    assert late.updater.num_updates == 0 and late.next_update_step is None  # the static run replaced the state


# --------------------------------------------------------------- continued training with new topology arguments
class Recording(TopologyCallback):
    """TopologyCallback that records the clock of each update."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.clock: list[int] = []

    def update_topology(self) -> None:
        super().update_topology()
        self.clock.append(self.model.num_timesteps)


def _first_run() -> DQN:
    model = DQN(SparseDQNPolicy, "CartPole-v1", learning_starts=50, batch_size=8, buffer_size=500, seed=0,
                policy_kwargs=dict(sparsity=0.9, net_arch=[16]))
    first = Recording(method="set", update_every=50, end=200, seed=0)
    model.learn(200, callback=first)
    assert first.clock == [100, 150, 200]
    return model


@pytest.mark.parametrize("reload", [False, True])
def test_continued_learn_follows_new_callback_arguments(tmp_path, capsys, reload) -> None:
    model = _first_run()
    if reload:
        model.save(tmp_path / "m")
        model = DQN.load(tmp_path / "m", env=model.get_env())
    capsys.readouterr()
    more = Recording(method="set", update_every=50, end=400, seed=0)
    model.learn(200, callback=more, reset_num_timesteps=False)
    assert more.clock == [250, 300, 350, 400], "the schedule of the new callback runs after the current clock"
    assert more.updater.num_updates == 3 + 4
    out = capsys.readouterr().out
    assert "continuing at step 200" in out and "next update at step 250" in out
    assert model.policy.topology_state["schedule"]["end"] == 400


@pytest.mark.parametrize("reload", [False, True])
def test_continued_learn_fraction_end_resolves_against_new_total(tmp_path, reload) -> None:
    model = _first_run()
    if reload:
        model.save(tmp_path / "m")
        model = DQN.load(tmp_path / "m", env=model.get_env())
    more = Recording(method="set", update_every=50, end=0.75, seed=0)
    model.learn(200, callback=more, reset_num_timesteps=False)  # end = 0.75 * (200 + 200) = 300
    assert more.updater.schedule.end_step == 300 and more.clock == [250, 300]


def test_continued_learn_after_schedule_end_says_so(capsys) -> None:
    model = _first_run()
    capsys.readouterr()
    same = Recording(method="set", update_every=50, end=200, seed=0)
    model.learn(100, callback=same, reset_num_timesteps=False)
    assert same.clock == []
    assert "no topology update left after step 200" in capsys.readouterr().out


def test_continued_learn_with_same_arguments_is_silent_and_exact(capsys) -> None:
    model = DQN(SparseDQNPolicy, "CartPole-v1", learning_starts=50, batch_size=8, buffer_size=500, seed=0,
                policy_kwargs=dict(sparsity=0.9, net_arch=[16]))
    model.learn(150, callback=Recording(method="set", update_every=50, end=10_000, seed=0))
    capsys.readouterr()
    again = Recording(method="set", update_every=50, end=10_000, seed=0)
    model.learn(100, callback=again, reset_num_timesteps=False)
    assert again.clock == [200, 250]  # 150 ran in the first call: no repeat, no skip
    assert capsys.readouterr().out == ""


def test_a_schedule_that_ends_before_it_starts_is_said_once(capsys) -> None:
    """It was said twice: a UserWarning pointing into SB3's callbacks.py, then the 'no update fits' line."""
    import warnings

    model = SAC("SparseMlpPolicy", "Pendulum-v1", learning_starts=500, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.learn(300, callback=TopologyCallback(update_every=50, end=0.5))
    lines = [line for line in capsys.readouterr().out.splitlines() if "TopologyCallback" in line]
    assert lines == ["TopologyCallback: no rigl update fits this run (the schedule ends (end=0.5 -> step 150) before it "
                     "starts (step 500, learning_starts by default)): the topology stays as initialised; move end "
                     "after start"]


def test_updates_that_share_a_rollout_are_announced(capsys) -> None:
    """PPO checks the schedule once per rollout: scheduled steps closer than one rollout collapsed into one update
    without a word (update_every=100 with 128-step rollouts ran 8 of 10 updates; PPO's default n_steps=2048 with the
    callback's update_every=1000 runs half)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    model = PPO("SparseMlpPolicy", make_vec_env("CartPole-v1", 2), n_steps=64, batch_size=64, n_epochs=1, seed=0,
                policy_kwargs=dict(net_arch=[16]))
    callback = TopologyCallback("set", update_every=100, end=1.0)
    model.learn(1000, callback=callback)
    assert callback.updater.num_updates == 8
    assert ("TopologyCallback: PPO checks the schedule at rollout ends (every 128 env steps: n_steps 64 x n_envs 2): 8 "
            "of the 10 updates scheduled") in capsys.readouterr().out
    model.learn(1024, callback=TopologyCallback("set", update_every=256, end=1.0))  # a multiple: all run, nothing said
    assert "checks the schedule" not in capsys.readouterr().out
    # an absolute end past this call's steps (a continued-run pattern): only this call's updates count ("4 of 1562")
    model.learn(512, callback=TopologyCallback("set", update_every=128, end=100_000))
    assert "checks the schedule" not in capsys.readouterr().out


@pytest.mark.parametrize("load", ["critic", "set_parameters"])
def test_an_online_network_loaded_alone_passes_its_masks_to_its_target(load) -> None:
    """The target kept its old mask, and SB3's Polyak update averaged the new critic's values slot by slot into other
    connections: the target held weights outside the online mask."""
    from sparse_rl.sb3.builders import same_topology, target_pairs

    a, b = (SAC("SparseMlpPolicy", "Pendulum-v1", learning_starts=10, batch_size=8, buffer_size=100, seed=seed,
                policy_kwargs=dict(net_arch=[32, 32])) for seed in (0, 1))
    before = [(target.mask.clone(), target.dense_weight().detach().clone()) for _, target in target_pairs(b.policy)]
    if load == "critic":
        b.critic.load_state_dict(a.critic.state_dict())
    else:
        b.set_parameters({"policy": {k: v for k, v in a.policy.state_dict().items() if k.startswith("critic.")}},
                         exact_match=False)
    for (online, target), (had, old) in zip(target_pairs(b.policy), before):
        assert same_topology(online, target)
        weight, new = target.dense_weight().detach(), online.mask & ~had
        assert th.equal(weight[new], online.dense_weight().detach()[new])  # new to the target: the loaded value
        assert th.equal(weight[online.mask & had], old[online.mask & had])  # kept: the target's own
    b.learn(40)
    for online, target in target_pairs(b.policy):
        assert same_topology(online, target)
    import copy
    import pickle

    other = SAC("SparseMlpPolicy", "Pendulum-v1", seed=3, policy_kwargs=dict(net_arch=[32, 32]))
    kept = [t.indices.clone() for _, t in target_pairs(a.policy)]
    twin = copy.deepcopy(a.policy)  # the copy's hooks sync the copy ...
    twin.critic.load_state_dict(other.critic.state_dict())
    assert all(same_topology(o, t) for o, t in target_pairs(twin))
    assert all(th.equal(t.indices, k) for (_, t), k in zip(target_pairs(a.policy), kept))  # ... not the original
    # the hook holds its policy weakly: a network copied or pickled alone does not carry the whole policy along
    assert len(pickle.dumps(a.policy.critic)) < 0.5 * len(pickle.dumps(a.policy))
    full = SAC("SparseMlpPolicy", "Pendulum-v1", seed=2, policy_kwargs=dict(net_arch=[32, 32]))
    full.policy.load_state_dict(a.policy.state_dict())  # a whole policy: its own saved targets
    for (_, target), (_, saved) in zip(target_pairs(full.policy), target_pairs(a.policy)):
        assert th.equal(target.values, saved.values) and same_topology(target, saved)
