"""Reading run folders and TensorBoard event files; dense-vs-sparse comparison tables and plots."""

from sparse_rl.analysis.runs import Run, find_runs, load_run, tensorboard_scalars

__all__ = ["Run", "find_runs", "load_run", "tensorboard_scalars"]
