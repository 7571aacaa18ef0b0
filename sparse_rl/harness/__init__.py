"""The experiment harness under the commands: hyperparameter files, environments, run folders, training runs.

Layering: ``harness`` may import ``nn``, ``topology``, ``sb3`` and ``analysis``; the command modules
(``sparse_rl.train``, ``enjoy``, ``evaluate``, ``compare``, ``export``, ``sweep``) import the harness, never the
reverse.

- :mod:`~sparse_rl.harness.hyperparams`: RL-Zoo-style YAML files, value parsing and the merge rule for overrides;
- :mod:`~sparse_rl.harness.checks`: one clear error per bad hyperparameter, before anything is written;
- :mod:`~sparse_rl.harness.resolve`: from command-line flags to the run's resolved settings (printed and saved);
- :mod:`~sparse_rl.harness.envs`: training and evaluation environments (Atari wrappers, VecNormalize);
- :mod:`~sparse_rl.harness.runs`: the one owner of the run-folder layout (claimed atomically, locked while used);
- :mod:`~sparse_rl.harness.training`: one training run, fresh or resumed.
"""
