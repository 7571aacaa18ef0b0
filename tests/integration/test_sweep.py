"""A real local Ray sweep: 2 x 2 tiny runs complete, a failing run is reported, finished runs are skipped on re-run."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from sparse_rl.harness.sweeps import GridRun, RunLocked, expand_grid, load_sweep, run_one
from sparse_rl.sweep import main as sweep_main

TINY = ["--eval-freq", "100", "--eval-episodes", "1", "-params", "learning_starts:50", "buffer_size:500", "batch_size:16"]


def _write(path, **spec):
    path.write_text(yaml.safe_dump(spec))
    return path


def test_grid_expansion_dedupes_dense(tmp_path):
    spec = load_sweep(_write(tmp_path / "s.yml", algo="sac", env=["Pendulum-v1"], method=["set", "rigl"],
                             sparsity=[0.0, 0.9], seed=[0, 1]))
    names = sorted(run.name for run in expand_grid(spec))
    assert len(names) == 6 and sum("dense" in n for n in names) == 2
    with pytest.raises(ValueError, match="unknown keys"):
        load_sweep(_write(tmp_path / "bad.yml", algo="sac", env="Pendulum-v1", seeds=[1]))


def test_local_ray_sweep_2x2_completes_and_rerun_skips_finished(tmp_path, capsys):
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'sparse_rl[sweep]')")
    root = tmp_path / "sweep"
    conf = _write(tmp_path / "sweep.yml", algo="sac", env="Pendulum-v1", method="rigl", sparsity=[0.0, 0.9], seed=[0, 1],
                  n_timesteps=200, train_args=TINY, log_folder=str(root))
    assert sweep_main(["-conf", str(conf), "--num-cpus", "2"]) == 0
    assert "4 finished, 0 already done, 0 failed" in capsys.readouterr().out
    assert len(list(root.rglob("run.json"))) == 4 and len(list(root.rglob("evaluations.npz"))) == 4
    report = (root / "report" / "report.md").read_text()
    assert "| sac | Pendulum-v1 | dense | 2 |" in report and "| sac | Pendulum-v1 | rigl 90% | 2 |" in report
    assert sweep_main(["-conf", str(conf)]) == 0
    assert "0 finished, 4 already done, 0 failed" in capsys.readouterr().out
    # the sweep file changed: its old runs were counted as done and reported beside the new ones
    for changed in (dict(n_timesteps=300, train_args=TINY), dict(n_timesteps=200, train_args=[*TINY, "--save-freq", "100"])):
        conf = _write(tmp_path / "sweep.yml", algo="sac", env="Pendulum-v1", method="rigl", sparsity=[0.0, 0.9],
                      seed=[0, 1], log_folder=str(root), **changed)
        assert sweep_main(["-conf", str(conf), "--dry-run"]) == 0
        assert capsys.readouterr().out.count("stale ") == 4
        assert sweep_main(["-conf", str(conf)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and "(and 3 more points)" in err
        assert ("n_timesteps 200 (the sweep file now says 300)" in err) == (changed["n_timesteps"] == 300)
    assert len(list(root.rglob("run.json"))) == 4


def test_a_point_the_trainer_refuses_stops_the_sweep_before_anything_runs(tmp_path, capsys):
    """Bad train_args or an algo the env does not fit were listed as 'todo' by --dry-run, then failed in every task."""
    root = tmp_path / "sweep"
    conf = _write(tmp_path / "sweep.yml", algo="sac", env=["Pendulum-v1", "CartPole-v1"], sparsity=0.9, seed=[0, 1],
                  n_timesteps=200, train_args=TINY, log_folder=str(root))
    assert sweep_main(["-conf", str(conf), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: grid point sac_CartPole-v1_rigl_0.9_seed0 would fail") and err.count("\n") == 1
    assert "--algo sac needs a continuous (Box) action space" in err and not root.exists()
    conf = _write(tmp_path / "typo.yml", algo="sac", env="Pendulum-v1", n_timesteps=200, log_folder=str(root),
                  train_args=["--sparsty", "3"])
    assert sweep_main(["-conf", str(conf)]) == 2
    assert "unrecognized arguments: --sparsty 3" in capsys.readouterr().err and not root.exists()


def test_a_failing_run_is_retried_then_reported_while_others_complete(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'sparse_rl[sweep]')")
    monkeypatch.setattr("sparse_rl.sweep.check_points", lambda runs: None)  # a point that fails while it trains
    root = tmp_path / "sweep"
    conf = _write(tmp_path / "sweep.yml", algo="sac", env=["Pendulum-v1", "CartPole-v1"], sparsity=0.9, seed=0,
                  n_timesteps=200, train_args=TINY, log_folder=str(root), max_retries=1)
    assert sweep_main(["-conf", str(conf), "--num-cpus", "2"]) == 1
    out = capsys.readouterr().out
    assert "1 finished, 0 already done, 1 failed" in out
    assert "failed: sac_CartPole-v1_rigl_0.9_seed0" in out and "--algo sac needs a continuous (Box) action space" in out
    assert len(list(root.rglob("run.json"))) == 1


def test_missing_ray_or_bad_file_gives_one_line(tmp_path, capsys):
    assert sweep_main(["-conf", str(tmp_path / "nope.yml")]) == 2
    assert capsys.readouterr().err.startswith("error: sweep file")


def test_a_grid_point_is_never_trained_twice_at_once(tmp_path, monkeypatch):
    """Sweeps or benchmarks sharing a folder used to clear and retrain each other's grid points."""
    import threading
    import time

    run = GridRun("sac", "Pendulum-v1", "rigl", 0.9, 0, 200, tuple(TINY), str(tmp_path))
    outcome = {}
    first = threading.Thread(target=lambda: outcome.setdefault("first", run_one(run)))
    first.start()
    deadline = time.time() + 60
    while not (run.folder / "sac").is_dir():  # the training process has started: the lock is held
        assert time.time() < deadline
        time.sleep(0.01)
    with pytest.raises(RunLocked, match="being trained by another process"):  # a skip, not a failure
        run_one(run)
    # a second benchmark driver over the same folder says it skips the run (it used to print FAILED)
    spec = importlib.util.spec_from_file_location("bench_learning", Path(__file__).resolve().parents[2] / "scripts"
                                                  / "bench_learning.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_learning", bench)  # its dataclasses look it up
    monkeypatch.setattr(sys, "path", list(sys.path))  # it puts scripts/ on the path
    spec.loader.exec_module(bench)
    assert bench._attempt(run) == "skipped: another process trains it"
    first.join(timeout=600)
    assert outcome["first"] == run.name and run.is_finished()
    assert len(list(run.folder.rglob("run.json"))) == 1 and not (run.folder / "sac" / "Pendulum-v1_2").exists()
    assert run_one(run) == run.name  # finished: nothing is retrained


def test_a_point_trained_by_an_older_sweep_is_checked_against_its_args(tmp_path):
    """Folders written before sweep_point.json existed: their args.yml's n_timesteps is compared."""
    from sparse_rl.train import main as train_main

    old = GridRun("sac", "Pendulum-v1", "rigl", 0.9, 0, n_timesteps=100, root=str(tmp_path))
    assert train_main(["--algo", "sac", "--env", "Pendulum-v1", "-n", "100", "-params", "learning_starts:50",
                       "-f", str(old.folder), "--eval-freq", "-1", "-v", "0"]) == 0
    assert old.stale() is None
    now = GridRun("sac", "Pendulum-v1", "rigl", 0.9, 0, n_timesteps=200, root=str(tmp_path))
    assert now.stale() == f"{now.folder} was trained with n_timesteps 100 (the sweep file now says 200)"


@pytest.mark.parametrize("spec,match", [
    (dict(method=["static", "set"], train_args=["--method", "rigl"]), "train_args set --method, which each grid point"),
    (dict(train_args=["--meth=rigl"]), "train_args set --meth=rigl"),  # argparse's prefixes
    (dict(train_args=["-n", "500"]), "use the sweep file's n_timesteps key"),
    (dict(train_args=["--sparsity", "0.5"]), "train_args set --sparsity"),
    (dict(method=["rigl", "foo"]), "method 'foo' is not allowed"),
    (dict(sparsity=[0.9, 1.5]), "sparsity 1.5 is not allowed"),
    (dict(sparsity=["abc"]), "sparsity 'abc' is not allowed"),
    (dict(n_timesteps="1e4"), "n_timesteps '1e4' is not allowed: a positive integer .YAML reads"),
    (dict(seed=[-1]), "seed -1 is not allowed"),
    (dict(train_args="--eval-freq 300"), "train_args '--eval-freq 300' is not allowed: a list"),  # split into characters
    (dict(method=["rigI"]), r"method 'rigI' is not allowed: one of \[.*\]$"),  # said "write it as an integer"
])
def test_a_sweep_file_is_checked_before_anything_runs(tmp_path, spec, match):
    """train_args repeating a grid flag trained every point as that flag said (static and set both ran RigL); bad grid
    values were listed as 'todo'."""
    with pytest.raises(ValueError, match=match):
        load_sweep(_write(tmp_path / "s.yml", **{"algo": "sac", "env": "Pendulum-v1", **spec}))


def test_a_point_that_failed_before_training_is_not_stale(tmp_path):
    """A point whose attempt failed (nothing trained) was later reported as 'was trained with' its old settings."""
    failed = GridRun("sac", "Pendulum-v1", "rigl", 0.9, 0, n_timesteps=100, train_args=("--eval-freq", "7"),
                     root=str(tmp_path))
    failed.folder.mkdir(parents=True)
    (failed.folder / "sweep_point.json").write_text('{"n_timesteps": 100, "train_args": ["--eval-freq", "7"]}')
    now = GridRun("sac", "Pendulum-v1", "rigl", 0.9, 0, n_timesteps=100, root=str(tmp_path))
    assert now.stale() is None


def test_dry_run_says_which_points_resume(tmp_path, capsys, monkeypatch):
    """A point interrupted after a checkpoint was listed as 'todo', as if it would train from scratch."""
    conf = _write(tmp_path / "sweep.yml", algo="sac", env="Pendulum-v1", sparsity=0.9, seed=[0, 1], n_timesteps=200,
                  train_args=TINY, log_folder=str(tmp_path / "sweep"))
    [interrupted, other] = expand_grid(load_sweep(conf))
    pointer = interrupted.folder / "sac" / "Pendulum-v1_1" / "checkpoints" / "latest.json"
    pointer.parent.mkdir(parents=True)
    pointer.write_text('{"step": 100, "path": "step_100"}')
    (interrupted.folder / "sweep_point.json").write_text(json.dumps(interrupted.settings()))
    assert sweep_main(["-conf", str(conf), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("resume ") and lines[0].endswith(f"# continues {pointer.parent.parent} from its last "
                                                                 "checkpoint")
    assert lines[1].startswith("todo   ")
    from sparse_rl.harness.runs import RunFolder

    other.folder.mkdir(parents=True)
    holder = RunFolder(other.folder, other.env)
    holder.lock()  # another sweep or benchmark is training this point (flock: another open file holds it)
    try:
        assert sweep_main(["-conf", str(conf), "--dry-run"]) == 0
    finally:
        holder.unlock()
    assert capsys.readouterr().out.splitlines()[1].startswith("busy   ")


def test_a_sweep_leaves_a_point_another_process_trains_to_it(tmp_path):
    """A Ray sweep over a folder where another sweep trains a point counted that point as failed (exit code 1)."""
    from sparse_rl.harness.runs import RunFolder
    from sparse_rl.harness.sweeps import execute

    run = GridRun("sac", "Pendulum-v1", "rigl", 0.9, 0, 200, tuple(TINY), str(tmp_path))
    run.folder.mkdir(parents=True)
    holder = RunFolder(run.folder, run.env)
    holder.lock()  # flock: the Ray worker, another process, finds the folder locked
    try:
        result = execute([run], max_retries=0, num_cpus=1)
    finally:
        holder.unlock()
    assert result.busy == [run] and not result.failed and not result.finished
    assert not run.is_finished()


def test_a_benchmark_report_of_another_step_budget_is_not_overwritten(tmp_path):
    """The PPO bench's default budget went from 100k to 300k: its report would have replaced the committed 100k one."""
    import subprocess

    earlier = tmp_path / "bench.json"
    earlier.write_text(json.dumps({"steps": 100000, "rows": {}}))
    script = Path(__file__).resolve().parents[2] / "scripts" / "bench_learning.py"
    done = subprocess.run([sys.executable, str(script), "--bench", "sac-pendulum", "--steps", "300000", "--out",
                           str(tmp_path / "bench"), "--log-folder", str(tmp_path / "logs"), "--report-only"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: --out") and "100,000 steps" in done.stderr
    assert json.loads(earlier.read_text()) == {"steps": 100000, "rows": {}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]  # nothing else written
    for damaged in ("{not json", json.dumps({"rows": {}})):  # unreadable, or no step budget: not overwritten either
        earlier.write_text(damaged)
        done = subprocess.run([sys.executable, str(script), "--bench", "sac-pendulum", "--out", str(tmp_path / "bench"),
                               "--log-folder", str(tmp_path / "logs"), "--report-only"], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 2 and done.stderr.startswith("error: --out") and earlier.read_text() == damaged


def test_the_example_sweep_file_is_valid():
    """The README's sweep command pointed at a sweep.yml that did not ship."""
    from pathlib import Path

    spec = load_sweep(Path(__file__).resolve().parents[2] / "configs" / "sweep_example.yml")
    runs = expand_grid(spec)
    assert len(runs) == 3 * 3 + 3 and sum(run.method == "dense" for run in runs) == 3  # 3 methods x 3 seeds + dense
