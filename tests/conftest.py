"""Shared test set-up: one torch thread per process (two are erratic on small VMs) and deterministic seeds."""

import pytest
import torch as th

th.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    th.manual_seed(0)
