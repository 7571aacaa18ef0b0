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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_learning import BENCHES, RESULTS, grid  # noqa: E402

from sparse_rl.harness.agents import RESULTS as RESULT  # noqa: E402
from sparse_rl.harness.agents import agent_dir, package, table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AGENTS = ROOT / "agents"


def _run_dir(folder: Path) -> Path | None:
    found = sorted(folder.glob("*/*/run.json"))
    return found[0].parent if found else None


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
    size = sum(p.stat().st_size for p in AGENTS.rglob("*") if p.is_file()) if AGENTS.exists() else 0
    text = ["# Trained agents", "",
            "The seed-0 run of each learning benchmark (`scripts/bench_learning.py`), packaged by "
            "`python scripts/package_agents.py --bench BENCH`. Replay one with `python -m sparse_rl.enjoy "
            "agents/<algo>/<Env>/<config>` (it seeds the env with the stored evaluation seed and says whether the "
            "returns reproduce `results.json`); evaluate them with `python -m sparse_rl.evaluate --suite mujoco --runs "
            "agents/ -o /tmp/agents_eval --seed 20000` (and `--suite minatar` for the DQN agents; `-o` keeps the "
            "output out of agents/, `--seed 20000` is the stored evaluation seed); load one without pickle: "
            "`sparse_rl.load_exported('agents/<algo>/<Env>/<config>/export')` (it takes raw observations: a PPO "
            "agent's VecNormalize statistics are baked in, in float32, so its actions match SB3 + VecNormalize to "
            "about 1e-7 and a MuJoCo episode's return to about 1 %, not exactly); or replay it with RL Zoo's own "
            "enjoy (the `<algo>` link in each agent folder is where it looks): "
            "`python -m rl_zoo3.enjoy --algo sac --env HalfCheetah-v4 -f agents/sac/HalfCheetah-v4/rigl90 --exp-id -1 "
            "--gym-packages sparse_rl.sb3 --deterministic --seed 20000 --no-render` (`--no-render` on a machine "
            "without a display; the seed of the stored evaluation: its first episode reproduces the first stored "
            "return). With SB3 alone: `SAC.load` / `DQN.load` on `<agent>/<Env>.zip`; a PPO agent also needs its "
            "observation statistics, `VecNormalize.load('<agent>/<Env>/vecnormalize.pkl', venv)` with "
            "`training = False` and `norm_reward = False` (without them it scores about -130 instead of 5300). "
            "`results.json` holds the numbers below (return: the seed-0 agent over 10 episodes, and \"vs dense\" "
            "compares those with the dense agent of the same budget, while the benchmark IQM and \"IQM vs dense\" "
            "are over all seeds of the agent's own benchmark; export: KiB of safetensors + JSON; acting "
            "time vs dense: one `predict` call, batch 1, one thread, on the packaging machine; below 1 is faster).", "",
            table(AGENTS) if AGENTS.exists() else "(none yet)\n",
            f"Table: `{command}`. Total size of agents/: {size / 1e6:.1f} MB."]
    AGENTS.mkdir(exist_ok=True)
    (AGENTS / "README.md").write_text("\n".join(text) + "\n")
    print((AGENTS / "README.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
