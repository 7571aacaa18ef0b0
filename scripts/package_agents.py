"""Package the seed-0 runs of the learning benchmarks as the trained agents in ``agents/`` and write its README table.

    python scripts/package_agents.py --bench sac-halfcheetah --configs dense rigl90
    python scripts/package_agents.py --table-only

Each agent is ``agents/<algo>/<Env>/<config>/`` (:mod:`sparse_rl.harness.agents`): the run folder's files, the
compact export, ``results.json`` (10 deterministic evaluation episodes on an env seeded 20000, the benchmark's aggregate
over all its seeds from ``scripts/results/bench_learning_<bench>.json``, costs, versions) and ``curve.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_learning import BENCHES, RESULTS, grid  # noqa: E402

from sparse_rl.harness.agents import RESULTS as RESULT  # noqa: E402
from sparse_rl.harness.agents import agent_dir, package, table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
INTRO = """\
The seed-0 run (seeds were fixed in advance; not the best seed) of each configuration of the learning benchmarks
(`scripts/bench_learning.py`), packaged by `python scripts/package_agents.py --bench BENCH`. Each folder
`agents/<algo>/<Env>/<config>/` holds the SB3 zip `<Env>.zip` (with `<Env>/vecnormalize.pkl` where the config
normalises), the compact export `export/` (safetensors + JSON, loaded without unpickling; `policy.json` records the
SHA-256 of the weights and of its own settings), the settings the run trained with (`<Env>/resolved.yml`, `<Env>/config.yml`,
`<Env>/args.yml`) and the command (`command.txt`), the run's summary `run.json`, `results.json`, the learning curve
`curve.png`, `evaluations.npz` and `dormant.csv`.

Columns: return = mean +- std of 10 deterministic episodes of the seed-0 agent on an env seeded 20000; vs dense = that
return over the dense agent's of the same budget; benchmark IQM over seeds [95 % CI] and IQM vs dense = over all
seeds of the agent's own benchmark (its report in `scripts/results/`); stored vs dense = bytes of the trained networks'
weights as stored over the same weights dense in float32; export = KiB of safetensors + JSON; acting time vs dense =
one SB3 `predict` call, batch 1, one thread, on the packaging machine (below 1 is faster). "Stored vs dense" and
"acting time vs dense" compare an agent with its own architecture made dense. For `sac/HalfCheetah-v4/rigl90-wide816`
(sparse-wide at equal parameters: [816, 816] at 90 %, 216,322 weights, as many as dense [256, 256]) that is a dense
[816, 816] network, not the dense [256, 256] agent; its "vs dense" is n/a because no 100k-step dense agent ships
(its benchmark's dense runs are in "IQM vs dense").
"""
# the sparse-wide agent, the dense agent with as many weights, and their interleaved acting profile
EQUAL_PARAMETERS = ("sac/HalfCheetah-v4/rigl90-wide816", "sac/HalfCheetah-v4/dense", "profile_acting_wide")
USAGE = """\
## Use an agent

- **Replay** (headless; `--video /tmp/cheetah.mp4` writes a video):
  `python -m sparse_rl.enjoy agents/sac/HalfCheetah-v4/rigl90 --episodes 10`. On an agent folder it seeds the env with
  the stored evaluation seed and says whether the returns reproduce `results.json` (exit status 1 if not); with
  another `--seed`, `--stochastic` or `--best` it says that it does not compare.
- **Evaluate** all agents of a suite: `python -m sparse_rl.evaluate --suite mujoco --runs agents/ -o /tmp/agents_eval`
  (`--suite minatar` for the DQN agents; `-o` keeps the output out of agents/). It uses the agents' stored seed unless
  `--seed` is given and says per agent whether its returns reproduce `results.json`.
- **Without pickle**: `policy = sparse_rl.load_exported("agents/sac/HalfCheetah-v4/rigl90/export")`, then
  `action, _ = policy.predict(obs)` on raw observations, one or a batch (`forward` is the bare network: no
  normalisation, squashing or argmax). A PPO agent's VecNormalize statistics are baked into its export in float32, so
  its actions match SB3 + VecNormalize to about 1e-7 and a MuJoCo episode's return to about 1 %, not exactly.
- **SB3's own API** (with sparse_rl installed: the zips name its policy classes):
  `SAC.load("agents/sac/HalfCheetah-v4/rigl90/HalfCheetah-v4.zip")` (`PPO`, `DQN` likewise). A PPO agent
  also needs its observation statistics: `venv = VecNormalize.load("<agent>/HalfCheetah-v4/vecnormalize.pkl", venv)`,
  then `venv.training = False` and `venv.norm_reward = False` (without them it scores about -130 instead of 5300). The
  MinAtar agents: `import sparse_rl.sb3` registers the `MinAtar/...` ids, and they trained with episodes cut at 10,000
  steps: `gym.make("MinAtar/Breakout-v1", max_episode_steps=10000)`. With the stored seed (`env.reset(seed=20000)`,
  deterministic actions) the first episode reproduces the first stored return.
- **RL Zoo**: `python -m rl_zoo3.enjoy --algo sac --env HalfCheetah-v4 -f agents/sac/HalfCheetah-v4/rigl90 --exp-id -1
  --gym-packages sparse_rl.sb3 --deterministic --seed 20000 --no-render` (`--no-render` without a display). It looks
  in `<folder>/<algo>/`, which holds two links to the agent's zip and settings.
- **Copying** an agent: any tool works (`cp -r`, `shutil.copytree`); the `<algo>/` links are relative.

## `results.json`

`name`, `algo`, `env`, `config`, `seed` (the training seed), `bench` (the benchmark it comes from);
`evaluation`: the 10 deterministic episodes above (`episode_returns`, `mean`, `std`, `seed` of the evaluation env);
`benchmark`: the benchmark report's row for this configuration over all seeds (`iqm`, `mean` as [point, low, high],
`iqm_vs_dense`, `p_improvement_over_dense`, `per_seed`: each seed's final score = the mean of the 10 evaluation episodes
at the last step of training, as `evaluations.npz` holds them for seed 0, so it differs from `evaluation` above, which
is measured at packaging on another env seed; `wall_time_s` and `steps_per_s`: means over the seeds; dormant-neuron
fractions; `resumes`: seeds resumed from checkpoints);
`density`, `nnz`, `numel` (the trained networks, target networks left out), `stored_bytes`, `dense_bytes`,
`stored_vs_dense`, `inference_flops_vs_dense`, `latency_ms`, `dense_latency_ms`, `latency_vs_dense`;
`training_wall_time_s` (this seed's run, from `run.json`), `n_timesteps` (the steps trained: an on-policy run stops at
the first whole rollout at or after its target), `sb3_zip`, `export_bytes`, `versions` (at packaging), `code`: the
version and git commit of the code that trained the run (`training`, from `run.json`; null for runs finished before it
was recorded: their `resolved.yml` sources name the checkout) and of the code that packaged it (`packaging`).
"""
AGENTS = ROOT / "agents"


def _run_dir(folder: Path) -> Path | None:
    found = sorted(folder.glob("*/*/run.json"))
    return found[0].parent if found else None


def equal_parameters_note() -> str:
    """The sparse-wide agent against the dense agent with as many weights, from their ``results.json`` files and the
    interleaved acting profile (empty when either agent is missing)."""
    wide_file, dense_file = (AGENTS / name / RESULT for name in EQUAL_PARAMETERS[:2])
    if not (wide_file.is_file() and dense_file.is_file()):
        return ""
    wide, dense = json.loads(wide_file.read_text()), json.loads(dense_file.read_text())
    note = (f"Against the dense [256, 256] agent, which has as many weights ({dense['nnz']:,} vs {wide['nnz']:,}), "
            f"its stored weights take {wide['stored_bytes'] / dense['stored_bytes']:.2f}x the bytes and its export "
            f"{wide['export_bytes'] / 1024:.0f} vs {dense['export_bytes'] / 1024:.0f} KiB (column indices)")
    profile = RESULTS / f"{EQUAL_PARAMETERS[2]}.json"
    rows = json.loads(profile.read_text())["results"][0]["rows"] if profile.is_file() else []
    predict = [row["ratio"] for row in rows if row["part"] == "predict"]
    if predict:
        note += (f"; its `predict` takes {predict[0]:.2f}x as long (the two agents interleaved: "
                 f"`scripts/results/{EQUAL_PARAMETERS[2]}.md`)")
    return textwrap.fill(note + ".", 120) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", choices=sorted(BENCHES))
    parser.add_argument("--configs", nargs="+", default=None, help="configuration names (default: all of the bench)")
    parser.add_argument("--log-folder", default="logs/bench_learning")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    if not args.table_only:
        if args.bench is None:
            parser.error("--bench is required (or --table-only)")
        bench = BENCHES[args.bench]
        root = Path(args.log_folder) / f"{args.bench}_{bench.steps}"
        summary_file = RESULTS / f"bench_learning_{args.bench}.json"
        rows = json.loads(summary_file.read_text())["rows"] if summary_file.is_file() else {}
        for config, run in grid(bench, bench.configs, (0,), root):
            if args.configs and config.name not in args.configs:
                continue
            run_dir = _run_dir(run.folder)
            if run_dir is None:
                print(f"skipped {config.name}: seed 0 has not finished ({run.folder})")
                continue
            out = agent_dir(AGENTS, bench.algo, bench.env, config.name)
            owner = json.loads((out / RESULT).read_text()).get("bench") if (out / RESULT).is_file() else None
            if owner not in (None, args.bench):  # e.g. the sparse-wide bench's 100k dense run vs the 150k one
                print(f"skipped {config.name}: {out} holds the {owner} agent (packaged from that benchmark)")
                continue
            result = package(run_dir, out, config.name, rows.get(config.name), bench=args.bench)
            print(f"{out}: return {result['evaluation']['mean']:.1f} +- {result['evaluation']['std']:.1f}")
    command = "python scripts/package_agents.py --table-only"
    size = sum(p.stat().st_size for p in AGENTS.rglob("*") if p.is_file() and not p.is_symlink()) if AGENTS.exists() else 0
    text = ["# Trained agents", "", INTRO + equal_parameters_note(), table(AGENTS) if AGENTS.exists() else "(none yet)\n",
            f"Table: `{command}`. Total size of agents/: {size / 1e6:.1f} MB.", "", USAGE]
    AGENTS.mkdir(exist_ok=True)
    (AGENTS / "README.md").write_text("\n".join(text) + "\n")
    print((AGENTS / "README.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
