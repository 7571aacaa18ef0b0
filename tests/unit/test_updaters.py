"""DST updaters: nnz exact, dropped were active, grown were inactive, grown weights and moments zero, and the criteria."""

import typing

import pytest
import torch as th
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparse_rl.nn import SparseLinear
from sparse_rl.topology import METHODS, SPARSE_METHODS, UPDATERS, Method, capture_dense_grad, create_updater


def _net(sparsity: float, constant_fan_in: bool = False, seed: int = 0) -> nn.Sequential:
    gen = th.Generator().manual_seed(seed)
    kw = dict(sparsity=sparsity, constant_fan_in=constant_fan_in, backend="reference", generator=gen)
    return nn.Sequential(SparseLinear(12, 24, **kw), nn.Tanh(), SparseLinear(24, 5, **kw))


def _layers(net: nn.Sequential) -> dict:
    return {"0": net[0], "2": net[2]}


def _train_step(net, opt, x, y) -> None:
    opt.zero_grad()
    ((net(x) - y) ** 2).mean().backward()
    opt.step()


def _capture(net, x, y) -> None:
    with capture_dense_grad(_layers(net).values()):
        ((net(x) - y) ** 2).mean().backward()
    net.zero_grad()


def _snapshot(layer, opt):
    state = opt.state[layer.values]
    dense = lambda t: layer.values.new_zeros(layer.numel_dense).index_put((layer.flat_indices(),), t.detach()).view(  # noqa: E731
        layer.matrix_shape
    )
    return layer.mask.clone(), dense(layer.values), dense(state["exp_avg"]), dense(state["exp_avg_sq"])


@settings(max_examples=20, deadline=None)
@given(
    method=st.sampled_from(["set", "rigl", "srigl"]), sparsity=st.floats(0.3, 0.95),
    fractions=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4), seed=st.integers(0, 1000),
)
def test_invariants_after_any_sequence_of_updates(method, sparsity, fractions, seed):
    th.manual_seed(seed)
    net = _net(sparsity, constant_fan_in=method == "srigl", seed=seed)
    opt = th.optim.Adam(net.parameters(), lr=1e-2)
    x, y = th.randn(16, 12), th.randn(16, 5)
    nnz0 = {name: layer.nnz for name, layer in _layers(net).items()}
    for step, fraction in enumerate(fractions, start=1):
        _train_step(net, opt, x, y)
        updater = create_updater(method, update_every=1, end=100, drop_fraction=fraction, drop_schedule="constant", seed=seed)
        before = {name: _snapshot(layer, opt) for name, layer in _layers(net).items()}
        _capture(net, x, y)
        stats = updater.update(_layers(net), step, [opt])
        for name, layer in _layers(net).items():
            old_mask, old_w, old_m, old_v = before[name]
            new_mask, new_w, new_m, new_v = _snapshot(layer, opt)
            dropped, grown, kept = old_mask & ~new_mask, new_mask & ~old_mask, old_mask & new_mask
            assert layer.nnz == nnz0[name] == layer.values.numel()
            assert stats.layers[name].dropped == int(dropped.sum()) == stats.layers[name].grown == int(grown.sum())
            assert (new_w[grown] == 0).all() and (new_m[grown] == 0).all() and (new_v[grown] == 0).all()
            assert th.equal(new_w[kept], old_w[kept]) and th.equal(new_m[kept], old_m[kept])
            assert th.equal(new_v[kept], old_v[kept])
            if method == "srigl":
                assert th.equal(new_mask.sum(dim=1), old_mask.sum(dim=1))
            # a side (units = rows, inputs = columns) is protected when the layer has at least one connection per member
            rows_kept, cols_kept = nnz0[name] >= old_mask.shape[0], nnz0[name] >= old_mask.shape[1]
            covered_before = old_mask.any(dim=1).sum() * rows_kept + old_mask.any(dim=0).sum() * cols_kept
            if method != "srigl":  # every protected unit and input keeps a connection: at most nnz - covered may go
                assert int(dropped.sum()) <= round(fraction * nnz0[name])
                assert (new_mask.any(dim=1) | ~old_mask.any(dim=1)).all() or not rows_kept
                assert (new_mask.any(dim=0) | ~old_mask.any(dim=0)).all() or not cols_kept
                if min(int((~old_mask).sum()), nnz0[name] - int(covered_before)) >= round(fraction * nnz0[name]):
                    assert int(dropped.sum()) == round(fraction * nnz0[name])
        _train_step(net, opt, x, y)  # the optimizer still works on the rewired parameters


def test_rigl_grows_top_gradients_among_inactive_hand_case():
    mask = th.tensor([[1, 1, 0, 0], [0, 1, 0, 1]], dtype=th.bool)
    layer = SparseLinear(4, 2, bias=False, mask=mask, backend="reference")
    with th.no_grad():
        layer.values.copy_(th.tensor([0.5, -0.1, 2.0, -0.05]))  # CSR order: (0,0) (0,1) (1,1) (1,3)
    layer.dense_grad = th.tensor([[9.0, 0.0, 0.3, -0.7], [5.0, 8.0, -0.2, 0.0]])
    updater = create_updater("rigl", update_every=1, end=10, drop_fraction=0.5, drop_schedule="constant",
                             keep_connected=False)
    stats = updater.update({"l": layer}, 1)
    # drop the 2 smallest |w|: (1,3) 0.05 and (0,1) 0.1; grow the 2 largest |grad| among inactive: (1,0) 5.0, (0,3) 0.7
    expected = th.tensor([[1, 0, 0, 1], [1, 1, 0, 0]], dtype=th.bool)
    assert th.equal(layer.mask, expected)
    assert layer.dense_weight().tolist() == [[0.5, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]]
    assert stats.changed_fraction == 0.5


def test_rigl_never_drops_the_last_connection_of_an_input_or_unit():
    mask = th.tensor([[1, 1, 0, 0], [0, 1, 0, 1]], dtype=th.bool)
    layer = SparseLinear(4, 2, bias=False, mask=mask, backend="reference")
    with th.no_grad():
        layer.values.copy_(th.tensor([0.5, -0.1, 2.0, -0.05]))  # CSR order: (0,0) (0,1) (1,1) (1,3)
    layer.dense_grad = th.tensor([[9.0, 0.0, 0.3, -0.7], [5.0, 8.0, -0.2, 0.0]])
    stats = create_updater("rigl", update_every=1, end=10, drop_fraction=0.5, drop_schedule="constant").update({"l": layer}, 1)
    # (1,3) is input 3's only connection and (0,0), (1,1) are the strongest of their rows and columns: of the two
    # swaps the drop fraction asks for, one is possible: drop (0,1), grow the largest inactive gradient (1,0)
    assert th.equal(layer.mask, th.tensor([[1, 0, 0, 0], [1, 1, 0, 1]], dtype=th.bool))
    assert stats.layers["l"].dropped == stats.layers["l"].grown == 1


def test_rigl_without_gradient_says_what_to_do():
    layer = SparseLinear(4, 4, sparsity=0.5, backend="reference")
    with pytest.raises(RuntimeError, match="capture_dense_grad"):
        create_updater("rigl", update_every=1, end=10).update({"l": layer}, 1)


def test_an_update_uses_up_the_captured_gradient():
    """A second RigL update without a new capture scored growth by the gradient of the topology before."""
    layer = SparseLinear(4, 4, sparsity=0.5, backend="reference")
    updater = create_updater("rigl", update_every=1, end=10)
    with capture_dense_grad([layer]):
        layer(th.randn(3, 4)).sum().backward()
    updater.update({"l": layer}, 1)
    assert layer.dense_grad is None
    with pytest.raises(RuntimeError, match="capture_dense_grad"):
        updater.update({"l": layer}, 2)


def test_a_schedule_without_updates_says_so_and_bad_seeds_are_errors():
    with pytest.warns(UserWarning, match=r"rigl: no update fits the schedule \(every 1000 steps from step 0 to 800\)"):
        create_updater("rigl", update_every=1000, end=800)
    with pytest.raises(ValueError, match="seed must be an integer or None, got 'a'"):
        create_updater("set", seed="a")


def test_set_is_reproducible_under_a_seed():
    def masks(seed):
        th.manual_seed(0)
        net = _net(0.8)
        updater = create_updater("set", update_every=1, end=10, drop_fraction=0.3, seed=seed)
        for step in range(1, 4):
            updater.update(_layers(net), step)
        return [layer.mask for layer in _layers(net).values()]

    assert all(th.equal(a, b) for a, b in zip(masks(7), masks(7)))
    assert not all(th.equal(a, b) for a, b in zip(masks(7), masks(8)))


def test_updater_state_round_trip_continues_identically():
    th.manual_seed(0)
    net_a, net_b = _net(0.8), _net(0.8)
    net_b.load_state_dict(net_a.state_dict())
    a = create_updater("set", update_every=1, end=10, seed=3)
    a.update(_layers(net_a), 1)
    b = create_updater("set", update_every=1, end=10, seed=99)
    b.load_state_dict(a.state_dict())
    net_b.load_state_dict(net_a.state_dict())
    a.update(_layers(net_a), 2)
    b.update(_layers(net_b), 2)
    assert all(th.equal(la.mask, lb.mask) for la, lb in zip(_layers(net_a).values(), _layers(net_b).values()))
    assert b.num_updates == 2 and b.last_update_step == 2
    with pytest.raises(ValueError, match="cannot be loaded"):
        create_updater("rigl").load_state_dict(a.state_dict())


def test_srigl_keeps_constant_fan_in_and_ablation_keeps_nnz_exact():
    th.manual_seed(0)
    layer = SparseLinear(40, 16, sparsity=0.75, constant_fan_in=True, backend="reference")
    x = th.randn(32, 40)
    for step in range(1, 4):
        with capture_dense_grad([layer]):
            layer(x).square().sum().backward()
        create_updater("srigl", update_every=1, end=10, drop_fraction=0.3).update({"l": layer}, step)
        assert (layer.mask.sum(dim=1) == 10).all()
    nnz = layer.nnz
    with th.no_grad():  # make neurons 0-3 clearly unimportant: tiny weights, no gradient
        layer.values.normal_()
        layer.values[: 4 * 10] = 1e-6
    with capture_dense_grad([layer]):
        layer(x).square().sum().backward()
    layer.dense_grad[:4] = 0
    create_updater("srigl", update_every=1, end=10, drop_fraction=0.3, ablation_threshold=0.3).update({"l": layer}, 1)
    fan_in = layer.mask.sum(dim=1)
    assert layer.nnz == nnz and (fan_in[:4] == 0).all()
    assert set(fan_in[4:].tolist()) <= {nnz // 12, nnz // 12 + 1}


def test_gmp_follows_cubic_schedule_and_resizes_optimizer_state():
    layer = SparseLinear(20, 10, sparsity=0.0, backend="reference")
    opt = th.optim.Adam(layer.parameters())
    layer(th.randn(4, 20)).sum().backward()
    opt.step()
    gmp = create_updater("gmp", update_every=10, start=0, end=100, final_sparsity=0.9)
    for step in range(10, 101, 10):
        gmp.update({"l": layer}, step, [opt])
        p = step / 100
        assert layer.nnz == round((1 - 0.9 * (1 - (1 - p) ** 3)) * 200)
        assert opt.state[layer.values]["exp_avg"].shape == layer.values.shape
        opt.zero_grad()
        layer(th.randn(4, 20)).sum().backward()
        opt.step()
    assert layer.nnz == 20


def test_sgd_momentum_is_reset_for_grown_entries():
    layer = SparseLinear(10, 10, sparsity=0.5, backend="reference")
    opt = th.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    layer(th.randn(4, 10)).square().sum().backward()
    opt.step()
    old_mask = layer.mask
    create_updater("set", update_every=1, end=10, drop_fraction=0.4, seed=0).update({"l": layer}, 1, [opt])
    momentum = th.zeros(100).index_put((layer.flat_indices(),), opt.state[layer.values]["momentum_buffer"]).view(10, 10)
    grown = layer.mask & ~old_mask
    assert grown.any() and (momentum[grown] == 0).all() and (momentum[layer.mask & old_mask] != 0).any()


def test_static_and_dense_never_rewire_and_registry_names():
    assert set(UPDATERS) == {"dense", "static", "set", "rigl", "srigl", "gmp"}
    assert METHODS == tuple(UPDATERS) == typing.get_args(Method)  # the Literal and the registry agree
    assert SPARSE_METHODS == tuple(name for name in METHODS if name != "dense")
    assert all(UPDATERS[name].name == name for name in METHODS)
    assert not create_updater("static").is_update_step(1000) and not create_updater("dense").is_sparse
    assert create_updater({"name": "rigl", "update_every": 5}).schedule.update_every == 5
    with pytest.raises(ValueError, match="unknown method"):
        create_updater("magic")


def test_gmp_reaches_final_sparsity_when_no_update_lands_on_end():
    layer = SparseLinear(20, 10, sparsity=0.0, backend="reference")
    gmp = create_updater("gmp", update_every=30, start=0, end=100, final_sparsity=0.9)
    for step in (30, 60, 90):
        gmp.update({"l": layer}, step)
    assert layer.nnz == 20


def test_a_layer_with_fewer_connections_than_inputs_still_rewires():
    """keep_connected protected every connection of a 256-input layer holding 205: SET and RigL silently became static."""
    layer = SparseLinear(256, 8, sparsity=0.9, backend="reference")
    assert layer.nnz < 256
    stats = create_updater("set", update_every=1, end=10, drop_fraction=0.3, drop_schedule="constant", seed=0).update(
        {"layer": layer}, 1, [])
    assert stats.layers["layer"].dropped == round(0.3 * layer.nnz)
    assert layer.mask.any(dim=1).all()  # the 8 units (nnz >= 8) keep a connection each


def test_plain_api_misuse_of_srigl_and_gmp_is_an_error():
    """SRigL on a layer without constant fan-in kept its unequal fan-ins silently; GMP on an already sparse layer
    pruned nothing until its ramp passed the layer's sparsity. The SB3 callback checked both; the updaters did not."""
    uneven = SparseLinear(32, 8, sparsity=0.9, backend="reference", mask=th.rand(8, 32) < th.linspace(0.05, 0.5, 8)[:, None])
    srigl = create_updater("srigl", update_every=1, end=10, drop_fraction=0.3, seed=0)
    with pytest.raises(ValueError, match="srigl needs constant fan-in layers"):
        srigl.update({"layer": uneven}, 1, [])
    gmp = create_updater("gmp", update_every=1, end=10, final_sparsity=0.95)
    with pytest.raises(ValueError, match="gmp prunes from initial_sparsity 0, but layer 'layer' starts at sparsity 0.9"):
        gmp.update({"layer": SparseLinear(32, 8, sparsity=0.9, backend="reference")}, 1, [])
