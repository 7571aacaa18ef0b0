"""Shared test set-up: one torch thread per process (two are erratic on small VMs), deterministic seeds, and SB3's
default log folders kept in one temporary folder (SB3 creates ``/tmp/SB3-<time>`` for every model without one)."""

import os
import tempfile

import pytest
import torch as th

th.set_num_threads(1)
os.environ.setdefault("SB3_LOGDIR", tempfile.mkdtemp(prefix="sparse_rl_tests_sb3_"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    th.manual_seed(0)
