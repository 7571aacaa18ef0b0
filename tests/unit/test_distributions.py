"""Per-layer densities: ERK / ER / uniform, exact global sparsity, dense layers outside the budget."""

import math
import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_rl.topology import DISTRIBUTIONS, Distribution, constant_fan_in_nnz, layer_densities, layer_nnz
from sparse_rl.topology.distributions import DISTRIBUTION_SCALES

shape_2d = st.tuples(st.integers(1, 300), st.integers(1, 300))
shape_4d = st.tuples(st.integers(1, 64), st.integers(1, 32), st.integers(1, 8), st.integers(1, 8))
shapes_strategy = st.dictionaries(st.text("abcdefgh", min_size=1, max_size=4), st.one_of(shape_2d, shape_4d),
                                  min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(shapes=shapes_strategy, sparsity=st.floats(0.0, 0.99), distribution=st.sampled_from(DISTRIBUTIONS))
def test_global_sparsity_is_exact_and_densities_valid(shapes, sparsity, distribution):
    densities = layer_densities(shapes, sparsity, distribution)
    assert all(0.0 < d <= 1.0 + 1e-12 for d in densities.values())
    nnz = layer_nnz(shapes, sparsity, distribution=distribution)
    total = sum(math.prod(s) for s in shapes.values())
    target = max(round((1 - sparsity) * total), len(shapes))
    assert sum(nnz.values()) == target
    assert all(1 <= nnz[n] <= math.prod(shapes[n]) for n in shapes)


def test_erk_is_proportional_to_sum_over_product():
    shapes = {"small": (64, 32), "big": (512, 512), "conv": (32, 16, 3, 3)}
    d = layer_densities(shapes, 0.98, "erk")  # sparse enough that no layer overflows to dense
    assert max(d.values()) < 1.0
    assert d["small"] / d["big"] == pytest.approx((64 + 32) / (64 * 32) / ((512 + 512) / (512 * 512)))
    assert d["conv"] / d["big"] == pytest.approx((32 + 16 + 3 + 3) / (32 * 16 * 9) / (1024 / 512**2))
    er = layer_densities(shapes, 0.98, "er")
    assert er["conv"] / er["big"] == pytest.approx((32 + 16) / (32 * 16) / (1024 / 512**2))


def test_erk_overflowing_layer_becomes_dense_and_budget_still_met():
    shapes = {"tiny": (4, 3), "big": (1024, 1024)}
    d = layer_densities(shapes, 0.8, "erk")
    assert d["tiny"] == 1.0
    assert d["tiny"] * 12 + d["big"] * 1024**2 == pytest.approx(0.2 * (12 + 1024**2))


def test_dense_layers_are_outside_the_budget():
    shapes = {"in": (256, 17), "hidden": (256, 256), "out": (6, 256)}
    nnz = layer_nnz(shapes, 0.9, "erk", dense=["in", "out"])
    assert nnz["in"] == 256 * 17 and nnz["out"] == 6 * 256
    assert nnz["hidden"] == round(0.1 * 256 * 256)
    assert layer_densities(shapes, 0.5, "uniform", dense=["out"]) == {"out": 1.0, "in": 0.5, "hidden": 0.5}


def test_constant_fan_in_rounding():
    shapes = {"a": (10, 33)}
    assert constant_fan_in_nnz(shapes, {"a": 67}) == {"a": 70}
    assert constant_fan_in_nnz({"a": (64, 64)}, {"a": 41}) == {"a": 64}  # a fan-in of 1 is the least
    twins = constant_fan_in_nnz({"qf0": (10, 100), "qf1": (10, 100)}, {"qf0": 15, "qf1": 15})
    assert twins["qf0"] == twins["qf1"]  # layers of one shape (twin critics) get one fan-in


@pytest.mark.parametrize("kwargs,match", [
    (dict(sparsity=1.0), r"sparsity must be"), (dict(sparsity=-0.1), r"sparsity must be"),
    (dict(sparsity=0.5, distribution="gaussian"), "unknown distribution"), (dict(sparsity=0.5, dense=["nope"]), "not among"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        layer_densities({"a": (4, 4)}, **kwargs)


def test_distribution_names_come_from_the_registry():
    assert DISTRIBUTIONS == tuple(DISTRIBUTION_SCALES) == typing.get_args(Distribution) == ("uniform", "er", "erk")
    with pytest.raises(ValueError, match=r"choose one of \['uniform', 'er', 'erk'\]"):
        layer_nnz({"a": (4, 4)}, 0.5, "gaussian")


def test_method_keyword_still_works_with_a_deprecation_warning():
    shapes = {"small": (64, 32), "big": (512, 512), "conv": (32, 16, 3, 3)}  # ER and ERK differ on the kernel dims
    with pytest.warns(DeprecationWarning, match="'method' is deprecated.*'distribution'"):
        old = layer_densities(shapes, 0.98, method="er")
    assert old == layer_densities(shapes, 0.98, distribution="er") != layer_densities(shapes, 0.98)
    with pytest.warns(DeprecationWarning, match="'method' is deprecated"):
        assert layer_nnz(shapes, 0.9, method="uniform") == layer_nnz(shapes, 0.9, "uniform")
    with pytest.raises(TypeError, match="pass only 'distribution'"), pytest.warns(DeprecationWarning):
        layer_nnz(shapes, 0.9, distribution="er", method="uniform")
