"""The training profile (scripts/profile_throughput.py) times the sparse operators, which cProfile cannot see."""

import importlib.util
from pathlib import Path

import torch as th
from stable_baselines3 import SAC

from sparse_rl.sb3 import SparseSACPolicy

SPEC = importlib.util.spec_from_file_location(
    "profile_throughput", Path(__file__).resolve().parents[2] / "scripts" / "profile_throughput.py")
profile_throughput = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(profile_throughput)


def test_the_kernel_pass_times_the_sparse_operators_and_the_dense_products():
    """Since the kernels became torch operators the profile's "sparse kernels" row read 0.00 for sparse models: their
    forward was counted in "other" and their backward in "autograd backward"."""
    th.manual_seed(0)
    sparse = SAC(SparseSACPolicy, "Pendulum-v1", learning_starts=0, batch_size=32, seed=0, device="cpu",
                 policy_kwargs=dict(net_arch=[64, 64], sparsity=0.9))
    dense = SAC("MlpPolicy", "Pendulum-v1", learning_starts=0, batch_size=32, seed=0, device="cpu",
                policy_kwargs=dict(net_arch=[64, 64]))
    sparse_ms = profile_throughput.kernel_time(sparse, None, 5)
    dense_ms = profile_throughput.kernel_time(dense, None, 5)
    assert sparse_ms[profile_throughput.SPARSE_OPS] > 0 and sparse_ms[profile_throughput.DENSE_OPS] > 0  # dense heads
    assert dense_ms[profile_throughput.SPARSE_OPS] == 0 and dense_ms[profile_throughput.DENSE_OPS] > 0
