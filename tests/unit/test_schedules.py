"""Topology schedules: exact update steps, fractions of training, drop-fraction decay, cubic pruning ramp."""

import copy
import dataclasses
import math
import pickle
import typing
import warnings

import pytest

from sparse_rl.topology import DROP_SCHEDULES, DropSchedule, TopologySchedule, create_updater, polynomial_sparsity
from sparse_rl.topology.schedules import DROP_DECAYS


def test_updates_fire_at_exact_steps():
    schedule = TopologySchedule(update_every=100, start=1000, end=1500)
    fired = [step for step in range(0, 3000) if schedule.is_update_step(step)]
    assert fired == [1100, 1200, 1300, 1400, 1500]
    assert schedule.next_update_step(0) == 1100
    assert schedule.next_update_step(1100) == 1200
    assert schedule.next_update_step(1137) == 1200
    assert schedule.next_update_step(1500) is None


def test_fractions_resolve_against_total_steps():
    schedule = TopologySchedule(update_every=10, start=0.1, end=0.8, total_steps=1000)
    assert (schedule.start_step, schedule.end_step) == (100, 800)
    with pytest.raises(ValueError, match="give total_steps"):
        _ = TopologySchedule(end=0.5).end_step


@pytest.mark.parametrize("step", [0, 1000, 1250, 1500, 1999, 2000, 2600])
def test_cosine_and_linear_decay_match_formula(step):
    kwargs = dict(update_every=10, start=1000, end=2000, drop_fraction=0.3)
    p = min(1.0, max(0.0, (step - 1000) / 1000))
    assert TopologySchedule(**kwargs).drop_fraction_at(step) == pytest.approx(0.15 * (1 + math.cos(math.pi * p)))
    assert TopologySchedule(**kwargs, drop_schedule="linear").drop_fraction_at(step) == pytest.approx(0.3 * (1 - p))
    assert TopologySchedule(**kwargs, drop_schedule="constant").drop_fraction_at(step) == 0.3


def test_cubic_sparsity_ramp():
    assert polynomial_sparsity(0.0, 0.9) == 0.0
    assert polynomial_sparsity(1.0, 0.9) == pytest.approx(0.9)
    assert polynomial_sparsity(0.5, 0.9) == pytest.approx(0.9 * (1 - 0.5**3))


@pytest.mark.parametrize("kwargs,match", [
    (dict(update_every=0), "update_every"), (dict(update_every=2.5), "update_every"),
    (dict(drop_fraction=1.2), "drop_fraction"), (dict(drop_schedule="exp"), "drop_schedule"),
    (dict(start=500, end=100, total_steps=1000), "must not come before"),
    (dict(start=500, end=200), "must not come before"),  # absolute steps: checked without total_steps too
    (dict(end=1.5), "whole number of steps or a fraction"), (dict(start=-1), "whole number"),
    (dict(end="0.8"), "whole number"), (dict(end=float("nan")), "whole number"),
])
def test_bad_schedules(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TopologySchedule(**kwargs)


def test_drop_schedule_names_and_dataclass_behaviour():
    assert DROP_SCHEDULES == typing.get_args(DropSchedule) == ("constant", "cosine", "linear")
    assert DROP_DECAYS is DROP_SCHEDULES  # the former name
    schedule = TopologySchedule(100, 0, 500, 0.5, "linear", 1000)  # positional order unchanged: drop_schedule is 5th
    assert schedule.drop_schedule == "linear" and schedule == TopologySchedule(
        update_every=100, start=0, end=500, drop_fraction=0.5, drop_schedule="linear", total_steps=1000)
    assert dataclasses.replace(schedule, drop_schedule="constant").drop_fraction_at(400) == 0.5
    assert "drop_schedule='linear'" in repr(schedule) and hash(schedule) == hash(dataclasses.replace(schedule))
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.drop_fraction = 0.1  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(schedule)) == schedule == copy.deepcopy(schedule)


def test_drop_decay_keeps_working_for_one_release_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="'drop_decay' is deprecated.*'drop_schedule'"):
        old = TopologySchedule(update_every=10, end=100, drop_decay="linear")
    assert old == TopologySchedule(update_every=10, end=100, drop_schedule="linear")
    with pytest.warns(DeprecationWarning, match="drop_decay is deprecated"):
        assert old.drop_decay == "linear"
    with pytest.raises(TypeError, match="pass only 'drop_schedule'"), pytest.warns(DeprecationWarning):
        TopologySchedule(drop_schedule="linear", drop_decay="constant")
    with pytest.warns(DeprecationWarning, match="'drop_decay' is deprecated"):
        updater = create_updater("set", update_every=10, end=100, drop_decay="constant")
    assert updater.schedule.drop_schedule == "constant"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new names warn about nothing
        assert create_updater("set", drop_schedule="linear").schedule.drop_schedule == "linear"
