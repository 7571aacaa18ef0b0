"""SparseLinear / SparseConv2d: truly sparse storage, reference compute, dense-gradient capture, rewiring."""

import pytest
import torch as th
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparse_rl.nn import SparseConv2d, SparseLinear, random_mask

TOL = dict(atol=1e-6, rtol=1e-6)


def _masked_dense(layer):
    """A dense weight tensor equal to the layer's (with zeros at pruned positions) that autograd can differentiate."""
    return layer.dense_weight().detach().clone().requires_grad_(True)


@settings(max_examples=25, deadline=None)
@given(
    n_in=st.integers(1, 40), n_out=st.integers(1, 40), batch=st.integers(1, 5),
    sparsity=st.floats(0.0, 0.98), bias=st.booleans(), seed=st.integers(0, 2**16),
)
def test_linear_reference_matches_masked_dense(n_in, n_out, batch, sparsity, bias, seed):
    gen = th.Generator().manual_seed(seed)
    layer = SparseLinear(n_in, n_out, bias=bias, sparsity=sparsity, backend="reference", generator=gen).double()
    x = th.randn(batch, n_in, dtype=th.float64, generator=gen, requires_grad=True)
    weight = _masked_dense(layer)
    bias_ref = layer.bias.detach().clone().requires_grad_(True) if bias else None
    x_ref = x.detach().clone().requires_grad_(True)
    out, ref = layer(x), F.linear(x_ref, weight, bias_ref)
    th.testing.assert_close(out, ref, **TOL)
    grad_out = th.randn_like(out)
    out.backward(grad_out)
    ref.backward(grad_out)
    th.testing.assert_close(x.grad, x_ref.grad, **TOL)
    mask = layer.mask
    th.testing.assert_close(layer.values.grad, weight.grad[mask], **TOL)
    if bias:
        th.testing.assert_close(layer.bias.grad, bias_ref.grad, **TOL)


@pytest.mark.parametrize("groups,stride,padding", [(1, 1, 0), (1, 2, 1), (2, 1, 1)])
def test_conv_reference_matches_masked_dense(groups, stride, padding):
    layer = SparseConv2d(4, 6, 3, stride=stride, padding=padding, groups=groups, sparsity=0.7, backend="reference").double()
    x = th.randn(2, 4, 9, 8, dtype=th.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    weight, bias = _masked_dense(layer), layer.bias.detach().clone().requires_grad_(True)
    out = layer(x)
    ref = F.conv2d(x_ref, weight, bias, stride=stride, padding=padding, groups=groups)
    th.testing.assert_close(out, ref, **TOL)
    grad_out = th.randn_like(out)
    out.backward(grad_out)
    ref.backward(grad_out)
    th.testing.assert_close(x.grad, x_ref.grad, **TOL)
    th.testing.assert_close(layer.values.grad, weight.grad[layer.mask], **TOL)
    th.testing.assert_close(layer.bias.grad, bias.grad, **TOL)


def test_storage_holds_only_nonzeros():
    layer = SparseLinear(300, 200, sparsity=0.9)
    assert layer.values.numel() == layer.nnz == round(0.1 * 300 * 200)
    assert set(layer.state_dict()) == {"values", "indices", "indptr", "bias"}
    assert [name for name, _ in layer.named_parameters()] == ["values", "bias"]
    assert layer.indices.dtype == th.int16 and layer.indptr.dtype == th.int32
    assert SparseLinear(40000, 2, sparsity=0.99).indices.dtype == th.int32
    dense_bytes = (300 * 200 + 200) * 4
    assert layer.stored_bytes() <= 0.16 * dense_bytes
    assert layer.mask.sum() == layer.nnz and layer.mask.shape == (200, 300)
    assert abs(layer.density - 0.1) < 1e-9


def test_constant_fan_in_mask_and_exact_mask():
    layer = SparseLinear(50, 8, sparsity=0.8, constant_fan_in=True)
    assert (layer.mask.sum(dim=1) == 10).all()
    mask = random_mask(8, 50, 37)
    assert th.equal(SparseLinear(50, 8, mask=mask).mask, mask)


def test_from_dense_keeps_weights_at_mask():
    linear = nn.Linear(12, 7)
    mask = random_mask(7, 12, 30)
    layer = SparseLinear.from_dense(linear, mask, backend="reference")
    th.testing.assert_close(layer.dense_weight(), linear.weight.detach() * mask)
    x = th.randn(3, 12)
    th.testing.assert_close(layer(x), F.linear(x, linear.weight * mask, linear.bias))
    conv = nn.Conv2d(3, 5, 3, padding=1)
    conv_mask = th.rand(conv.weight.shape) < 0.3
    sparse_conv = SparseConv2d.from_dense(conv, conv_mask, backend="reference")
    image = th.randn(1, 3, 6, 6)
    th.testing.assert_close(sparse_conv(image), F.conv2d(image, conv.weight * conv_mask, conv.bias, padding=1))


@pytest.mark.parametrize("make", [
    lambda: SparseLinear(9, 5, sparsity=0.6, backend="reference"),
    lambda: SparseConv2d(3, 4, 2, stride=1, sparsity=0.5, backend="reference"),
])
def test_dense_grad_capture_equals_full_weight_gradient(make):
    layer = make().double()
    shape = (4, 9) if isinstance(layer, SparseLinear) else (2, 3, 5, 5)
    x = th.randn(*shape, dtype=th.float64)
    weight = _masked_dense(layer)
    forward = F.linear if isinstance(layer, SparseLinear) else F.conv2d
    for _ in range(2):  # two backward passes accumulate
        forward(x, weight, layer.bias).square().sum().backward()
    layer.capture_dense_grad = True
    layer(x).square().sum().backward()
    layer(x).square().sum().backward()
    th.testing.assert_close(layer.dense_grad, weight.grad.reshape(layer.matrix_shape), **TOL)
    assert (layer.dense_grad[~layer.mask.reshape(layer.matrix_shape)] != 0).any(), "inactive entries get a gradient too"


def test_no_dense_grad_without_capture():
    layer = SparseLinear(6, 4, backend="reference")
    layer(th.randn(2, 6)).sum().backward()
    assert layer.dense_grad is None


def test_rewire_keeps_parameter_and_refreshes_caches():
    layer = SparseLinear(10, 6, sparsity=0.5, backend="reference")
    values, x = layer.values, th.randn(3, 10)
    before = layer.cached("probe", lambda: object())
    old_mask = layer.mask
    new_mask = random_mask(6, 10, layer.nnz)
    slot = {tuple(p): i for i, p in enumerate(old_mask.nonzero().tolist())}
    source = th.tensor([slot.get(tuple(p), -1) for p in new_mask.nonzero().tolist()])
    old_dense = layer.dense_weight().detach()
    layer.rewire(new_mask, source)
    assert layer.values is values and th.equal(layer.mask, new_mask)
    assert layer.cached("probe", lambda: object()) is not before
    expected = old_dense * (old_mask & new_mask)
    th.testing.assert_close(layer.dense_weight().detach(), expected)
    th.testing.assert_close(layer(x), F.linear(x, expected, layer.bias))


def test_state_dict_round_trip_changes_topology_and_nnz():
    src, dst = SparseLinear(20, 10, sparsity=0.5), SparseLinear(20, 10, sparsity=0.9)
    x = th.randn(2, 20)
    dst(x)  # fill caches
    dst.load_state_dict(src.state_dict())
    assert th.equal(dst.mask, src.mask) and dst.nnz == src.nnz
    th.testing.assert_close(dst(x), src(x))


def test_copy_topology_from():
    a, b = SparseLinear(8, 8, sparsity=0.5), SparseLinear(8, 8, sparsity=0.75)
    b.copy_topology_from(a)
    assert th.equal(a.mask, b.mask) and b.values.numel() == a.nnz


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "abc", None, True])
def test_bad_sparsity_is_rejected(bad):
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        SparseLinear(4, 4, sparsity=bad)


def test_bad_backend_and_mask_are_rejected():
    with pytest.raises(ValueError, match="unknown backend"):
        SparseLinear(4, 4, backend="nope")
    with pytest.raises(ValueError, match="does not match the weight shape"):
        SparseLinear(4, 3, mask=th.ones(4, 3, dtype=th.bool))


def test_same_seed_same_mask_and_values():
    make = lambda: SparseLinear(32, 16, sparsity=0.9, generator=th.Generator().manual_seed(3))  # noqa: E731
    th.manual_seed(1)
    a = make()
    th.manual_seed(1)
    b = make()
    assert th.equal(a.mask, b.mask) and th.equal(a.values, b.values)


def test_deepcopy_and_pickle_after_the_kernel_ran():
    import copy
    import pickle

    layer = SparseLinear(64, 32, sparsity=0.9)
    x = th.randn(3, 64)
    expected = layer(x)  # fills the backend caches
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        th.testing.assert_close(clone(x), expected)
        assert th.equal(clone.mask, layer.mask)


def test_checkpoint_of_another_architecture_is_refused_clearly():
    small, big = nn.Sequential(SparseLinear(8, 16)), nn.Sequential(SparseLinear(8, 32))
    with pytest.raises(RuntimeError, match="saved from another architecture"):
        big.load_state_dict(small.state_dict())


def test_base_class_and_its_former_name():
    from sparse_rl.nn import SparseLayer
    from sparse_rl.nn.layers import SparseLayer as from_layers

    assert SparseLayer is SparseLayer is from_layers  # code written against 0.1 keeps importing and checking
    conv, linear = SparseConv2d(3, 4, 3), SparseLinear(4, 3)
    assert isinstance(conv, SparseLayer) and isinstance(linear, SparseLayer)
    assert set(conv.state_dict()) == {"values", "indices", "indptr", "bias"}  # the saved models' keys


@pytest.mark.parametrize("make", [
    lambda scale: SparseLinear(4, 4, init_scale=scale), lambda scale: SparseConv2d(2, 2, 3, init_scale=scale),
])
def test_init_scale_is_checked_for_both_layer_types(make):
    with pytest.raises(ValueError, match=r"init_scale must be one of \['sparse', 'dense'\]"):
        make("huge")
    th.manual_seed(0)
    sparse = make("sparse").values.abs().max()
    th.manual_seed(0)
    assert make("dense").values.abs().max() < sparse  # the sparse fan-in gives larger initial weights


def test_no_grad_reference_calls_keep_the_dense_weight_until_values_or_topology_change():
    """Acting on the reference path scattered the dense weight at every call; kept, it must never be stale."""
    layer = SparseLinear(17, 32, sparsity=0.4, backend="reference")
    x = th.randn(3, 17)
    optimizer = th.optim.SGD(layer.parameters(), lr=0.1)

    def expected() -> th.Tensor:
        return F.linear(x, layer.dense_weight().detach(), layer.bias.detach())

    scatters = []
    scatter = layer.dense_weight
    layer.dense_weight = lambda: scatters.append(1) or scatter()  # type: ignore[method-assign]
    with th.no_grad():
        first = layer(x)
        assert th.equal(layer(x), first) and th.equal(layer(x), first)
    assert len(scatters) == 1  # kept between calls
    layer.dense_weight = scatter  # type: ignore[method-assign]
    assert th.equal(first, expected())
    layer(x).sum().backward()
    optimizer.step()  # values change in place
    with th.no_grad():
        assert th.equal(layer(x), expected()) and not th.equal(layer(x), first)
        layer.values.copy_(th.randn_like(layer.values))  # as load_state_dict does
        assert th.equal(layer(x), expected())
    mask = layer.mask.clone()
    row = int(mask.any(dim=1).nonzero()[0])
    dropped, grown = int(mask[row].nonzero()[0]), int((~mask[row]).nonzero()[0])
    new_mask = mask.clone()
    new_mask[row, dropped], new_mask[row, grown] = False, True
    old = {int(p): slot for slot, p in enumerate(layer.flat_indices())}
    source = th.tensor([old.get(int(p), -1) for p in new_mask.flatten().nonzero().squeeze(1)])
    layer.rewire(new_mask, source, grown_values=th.full((1,), 0.5))
    with th.no_grad():
        out = layer(x)
    assert th.equal(out, expected())
    weight = layer.dense_weight()
    assert weight[row, dropped] == 0 and weight[row, grown] == 0.5  # the pruned one contributes exactly zero


def test_conv_dense_gradient_capture_takes_unbatched_images():
    """capture_dense_grad failed on a (C, H, W) input, which the layer itself accepts (so RigL could not update)."""
    from sparse_rl.topology import capture_dense_grad

    conv = SparseConv2d(3, 4, 3, sparsity=0.5)
    image = th.randn(3, 6, 6)
    with capture_dense_grad([conv]):
        conv(image).sum().backward()
    batched = SparseConv2d(3, 4, 3, sparsity=0.5)
    batched.load_state_dict(conv.state_dict())
    with capture_dense_grad([batched]):
        batched(image[None]).sum().backward()
    th.testing.assert_close(conv.dense_grad, batched.dense_grad)
