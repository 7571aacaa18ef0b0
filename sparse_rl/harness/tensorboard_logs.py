"""A run's name and its TensorBoard folder and logger (``-tb``): one TensorBoard run per training run, named by what it
is (``sac_Pendulum-v1_rigl90_s0``), continued in place by a resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparse_rl.harness.envs import env_name
from sparse_rl.harness.resolve import Resolved


def run_name(resolved: Resolved) -> str:
    """What the run is, in one name: ``<algo>_<Env>_<dense|rigl90>_s<seed>`` (TensorBoard, run.json, reports)."""
    spec = resolved.spec
    return f"{spec.algo}_{env_name(spec.env)}_{resolved.label()}_s{spec.seed}"


def claim_tensorboard_dir(root: str, resolved: Resolved) -> Path:
    """``<root>/<run name>`` (``_2``, ``_3``... when taken), created atomically."""
    base = Path(root) / run_name(resolved)
    Path(root).mkdir(parents=True, exist_ok=True)
    candidate, n = base, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = base.with_name(f"{base.name}_{n}")


def set_logger(model: Any, tensorboard_dir: str | None, verbose: int, purge_step: int | None = None) -> None:
    """SB3's logger into ``tensorboard_dir``; ``purge_step`` (a resume): TensorBoard drops the run's earlier events at
    and after that step (torch's ``purge_step``), which the resumed run logs again, so no curve doubles back."""
    if tensorboard_dir is None:
        return
    from stable_baselines3.common.logger import TensorBoardOutputFormat, configure
    from torch.utils.tensorboard import SummaryWriter

    logger = configure(tensorboard_dir, ["stdout", "tensorboard"] if verbose >= 1 else ["tensorboard"])
    for output in logger.output_formats:
        if purge_step is not None and isinstance(output, TensorBoardOutputFormat):
            output.writer.close()
            output.writer = SummaryWriter(log_dir=tensorboard_dir, purge_step=purge_step)
    model.set_logger(logger)
