"""Trained agents shipped in ``agents/`` (as RL Zoo's rl-trained-agents ships one model per algorithm and env).

An agent folder ``agents/<algo>/<Env>/<config>/`` is the seed-0 run of a learning benchmark, trimmed to what a user
needs to run, inspect and check it. It keeps the run folder's own layout, so ``python -m sparse_rl.enjoy`` and
``python -m sparse_rl.evaluate --runs agents/`` read it like any run:

- ``<Env>.zip`` (the SB3 model, with ``<Env>/vecnormalize.pkl`` when the config normalises), ``<Env>/config.yml``,
  ``<Env>/args.yml``, ``<Env>/resolved.yml``, ``command.txt``, ``run.json``, ``evaluations.npz``, ``dormant.csv``;
- ``export/policy.safetensors`` + ``export/policy.json``: the compact acting policy, loaded without unpickling
  (``sparse_rl.load_exported``);
- ``results.json``: the evaluation (per-episode returns of deterministic episodes on an env seeded with
  ``evaluation_seed``), the benchmark's aggregate over all seeds, density, nnz, stored bytes and inference FLOPs vs
  dense, acting latency vs dense on the packaging machine, training wall time and the library versions;
- ``curve.png``: the run's learning curve;
- ``<algo>/``, links to the zip and its settings folder, so that RL Zoo's enjoy finds the model where it looks with
  ``--exp-id -1`` (``<folder>/<algo>/<Env>.zip``, :func:`zoo_links`): ``python -m rl_zoo3.enjoy --algo sac --env
  HalfCheetah-v4 -f agents/sac/HalfCheetah-v4/rigl90 --exp-id -1 --gym-packages sparse_rl.sb3 --deterministic --seed 20000``.

:func:`replay_first_episode` replays episode 1 with the stored seed, which must reproduce the stored return.
"""

from __future__ import annotations

import json
import platform
import shlex
import shutil
from collections import OrderedDict
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from sparse_rl.analysis.report import format_interval
from sparse_rl.harness.envs import env_name, evaluation_env
from sparse_rl.harness.runs import AGENT_RESULTS, RunFolder, code_version, config_record, load_agent, saved_hyperparams

RESULTS = AGENT_RESULTS
#: SB3 zips above this size are not shipped (the compact export always is)
MAX_ZIP_BYTES = 4_000_000
EVALUATION_SEED = 20_000
VERSIONED = ("sparse_rl", "torch", "stable_baselines3", "sb3_contrib", "rl_zoo3", "gymnasium", "numpy", "safetensors",
             "mujoco", "ale-py", "minatar")
COPIED = ("run.json", "evaluations.npz", "dormant.csv", "command.txt")


def agent_dir(root: str | Path, algo: str, env_id: str, config: str) -> Path:
    """``<root>/<algo>/<Env>/<config>``."""
    return Path(root) / algo / env_name(env_id) / config


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _stored_bytes(policy: Any) -> tuple[int, int]:
    """(bytes of the trained networks' weights as stored, bytes of the same weights dense in float32)."""
    from torch import nn

    from sparse_rl.nn.base import SparseLayer

    stored = dense = 0
    for name, module in policy.named_modules():
        if name.split(".", 1)[0].endswith("_target"):
            continue
        if isinstance(module, SparseLayer):
            stored += module.stored_bytes()
            dense += 4 * (module.numel_dense + (module.bias.numel() if module.bias is not None else 0))
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            size = 4 * sum(p.numel() for p in module.parameters(recurse=False))
            stored += size
            dense += size
    return stored, dense


def evaluate_episodes(run_dir: Path, episodes: int, seed: int) -> list[float]:
    """Returns of ``episodes`` deterministic episodes of a run's final model on an evaluation env seeded ``seed``."""
    from sparse_rl.harness.evaluation import play

    model, run, config = load_agent(run_dir)
    env = evaluation_env(run.env, saved_hyperparams(config), seed, RunFolder(run_dir, run.env).vecnormalize_path)
    try:
        return play(model, env, episodes, deterministic=True, seed=seed)
    finally:
        env.close()


def stored_evaluation(agent: str | Path) -> tuple[int, list[float]] | None:
    """``(evaluation seed, per-episode returns)`` stored in an agent folder's ``results.json``; ``None`` for a folder
    without one (a plain run folder).

    :raises ValueError: the file is there but unreadable or lacks the evaluation (one line)
    """
    path = Path(agent) / RESULTS
    if not path.is_file():
        return None
    try:
        evaluation = json.loads(path.read_text())["evaluation"]
        return int(evaluation["seed"]), [float(r) for r in evaluation["episode_returns"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is unreadable ({type(error).__name__}): package the agent again") from None


def compare_with_stored(returns: list[float], stored: list[float]) -> tuple[bool, str]:
    """Whether replayed episodes reproduce an agent's stored ones (the first ``min`` of both, to 1e-6), and one line
    saying so."""
    n = min(len(returns), len(stored))
    same = bool(np.allclose(returns[:n], stored[:n], rtol=1e-6, atol=1e-6))
    return same, (f"results.json, first {n} episodes: {[round(r, 2) for r in stored[:n]]} "
                  f"({'reproduced' if same else 'NOT reproduced'})")


def replay_first_episode(agent: str | Path) -> tuple[float, float]:
    """(stored return of episode 1, replayed return) of a packaged agent."""
    stored = stored_evaluation(agent)
    if stored is None or not stored[1]:
        raise ValueError(f"{Path(agent) / RESULTS} is missing or unreadable (no stored episode): package the agent again")
    seed, returns = stored
    return returns[0], evaluate_episodes(Path(agent), 1, seed)[0]


def _curve(run_dir: Path, title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.load(run_dir / "evaluations.npz")
    mean, std = data["results"].mean(axis=1), data["results"].std(axis=1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(data["timesteps"], mean)
    ax.fill_between(data["timesteps"], mean - std, mean + std, alpha=0.2)
    ax.set(title=title, xlabel="environment steps", ylabel="evaluation return (mean +- std over episodes)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def package(run_dir: str | Path, out_dir: str | Path, config: str, aggregate: dict[str, Any] | None = None,
            episodes: int = 10, seed: int = EVALUATION_SEED, bench: str = "") -> dict[str, Any]:
    """Package the run folder ``run_dir`` as the agent ``out_dir``; returns its ``results.json`` record.

    :param config: the configuration's name (``dense``, ``rigl90``...)
    :param aggregate: the benchmark's aggregate over all seeds for this configuration (its report row)
    :param episodes: deterministic evaluation episodes
    :param seed: seed of the evaluation env (episode 1 is replayable from it)
    """
    from sparse_rl.harness.evaluation import acting_latency
    from sparse_rl.harness.export import export_run
    from sparse_rl.sb3.flops import policy_flops_for_space, sample_observation
    from sparse_rl.sb3.report import sparsity_report

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    model, run, _ = load_agent(run_dir)
    source = RunFolder(run_dir, run.env)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / source.name).mkdir(parents=True)
    for name in COPIED:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out_dir / name)
    for path in source.params_dir.iterdir():
        shutil.copy2(path, out_dir / source.name / path.name)
    _env_kwargs_as_mapping(RunFolder(out_dir, run.env))
    print(complete_resolved(RunFolder(out_dir, run.env)) or "", end="")
    print(requote_command(RunFolder(out_dir, run.env)) or "", end="")
    zipped = source.model_path.stat().st_size <= MAX_ZIP_BYTES
    if zipped:
        shutil.copy2(source.model_path, out_dir / source.model_path.name)
        zoo_links(RunFolder(out_dir, run.env), run.algo)
    export_run(run_dir, out_dir / "export")
    returns = evaluate_episodes(run_dir, episodes, seed)
    report = sparsity_report(model)["total"]
    stored, dense = _stored_bytes(model.policy)
    observation = sample_observation(model.observation_space)
    results = {
        "name": run.name, "algo": run.algo, "env": run.env, "config": config, "seed": run.seed, "bench": bench,
        "evaluation": {"episodes": len(returns), "deterministic": True, "seed": seed, "episode_returns": returns,
                       "mean": float(np.mean(returns)), "std": float(np.std(returns))},
        "benchmark": aggregate or {},
        "density": report["density"], "nnz": report["nnz"], "numel": report["numel"],
        "stored_bytes": stored, "dense_bytes": dense, "stored_vs_dense": stored / max(dense, 1),
        "inference_flops_vs_dense": policy_flops_for_space(model.policy, model.observation_space)["inference_vs_dense"],
        **acting_latency(model.policy, observation, steps=200, rounds=7),
        "training_wall_time_s": run.summary.get("wall_time_s"), "n_timesteps": run.summary.get("n_timesteps"),
        "sb3_zip": source.model_path.name if zipped else None,
        "export_bytes": sum(p.stat().st_size for p in (out_dir / "export").iterdir()),
        "versions": _versions(),
        # the code that trained the run (run.json; absent for runs finished before it was recorded) and that packaged it
        "code": {"training": run.summary.get("code"), "packaging": code_version()},
    }
    (out_dir / RESULTS).write_text(json.dumps(results, indent=1))
    _curve(run_dir, f"{run.algo.upper()} {run.env} {config}, seed {run.seed}", out_dir / "curve.png")
    return results


def complete_resolved(agent: RunFolder) -> str | None:
    """Write ``resolved.yml`` into a folder of a run that predates it, resolved again from its ``args.yml`` by this
    version, only when the result's ``config.yml`` record equals the saved one (else nothing is written). A note in the
    file says it was reconstructed. Returns one line saying what was done, ``None`` for a folder that has the file.
    """
    import yaml

    from sparse_rl.harness.resolve import RunSpec, resolve

    path = agent.params_dir / "resolved.yml"
    if path.is_file():
        return None
    args = agent.read_args()
    try:
        resolved = resolve(RunSpec(**{k: v for k, v in args.items() if k in RunSpec.__dataclass_fields__}))
    except ValueError as error:  # today's checks refuse the old run's flags: nothing to compare
        return f"{path}: not reconstructed: the run predates resolved.yml and its args.yml no longer resolves ({error})\n"
    saved = saved_hyperparams(agent.read_config())  # expressions read back (RL Zoo wrote "{}" where we write "dict()")
    again = saved_hyperparams(config_record(resolved.hyperparams, resolved.topology))
    differ = sorted(k for k in saved.keys() | again.keys() if saved.get(k) != again.get(k))
    if differ:
        return (f"{path}: not reconstructed: the run predates resolved.yml and resolving its args.yml again gives other "
                f"settings than its config.yml ({', '.join(differ)})\n")
    record = resolved.saved()
    record["notes"].append("reconstructed when packaged: the run predates resolved.yml; resolved again from args.yml "
                           "by this version, whose config.yml record equals the run's own")
    path.write_text(yaml.safe_dump(record, sort_keys=False))
    return f"{path}: reconstructed (the run predates resolved.yml; config.yml agrees with it)\n"


#: ``python -m sparse_rl.train``'s one ``key:value`` option (values may hold spaces); ``args.yml`` keeps its items
#: under ``hyperparams``
_HYPERPARAMS_FLAGS = ("-params", "--hyperparams")


def requote_command(agent: RunFolder) -> str | None:
    """Re-quote ``command.txt`` of a run that predates quoted commands (it was the arguments joined by spaces, so
    ``-params policy_kwargs:dict(net_arch=[816, 816])`` did not run as written). The ``-params`` items are taken from
    ``args.yml``; the command is rewritten only when those arguments, joined by spaces, give the
    old text back exactly. Returns one line saying what was done, ``None`` for a command that already runs as written.
    """
    path = agent.path / "command.txt"
    text = path.read_text().strip() if path.is_file() else ""
    try:
        if not text or shlex.join(shlex.split(text)) == text:
            return None
    except ValueError:  # unbalanced quotes: not a command this package wrote
        return f"{path}: not re-quoted: it does not parse as a shell command\n"
    args = agent.read_args()
    tokens, rebuilt, plain = text.split(" "), [], True
    while tokens:
        token = tokens.pop(0)
        rebuilt.append(token)
        plain = plain and shlex.quote(token) == token  # outside -params a space could not be told apart
        if token in _HYPERPARAMS_FLAGS:
            while tokens and not tokens[0].startswith("-"):
                tokens.pop(0)
            rebuilt += [f"{key}:{value}" for key, value in (args.get("hyperparams") or {}).items()]
    if not plain or " ".join(rebuilt) != text:
        return f"{path}: not re-quoted: its arguments could not be told apart again from args.yml\n"
    path.write_text(shlex.join(rebuilt) + "\n")
    return f"{path}: re-quoted (the run predates quoted commands; its key:value items from args.yml)\n"


def zoo_links(agent: RunFolder, algo: str) -> Path:
    """``<agent>/<algo>/``: where RL Zoo's enjoy looks with ``--exp-id -1`` (``<folder>/<algo>/<Env>.zip`` and its
    ``<Env>/`` settings), as two relative links to the agent's own files. Not one link ``<algo> -> .``, which made the
    folder contain itself: copying an agent with ``shutil.copytree`` or ``cp -rL`` recursed until it failed."""
    zoo = agent.path / algo
    if zoo.is_symlink():  # the self-link of agents packaged before
        zoo.unlink()
    zoo.mkdir(exist_ok=True)
    for name, is_dir in ((agent.model_path.name, False), (agent.params_dir.name, True)):
        if (zoo / name).is_symlink():
            (zoo / name).unlink()
        (zoo / name).symlink_to(Path("..") / name, target_is_directory=is_dir)
    return zoo


def _env_kwargs_as_mapping(agent: RunFolder) -> None:
    """Runs saved by earlier versions hold ``env_kwargs`` as an expression string; RL Zoo's enjoy reads it as a mapping."""
    import yaml

    config = agent.read_config()
    if isinstance(config.get("env_kwargs"), str):
        config["env_kwargs"] = saved_hyperparams(config)["env_kwargs"]
        path = agent.params_dir / "config.yml"
        path.write_text(yaml.dump(OrderedDict(sorted(config.items()))))


def table(root: str | Path) -> str:
    """The markdown table of every agent under ``root`` (return, vs dense, density, bytes, latency)."""
    rows = [json.loads(p.read_text()) for p in sorted(Path(root).rglob(RESULTS))]
    # "vs dense" against the dense agent of the same budget (a benchmark's 100k-step agent is not compared with 150k);
    # "IQM vs dense" against the dense configuration of the agent's own benchmark, over all its seeds
    dense = {(r["algo"], r["env"], r.get("n_timesteps")): r["evaluation"]["mean"] for r in rows if r["config"] == "dense"}
    lines = ["| agent | return (10 episodes) | vs dense | benchmark IQM over seeds | IQM vs dense | density | "
             "stored vs dense | export | acting time vs dense | SB3 zip |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = dense.get((r["algo"], r["env"], r.get("n_timesteps")))
        ratio = f"{1 + (r['evaluation']['mean'] - base) / abs(base):.3f}" if base else "n/a"
        benchmark = r.get("benchmark", {})
        iqm_ratio = 1.0 if r["config"] == "dense" and benchmark else benchmark.get("iqm_vs_dense")
        lines.append(
            f"| `{r['algo']}/{env_name(r['env'])}/{r['config']}` | {r['evaluation']['mean']:.1f} +- "
            f"{r['evaluation']['std']:.1f} | {ratio} | {format_interval(benchmark.get('iqm'))} | "
            f"{'n/a' if iqm_ratio is None else f'{iqm_ratio:.3f}'} | "
            f"{r['density']:.3f} | {r['stored_vs_dense']:.3f} | {r['export_bytes'] / 1024:.0f} KiB | "
            f"{r['latency_vs_dense']:.2f} | {'yes' if r.get('sb3_zip') else 'no (size)'} |")
    return "\n".join(lines) + "\n"
