"""Sparse layers under tracing, export and compilation, and on the meta device: the traceable path."""

import pytest
import torch as th
from torch import nn

from sparse_rl.nn import SparseConv2d, SparseLinear, backends
from sparse_rl.nn.backends import traceable

CPU_BACKENDS = [name for name in ("cpu", "torch_csr", "reference") if backends.get(name).available("cpu")]


def _mask_with_empty_rows(rows: int, cols: int) -> th.Tensor:
    """A sparse mask whose first, middle and last rows are empty (repeated row pointers)."""
    mask = th.rand(rows, cols, generator=th.Generator().manual_seed(0)) < 0.15
    mask[0] = mask[rows // 2] = mask[-1] = False
    return mask


def _net(backend: str) -> nn.Module:
    th.manual_seed(0)
    return nn.Sequential(
        SparseConv2d(3, 8, 3, stride=2, padding=1, sparsity=0.8, backend=backend), nn.ReLU(), nn.Flatten(),
        SparseLinear(8 * 4 * 4, 40, mask=_mask_with_empty_rows(40, 128), backend=backend), nn.ReLU(),
        SparseLinear(40, 3, sparsity=0.5, backend=backend),
    ).eval()


def _inputs(batch: int, seed: int) -> th.Tensor:
    return th.randn(batch, 3, 8, 8, generator=th.Generator().manual_seed(seed))


@pytest.mark.parametrize("backend", ["auto", *CPU_BACKENDS])
def test_meta_forward_computes_shapes_only(backend):
    linear = SparseLinear(16, 8, sparsity=0.7, backend=backend).to("meta")
    out = linear(th.randn(5, 16, device="meta"))
    assert out.device.type == "meta" and out.shape == nn.Linear(16, 8, device="meta")(th.randn(5, 16, device="meta")).shape
    conv = SparseConv2d(3, 4, 3, sparsity=0.5, backend=backend, device="meta")
    assert conv(th.randn(2, 3, 9, 9, device="meta")).shape == (2, 4, 7, 7)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_jit_trace_follows_the_input(backend):
    net = _net(backend)
    with th.no_grad():
        traced = th.jit.trace(net, _inputs(4, 0))
        x1, x2 = _inputs(4, 1), _inputs(4, 2)
        th.testing.assert_close(traced(x1), net(x1))
        th.testing.assert_close(traced(x2), net(x2))
        assert not th.allclose(traced(x1), traced(x2))


@pytest.mark.parametrize("strict", [False, True], ids=["nonstrict", "strict"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_export_matches_eager(backend, strict):
    net = _net(backend)
    program = th.export.export(net, (_inputs(4, 0),), dynamic_shapes=({0: th.export.Dim("batch")},), strict=strict)
    exported = program.module()
    with th.no_grad():
        for batch, seed in ((4, 1), (7, 2)):
            x = _inputs(batch, seed)
            th.testing.assert_close(exported(x), net(x))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_compile_fullgraph_matches_eager(backend):
    net = _net(backend)
    compiled = th.compile(net, backend="eager", fullgraph=True)
    x = _inputs(3, 1)
    with th.no_grad():
        th.testing.assert_close(compiled(x), net(x))


def test_traceable_weight_equals_dense_weight_under_fake_tensors():
    """The static-shape positions (scatter-add + cumsum) equal the cached repeat_interleave ones, empty rows included."""
    layer = SparseLinear(128, 40, mask=_mask_with_empty_rows(40, 128))

    class Weight(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: th.Tensor) -> th.Tensor:
            return traceable.dense_weight(self.layer) + x

    zeros = th.zeros(40, 128)
    th.testing.assert_close(th.export.export(Weight(), (zeros,)).module()(zeros), layer.dense_weight().detach())


def test_layer_helpers_work_under_torch_export():
    """``dense_weight()`` / ``mask`` inside an exported forward: the layer cache is skipped for fake tensors."""
    layer = SparseLinear(12, 6, sparsity=0.6)

    class UsesHelpers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: th.Tensor) -> th.Tensor:
            return x @ (self.layer.dense_weight() * self.layer.mask).t()

    x = th.randn(3, 12)
    expected = x @ layer.dense_weight().detach().t()
    th.testing.assert_close(th.export.export(UsesHelpers(), (x,)).module()(x), expected)


def test_is_tracing_is_false_in_eager_calls():
    assert not traceable.is_tracing(th.randn(2, 3))


def test_jit_script_raises_one_line_error():
    with pytest.raises(RuntimeError, match="cannot be scripted") as error:
        th.jit.script(SparseLinear(4, 4))
    assert "\n" not in str(error.value)
