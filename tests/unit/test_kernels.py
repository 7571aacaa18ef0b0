"""Parity of every kernel backend with the reference path: forward and every gradient, after topology updates too."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

import pytest
import torch as th

from sparse_rl.nn import backends
from sparse_rl.nn.backends import _build
from sparse_rl.nn.layers import SparseConv2d, SparseLinear, random_mask

CUDA = th.cuda.is_available()
CPU_BACKENDS = [name for name in ("cpu", "torch_csr") if backends.get(name).available("cpu")]
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")


def _tol(dtype: th.dtype) -> float:
    return 1e-5 if dtype == th.float32 else 1e-10


def _close(got: th.Tensor | None, want: th.Tensor | None, dtype: th.dtype, what: str) -> None:
    assert (got is None) == (want is None), what
    if want is None:
        return
    got, want = got.detach(), want.detach()
    scale = float(want.abs().max()) if want.numel() else 1.0
    err = float((got - want).abs().max()) if want.numel() else 0.0
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert err <= _tol(dtype) * max(scale, 1.0), f"{what}: max error {err:.3g} (scale {scale:.3g})"


def _grads(layer: SparseLinear, backend: str, x: th.Tensor, g: th.Tensor) -> list[th.Tensor | None]:
    layer.backend = backend
    x = x.detach().requires_grad_(True)
    y = layer(x)
    params = [x, layer.values] + ([layer.bias] if layer.bias is not None else [])
    grads = th.autograd.grad(y, params, g, allow_unused=True)
    return [y.detach(), *grads]


def check_parity(layer: SparseLinear, backend: str, x: th.Tensor) -> None:
    """Forward, grad to inputs / values / bias and the no-grad forward of ``backend`` match ``reference``."""
    dtype = layer.values.dtype
    g = th.randn(*x.shape[:-1], layer.out_features, dtype=dtype, device=x.device)
    want = _grads(layer, "reference", x, g)
    got = _grads(layer, backend, x, g)
    for name, a, b in zip(["output", "grad input", "grad values", "grad bias"], got, want):
        _close(a, b, dtype, f"{backend} {name}")
    with th.no_grad():
        _close(layer(x), want[0], dtype, f"{backend} no-grad output")


def _layer(n_in: int, n_out: int, sparsity: float, dtype: th.dtype = th.float32, seed: int = 0, **kw) -> SparseLinear:
    gen = th.Generator().manual_seed(seed)
    th.manual_seed(seed)
    return SparseLinear(n_in, n_out, sparsity=sparsity, generator=gen, dtype=dtype, **kw)


SHAPES = [(17, 256), (37, 131), (256, 17), (3136, 512)]  # (in, out)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("batch", [1, 3, 256])
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.99])
def test_parity_float32(backend: str, shape: tuple[int, int], batch: int, sparsity: float) -> None:
    layer = _layer(*shape, sparsity, seed=batch)
    check_parity(layer, backend, th.randn(batch, shape[0]))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("batch", [1, 5, 77])
def test_parity_float64(backend: str, batch: int) -> None:
    layer = _layer(131, 37, 0.8, dtype=th.float64)
    check_parity(layer, backend, th.randn(batch, 131, dtype=th.float64))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_rows_columns_and_no_bias(backend: str) -> None:
    mask = random_mask(40, 70, 300, generator=th.Generator().manual_seed(1))
    mask[::3] = False  # rows (outputs) with no inputs
    mask[:, 5:20] = False  # inputs that feed nothing
    layer = SparseLinear(70, 40, mask=mask)
    for batch in (1, 9, 70):
        check_parity(layer, backend, th.randn(batch, 70))
    check_parity(SparseLinear(70, 40, mask=mask, bias=False), backend, th.randn(9, 70))
    check_parity(SparseLinear(70, 40, mask=th.zeros(40, 70, dtype=th.bool)), backend, th.randn(4, 70))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_contiguous_and_leading_dims(backend: str) -> None:
    layer = _layer(64, 48, 0.9)
    base = th.randn(130, 128)
    check_parity(layer, backend, base[::2, ::2])  # strided rows and columns
    check_parity(layer, backend, th.randn(64, 33).t())  # transposed
    check_parity(layer, backend, base[:1, 1::2])  # one strided row
    check_parity(layer, backend, th.randn(2, 3, 5, 64))  # leading batch dims
    check_parity(layer, backend, th.randn(5, 64, 2).transpose(1, 2))  # non-contiguous 3-D
    check_parity(layer, backend, th.randn(64))  # no batch dim
    layer.backend = backend
    y = layer(th.randn(3, 64, requires_grad=True))
    y.sum().backward()  # expanded (stride-0) output gradient
    assert layer.values.grad is not None and th.isfinite(layer.values.grad).all()


def _random_rewire(layer: SparseLinear, gen: th.Generator) -> None:
    """New random mask of the same nnz; kept positions take their old slot, new ones start at 0 (source -1)."""
    rows, cols = layer.matrix_shape
    old_flat = layer.flat_indices().clone()
    new_mask = random_mask(rows, cols, layer.nnz, generator=gen)
    new_flat = new_mask.reshape(-1).nonzero().squeeze(1)
    slot_of = th.full((rows * cols,), -1, dtype=th.long)
    slot_of[old_flat] = th.arange(old_flat.numel())
    layer.rewire(new_mask, slot_of[new_flat])
    with th.no_grad():
        layer.values.add_(th.randn(layer.nnz, generator=gen, dtype=layer.values.dtype) * 0.1)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_parity_after_topology_updates(backend: str) -> None:
    layer = _layer(96, 80, 0.9)
    gen = th.Generator().manual_seed(3)
    x = th.randn(33, 96)
    check_parity(layer, backend, x)
    before = dict(layer._cache)
    version = layer.topology_version
    for _ in range(3):
        _random_rewire(layer, gen)
        assert layer.topology_version > version and not any(key in layer._cache for key in before)
        version = layer.topology_version
        check_parity(layer, backend, x)
        # the cached transposed layout matches a fresh one built from the current indices
        colptr, rowidx, perm = backends._common.csc_layout(layer)
        dense_rows, dense_cols = layer.row_indices(), layer.indices.long()
        assert th.equal(dense_cols[perm], th.repeat_interleave(th.arange(96), colptr.diff()))
        assert th.equal(rowidx, dense_rows[perm])
        before = dict(layer._cache)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_multithreaded(backend: str) -> None:
    threads = th.get_num_threads()
    th.set_num_threads(2)
    try:
        check_parity(_layer(300, 200, 0.8), backend, th.randn(130, 300))
        big = _layer(3136, 512, 0.8)  # enough work for the kernel to split even a batch of 1 across threads
        for batch in (1, 7):
            check_parity(big, backend, th.randn(batch, 3136))
    finally:
        th.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [th.float32, th.float64])
@pytest.mark.parametrize("batch", [256, 77, 200])
def test_parity_column_blocked(dtype: th.dtype, batch: int) -> None:
    """Layers wide enough for the cache-blocked kernel (forward, dv and dx all blocked), odd batch chunks too."""
    layer = _layer(1100, 700, 0.85, dtype=dtype, seed=batch)
    kern = backends.get("cpu").kernel(layer)
    if kern is None:
        pytest.skip("compiled kernel unavailable")
    csc = kern.csc()  # the operators' Topology (cblocks) or the ctypes structs (blocks, nblk)
    assert kern.nblk > 1 and getattr(csc, "cblocks", getattr(csc, "blocks", None)) is not None
    check_parity(layer, "cpu", th.randn(batch, 1100, dtype=dtype))
    threads = th.get_num_threads()
    th.set_num_threads(2)
    try:
        check_parity(layer, "cpu", th.randn(batch, 1100, dtype=dtype))
    finally:
        th.set_num_threads(threads)


def test_fully_connected_layer_uses_values_as_the_weight() -> None:
    """At density 1 the reference path uses values as the row-major weight: same outputs and gradients as the scatter."""
    for layer in (_layer(23, 40, 0.0), SparseConv2d(3, 4, 3, sparsity=0.0)):
        x = th.randn(5, 23) if isinstance(layer, SparseLinear) else th.randn(2, 3, 8, 8)
        layer.backend = "reference"
        assert layer.nnz == layer.numel_dense
        out = layer(x)
        out.square().sum().backward()
        grad = layer.values.grad.clone()
        layer.values.grad = None
        dense = layer.dense_weight()
        want = (th.nn.functional.linear(x, dense, layer.bias) if isinstance(layer, SparseLinear)
                else th.nn.functional.conv2d(x, dense, layer.bias, **layer.conv_kwargs()))
        want.square().sum().backward()
        th.testing.assert_close(out, want)
        th.testing.assert_close(grad, layer.values.grad)


def test_column_blocks_partition_each_row() -> None:
    from sparse_rl.nn.backends.cpu import column_blocks

    layer = _layer(1000, 300, 0.8)
    starts, nblk = column_blocks(layer.indptr, layer.indices, 300, 1000)
    assert nblk > 1
    starts = starts.view(nblk + 1, 300).long()
    assert th.equal(starts[0], layer.indptr[:-1].long()) and th.equal(starts[-1], layer.indptr[1:].long())
    assert bool((starts.diff(dim=0) >= 0).all())
    width = -(-1000 // nblk)
    cols = layer.indices.long()
    for c in range(nblk):
        for r in (0, 7, 299):
            inside = cols[starts[c, r]:starts[c + 1, r]]
            assert bool(((inside >= c * width) & (inside < (c + 1) * width)).all())
    # too sparse to pay, or columns out of order within a row: no blocks
    sparse = _layer(1000, 300, 0.995)
    assert column_blocks(sparse.indptr, sparse.indices, 300, 1000) == (None, 0)
    shuffled = layer.indices.clone()
    shuffled[layer.indptr[0]:layer.indptr[1]] = shuffled[layer.indptr[0]:layer.indptr[1]].flip(0)
    assert column_blocks(layer.indptr, shuffled, 300, 1000) == (None, 0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_conv2d_delegates(backend: str) -> None:
    conv = SparseConv2d(3, 8, 3, padding=1, sparsity=0.7)
    x = th.randn(2, 3, 9, 9)
    conv.backend = "reference"
    want = conv(x)
    conv.backend = backend
    _close(conv(x), want, th.float32, "conv")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_dtype_change_rebuilds_caches(backend: str) -> None:
    layer = _layer(50, 30, 0.8)
    check_parity(layer, backend, th.randn(6, 50))
    layer.double()
    check_parity(layer, backend, th.randn(6, 50, dtype=th.float64))
    layer.float()
    check_parity(layer, backend, th.randn(1, 50))


def test_registry_and_auto_selection() -> None:
    assert {"reference", "cpu", "torch_csr", "triton", "semi_structured"} <= set(backends.names())
    assert "reference" in backends.available("cpu")
    assert not backends.get("triton").available("cpu") and not backends.get("semi_structured").available("cpu")
    layer = _layer(64, 32, 0.9)
    expected = "cpu" if backends.get("cpu").available("cpu") else "reference"
    assert backends.resolve("auto", layer) == expected
    assert backends.resolve("auto", _layer(64, 32, 0.5)) == "reference"  # dense enough for MKL to win
    assert backends.resolve("auto", SparseConv2d(3, 4, 3)) == "reference"
    assert backends.resolve("auto", _layer(64, 32, 0.9, dtype=th.float16)) == "reference"


@pytest.mark.skipif(_build.load() is None, reason="compiled CPU kernel did not build here")
def test_kernel_cached_on_disk() -> None:
    libs = list(_build.cache_dir().glob("csr_kernels-*.so"))
    assert libs, f"no cached library under {_build.cache_dir()}"
    stale = [p for p in _build.cache_dir().glob("*.tmp") if time.time() - p.stat().st_mtime > 600]
    assert not stale, f"leftover temporary build files: {stale}"


def test_missing_compiler_falls_back_with_one_warning(tmp_path) -> None:
    code = (
        "import warnings, torch\n"
        "warnings.simplefilter('always')\n"
        "from sparse_rl.nn.layers import SparseLinear\n"
        "from sparse_rl.nn import backends\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    layer = SparseLinear(8, 4)\n"
        "    layer(torch.randn(2, 8)).sum().backward(); layer(torch.randn(2, 8))\n"
        "    print(backends.resolve('auto', layer), backends.available('cpu'))\n"
        "print(sum('compiled CPU sparse kernel unavailable' in str(x.message) for x in w))\n"
    )
    env = dict(os.environ, CXX=str(tmp_path / "no-such-g++"), SPARSE_RL_CACHE=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("reference") and "'cpu'" not in lines[0], lines
    assert lines[-1] == "1", out.stdout


# ------------------------------------------------------------------------------------------------------------- GPU
_TRITON_SCRIPT = """
import torch as th
from sparse_rl.nn.backends import reference, triton as T
from sparse_rl.nn.layers import SparseLinear
for n_in, n_out, batch in [(37, 131, 3), (256, 17, 1), (200, 64, 150)]:
    layer = SparseLinear(n_in, n_out, sparsity=0.9)
    x = th.randn(batch, n_in, requires_grad=True)
    outs = []
    for y in (T._LinearFn.apply(x, layer.values, layer.bias, layer), reference.ReferenceBackend().linear(layer, x)):
        outs.append([y, *th.autograd.grad(y, [x, layer.values, layer.bias], th.ones_like(y))])
    for a, b in zip(*outs):
        assert th.allclose(a, b, atol=1e-4, rtol=1e-4), (n_in, n_out, batch, float((a - b).abs().max()))
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not importable")
def test_triton_kernels_interpreted() -> None:
    """The triton kernels on CPU tensors through triton's interpreter (no GPU needed)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


@needs_cuda
@pytest.mark.skipif(not backends.get("triton").available("cuda"), reason="triton is not importable")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("batch", [1, 3, 256])
def test_triton_parity(shape: tuple[int, int], batch: int) -> None:
    layer = _layer(*shape, 0.9).cuda()
    check_parity(layer, "triton", th.randn(batch, shape[0], device="cuda"))
    _random_rewire_cuda(layer)
    check_parity(layer, "triton", th.randn(batch, shape[0], device="cuda")[:, :].contiguous())


def _random_rewire_cuda(layer: SparseLinear) -> None:
    layer.cpu()
    _random_rewire(layer, th.Generator().manual_seed(5))
    layer.cuda()


@needs_cuda
@pytest.mark.skipif(not backends.get("semi_structured").available("cuda"), reason="GPU without 2:4 sparse support")
@pytest.mark.parametrize("batch", [32, 256])
def test_semi_structured_parity(batch: int) -> None:
    rows, cols = 128, 256
    mask = th.zeros(rows, cols // 4, 4, dtype=th.bool)
    mask.scatter_(2, th.rand(rows, cols // 4, 4).argsort(dim=2)[..., :2], True)  # constant fan-in 2:4
    layer = SparseLinear(cols, rows, mask=mask.reshape(rows, cols), dtype=th.float16, device="cuda")
    assert backends.resolve("auto", layer) == "semi_structured"
    x = th.randn(batch, cols, device="cuda", dtype=th.float16)
    g = th.randn(batch, rows, device="cuda", dtype=th.float16)
    want, got = _grads(layer, "reference", x, g), _grads(layer, "semi_structured", x, g)
    for a, b in zip(got, want):
        th.testing.assert_close(a.float(), b.float(), atol=5e-2, rtol=1e-2)
