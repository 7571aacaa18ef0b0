"""The dynamic-sparse-training core (PyTorch only, no SB3 import): distributions, criteria, updaters, schedules."""

from sparse_rl.topology.criteria import capture_dense_grad, gradient_score, magnitude_score, random_score
from sparse_rl.topology.distributions import (
    DISTRIBUTION_SCALES,
    DISTRIBUTIONS,
    Distribution,
    check_sparsity,
    constant_fan_in_nnz,
    layer_densities,
    layer_nnz,
)
from sparse_rl.topology.optim import remap_optimizer_state, replace_parameter
from sparse_rl.topology.schedules import DROP_SCHEDULES, DropSchedule, TopologySchedule, polynomial_sparsity
from sparse_rl.topology.updaters import (
    METHODS,
    SET,
    SPARSE_METHODS,
    UPDATERS,
    BaseUpdater,
    Dense,
    GradualMagnitudePruning,
    Method,
    RigL,
    SRigL,
    Static,
    UpdateStats,
    create_updater,
)

__all__ = [
    "DISTRIBUTIONS", "DISTRIBUTION_SCALES", "DROP_SCHEDULES", "METHODS", "SET", "SPARSE_METHODS", "UPDATERS",
    "BaseUpdater", "Dense", "Distribution", "DropSchedule", "GradualMagnitudePruning", "Method", "RigL", "SRigL",
    "Static", "TopologySchedule", "UpdateStats", "capture_dense_grad", "check_sparsity", "constant_fan_in_nnz",
    "create_updater", "gradient_score", "layer_densities", "layer_nnz", "magnitude_score", "polynomial_sparsity",
    "random_score", "remap_optimizer_state", "replace_parameter",
]
