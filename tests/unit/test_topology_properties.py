"""Property tests over the whole topology engine: random shapes, sparsities and sequences of updates, saves and loads.

After every step of a random program (train, update with any method, save and reload layers + optimizer + updater),
the foundation invariants hold: nnz exact and constant (or following the GMP ramp), CSR well-formed, grown weights
and moments zero, pruned connections contribute exactly zero to the output, and every input and every unit keeps at
least one connection whenever the layer's nnz can cover them (``nnz >= max(rows, cols)``).
"""

import io

import torch as th
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparse_rl.nn import SparseLinear
from sparse_rl.nn.masks import random_mask, uncovered
from sparse_rl.topology import capture_dense_grad, create_updater

ACTIONS = st.lists(st.sampled_from(["train", "update", "save_load"]), min_size=1, max_size=8)


def _check_csr(layer: SparseLinear) -> None:
    rows, cols = layer.matrix_shape
    indptr, indices = layer.indptr.long(), layer.indices.long()
    assert indptr[0] == 0 and indptr[-1] == layer.nnz == layer.values.numel() == indices.numel()
    assert (indptr[1:] >= indptr[:-1]).all()
    for r in range(rows):
        row = indices[indptr[r]:indptr[r + 1]]
        assert (row[1:] > row[:-1]).all() and (row >= 0).all() and (row < cols).all()  # sorted, unique, in range


def _round_trip(net, opt, updater, make):
    buffer = io.BytesIO()
    th.save({"net": net.state_dict(), "opt": opt.state_dict(), "updater": updater.state_dict()}, buffer)
    buffer.seek(0)
    saved = th.load(buffer, weights_only=False)
    new_net, new_updater = make()
    new_net.load_state_dict(saved["net"])
    new_opt = th.optim.Adam(new_net.parameters(), lr=1e-2)
    new_opt.load_state_dict(saved["opt"])
    new_updater.load_state_dict(saved["updater"])
    return new_net, new_opt, new_updater


@settings(max_examples=30, deadline=None)
@given(
    method=st.sampled_from(["static", "set", "rigl", "srigl", "gmp"]), n_in=st.integers(2, 24), hidden=st.integers(2, 24),
    sparsity=st.floats(0.1, 0.95), actions=ACTIONS, seed=st.integers(0, 10_000),
)
def test_random_programs_keep_the_invariants(method, n_in, hidden, sparsity, actions, seed):
    th.manual_seed(seed)
    fan_in, start_dense = method == "srigl", method == "gmp"

    def make():
        gen = th.Generator().manual_seed(seed)
        kw = dict(sparsity=0.0 if start_dense else sparsity, constant_fan_in=fan_in, backend="reference", generator=gen)
        net = nn.Sequential(SparseLinear(n_in, hidden, **kw), nn.ReLU(), SparseLinear(hidden, 3, **kw))
        updater = create_updater(method, update_every=1, start=0, end=len(actions) + 1, drop_fraction=0.4, seed=seed,
                                 **({"final_sparsity": sparsity} if start_dense else {}))
        return net, updater

    net, updater = make()
    opt = th.optim.Adam(net.parameters(), lr=1e-2)
    x, y = th.randn(8, n_in), th.randn(8, 3)
    nnz0 = [net[0].nnz, net[2].nnz]
    for step, action in enumerate(actions, start=1):
        layers = {"0": net[0], "2": net[2]}
        if action == "train":
            opt.zero_grad()
            F.mse_loss(net(x), y).backward()
            opt.step()
        elif action == "update":
            before = [layer.mask.clone() for layer in layers.values()]
            with capture_dense_grad(layers.values()):
                F.mse_loss(net(x), y).backward()
            net.zero_grad()
            updater.update(layers, step, [opt])
            for layer, old in zip(layers.values(), before):
                grown = layer.mask & ~old
                dense_w = layer.dense_weight().detach()
                assert (dense_w[grown] == 0).all()
                if opt.state.get(layer.values):
                    moments = th.zeros(layer.numel_dense).index_put((layer.flat_indices(),),
                                                                    opt.state[layer.values]["exp_avg"]).view_as(dense_w)
                    assert (moments[grown] == 0).all()
                if method == "gmp":
                    assert not grown.any() and layer.nnz <= old.sum()
        else:
            net, opt, updater = _round_trip(net, opt, updater, make)
        for i, layer in enumerate((net[0], net[2])):
            _check_csr(layer)
            if method != "gmp":
                assert layer.nnz == nnz0[i]
            if method == "srigl":
                counts = layer.mask.sum(dim=1)
                assert (counts == counts[0]).all()
            if method != "gmp" and layer.nnz >= max(layer.matrix_shape):
                assert uncovered(layer.mask) == (0, 0), f"an input or unit lost its last connection ({method})"
            masked = F.linear(x if i == 0 else th.relu(net[0](x)), layer.dense_weight() * layer.mask, layer.bias)
            th.testing.assert_close(layer(x if i == 0 else th.relu(net[0](x))), masked)


@settings(max_examples=200, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 40), density=st.floats(0.01, 1.0), fan_in=st.booleans(),
       seed=st.integers(0, 10_000))
def test_initial_masks_connect_every_input_and_unit(rows, cols, density, fan_in, seed):
    k = max(1, round(density * cols))
    nnz = rows * k if fan_in else max(1, round(density * rows * cols))
    mask = random_mask(rows, cols, nnz, constant_fan_in=fan_in, generator=th.Generator().manual_seed(seed))
    assert int(mask.sum()) == nnz
    if fan_in:
        assert (mask.sum(dim=1) == k).all()
    empty_rows, empty_cols = uncovered(mask)
    # covered: all rows and columns when nnz allows, else nnz of the larger side (one entry each)
    assert (rows - empty_rows) + (cols - empty_cols) >= min(rows + cols, nnz + min(nnz, min(rows, cols)))
    if nnz >= max(rows, cols):
        assert (empty_rows, empty_cols) == (0, 0)
