"""The acting profile (scripts/profile_acting.py) swaps the dense agent's layer stacks into the sparse policy."""

import importlib.util
from pathlib import Path

import pytest
from torch import nn

from sparse_rl.harness.runs import load_agent
from sparse_rl.nn.base import SparseLayer
from sparse_rl.nn.fused import SparseSequential

ROOT = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("profile_acting", ROOT / "scripts" / "profile_acting.py")
profile_acting = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(profile_acting)


def test_the_dense_stacks_replace_every_fused_stack_and_leave_the_sparse_policy_alone():
    dense_dir, sparse_dir = ROOT / "agents/sac/HalfCheetah-v4/dense", ROOT / "agents/sac/HalfCheetah-v4/rigl90"
    if not sparse_dir.is_dir():
        pytest.skip("the SAC agents are not in this checkout")
    dense, sparse = load_agent(dense_dir)[0].policy, load_agent(sparse_dir)[0].policy
    hybrid, swapped = profile_acting.swapped_stacks(sparse, dense)
    assert swapped == 5  # the actor's latent_pi, two critics and two target critics
    assert not any(isinstance(m, (SparseSequential, SparseLayer)) for m in hybrid.modules())
    assert type(hybrid) is type(sparse) and type(hybrid.actor.latent_pi) is nn.Sequential
    assert any(isinstance(m, SparseLayer) for m in sparse.modules()), "the sparse policy itself is unchanged"
    fused, _ = profile_acting.swapped_stacks(sparse, dense, SparseSequential)
    assert type(fused.actor.latent_pi) is SparseSequential
    assert all(type(m) in (nn.Linear, nn.ReLU) for m in fused.actor.latent_pi)
