"""The CPU kernels as PyTorch operators, the fused sparse MLP and the lean acting path, each against the reference.

- operators (``torch.ops.sparse_rl``) vs the ctypes path vs the dense reference: outputs and every gradient, in every
  layout (batch- or feature-major input and output), with fused ReLU / Tanh, float32 and float64;
- ``SparseSequential`` (fused bias and activation, feature-major activations between layers) vs the same network made
  dense, before and after topology updates, with RigL's dense-gradient capture, hooks, pickling;
- the lean no-grad call path (acting) at batch 1 and small batches, for a layer and for SB3 policies;
- fake implementations (``torch.library.opcheck``), ``torch.compile`` and ``torch.export`` recording the operators.
"""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys

import pytest
import torch as th
from torch import nn

from sparse_rl.nn import SparseLinear, SparseSequential, fuse_sequentials, random_mask
from sparse_rl.nn.backends import _build, cpu, ops, traceable

ACTS = {0: lambda z: z, 1: th.relu, 2: th.tanh}


def test_operators_build_wherever_the_ctypes_kernel_does() -> None:
    """A failed operator build must not hide behind the ctypes fallback (same compiler, torch ships its headers)."""
    if _build.load() is None:
        pytest.skip("no compiled kernel here at all")
    assert ops.available(), f"the sparse_rl operators did not build: {_build.ops_unavailable_reason()}"



def test_operators_that_do_not_build_fall_back_to_ctypes_with_one_warning() -> None:
    """No torch headers: the operators fail to build, the ctypes kernel serves the CPU backend, one warning line says so."""
    if _build.load() is None:
        pytest.skip("no compiled kernel here at all")
    code = (
        "import warnings, torch\n"
        "from sparse_rl.nn.backends import _build, cpu, ops\n"
        "_build._torch_flags = lambda: (['-I/nonexistent-torch-include'], [])\n"
        "from sparse_rl.nn.layers import SparseLinear\n"
        "from sparse_rl.nn import backends\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    layer = SparseLinear(64, 32, sparsity=0.5, backend='cpu')\n"
        "    x = torch.randn(3, 64, requires_grad=True)\n"
        "    layer(x).sum().backward(); layer(torch.randn(1, 64)); layer(torch.randn(1, 64))\n"
        "    assert torch.allclose(layer(x), x @ layer.dense_weight().t() + layer.bias, atol=1e-5)\n"
        "    print(backends.resolve('cpu', layer), ops.available(), type(cpu.CpuBackend().kernel(layer)).__name__)\n"
        "print(sum('operators unavailable' in str(x.message) for x in w), len(w))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, SPARSE_RL_NO_OPS="0"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "cpu False _Kernel", lines
    assert lines[-1] == "1 1", out.stdout

needs_ops = pytest.mark.skipif(not ops.available(), reason="the sparse_rl operators did not build here")


def _layer(n_in: int, n_out: int, sparsity: float, dtype: th.dtype = th.float32, seed: int = 0, **kw) -> SparseLinear:
    th.manual_seed(seed)
    return SparseLinear(n_in, n_out, sparsity=sparsity, generator=th.Generator().manual_seed(seed), dtype=dtype, **kw)


def _args(layer: SparseLinear) -> tuple:
    topo = ops.topology(layer)
    csc = topo.csc()
    return layer.indptr, layer.indices, topo.blocks, csc.colptr, csc.rowidx, csc.perm, csc.cblocks


def _reference(layer: SparseLinear, x: th.Tensor, g: th.Tensor, act: int) -> list[th.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    weight = layer.dense_weight().detach().clone().requires_grad_(True)
    bias = layer.bias.detach().clone().requires_grad_(True)
    y = ACTS[act](nn.functional.linear(x, weight, bias))
    y.backward(g)
    return [y.detach(), x.grad, weight.grad[layer.mask], bias.grad]


def _close(got: list[th.Tensor], want: list[th.Tensor], what: str) -> None:
    tol = 1e-10 if want[0].dtype == th.float64 else 2e-5
    for name, a, b in zip(["output", "grad input", "grad values", "grad bias"], got, want):
        assert a.shape == b.shape, f"{what} {name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        scale = max(float(b.abs().max()) if b.numel() else 0.0, 1.0)
        assert float((a - b).abs().max()) <= tol * scale, f"{what} {name}: {float((a - b).abs().max()):.3g}"


@needs_ops
@pytest.mark.parametrize("shape", [(17, 256), (300, 200), (1100, 700)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("batch", [1, 3, 77, 256])
@pytest.mark.parametrize("act", [0, 1, 2], ids=["none", "relu", "tanh"])
def test_operator_matches_reference_in_every_layout(shape: tuple[int, int], batch: int, act: int) -> None:
    layer = _layer(*shape, 0.85, seed=batch)
    x, g = th.randn(batch, shape[0]), th.randn(batch, shape[1])
    want = _reference(layer, x, g, act)
    for x_fm in (False, True):
        for out_fm in (False, True):
            xin = (x.t().contiguous().t() if x_fm else x.clone()).requires_grad_(True)
            values, bias = layer.values.detach().clone().requires_grad_(True), layer.bias.detach().clone().requires_grad_(True)
            indptr, indices, blocks, colptr, rowidx, perm, cblocks = _args(layer)
            y = th.ops.sparse_rl.linear(xin, values, bias, indptr, indices, blocks, colptr, rowidx, perm, cblocks, act, out_fm)
            assert (y.stride(0) == 1 or batch == 1) if out_fm else y.is_contiguous()
            y.backward(g)
            what = f"x_fm={x_fm} out_fm={out_fm}"
            _close([y.detach(), xin.grad, values.grad, bias.grad], want, what)
            assert (xin.grad.stride(0) == 1) == (x_fm and batch > 1), f"{what}: the input gradient keeps the input's layout"
            with th.no_grad():
                y2 = th.ops.sparse_rl.spmm(xin, layer.values, layer.bias, indptr, indices, blocks, act, out_fm)
            _close([y2], want[:1], f"no-grad {what}")


@needs_ops
def test_operator_float64_without_bias_and_empty_batch() -> None:
    layer = _layer(131, 37, 0.8, dtype=th.float64, bias=False)
    indptr, indices, blocks, colptr, rowidx, perm, cblocks = _args(layer)
    x = th.randn(5, 131, dtype=th.float64, requires_grad=True)
    y = th.ops.sparse_rl.linear(x, layer.values, None, indptr, indices, blocks, colptr, rowidx, perm, cblocks, 1, True)
    want = th.relu(nn.functional.linear(x, layer.dense_weight()))
    th.testing.assert_close(y, want)
    y.sum().backward()
    assert layer.values.grad is not None
    empty = th.ops.sparse_rl.spmm(th.randn(0, 131, dtype=th.float64), layer.values, None, indptr, indices, blocks, 0, False)
    assert empty.shape == (0, 37)


@needs_ops
def test_operators_and_ctypes_give_the_same_results(monkeypatch) -> None:
    """The same layer through the operators and through the ctypes fallback (both against the reference)."""
    if _build.load() is None:
        pytest.skip("the ctypes kernel did not build here")
    for batch in (1, 5, 130):
        layer = _layer(300, 200, 0.8, seed=batch)
        x, g = th.randn(batch, 300), th.randn(batch, 200)
        results = {}
        for use_ops in (True, False):
            monkeypatch.setattr(cpu, "_use_ops", lambda use_ops=use_ops: use_ops)
            clone = copy.deepcopy(layer)  # fresh caches
            xin = x.clone().requires_grad_(True)
            y = clone(xin)
            y.backward(g)
            assert (type(cpu.CpuBackend().kernel(clone)) is ops.Topology) == use_ops
            results[use_ops] = [y.detach(), xin.grad, clone.values.grad, clone.bias.grad]
        want = _reference(layer, x, g, 0)
        _close(results[True], want, "operators")
        _close(results[False], want, "ctypes")
        _close(results[True], results[False], "operators vs ctypes")


@needs_ops
def test_fm_ld_mirrors_the_kernel() -> None:
    layer = _layer(64, 48, 0.5)
    for batch in (1, 7, 64, 65, 100, 256, 1000):
        y = th.ops.sparse_rl.spmm(th.randn(batch, 64), layer.values, layer.bias, layer.indptr, layer.indices, None, 0, True)
        assert y.shape == (batch, 48) and (batch == 1 or y.stride() == (1, ops.fm_ld(batch))), (batch, y.stride())
    assert ops.fm_ld(256) % 16 == 0 and (ops.fm_ld(256) // 16) % 2 == 1  # an odd number of cache lines


@needs_ops
def test_opcheck_fake_implementations_and_schemas() -> None:
    layer = _layer(40, 30, 0.7)
    indptr, indices, blocks, colptr, rowidx, perm, cblocks = _args(layer)
    x = th.randn(6, 40, requires_grad=True)
    values, bias = layer.values.detach().clone().requires_grad_(True), layer.bias.detach().clone().requires_grad_(True)
    th.library.opcheck(th.ops.sparse_rl.spmm.default, (x.detach(), values.detach(), bias.detach(), indptr, indices, blocks, 1,
                                                       False), test_utils=("test_schema", "test_faketensor"))
    th.library.opcheck(th.ops.sparse_rl.linear.default, (x, values, bias, indptr, indices, blocks, colptr, rowidx, perm,
                                                         cblocks, 2, True),
                       test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


# ------------------------------------------------------------------------------------------------ fused MLPs
def _mlp(act: type[nn.Module], widths: tuple[int, ...] = (17, 200, 300, 5), sparsity: float = 0.9) -> nn.Sequential:
    """Dense input layer, sparse hidden layers, dense head: the shape of an SB3 MLP after ERK."""
    layers: list[nn.Module] = [nn.Linear(widths[0], widths[1]), act()]
    for n_in, n_out in zip(widths[1:-2], widths[2:-1]):
        layers += [SparseLinear(n_in, n_out, sparsity=sparsity), act()]
    return nn.Sequential(*layers, nn.Linear(widths[-2], widths[-1]))


def _densified(net: nn.Sequential) -> nn.Sequential:
    dense = copy.deepcopy(net)
    dense.__class__ = nn.Sequential
    for i, module in enumerate(dense):
        if isinstance(module, SparseLinear):
            replacement = nn.Linear(module.in_features, module.out_features, dtype=module.values.dtype)
            with th.no_grad():
                replacement.weight.copy_(module.dense_weight())
                replacement.bias.copy_(module.bias)
            dense[i] = replacement
    return dense


def _check_mlp(net: nn.Sequential, batch: int, what: str) -> None:
    dense = _densified(net)
    x = th.randn(batch, net[0].in_features, dtype=net[0].weight.dtype)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = net(xa), dense(xb)
    g = th.randn_like(yb)
    ya.backward(g)
    yb.backward(g)
    th.testing.assert_close(ya, yb, atol=2e-5, rtol=1e-4, msg=f"{what}: output")
    th.testing.assert_close(xa.grad, xb.grad, atol=2e-5, rtol=1e-4, msg=f"{what}: grad input")
    for (name, module), other in zip(net.named_children(), dense.children()):
        if isinstance(module, SparseLinear):
            want = other.weight.grad[module.mask]
            th.testing.assert_close(module.values.grad, want, atol=5e-5, rtol=1e-4, msg=f"{what}: grad values {name}")
        if getattr(module, "bias", None) is not None:
            th.testing.assert_close(module.bias.grad, other.bias.grad, atol=5e-5, rtol=1e-4, msg=f"{what}: grad bias {name}")
    net.zero_grad(set_to_none=True)
    with th.no_grad():
        th.testing.assert_close(net(x), dense(x), atol=2e-5, rtol=1e-4, msg=f"{what}: no-grad output")


def _rewire(layer: SparseLinear, gen: th.Generator) -> None:
    rows, cols = layer.matrix_shape
    slot_of = th.full((rows * cols,), -1, dtype=th.long)
    slot_of[layer.flat_indices()] = th.arange(layer.nnz)
    new_mask = random_mask(rows, cols, layer.nnz, generator=gen)
    source = slot_of[new_mask.reshape(-1).nonzero().squeeze(1)]
    layer.rewire(new_mask, source, th.randn(int((source < 0).sum()), generator=gen))


@needs_ops
@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh])
@pytest.mark.parametrize("batch", [1, 3, 77, 256])
def test_fused_mlp_matches_dense_before_and_after_rewiring(act: type[nn.Module], batch: int) -> None:
    net = _mlp(act)
    state = list(net.state_dict())
    assert fuse_sequentials(net) == 1 and type(net) is SparseSequential and list(net.state_dict()) == state
    _check_mlp(net, batch, "initial")
    gen = th.Generator().manual_seed(batch)
    for update in range(2):
        for module in net:
            if isinstance(module, SparseLinear):
                _rewire(module, gen)
        _check_mlp(net, batch, f"after update {update + 1}")


@needs_ops
def test_fused_mlp_takes_one_operator_call_per_sparse_layer(monkeypatch) -> None:
    net = _mlp(nn.ReLU, (17, 64, 128, 128, 4))
    fuse_sequentials(net)
    calls = []
    for cls in (nn.ReLU, SparseLinear):
        def counted(self, x, original=cls.forward):
            calls.append(type(self).__name__)
            return original(self, x)

        monkeypatch.setattr(cls, "forward", counted)
    net(th.randn(8, 17))
    assert calls == ["ReLU"]  # only the ReLU after the dense input layer runs as a module; the rest is fused
    out = net[2](th.randn(8, 64))
    assert out.is_contiguous()  # a layer called on its own still returns a batch-major output


@needs_ops
def test_rigl_dense_gradient_is_exact_through_a_fused_mlp() -> None:
    from sparse_rl.topology import capture_dense_grad

    net = _mlp(nn.ReLU)
    fuse_sequentials(net)
    dense = _densified(net)
    x = th.randn(32, 17)
    sparse_layers = [m for m in net if isinstance(m, SparseLinear)]
    with capture_dense_grad(sparse_layers):
        net(x).square().sum().backward()
    dense(x).square().sum().backward()
    for layer, other in zip(net, dense):
        if isinstance(layer, SparseLinear):
            th.testing.assert_close(layer.dense_grad, other.weight.grad, atol=1e-4, rtol=1e-4)


@needs_ops
def test_hooks_and_unsupported_inputs_take_the_plain_path() -> None:
    net = _mlp(nn.ReLU)
    fuse_sequentials(net)
    seen = []
    handle = net[2].register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    _check_mlp(net, 9, "with a hook")
    assert seen and seen[0] == (9, 300)
    handle.remove()
    relus = [m for m in net if isinstance(m, nn.ReLU)]  # a hook on a fused activation (dormant-neuron measurement)
    handle = relus[0].register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    seen.clear()
    _check_mlp(net, 9, "with a hook on an activation")
    assert seen, "a forward hook on an activation the fused path would absorb must still run"
    handle.remove()
    x = th.randn(2, 3, 17)  # 3-D: nn.Sequential's own path
    th.testing.assert_close(net(x), _densified(net)(x), atol=2e-5, rtol=1e-4)
    net.double()
    _check_mlp(net, 5, "float64")


@needs_ops
def test_fused_mlp_pickles_and_deep_copies() -> None:
    net = _mlp(nn.Tanh)
    fuse_sequentials(net)
    x = th.randn(4, 17)
    expected = net(x)
    for clone in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert type(clone) is SparseSequential
        th.testing.assert_close(clone(x), expected)


# ------------------------------------------------------------------------------------------------- acting path
@needs_ops
@pytest.mark.parametrize("batch", [1, 2, 8])
def test_lean_no_grad_path_matches_reference(batch: int) -> None:
    layer = _layer(256, 256, 0.9)
    x = th.randn(batch, 256)
    want = nn.functional.linear(x, layer.dense_weight(), layer.bias).detach()
    with th.no_grad():
        first = layer(x)  # the first call resolves the backend and arms the lean path
        assert type(layer._fast) is ops.Topology
        th.testing.assert_close(first, want, atol=1e-5, rtol=1e-5)
        th.testing.assert_close(layer(x), want, atol=1e-5, rtol=1e-5)
        th.testing.assert_close(layer(x[0]), want[0], atol=1e-5, rtol=1e-5)  # 1-D input: the generic path
    _rewire(layer, th.Generator().manual_seed(1))
    assert layer._fast is None  # a topology change disarms it
    with th.no_grad():
        th.testing.assert_close(layer(x), nn.functional.linear(x, layer.dense_weight(), layer.bias), atol=1e-5, rtol=1e-5)
    layer.backend = "reference"  # another backend: the lean path is not taken
    with th.no_grad():
        th.testing.assert_close(layer(x), nn.functional.linear(x, layer.dense_weight(), layer.bias), atol=1e-5, rtol=1e-5)
    assert layer._fast is None or layer._fast.backend != layer.backend


@needs_ops
@pytest.mark.parametrize("algo", ["sac", "dqn", "ppo"])
def test_sb3_policies_fuse_and_act_like_the_plain_path(algo: str) -> None:
    import gymnasium as gym

    from sparse_rl.sb3 import SparseActorCriticPolicy, SparseDQNPolicy, SparseSACPolicy
    from sparse_rl.sb3.builders import sparse_layers

    policy_cls, env = {"sac": (SparseSACPolicy, "Pendulum-v1"), "dqn": (SparseDQNPolicy, "CartPole-v1"),
                       "ppo": (SparseActorCriticPolicy, "Pendulum-v1")}[algo]
    space = gym.make(env)
    kwargs = dict(net_arch=[128, 128], sparsity=0.9, distribution="uniform")
    policy = policy_cls(space.observation_space, space.action_space, lambda _: 1e-3, **kwargs)
    fused = [m for m in policy.modules() if type(m) is SparseSequential]
    assert fused and sparse_layers(policy)
    obs = th.as_tensor(space.observation_space.sample(), dtype=th.float32).unsqueeze(0).repeat(5, 1)
    for batch in (1, 5):
        with th.no_grad():
            got = policy._predict(obs[:batch], deterministic=True)
            SparseSequential.fused = False
            try:
                want = policy._predict(obs[:batch], deterministic=True)
            finally:
                SparseSequential.fused = True
        th.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------- compile and export
@needs_ops
def test_torch_export_records_the_operator() -> None:
    net = nn.Sequential(SparseLinear(32, 64, sparsity=0.9), nn.ReLU(), SparseLinear(64, 8, sparsity=0.9)).eval()
    x = th.randn(4, 32)
    with traceable.record_operators(), th.no_grad():
        program = th.export.export(net, (x,), dynamic_shapes=({0: th.export.Dim("batch")},))
    assert "sparse_rl.spmm" in str(program.graph)
    with th.no_grad():
        for batch in (4, 9):
            x = th.randn(batch, 32)
            th.testing.assert_close(program.module()(x), net(x))
    with th.no_grad():  # outside the block: the dense traceable path (what ONNX needs)
        assert "sparse_rl" not in str(th.export.export(net, (x,)).graph)


@needs_ops
def test_torch_compile_with_the_operators_trains_like_eager() -> None:
    net = _mlp(nn.ReLU, (17, 64, 96, 3))
    x = th.randn(16, 17)
    net(x).sum().backward()  # an eager call arms each layer's operator arguments (its CSC layout included)
    want = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    with traceable.record_operators():
        compiled = th.compile(net, backend="aot_eager", fullgraph=True)
        compiled(x).sum().backward()
    for p, w in zip(net.parameters(), want):
        th.testing.assert_close(p.grad, w, atol=1e-5, rtol=1e-5)
