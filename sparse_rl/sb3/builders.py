"""Turning SB3 networks into sparse ones, and keeping target networks in step with them.

Sparse RL set-up of Graesser et al. 2022 ("The State of Sparse Training in Deep Reinforcement Learning", arXiv
2206.10369): every linear (and convolutional) layer of a network can be sparse, the nonzeros are spread over the layers
with ERK (Evci et al. 2020, "Rigging the Lottery", arXiv 1911.11134) and the weights are drawn at a scale that accounts
for the sparse fan-in.

Layer names are the module paths inside the policy (``actor.latent_pi.0``, ``critic.qf1.4``, ``q_net.q_net.0``,
``features_extractor.cnn.0``, ``mlp_extractor.policy_net.2``, ``action_net`` ...), as in ``policy.named_modules()``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch as th
from torch import nn

from sparse_rl.nn import backends
from sparse_rl.nn.fused import fuse_sequentials
from sparse_rl.nn.layers import SparseConv2d, SparseLayer, SparseLinear, random_mask
from sparse_rl.topology.distributions import DISTRIBUTIONS, check_sparsity, constant_fan_in_nnz, layer_nnz

#: Aliases accepted in ``dense_layers`` besides layer names (or name prefixes).
OUTPUT_ALIAS = "output"
INPUT_ALIAS = "input"
DEFAULT_DENSE_LAYERS: tuple[str, ...] = (OUTPUT_ALIAS,)
INIT_SCALES = ("sparse", "dense")
#: Sparsity of a ``Sparse*Policy`` built without ``sparsity``: the standard 90 % of Graesser et al. 2022.
DEFAULT_SPARSITY = 0.9
#: constant fan-in rounds each layer to whole fan-ins; a group whose sparsity then misses the requested one by more
#: than this is warned about (SAC [64, 64] at 0.9: 0.8966, not warned; at 0.99: 0.9704, warned)
FAN_IN_TOLERANCE = 0.005


def _optional_sparsity(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    try:
        return check_sparsity(value)
    except ValueError as error:
        raise ValueError(f"{what}: {error}") from None


@dataclass
class SparseConfig:
    """The sparsity options of a ``Sparse*Policy`` (its extra ``policy_kwargs``).

    :param sparsity: fraction of zero weights over the layers made sparse, in [0, 1); default 0.9 (the standard 90 %
        of Graesser et al. 2022); ``0`` (with no override) is the explicit dense baseline, SB3's own network
    :param actor_sparsity: override for the actor / policy network (SAC, TD3, PPO's ``pi`` side)
    :param critic_sparsity: override for the critics / q-network (SAC, TD3, DQN, PPO's ``vf`` side)
    :param distribution: how nonzeros are spread over layers: ``"erk"``, ``"uniform"`` or ``"er"``
    :param dense_layers: layers kept dense (outside the sparsity budget): module paths or prefixes of them, and the
        aliases ``"output"`` (the heads: actions, log-std, Q-values, state values) and ``"input"`` (the first layer
        that reads the observation). ``None`` means ``("output",)``; ``()`` makes every layer sparse.
    :param backend: sparse kernel backend of the layers (``"auto"`` or a name from :mod:`sparse_rl.nn.backends`)
    :param constant_fan_in: every output neuron gets the same number of inputs (needed by ``method="srigl"``)
    :param start_dense: build the sparse layers fully connected and reach ``sparsity`` by pruning (``method="gmp"``)
    :param init_scale: ``"sparse"`` scales initial weights by the sparse fan-in (Graesser et al.), ``"dense"`` not
    """

    sparsity: float = DEFAULT_SPARSITY
    actor_sparsity: float | None = None
    critic_sparsity: float | None = None
    distribution: str = "erk"
    dense_layers: Sequence[str] | None = None
    backend: str = "auto"
    constant_fan_in: bool = False
    start_dense: bool = False
    init_scale: str = "sparse"
    #: final sparsity of every sparse layer (equal to its current sparsity unless ``start_dense``)
    target_sparsity: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    #: every candidate layer name and sparsity group seen while building (for validating ``dense_layers`` and the
    #: per-network overrides)
    seen_layers: set[str] = field(default_factory=set, init=False, repr=False)
    seen_groups: set[str] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self.sparsity = _optional_sparsity(self.sparsity, "sparsity")  # type: ignore[assignment]
        self.actor_sparsity = _optional_sparsity(self.actor_sparsity, "actor_sparsity")
        self.critic_sparsity = _optional_sparsity(self.critic_sparsity, "critic_sparsity")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {self.distribution!r}; choose one of {list(DISTRIBUTIONS)}")
        backends.check_name(self.backend)
        for name in ("constant_fan_in", "start_dense"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.init_scale not in INIT_SCALES:
            raise ValueError(f"init_scale must be one of {list(INIT_SCALES)}, got {self.init_scale!r}")
        if self.dense_layers is None:
            self.dense_layers = DEFAULT_DENSE_LAYERS
        elif isinstance(self.dense_layers, str):
            self.dense_layers = (self.dense_layers,)
        else:
            self.dense_layers = tuple(self.dense_layers)
        if not all(isinstance(name, str) for name in self.dense_layers):
            raise ValueError(f"dense_layers must be a list of layer names, got {self.dense_layers!r}")

    def kwargs(self) -> dict[str, Any]:
        """The constructor arguments (what ``_get_constructor_parameters`` must save)."""
        return dict(
            sparsity=self.sparsity, actor_sparsity=self.actor_sparsity, critic_sparsity=self.critic_sparsity,
            distribution=self.distribution, dense_layers=tuple(self.dense_layers or ()), backend=self.backend,
            constant_fan_in=self.constant_fan_in, start_dense=self.start_dense, init_scale=self.init_scale,
        )

    def group_sparsity(self, group: str) -> float:
        """Sparsity of a group of layers: ``"actor"``, ``"critic"`` or ``"shared"``."""
        override = {"actor": self.actor_sparsity, "critic": self.critic_sparsity}.get(group)
        return float(self.sparsity if override is None else override)

    def check_matched(self) -> None:
        """Raise if a ``dense_layers`` entry matched no layer of the policy, or a per-network override
        (``actor_sparsity``, ``critic_sparsity``) no network of it (DQN's q-network is a critic: it has no actor)."""
        for group in ("actor", "critic"):
            value = getattr(self, f"{group}_sparsity")
            if value is not None and group not in self.seen_groups:
                raise ValueError(f"{group}_sparsity={value}: this policy has no {group} network (its layers: "
                                 f"{sorted(self.seen_groups)}); use sparsity, or "
                                 f"{', '.join(f'{g}_sparsity' for g in sorted(self.seen_groups) if g != 'shared')}")
        aliases = {OUTPUT_ALIAS, INPUT_ALIAS}
        unknown = [
            n for n in self.dense_layers or () if n not in aliases and not any(_matches(n, s) for s in self.seen_layers)
        ]
        if unknown:
            raise ValueError(
                f"dense_layers {unknown} match no layer of this policy; use 'input', 'output' or names (or prefixes) "
                f"among {sorted(self.seen_layers)}"
            )


def _matches(pattern: str, name: str) -> bool:
    return name == pattern or name.startswith(pattern + ".")


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else (prefix or name)


def is_candidate(module: nn.Module) -> bool:
    """A dense layer that can be made sparse (``nn.Linear`` or a zero-padded ``nn.Conv2d``)."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.padding_mode == "zeros" and not isinstance(module.padding, str)


def _linear_names(module: nn.Module, prefix: str) -> list[str]:
    return [join(prefix, name) for name, child in module.named_modules() if is_candidate(child)]


def head_and_input_names(net: nn.Module, prefix: str = "") -> tuple[set[str], set[str]]:
    """Names of the output heads and of the input layers of an SB3 network.

    Heads: direct ``nn.Linear`` children (``mu``, ``log_std``, ``action_net``, ``value_net``) and the last linear layer
    of every ``nn.Sequential`` child except SAC's ``latent_pi`` (TD3's ``mu``, the critics' ``qf*``, DQN's ``q_net``).
    Inputs: the first layer of the features extractor(s) when they have layers, else the first linear layer of each
    MLP that reads the features.
    """
    heads: set[str] = set()
    mlps: list[str] = []
    extractors: list[str] = []
    for name, child in net.named_children():
        if name.endswith("features_extractor"):
            extractors.append(name)
        elif isinstance(child, nn.Linear):
            heads.add(join(prefix, name))
        elif isinstance(child, nn.Sequential):
            names = _linear_names(child, join(prefix, name))
            if names and name != "latent_pi":  # SAC's latent_pi ends with an activation, not a head
                heads.add(names[-1])
            mlps.append(join(prefix, name))
        elif name == "mlp_extractor":
            mlps += [join(prefix, f"{name}.policy_net"), join(prefix, f"{name}.value_net")]
    inputs: set[str] = set()
    for name in extractors:
        names = _linear_names(getattr(net, name), join(prefix, name))
        if names:
            inputs.add(names[0])
    if not inputs:
        for path in mlps:
            relative = path[len(prefix) + 1:] if prefix else path
            names = _linear_names(net.get_submodule(relative), path)
            if names:
                inputs.add(names[0])
    return heads, inputs


def _is_dense(name: str, config: SparseConfig, heads: set[str], inputs: set[str]) -> bool:
    for pattern in config.dense_layers or ():
        if (pattern == OUTPUT_ALIAS and name in heads) or (pattern == INPUT_ALIAS and name in inputs):
            return True
        if _matches(pattern, name):
            return True
    return False


def _weight_shape(module: nn.Module) -> tuple[int, ...]:
    return tuple(module.weight.shape)


def _make_sparse(module: nn.Module, mask: th.Tensor, init_scale: str = "sparse", backend: str = "auto") -> SparseLayer:
    weight = module.weight
    common = dict(bias=module.bias is not None, mask=mask, init_scale=init_scale, backend=backend,
                  device=weight.device, dtype=weight.dtype)
    if isinstance(module, nn.Linear):
        return SparseLinear(module.in_features, module.out_features, **common)
    return SparseConv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                        module.dilation, module.groups, **common)


def sparsify(
    net: nn.Module, prefix: str, config: SparseConfig, group_of: Any = None, heads: set[str] | None = None,
    inputs: set[str] | None = None,
) -> dict[str, SparseLayer]:
    """Replace the candidate layers of ``net`` by sparse layers, in place, and return them by policy-level name.

    Nonzeros are spread with ``config.distribution`` over the layers of each sparsity group; layers that are already
    sparse (a shared features extractor) are left alone.

    :param net: the network (an SB3 actor, critic, q-network, or a whole actor-critic policy)
    :param prefix: the network's attribute name in the policy (``""`` for the policy itself)
    :param group_of: function from (layer name, layer) to ``"actor"``, ``"critic"`` or ``"shared"``
    :param heads: names of the output heads (default: found by :func:`head_and_input_names`)
    :param inputs: names of the input layers (default: found by :func:`head_and_input_names`)
    """
    if heads is None or inputs is None:
        found_heads, found_inputs = head_and_input_names(net, prefix)
        heads = found_heads if heads is None else heads
        inputs = found_inputs if inputs is None else inputs
    candidates = {join(prefix, name): module for name, module in net.named_modules() if is_candidate(module)}
    config.seen_layers.update(candidates)
    groups: dict[float, dict[str, nn.Module]] = {}
    for name, module in candidates.items():
        group = group_of(name, module) if group_of else "shared"
        config.seen_groups.add(group)
        if _is_dense(name, config, heads, inputs):
            continue
        sparsity = config.group_sparsity(group)
        if sparsity > 0:
            groups.setdefault(sparsity, {})[name] = module
    built: dict[str, SparseLayer] = {}
    for sparsity, layers in groups.items():
        shapes = {name: _weight_shape(module) for name, module in layers.items()}
        nnz = layer_nnz(shapes, sparsity, config.distribution)
        if config.constant_fan_in:
            budget, nnz = sum(nnz.values()), constant_fan_in_nnz(shapes, nnz)
            numel = sum(math.prod(shape) for shape in shapes.values())
            achieved = 1 - sum(nnz.values()) / numel
            if abs(achieved - sparsity) > FAN_IN_TOLERANCE:
                warnings.warn(f"constant_fan_in: the {len(shapes)} layers at sparsity {sparsity:g} hold "
                              f"{sum(nnz.values()):,} weights for a budget of {budget:,} (whole fan-ins per row): "
                              f"sparsity {achieved:.4f}", stacklevel=2)
        for name, module in layers.items():
            rows, cols = shapes[name][0], math.prod(shapes[name][1:])
            config.target_sparsity[name] = 1.0 - nnz[name] / (rows * cols)
            count = rows * cols if config.start_dense else nnz[name]
            mask = random_mask(rows, cols, count, config.constant_fan_in and not config.start_dense)
            layer = _make_sparse(module, mask.view(shapes[name]), config.init_scale, config.backend)
            _replace(net, name[len(prefix) + 1:] if prefix else name, layer)
            built[name] = layer
    fuse_sequentials(net)  # sparse MLPs run fused (feature-major, bias and activation in the kernel); same modules
    return built


def _replace(net: nn.Module, name: str, layer: nn.Module) -> None:
    parent_name, _, child_name = name.rpartition(".")
    setattr(net.get_submodule(parent_name) if parent_name else net, child_name, layer)


def sparse_layout(net: nn.Module, skip: Sequence[str] = ("features_extractor",)) -> dict[str, int]:
    """The nnz of each sparse layer of ``net`` by name, leaving out the modules under the ``skip`` prefixes.

    With :func:`rebuild_sparse_layers` this is how a sub-network saved alone (``model.actor.save``) is rebuilt sparse.
    """
    return {
        name: module.nnz for name, module in net.named_modules()
        if isinstance(module, SparseLayer) and not any(_matches(prefix, name) for prefix in skip)
    }


def rebuild_sparse_layers(net: nn.Module, layout: dict[str, int], init_scale: str = "sparse", backend: str = "auto") -> None:
    """Replace the named dense layers of ``net`` by sparse layers with ``layout[name]`` random nonzeros, in place.

    The masks are placeholders drawn from a fixed local generator (the global RNG is left alone): loading the saved
    state dict afterwards (``load_state_dict``) restores the saved topology.

    :param net: a freshly built dense network (an SB3 actor, critic or q-network)
    :param layout: nnz by layer name, as returned by :func:`sparse_layout`
    """
    generator = th.Generator().manual_seed(0)
    for name, nnz in layout.items():
        module = net.get_submodule(name)
        if isinstance(module, SparseLayer):
            continue
        if not is_candidate(module):
            raise ValueError(f"{name!r} is a {type(module).__name__}, not a linear or convolutional layer: the saved "
                             "sparse layout does not match this network (check net_arch)")
        shape = _weight_shape(module)
        mask = random_mask(shape[0], math.prod(shape[1:]), int(nnz), False, generator)
        _replace(net, name, _make_sparse(module, mask.view(shape), init_scale, backend))
    fuse_sequentials(net)


def sparse_orthogonal_(layer: SparseLayer, gain: float = 1.0, init_scale: str = "sparse") -> None:
    """Orthogonal-like init of a sparse layer: an orthogonal matrix restricted to the mask; with ``init_scale="sparse"``
    each row is rescaled by ``1 / sqrt(row density)`` so that its norm matches the dense orthogonal init (``"dense"``:
    not rescaled, the dense matrix's entries kept); the bias is zeroed."""
    if init_scale not in INIT_SCALES:
        raise ValueError(f"init_scale must be one of {list(INIT_SCALES)}, got {init_scale!r}")
    rows, cols = layer.matrix_shape
    with th.no_grad():
        weight = th.empty(rows, cols, device=layer.values.device, dtype=layer.values.dtype)
        nn.init.orthogonal_(weight, gain=gain)
        mask = layer.mask.reshape(rows, cols)
        if init_scale == "sparse":
            row_density = mask.sum(dim=1).clamp(min=1).to(weight.dtype) / cols
            weight = weight / row_density.sqrt().unsqueeze(1)
        layer.values.copy_(weight[mask])
        if getattr(layer, "bias", None) is not None:
            layer.bias.zero_()


# ------------------------------------------------------------------------------------------------ policy-wide views
def is_target_name(name: str) -> bool:
    return name.split(".", 1)[0].endswith("_target")


def sparse_layers(policy: nn.Module) -> dict[str, SparseLayer]:
    """The trained sparse layers of a policy by name (target networks excluded, shared modules listed once)."""
    return {
        name: module for name, module in policy.named_modules()
        if isinstance(module, SparseLayer) and not is_target_name(name)
    }


def target_networks(policy: nn.Module) -> Iterable[tuple[nn.Module, nn.Module]]:
    """(online, target) networks of the policy: ``critic`` and ``critic_target``, ``q_net`` and ``q_net_target``..."""
    for attr, target in policy.named_children():
        online = getattr(policy, attr[: -len("_target")], None) if attr.endswith("_target") else None
        if online is not None:
            yield online, target


def target_pairs(policy: nn.Module) -> Iterable[tuple[SparseLayer, SparseLayer]]:
    """(online, target) sparse layer pairs for every ``*_target`` network of the policy."""
    for online, target in target_networks(policy):
        for name, layer in target.named_modules():
            if isinstance(layer, SparseLayer):
                yield online.get_submodule(name), layer


def same_topology(a: SparseLayer, b: SparseLayer) -> bool:
    return a.nnz == b.nnz and th.equal(a.indptr, b.indptr) and th.equal(a.indices, b.indices)


def sync_targets(policy: nn.Module) -> int:
    """Give every target layer its online layer's mask; kept target weights keep their (Polyak-averaged) values,
    new connections take the online network's value (0 for connections grown by a topology update; the loaded value
    when the online network was loaded alone), and pruned weights are not stored (so they are 0).

    :return: number of target layers changed
    """
    changed = 0
    for online, target in target_pairs(policy):
        if same_topology(online, target):
            continue
        with th.no_grad():
            old = target.dense_weight().detach().reshape(-1).clone()
            had = target.mask.reshape(-1).clone()
            target.copy_topology_from(online)
            positions = target.flat_indices()
            fresh = online.dense_weight().detach().reshape(-1)[positions]
            target.values.copy_(th.where(had[positions], old[positions], fresh))
        changed += 1
    return changed


def find_optimizers(model: Any) -> list[th.optim.Optimizer]:
    """Every optimizer of an SB3 algorithm: ``policy.optimizer``, ``actor.optimizer``, ``critic.optimizer``,
    ``ent_coef_optimizer`` ... (deduplicated)."""
    policy = getattr(model, "policy", model)
    found: dict[int, th.optim.Optimizer] = {}
    for module in policy.modules():
        optimizer = module.__dict__.get("optimizer")
        if isinstance(optimizer, th.optim.Optimizer):
            found[id(optimizer)] = optimizer
    if policy is not model:
        for value in vars(model).values():
            if isinstance(value, th.optim.Optimizer):
                found[id(value)] = value
    return list(found.values())
