"""Dense vs sparse in TensorBoard, readable at a glance: the same scalars in every run, a custom-scalars layout, and
mask images a person can see.

- :class:`ComparisonCallback` logs, for dense and sparse runs alike, at every point of the evaluation grid: density,
  stored weights (``sparsity/nnz``) and trained parameters (``sparsity/params``, target copies left out), training
  and inference multiply-adds relative to dense, the fraction of connections ever active (in-time
  over-parameterisation, Liu et al. 2021, arXiv 2102.02887: 1.0 for a dense run), a histogram of the stored
  weights' magnitudes and the training speed since the last record (``time/steps_per_second``, evaluations
  excluded). Dormant neurons come from
  :class:`~sparse_rl.sb3.dormant.DormantNeuronCallback` on the same grid.
- :data:`LAYOUT`, written into each run's event file: a "dense vs sparse" section (evaluation return, training FLOPs vs
  dense, density, dormant fraction, steps per second), one chart each, every run a line.
- :func:`write_mask_image`: mask-change images with thin layers scaled up (whole pixels per weight, the aspect kept)
  and the colour legend in the image's description.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import TensorBoardOutputFormat

from sparse_rl.nn.base import SparseLayer
from sparse_rl.sb3.flops import policy_flops_for_space
from sparse_rl.sb3.report import sparsity_report

#: the custom-scalars section (TensorBoard's "Custom Scalars" tab): title -> regular expressions of tags
LAYOUT = {
    "dense vs sparse": {
        "evaluation return": [r"eval/mean_reward"],
        "training FLOPs vs dense": [r"sparsity/training_flops_vs_dense"],
        "density": [r"sparsity/density$"],
        "dormant fraction (tau 0.1)": [r"dormant/.*_tau0\.1$"],
        "dormant fraction (tau 0)": [r"dormant/.*_tau0$"],
        "steps per second": [r"time/steps_per_second"],
    }
}
LEGEND = ("Rows are output units, columns are inputs (the weight matrix). White: kept active; black: inactive; red: "
          "newly pruned; green: newly grown. Large layers are shown in blocks (a block takes its most notable state), "
          "thin ones scaled up by a whole factor.")
MIN_VISIBLE = 32  # pixels on the short side of a mask image, at least
MAX_SIDE = 2048


def tensorboard_writer(logger: Any) -> Any:
    """The ``SummaryWriter`` of an SB3 logger's TensorBoard output, or ``None`` when the run does not log to it."""
    for output in getattr(logger, "output_formats", []):
        if isinstance(output, TensorBoardOutputFormat):
            return output.writer
    return None


def readable(image: np.ndarray) -> tuple[np.ndarray, int]:
    """``image`` scaled by a whole factor so that its short side has at least :data:`MIN_VISIBLE` pixels (the long
    side at most :data:`MAX_SIDE`); returns the image and the factor."""
    short, long = min(image.shape[:2]), max(image.shape[:2])
    factor = max(1, min(math.ceil(MIN_VISIBLE / max(short, 1)), MAX_SIDE // max(long, 1)))
    if factor > 1:
        image = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
    return image, factor


def write_mask_image(writer: Any, tag: str, image: np.ndarray, step: int) -> None:
    """One ``[H, W, 3]`` uint8 mask image, made readable, with the colour legend as its description."""
    from torch.utils.tensorboard import summary

    scaled, factor = readable(image)
    event = summary.image(tag, scaled, dataformats="HWC")
    event.value[0].metadata.summary_description = LEGEND + (f" This image is scaled x{factor}." if factor > 1 else "")
    writer.file_writer.add_summary(event, step)


def write_layout(writer: Any) -> None:
    """Write :data:`LAYOUT` as the run's custom-scalars layout."""
    writer.add_custom_scalars({section: {title: ["Multiline", tags] for title, tags in charts.items()}
                               for section, charts in LAYOUT.items()})


def comparable_scalars(model: Any, ever_active: float = 1.0) -> dict[str, float]:
    """The scalars every run logs, dense or sparse (``sparsity/*``)."""
    policy = model.policy
    report = sparsity_report(policy)
    flops = policy_flops_for_space(policy, model.observation_space)
    return {
        "sparsity/density": report["total"]["density"], "sparsity/nnz": report["total"]["nnz"],
        "sparsity/params": trained_parameters(policy),
        "sparsity/inference_flops_vs_dense": flops["inference_vs_dense"],
        "sparsity/training_flops_vs_dense": flops["training_vs_dense"], "sparsity/ever_active_fraction": ever_active,
    }


def trained_parameters(policy: Any) -> int:
    """Stored parameters of the trained networks: target networks (``*_target``, copies SB3 keeps with
    ``requires_grad`` set) are left out, as they are from ``sparsity/nnz``."""
    return sum(p.numel() for name, p in policy.named_parameters()
               if p.requires_grad and not name.split(".", 1)[0].endswith("_target"))


def stored_weight_magnitudes(policy: Any) -> np.ndarray:
    """``|w|`` of every stored weight of the trained networks (sparse values, dense weight matrices)."""
    from torch import nn

    parts = []
    for name, module in policy.named_modules():
        if name.split(".", 1)[0].endswith("_target"):
            continue
        if isinstance(module, SparseLayer):
            parts.append(module.values.detach().abs().flatten())
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            parts.append(module.weight.detach().abs().flatten())
    return np.concatenate([p.cpu().numpy() for p in parts]) if parts else np.zeros(0)


class ComparisonCallback(BaseCallback):
    """Log the comparable scalars at the start, every ``every`` environment steps (the evaluation grid) and at the end
    (the final evaluation), and write the layout.

    :param every: environment steps between records (record them before the evaluation that dumps them)
    :param topology: the run's :class:`~sparse_rl.sb3.TopologyCallback` (``None`` for a dense run), whose record of the
        connections ever active is reported
    :param clock: the run's training clock (:class:`~sparse_rl.sb3.eval_callback.TrainingClock`; ``None``: a new one)
    """

    def __init__(self, every: int, topology: Any = None, clock: Any = None) -> None:
        super().__init__()
        if every <= 0:
            raise ValueError(f"every must be a positive number of environment steps, got {every}")
        from sparse_rl.sb3.eval_callback import TrainingClock

        self.every, self.topology, self.clock = every, topology, clock or TrainingClock()
        self.next_step = every
        self._last: tuple[int, float] | None = None

    def _on_training_start(self) -> None:
        self.next_step = (self.num_timesteps // self.every + 1) * self.every
        writer = tensorboard_writer(self.logger)
        if writer is not None:
            write_layout(writer)
        self.record()
        self.logger.dump(self.num_timesteps)  # the starting point at its own step, not at the first dump's

    def _on_training_end(self) -> None:
        """One last record when training ends off the grid, before the final evaluation dumps it."""
        if self._last is None or self._last[0] != self.num_timesteps:
            self.record()

    def record(self) -> None:
        log = getattr(self.topology, "sparsity_log", None)
        ever = log.ever_active_fraction() if log is not None else 1.0
        for key, value in comparable_scalars(self.model, ever).items():
            self.logger.record(key, value)
        now = (self.num_timesteps, self.clock.seconds())
        if self._last is not None and now[1] > self._last[1]:
            self.logger.record("time/steps_per_second", (now[0] - self._last[0]) / (now[1] - self._last[1]))
        self._last = now
        magnitudes = stored_weight_magnitudes(self.model.policy)
        if magnitudes.size:
            self.logger.record("sparsity/weight_magnitude", magnitudes, exclude=("stdout", "log", "json", "csv"))

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.next_step:
            self.next_step = (self.num_timesteps // self.every + 1) * self.every
            self.record()
        return True
