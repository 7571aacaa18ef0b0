"""The typed backend interface (registry, the shared ``linear`` call) and the compiled kernel's checked ABI."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import typing

import pytest
import torch as th

from sparse_rl.nn import SparseConv2d, SparseLinear, backends
from sparse_rl.nn.backends import _abi, _build
from sparse_rl.nn.backends.base import KernelBackend, SparseBackend

needs_kernel = pytest.mark.skipif(_build.load() is None, reason="compiled CPU kernel did not build here")


def test_registry_holds_typed_backends_named_like_the_literal():
    assert set(typing.get_args(backends.BackendName)) == {backends.AUTO, *backends.names()}
    for name in backends.names():
        backend = backends.get(name)
        assert isinstance(backend, SparseBackend) and backend.name == name
        assert isinstance(backend, KernelBackend) == (name != "reference")
    with pytest.raises(ValueError, match="resolve 'auto'"):
        backends.get("auto")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        backends.get("nope")


class _Recording(KernelBackend[SparseLinear]):
    """A kernel backend whose 'kernel' is a dense product: records which path the shared ``linear`` took."""

    name = "recording_test"

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def available(self, device: th.device | str) -> bool:
        return True

    def prepare(self, layer: SparseLinear, inputs: th.Tensor) -> SparseLinear | None:
        return layer if inputs.dtype == th.float32 else None

    def forward(self, state: SparseLinear, x2: th.Tensor, values: th.Tensor, bias: th.Tensor | None) -> th.Tensor:
        self.calls.append(("forward", tuple(x2.shape)))
        return th.nn.functional.linear(x2, state.dense_weight(), bias)

    def forward_with_grad(self, state: SparseLinear, x2: th.Tensor, values: th.Tensor, bias: th.Tensor | None) -> th.Tensor:
        self.calls.append(("forward_with_grad", tuple(x2.shape)))
        return th.nn.functional.linear(x2, state.dense_weight(), bias)


@pytest.fixture
def recording():
    backend = backends.register(_Recording())
    yield backend
    backends._REGISTRY.pop(backend.name)


def test_the_shared_linear_call(recording):
    layer = SparseLinear(6, 4, sparsity=0.5, backend=recording.name)
    x = th.randn(2, 3, 6)
    want = th.nn.functional.linear(x, layer.dense_weight(), layer.bias)
    th.testing.assert_close(layer(x), want)  # leading dimensions flattened, then restored
    assert recording.calls == [("forward_with_grad", (6, 6))]
    with th.no_grad():
        layer(x[0, 0])
    assert recording.calls[-1] == ("forward", (1, 6))  # no autograd needed: the no-grad path
    layer.requires_grad_(False)
    layer(x[0])
    assert recording.calls[-1] == ("forward", (3, 6))  # nothing requires a gradient
    n_calls = len(recording.calls)
    assert layer(th.randn(0, 6)).shape == (0, 4) and layer.double()(x.double()).shape == (2, 3, 4)
    assert len(recording.calls) == n_calls  # an empty batch and an unprepared dtype take the reference path
    conv = SparseConv2d(2, 3, 3, backend=recording.name)
    image = th.randn(1, 2, 5, 5)
    th.testing.assert_close(conv(image), th.nn.functional.conv2d(image, conv.dense_weight(), conv.bias))


@needs_kernel
def test_the_library_reports_the_abi_this_package_mirrors():
    lib = _build.load()
    assert lib.srl_abi_version() == _abi.ABI_VERSION and lib.srl_abi_layout().decode() == _abi.layout()
    assert _abi.check(lib) is None
    for struct in _abi.STRUCTS.values():  # 8-byte fields only: no padding, one layout on every 64-bit ABI
        assert ctypes.sizeof(struct) == 8 * len(struct._fields_)


@needs_kernel
def test_a_mismatched_library_is_refused(monkeypatch):
    lib = _build.load()
    monkeypatch.setattr(_abi, "ABI_VERSION", _abi.ABI_VERSION + 1)
    assert "ABI version" in _abi.check(lib)
    monkeypatch.undo()
    monkeypatch.setattr(_abi, "layout", lambda: "srl_csr 8 indptr@0")
    assert "layout differs" in _abi.check(lib)


@needs_kernel
def test_load_falls_back_with_one_warning_on_an_abi_mismatch():
    code = (
        "import warnings\n"
        "from sparse_rl.nn.backends import _abi, _build\n"
        "_abi.ABI_VERSION += 1\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    print(_build.load())\n"
        "print([str(x.message) for x in w])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "None" and "does not match this package" in lines[1] and "ABI version" in lines[1], lines


@needs_kernel
def test_entry_points_reject_bad_arguments_with_a_status():
    lib = _build.load()
    from sparse_rl.nn.backends.cpu import _Kernel

    layer = SparseLinear(8, 4, sparsity=0.5)
    kern = _Kernel(layer, lib)  # the ctypes handles (the backend itself runs the PyTorch operators when they build)
    x, y, scratch, dx = th.randn(2, 8), th.empty(2, 4), th.empty(16), th.empty(2, 8)  # alive while the kernel runs
    args = dict(weight=kern.csr_address, dtype=_abi.FLOAT32, values=layer.values.data_ptr(), bias=None, x=x.data_ptr(),
                batch=2, x_stride_batch=8, x_stride_feature=1, x_chunked=scratch.data_ptr(), y=y.data_ptr(), threads=1)
    assert lib.srl_forward(ctypes.addressof(_abi.ForwardArgs(**args))) == 0
    th.testing.assert_close(y, th.nn.functional.linear(x, layer.dense_weight().detach()))
    assert lib.srl_forward(ctypes.addressof(_abi.ForwardArgs(**{**args, "dtype": 0}))) == 1
    assert lib.srl_forward(ctypes.addressof(_abi.ForwardArgs(**{**args, "weight": None}))) == 2
    no_csc = _abi.BackwardArgs(weight=kern.csr_address, weight_t=None, dtype=_abi.FLOAT32, dx=dx.data_ptr())
    assert lib.srl_backward(ctypes.addressof(no_csc)) == 2  # dx needs the CSC layout
    with pytest.raises(RuntimeError, match="srl_forward failed: unsupported dtype"):
        _abi.raise_for_status(1, "srl_forward")
