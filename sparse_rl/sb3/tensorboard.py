"""TensorBoard views of sparse training: ``sparsity/*`` scalars, mask-change images and the HPARAMS table.

- Scalars: global and per-network density, fraction of connections ever active, training and inference FLOPs
  relative to dense (with the update counters logged by :class:`~sparse_rl.sb3.TopologyCallback`).
- Images: at each topology update, one image per layer in four colours (as in the DST tutorial figures): newly
  pruned (red), newly grown (green), kept active (white), kept inactive (black); big layers are downsampled, a block
  taking the most notable state among its entries (grown, then pruned, then active), thin ones scaled up, the legend
  in the image's description (:mod:`sparse_rl.sb3.comparison`).
- Hyperparameters (algo, env, method, sparsity, distribution, seed) through SB3's ``HParam``, for dense runs too, so
  the HPARAMS tab is the dense-vs-sparse table.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import HParam

from sparse_rl.sb3.comparison import comparable_scalars, tensorboard_writer, write_mask_image
from sparse_rl.sb3.report import sparsity_report

TB_ONLY = ("stdout", "log", "json", "csv")
# inactive, active, pruned, grown
COLOURS = np.array([[0, 0, 0], [255, 255, 255], [220, 40, 40], [40, 200, 70]], dtype=np.uint8)
STATE_PRIORITY = np.array([0, 1, 2, 3])  # higher wins when a block is downsampled


def mask_change_image(old: th.Tensor, new: th.Tensor, max_side: int = 256) -> np.ndarray:
    """An ``[H, W, 3]`` uint8 picture of a mask change (rows = outputs, columns = inputs of the matrix view)."""
    old = old.reshape(old.shape[0], -1).cpu().numpy()
    new = new.reshape(new.shape[0], -1).cpu().numpy()
    state = np.where(old & new, 1, 0) + np.where(old & ~new, 2, 0) + np.where(~old & new, 3, 0)
    rows, cols = state.shape
    fy, fx = -(-rows // max_side), -(-cols // max_side)  # ceil division: block size
    if fy > 1 or fx > 1:
        padded = np.zeros((-(-rows // fy) * fy, -(-cols // fx) * fx), dtype=state.dtype)
        padded[:rows, :cols] = state
        blocks = padded.reshape(padded.shape[0] // fy, fy, padded.shape[1] // fx, fx)
        state = STATE_PRIORITY[blocks].max(axis=(1, 3))
    return COLOURS[state]


def network_of(layer_name: str) -> str:
    """The network a layer belongs to: ``actor``, ``critic``, ``q_net``, ``mlp_extractor.policy_net``, ..."""
    parts = layer_name.split(".")
    if parts[0] in ("mlp_extractor", "q_net") and len(parts) > 2:
        return ".".join(parts[:2]) if parts[0] == "mlp_extractor" else parts[0]
    return parts[0]


def network_densities(policy: Any) -> dict[str, float]:
    """Density of each network of the policy (every weight layer counted, dense ones included)."""
    totals: dict[str, list[int]] = {}
    for name, layer in sparsity_report(policy)["layers"].items():
        nnz_numel = totals.setdefault(network_of(name), [0, 0])
        nnz_numel[0] += layer["nnz"]
        nnz_numel[1] += layer["numel"]
    return {net: nnz / max(numel, 1) for net, (nnz, numel) in totals.items()}


class SparsityLog:
    """Keeps what the ``sparsity/*`` view needs across updates (the union of masks for "ever active")."""

    def __init__(self, layers: dict[str, Any]) -> None:
        self.layers = layers
        self.ever_active = {name: layer.mask.clone() for name, layer in layers.items()}

    def masks(self) -> dict[str, th.Tensor]:
        return {name: layer.mask for name, layer in self.layers.items()}

    def ever_active_fraction(self) -> float:
        """Fraction of the sparse layers' connections active at some point so far (Liu et al. 2021)."""
        for name, layer in self.layers.items():
            self.ever_active[name] |= layer.mask
        ever = sum(int(m.sum()) for m in self.ever_active.values())
        return ever / max(sum(m.numel() for m in self.ever_active.values()), 1)

    def record(self, logger: Any, model: Any, before: dict[str, th.Tensor] | None = None) -> None:
        """Record the scalars (and, given the masks ``before`` an update, one mask-change image per layer)."""
        for key, value in comparable_scalars(model, self.ever_active_fraction()).items():
            logger.record(key, value)
        for network, density in network_densities(model.policy).items():
            logger.record(f"sparsity/density_{network}", density)
        writer = tensorboard_writer(logger)
        if before is not None and writer is not None:
            for name, layer in self.layers.items():
                write_mask_image(writer, f"sparsity_masks/{name}", mask_change_image(before[name], layer.mask),
                                 int(model.num_timesteps))


class HParamsCallback(BaseCallback):
    """Logs the run's hyperparameters once, at the start of training, for TensorBoard's HPARAMS tab.

    :param hparams: e.g. ``dict(algo="sac", env="HalfCheetah-v4", method="rigl", sparsity=0.9, seed=0)``
    """

    def __init__(self, hparams: dict[str, Any]) -> None:
        super().__init__()
        self.hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}

    def _on_training_start(self) -> None:
        metrics = {"eval/mean_reward": 0.0, "rollout/ep_rew_mean": 0.0}
        self.logger.record("hparams", HParam(self.hparams, metrics), exclude=TB_ONLY)
        with warnings.catch_warnings():  # the text outputs get an empty dict here (HParams are TensorBoard-only)
            warnings.filterwarnings("ignore", message="Tried to write empty key-value dict")
            self.logger.dump(self.num_timesteps)

    def _on_step(self) -> bool:
        return True
