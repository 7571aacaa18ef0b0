"""Safe export of a trained sparse agent: safetensors tensors + a JSON config, loaded without unpickling anything.

:func:`export_run` (``python -m sparse_rl.export RUN_DIR -o OUT_DIR``) writes ``OUT_DIR/policy.safetensors`` (per
layer: CSR ``values``, ``indices`` and ``indptr``, or a dense ``weight``, and ``bias``) and ``OUT_DIR/policy.json``
(the acting path as a list of ops, observation preprocessing, action post-processing). Column indices are stored as
``uint8`` when a layer has at most 256 inputs, else ``int16``/``int32``. ``sparse_rl.load_exported(OUT_DIR)``
rebuilds an acting policy from :class:`~sparse_rl.nn.SparseLinear` / ``SparseConv2d`` layers, so acting runs on the
sparse kernels.

Supported: SAC and TD3 actors (deterministic action), DQN q-networks (greedy action) and PPO policies (mean or
most likely action), with MLP, NatureCNN or MinAtar features and VecNormalize observation statistics.

``fmt="onnx"`` writes ``OUT_DIR/policy.onnx`` instead: raw observations (batch-first, as the environment gives
them) in, the actions of ``model.predict(obs, deterministic=True)`` out, with VecNormalize, the image transpose and
scaling inside the graph (see :mod:`sparse_rl.sb3.onnx_export`; needs ``pip install "sparse_rl[onnx]"``).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from torch import nn

from sparse_rl.harness.checks import error_line
from sparse_rl.nn.layers import SparseConv2d, SparseLayer, SparseLinear

FORMAT_VERSION = 1
FORMATS = ("safetensors", "onnx")


class ChannelsFirst(nn.Module):
    """``[B, H, W, C] -> [B, C, H, W]``: the MinAtar network's first op (its frames come channels last)."""

    def forward(self, x: th.Tensor) -> th.Tensor:
        return x.permute(0, 3, 1, 2)


ACTIVATIONS = {"ReLU": nn.ReLU, "Tanh": nn.Tanh, "ELU": nn.ELU, "LeakyReLU": nn.LeakyReLU, "Sigmoid": nn.Sigmoid,
               "SiLU": nn.SiLU, "GELU": nn.GELU, "Flatten": nn.Flatten, "Identity": nn.Identity,
               "ChannelsFirst": ChannelsFirst}


def _narrow_indices(indices: th.Tensor, n_cols: int) -> th.Tensor:
    return indices.to(th.uint8) if n_cols <= 256 else indices


def _flatten_modules(module: nn.Module) -> list[nn.Module]:
    """The leaf ops of a feed-forward module, in call order (Sequential containers, NatureCNN and the MinAtar network
    are unrolled)."""
    if isinstance(module, (nn.Linear, nn.Conv2d, SparseLayer)) or type(module).__name__ in ACTIVATIONS:
        return [module]
    if type(module).__name__ == "FlattenExtractor":
        return [nn.Flatten()]
    if type(module).__name__ == "NatureCNN":
        return _flatten_modules(module.cnn) + _flatten_modules(module.linear)
    if type(module).__name__ == "MinAtarCNN":
        return [ChannelsFirst(), *_flatten_modules(module.cnn), *_flatten_modules(module.linear)]
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in _flatten_modules(child)]
    raise ValueError(f"cannot export a {type(module).__name__} layer: only feed-forward MLP/CNN policies are supported")


def _acting_path(model: Any) -> tuple[list[nn.Module], str]:
    """The modules from observation to action output, and how the output becomes an action."""
    policy, name = model.policy, type(model).__name__
    if name == "SAC":
        actor = policy.actor
        return _flatten_modules(actor.features_extractor) + _flatten_modules(actor.latent_pi) + [actor.mu], "tanh_unscale"
    if name == "TD3":
        actor = policy.actor
        return _flatten_modules(actor.features_extractor) + _flatten_modules(actor.mu), "unscale"
    if name == "DQN":
        q_net = policy.q_net
        return _flatten_modules(q_net.features_extractor) + _flatten_modules(q_net.q_net), "argmax"
    if name in ("PPO", "A2C"):
        extractor = policy.pi_features_extractor if not policy.share_features_extractor else policy.features_extractor
        ops = _flatten_modules(extractor) + _flatten_modules(policy.mlp_extractor.policy_net) + [policy.action_net]
        discrete = hasattr(model.action_space, "n")
        return ops, "argmax" if discrete else "clip"
    raise ValueError(f"cannot export a {name} agent: supported algorithms are SAC, TD3, DQN, PPO and A2C")


def export_policy(model: Any, out_dir: str | Path, obs_rms: Any = None, clip_obs: float = 10.0, epsilon: float = 1e-8) -> Path:
    """Write ``policy.safetensors`` and ``policy.json`` for ``model`` (an SB3 algorithm) into ``out_dir``."""
    from safetensors.torch import save_file
    from stable_baselines3.common.preprocessing import is_image_space

    modules, output = _acting_path(model)  # an unsupported agent is refused before the folder exists
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, th.Tensor] = {}
    ops: list[dict[str, Any]] = []
    for i, module in enumerate(modules):
        key = f"layer{i}"
        if isinstance(module, SparseLayer):
            op = {"type": "sparse_conv2d" if isinstance(module, SparseConv2d) else "sparse_linear",
                  "weight_shape": list(module.weight_shape)}
            tensors[f"{key}.values"] = module.values.detach().float().cpu()
            tensors[f"{key}.indices"] = _narrow_indices(module.indices.cpu(), module.matrix_shape[1])
            tensors[f"{key}.indptr"] = module.indptr.cpu()
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            op = {"type": "conv2d" if isinstance(module, nn.Conv2d) else "linear", "weight_shape": list(module.weight.shape)}
            tensors[f"{key}.weight"] = module.weight.detach().float().cpu()
        else:
            ops.append({"type": type(module).__name__})
            continue
        if isinstance(module, (nn.Conv2d, SparseConv2d)):
            op.update(stride=list(module.stride), padding=list(module.padding), dilation=list(module.dilation),
                      groups=module.groups)
        if module.bias is not None:
            tensors[f"{key}.bias"] = module.bias.detach().float().cpu()
        ops.append({**op, "key": key, "bias": module.bias is not None})
    space = model.observation_space
    image = is_image_space(space, check_channels=False)
    config: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "algo": type(model).__name__, "ops": ops, "output": output,
        "observation_shape": list(space.shape), "scale_images": bool(image and model.policy.normalize_images),
        "action_low": model.action_space.low.tolist() if hasattr(model.action_space, "low") else None,
        "action_high": model.action_space.high.tolist() if hasattr(model.action_space, "high") else None,
    }
    if obs_rms is not None:
        tensors["obs_mean"] = th.as_tensor(obs_rms.mean, dtype=th.float32)
        tensors["obs_var"] = th.as_tensor(obs_rms.var, dtype=th.float32)
        config["obs_normalization"] = {"clip_obs": clip_obs, "epsilon": epsilon}
    save_file(tensors, str(out_dir / "policy.safetensors"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out_dir / "policy.safetensors", 0o666 & ~umask)  # safetensors writes 0600; match the other files
    # damaged weights or settings are found, not acted on
    config["tensors_sha256"] = hashlib.sha256((out_dir / "policy.safetensors").read_bytes()).hexdigest()
    config["config_sha256"] = _config_sha256(config)
    (out_dir / "policy.json").write_text(json.dumps(config, indent=2))
    return out_dir


def _config_sha256(config: dict[str, Any]) -> str:
    """SHA-256 of ``policy.json``'s settings (its own hash left out), in a canonical JSON form."""
    settings = {k: v for k, v in config.items() if k != "config_sha256"}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _sparse_layer(op: dict[str, Any], tensors: dict[str, th.Tensor], backend: str) -> SparseLayer:
    key, shape = op["key"], op["weight_shape"]
    indptr, indices = tensors[f"{key}.indptr"].long(), tensors[f"{key}.indices"].long()
    rows = len(indptr) - 1
    cols = int(np.prod(shape[1:]))
    nnz = len(tensors[f"{key}.values"])
    if (rows != shape[0] or int(indptr[0]) != 0 or int(indptr[-1]) != nnz or len(indices) != nnz
            or bool((indptr[1:] < indptr[:-1]).any()) or (nnz and not 0 <= int(indices.min()) <= int(indices.max()) < cols)):
        raise ValueError(f"{key} is not a valid {shape[0]}x{cols} CSR matrix")
    mask = th.zeros(rows, cols, dtype=th.bool)
    mask[th.repeat_interleave(th.arange(rows), indptr[1:] - indptr[:-1]), indices] = True
    if op["type"] == "sparse_linear":
        layer: SparseLayer = SparseLinear(shape[1], shape[0], op["bias"], mask=mask, backend=backend)
    else:
        layer = SparseConv2d(shape[1] * op["groups"], shape[0], tuple(shape[2:]), tuple(op["stride"]), tuple(op["padding"]),
                             tuple(op["dilation"]), op["groups"], op["bias"], mask=mask, backend=backend)
    with th.no_grad():
        layer.values.copy_(tensors[f"{key}.values"])
    return _with_bias(layer, op, tensors)


def _with_bias(layer: nn.Module, op: dict[str, Any], tensors: dict[str, th.Tensor]) -> nn.Module:
    if op["bias"]:
        with th.no_grad():
            layer.bias.copy_(tensors[f"{op['key']}.bias"])
    return layer


def _dense_layer(op: dict[str, Any], tensors: dict[str, th.Tensor]) -> nn.Module:
    key, shape = op["key"], op["weight_shape"]
    if op["type"] == "linear":
        layer: nn.Module = nn.Linear(shape[1], shape[0], bias=op["bias"])
    else:
        layer = nn.Conv2d(shape[1] * op["groups"], shape[0], tuple(shape[2:]), tuple(op["stride"]), tuple(op["padding"]),
                          tuple(op["dilation"]), op["groups"], bias=op["bias"])
    with th.no_grad():
        layer.weight.copy_(tensors[f"{key}.weight"])
    return _with_bias(layer, op, tensors)


class ExportedPolicy(nn.Module):
    """An acting policy rebuilt from an export: ``predict(obs, deterministic=True) -> (action, None)`` like SB3's."""

    def __init__(self, config: dict[str, Any], tensors: dict[str, th.Tensor], backend: str = "auto") -> None:
        super().__init__()
        self.config = config
        layers = []
        for op in config["ops"]:
            if op["type"].startswith("sparse_"):
                layers.append(_sparse_layer(op, tensors, backend))
            elif op["type"] in ("linear", "conv2d"):
                layers.append(_dense_layer(op, tensors))
            elif op["type"] in ACTIVATIONS:
                layers.append(ACTIVATIONS[op["type"]]())
            else:
                raise ValueError(f"unknown op {op['type']!r} in policy.json (format version {config['format_version']})")
        self.net = nn.Sequential(*layers)
        self.obs_mean = tensors.get("obs_mean")
        self.obs_var = tensors.get("obs_var")

    def forward(self, obs: th.Tensor) -> th.Tensor:
        """The network alone on observations already preprocessed (normalised, channels first, scaled): Q-values,
        logits or the pre-squash mean, not actions; act with :meth:`predict`, which preprocesses and maps to actions."""
        return self.net(obs)

    def _preprocess(self, obs: np.ndarray) -> tuple[th.Tensor, bool]:
        """Observation(s) as the network reads them: normalised, channels first, scaled; and whether it was one."""
        obs = np.asarray(obs)
        shape = tuple(self.config["observation_shape"])
        channels_last = len(shape) == 3 and obs.shape[-3:] == (shape[1], shape[2], shape[0]) and obs.shape[-3:] != shape
        if obs.ndim not in (len(shape), len(shape) + 1) or (obs.shape[-len(shape):] != shape and not channels_last):
            raise ValueError(f"observation of shape {obs.shape}: this policy reads {shape} (or a batch of them, "
                             f"(n, {', '.join(map(str, shape))}))")
        single = obs.ndim == len(shape)
        if single:
            obs = obs[None]
        if self.obs_mean is not None:
            norm = self.config["obs_normalization"]
            obs = np.clip((obs - self.obs_mean.numpy()) / np.sqrt(self.obs_var.numpy() + norm["epsilon"]),
                          -norm["clip_obs"], norm["clip_obs"])
        x = th.as_tensor(obs, dtype=th.float32)
        if channels_last:  # images as the env gives them (HWC), the policy reads CHW (as SB3's VecTransposeImage)
            x = x.permute(0, 3, 1, 2)
        if self.config["scale_images"]:
            x = x / 255.0
        return x, single

    def predict(self, observation: np.ndarray, deterministic: bool = True, **_: Any) -> tuple[np.ndarray, None]:
        """The greedy / deterministic action for one observation or a batch (stochastic acting is not exported).

        :raises ValueError: for ``deterministic=False``, which the export cannot honour (it used to act
            deterministically without a word)
        """
        if not deterministic:
            raise ValueError("deterministic=False: an export holds the deterministic policy only (greedy or mean "
                             "action); sample stochastic actions with the SB3 model (Algo.load on the agent's zip)")
        x, single = self._preprocess(observation)
        with th.no_grad():
            out = self.net(x)
        kind = self.config["output"]
        if kind == "argmax":
            action = out.argmax(dim=1).numpy()
        else:
            a = th.tanh(out) if kind == "tanh_unscale" else out
            low, high = np.asarray(self.config["action_low"]), np.asarray(self.config["action_high"])
            action = a.numpy()
            action = np.clip(action, low, high) if kind == "clip" else low + 0.5 * (action + 1.0) * (high - low)
            action = action.astype(np.float32)
        return (action[0] if single else action), None


def load_exported(path: str | Path, backend: str = "auto") -> ExportedPolicy:
    """Load an export written by :func:`export_policy` (no pickle: safetensors + JSON only).

    :raises ValueError: (one line) a folder without the two files, unreadable or truncated files, weights whose SHA-256
        differs from the one ``policy.json`` records, or tensors that do not fit ``policy.json`` (e.g. CSR indices out
        of range); an export without a recorded SHA-256 (written before it was) loads with a warning
    """
    from safetensors.torch import load

    path = Path(path)
    if not (path / "policy.json").is_file() or not (path / "policy.safetensors").is_file():
        raise ValueError(f"{path} is not an export folder: it needs policy.json and policy.safetensors")
    try:
        config = json.loads((path / "policy.json").read_text())
        data = (path / "policy.safetensors").read_bytes()
        tensors = load(data)
    except Exception as error:  # truncated / corrupted files: one line
        first = error_line(error)
        raise ValueError(f"the export in {path} cannot be read ({type(error).__name__}: {first}): the files are damaged; "
                         "export the run again") from None
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"export format version {config.get('format_version')} is not supported (expected {FORMAT_VERSION})")
    expected = config.get("tensors_sha256")
    if expected is None:
        warnings.warn(f"{path / 'policy.json'} has no tensors_sha256 (an export written before it was recorded): "
                      "damaged weights cannot be told from trained ones; export the run again", stacklevel=2)
    elif hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(f"{path / 'policy.safetensors'} does not match the SHA-256 in policy.json: the file is damaged or "
                         "was changed; export the run again")
    if "config_sha256" in config and _config_sha256(config) != config["config_sha256"]:
        raise ValueError(f"{path / 'policy.json'}'s settings do not match its config_sha256: the file is damaged or was "
                         "changed; export the run again")
    try:
        return ExportedPolicy(config, tensors, backend).eval()
    except KeyError as error:
        raise ValueError(f"the export in {path} lacks the tensor {error}: the files are damaged; export again") from None
    except (ValueError, IndexError, RuntimeError) as error:  # shapes or CSR structure that do not fit policy.json
        first = error_line(error)
        raise ValueError(f"the export in {path} is inconsistent ({type(error).__name__}: {first}): the files are damaged; "
                         "export again") from None


def export_run(run_dir: str | Path, out_dir: str | Path, best: bool = False, fmt: str = "safetensors") -> Path:
    """Export the model of a run folder (with its VecNormalize statistics when the run used them).

    :param run_dir: a run folder written by ``python -m sparse_rl.train``
    :param out_dir: the export folder
    :param best: export ``best_model.zip`` instead of the final model
    :param fmt: ``"safetensors"`` (``policy.safetensors`` + ``policy.json``) or ``"onnx"`` (``policy.onnx``)
    :return: the export folder
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {list(FORMATS)}")
    from sparse_rl.harness.runs import RunFolder, load_agent

    run_dir = Path(run_dir)
    model, run, _ = load_agent(run_dir, best)
    stats = RunFolder(run_dir, run.env).statistics_path(best)
    obs_rms, clip_obs, epsilon = None, 10.0, 1e-8
    if stats.is_file():
        import pickle

        with open(stats, "rb") as f:  # our own run's statistics: the export itself never unpickles
            vec_normalize = pickle.load(f)
        if vec_normalize.norm_obs:
            obs_rms, clip_obs, epsilon = vec_normalize.obs_rms, vec_normalize.clip_obs, vec_normalize.epsilon
    if fmt == "onnx":
        from sparse_rl.sb3.onnx_export import export_onnx

        export_onnx(model, Path(out_dir) / "policy.onnx", obs_rms, clip_obs, epsilon)
        return Path(out_dir)
    return export_policy(model, out_dir, obs_rms, clip_obs, epsilon)
