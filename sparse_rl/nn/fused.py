"""Fused sparse MLPs: consecutive sparse layers exchange feature-major activations, bias and activation run in the kernel.

:class:`SparseSequential` is an ``nn.Sequential`` (same children, same names, so the same state-dict keys) whose
forward runs every :class:`~sparse_rl.nn.layers.SparseLinear` served by the CPU operators
(:mod:`sparse_rl.nn.backends.ops`) as one operator call with its bias and its activation (``nn.ReLU`` / ``nn.Tanh``
right after it) fused into the kernel, one autograd node per layer. When the next child is another such layer, the
output is left feature-major (a ``[B, n]`` tensor with batch stride 1 and a padded row stride) and read in place, so
a chain of sparse layers pays one transpose at its input and none between layers; anything else gets a batch-major
output (torch's own kernels are several times slower on feature-major operands: ``addmm`` into a 6-wide head, ReLU's
backward). Gradients go back in the layout each input came in.

Every other child runs as in ``nn.Sequential``. The plain per-layer path is taken whenever the fused one could differ:
under tracing, export or compilation, with forward hooks on a child (FLOPs counting, dormant-neuron measurement), while
a layer captures its dense gradient (RigL updates: the per-layer hook of ``SparseLayer`` computes it exactly), or for
inputs the kernels do not take (not 2-D, another device or dtype).

:func:`fuse_sequentials` swaps every ``nn.Sequential`` holding a sparse linear layer for a :class:`SparseSequential`
in place; the SB3 builders call it, so sparse policies use the fused path without any ``policy_kwargs``.
"""

from __future__ import annotations

from typing import Any

import torch as th
from torch import nn
from torch.nn.modules import module as _module

from sparse_rl.nn import backends
from sparse_rl.nn.backends import ops
from sparse_rl.nn.backends.traceable import _is_jit_tracing, _Tensor, compiler_state
from sparse_rl.nn.layers import SparseLayer, SparseLinear

__all__ = ["SparseSequential", "fuse_sequentials"]

_ACTS: dict[type[nn.Module], int] = {nn.ReLU: ops.ACTIVATIONS["relu"], nn.Tanh: ops.ACTIVATIONS["tanh"]}
_SPARSE, _MODULE = 0, 1


def _plan(modules: list[nn.Module]) -> tuple[tuple[int, nn.Module, int], ...]:
    """``(kind, module, act)`` steps: a sparse linear layer with the activation that follows it, or any other module."""
    steps: list[tuple[int, nn.Module, int]] = []
    i = 0
    while i < len(modules):
        module = modules[i]
        if type(module) is SparseLinear:
            act = _ACTS.get(type(modules[i + 1]), 0) if i + 1 < len(modules) else 0
            steps.append((_SPARSE, module, act))
            i += 2 if act else 1
        else:
            steps.append((_MODULE, module, 0))
            i += 1
    return tuple(steps)


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks)


class SparseSequential(nn.Sequential):
    """``nn.Sequential`` with a fused path for its sparse linear layers (see the module docstring).

    Built like ``nn.Sequential``; :func:`fuse_sequentials` turns existing ones into this class in place (it adds no
    state of its own). ``fused = False`` (on an instance or the class) turns the fused path off.
    """

    fused: bool = True

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = super().__getstate__()  # type: ignore[no-untyped-call]
        return {key: value for key, value in state.items() if key != "_steps_cache"}

    def _steps(self) -> tuple[tuple[int, nn.Module, int], ...]:
        modules = list(self._modules.values())
        key = tuple(map(id, modules))
        cached = self.__dict__.get("_steps_cache")
        if cached is None or cached[0] != key:
            cached = (key, _plan(modules))
            self.__dict__["_steps_cache"] = cached
        steps: tuple[tuple[int, nn.Module, int], ...] = cached[1]
        return steps

    def _plain(self, input: th.Tensor) -> th.Tensor:
        out: th.Tensor = super().forward(input)  # type: ignore[no-untyped-call]
        return out

    def forward(self, input: th.Tensor) -> th.Tensor:
        """The children in order; sparse linear layers (and the activation after each) fused when it is safe."""
        if (not self.fused or type(input) is not _Tensor or compiler_state._is_compiling_flag or _is_jit_tracing()
                or input.dim() != 2 or _module._global_forward_hooks or _module._global_forward_pre_hooks):
            return self._plain(input)
        modules = list(self._modules.values())
        for module in modules:  # every child: a hook on a fused activation (dormant neurons) must see its output
            if _hooked(module) or (isinstance(module, SparseLayer) and module.capture_dense_grad):
                return self._plain(input)
        steps = self._steps()
        x = input
        position = 0
        for i, (kind, module, act) in enumerate(steps):
            if kind == _SPARSE:  # feature-major output only for the next fused layer (torch's ops are slow on it)
                out_fm = i + 1 < len(steps) and steps[i + 1][0] == _SPARSE
                out = _fused_linear(module, x, act, out_fm)  # type: ignore[arg-type]
                if out is None:  # not on the CPU operators: the layer and its activation as in nn.Sequential
                    x = module(x)
                    if act:
                        x = modules[position + 1](x)
                else:
                    x = out
                position += 2 if act else 1
            else:
                x = module(x)
                position += 1
        return x


def _fused_linear(layer: SparseLinear, x: th.Tensor, act: int, out_fm: bool) -> th.Tensor | None:
    """``act(x W^T + b)`` through the CPU operators (feature-major output when ``out_fm``); None when they do not serve
    the call."""
    fast = layer._fast
    if fast is None or fast.version != layer.topology_version or fast.backend != layer.backend:
        if x.shape[0] == 0 or backends.resolve(layer.backend, layer) != "cpu":
            return None
        fast = backends.get("cpu").prepare(layer, x)  # type: ignore[attr-defined]
        if type(fast) is not ops.Topology:
            return None
    if x.dtype != fast.dtype or x.shape[0] == 0 or x.device.type != "cpu":
        return None
    params = layer._parameters
    values, bias = params["values"], params["bias"]
    assert values is not None
    if th.is_grad_enabled() and (x.requires_grad or values.requires_grad or (bias is not None and bias.requires_grad)):
        csc = fast.csc()
        y: th.Tensor = th.ops.sparse_rl.linear.default(x, values, bias, fast.indptr, fast.indices, fast.blocks,
                                                       csc.colptr, csc.rowidx, csc.perm, csc.cblocks, act, out_fm)
        return y
    out: th.Tensor = th.ops.sparse_rl.spmm.default(x, values, bias, fast.indptr, fast.indices, fast.blocks, act, out_fm)
    return out


def fuse_sequentials(module: nn.Module) -> int:
    """Make every ``nn.Sequential`` under ``module`` (itself included) that holds a :class:`SparseLinear` a
    :class:`SparseSequential`, in place: the objects stay the same (so do references to them elsewhere, such as SB3's
    ``critic.q_networks`` list), as do their children, parameters and state-dict keys; only ``forward`` changes.

    :param module: any module (an SB3 policy, actor, critic...)
    :return: the number of sequentials changed
    """
    changed = 0
    for child in module.modules():
        if type(child) is nn.Sequential and any(type(m) is SparseLinear for m in child.children()):
            child.__class__ = SparseSequential
            changed += 1
    return changed
