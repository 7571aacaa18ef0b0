"""Runs pooled as seeds of one configuration must be that: same label and same settings, each seed once."""

import json

import numpy as np
import yaml

from sparse_rl.analysis import find_runs
from sparse_rl.analysis.report import summary_rows
from sparse_rl.analysis.runs import note_few_seeds


def write_run(folder, seed, final, settings=None, method="rigl", sparsity=0.9, extra=None, trained=200):
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps(dict(algo="sac", env="Pendulum-v1", method=method, sparsity=sparsity,
                                                     seed=seed, nnz=100, n_timesteps=trained)))
    np.savez(folder / "evaluations.npz", timesteps=np.array([100, 200]), results=np.array([[final - 10], [final]]))
    if settings is not None:
        (folder / "Pendulum-v1").mkdir()
        hyper = {"n_timesteps": 200, **(extra or {}), "policy_kwargs": {"sparsity": sparsity, **settings},
                 "callback": [{"sparse_rl.sb3.TopologyCallback": {"method": method, "seed": seed}}]}
        (folder / "Pendulum-v1" / "resolved.yml").write_text(
            yaml.safe_dump(dict(method=method, hyperparams=hyper, topology={"method": method, "seed": seed})))


def test_runs_that_differ_in_settings_are_separate_configurations(tmp_path):
    """An ERK and a uniform run, both seed 0, were one configuration with 'seeds 2'."""
    write_run(tmp_path / "a", 0, -100.0, {"distribution": "erk"})
    write_run(tmp_path / "b", 0, -300.0, {"distribution": "uniform"})
    write_run(tmp_path / "c", 1, -120.0, {"distribution": "erk"})
    said = []
    runs = find_runs(tmp_path, say=said.append)
    rows = {row["config"]: row["seeds"] for row in summary_rows(runs)}
    assert rows == {"rigl 90% (policy_kwargs.distribution=erk)": 2, "rigl 90% (policy_kwargs.distribution=uniform)": 1}
    assert said == ["sac Pendulum-v1: the runs labelled 'rigl 90%' differ in policy_kwargs.distribution: reported as "
                    "separate configurations",
                    "sac Pendulum-v1: the configurations ran on different seeds (rigl 90% (policy_kwargs.distribution=erk):"
                    " [0, 1]; rigl 90% (policy_kwargs.distribution=uniform): [0]): their means and 'vs dense' compare "
                    "different seed sets"]


def test_a_repeated_seed_counts_once_and_seeds_alone_do_not_split(tmp_path):
    for name, seed in (("a", 0), ("b", 1), ("c", 0)):
        write_run(tmp_path / name, seed, -100.0 - seed, {"distribution": "erk"})
    said = []
    runs = find_runs(tmp_path, say=said.append)
    assert [r.path.name for r in runs] == ["a", "b"] and [r.config for r in runs] == ["rigl 90%"] * 2
    assert len(said) == 1 and "repeats seed 0" in said[0] and "counted once" in said[0]


def test_runs_without_recorded_settings_are_set_apart_from_recorded_ones(tmp_path):
    write_run(tmp_path / "old", 0, -100.0)
    write_run(tmp_path / "new", 1, -100.0, {"distribution": "erk"})
    assert {r.config for r in find_runs(tmp_path, say=lambda line: None)} == {"rigl 90%", "rigl 90% (settings not recorded)"}


def test_a_sparse_configuration_that_differs_from_its_dense_baseline_in_more_than_sparsity_is_said(tmp_path):
    """compare / evaluate gave 'vs dense' against a dense run with other n_envs or more trained steps, silently."""
    for seed in (0, 1):
        write_run(tmp_path / f"dense{seed}", seed, -150.0, {}, method="dense", sparsity=0.0)
        write_run(tmp_path / f"rigl{seed}", seed, -140.0, {"distribution": "erk", "dense_layers": ["output"]})
    said = []
    find_runs(tmp_path, say=said.append)
    assert said == []  # only the sparse settings differ: nothing to say
    write_run(tmp_path / "set0", 0, -140.0, {"distribution": "erk"}, method="set", extra={"n_envs": 2}, trained=300)
    find_runs(tmp_path, say=said.append)
    assert said == ["sac Pendulum-v1: 'set 90%' and its dense baseline differ in more than sparsity: n_envs (2 vs -), "
                    "trained env steps (300 vs 200); its 'vs dense' compares these too",
                    "sac Pendulum-v1: the configurations ran on different seeds (dense: [0, 1]; rigl 90%: [0, 1]; set 90%: "
                    "[0]): their means and 'vs dense' compare different seed sets"]


def test_the_sparse_settings_are_the_sparse_policies_options():
    """analysis may not import sb3 (layering), so its list of sparse policy_kwargs must follow SparseConfig by hand."""
    from dataclasses import fields

    from sparse_rl.analysis.runs import SPARSE_SETTINGS
    from sparse_rl.sb3.builders import SparseConfig

    listed = {s.removeprefix("policy_kwargs.") for s in SPARSE_SETTINGS if s.startswith("policy_kwargs.")}
    assert listed == {f.name for f in fields(SparseConfig) if f.init}


def test_runs_left_out_are_not_grouped_or_talked_about(tmp_path):
    """evaluate --suite minatar spoke of the PPO runs beside the MinAtar ones: runs outside the suite are left out
    before grouping."""
    write_run(tmp_path / "a", 0, -100.0, {"distribution": "erk"})
    write_run(tmp_path / "b", 1, -300.0, {"distribution": "uniform"})
    said = []
    runs = find_runs(tmp_path, say=said.append, keep=lambda run: run.seed == 0)
    assert [r.seed for r in runs] == [0] and runs[0].config == "rigl 90%" and said == []


def test_runs_are_grouped_by_the_schedule_they_trained_with_not_the_keys_typed(tmp_path):
    """A run given update_every alone was labelled 'drop_fraction=-, end=-' and set apart from a run that typed the
    defaults out, though both trained the same schedule."""
    schedule = {"update_every": 400, "start": 100, "end": 1600, "drop_fraction": 0.3, "drop_schedule": "cosine",
                "first_update": 500, "last_update": 1300, "updates": 3, "defaults": []}
    typed = [{"method": "rigl", "update_every": 400, "seed": 0},
             {"method": "rigl", "update_every": 400, "drop_fraction": 0.3, "drop_schedule": "cosine", "end": 0.8,
              "seed": 1}]
    for seed, topology in enumerate(typed):
        write_run(tmp_path / f"r{seed}", seed, -100.0, {"distribution": "erk"})
        resolved = tmp_path / f"r{seed}" / "Pendulum-v1" / "resolved.yml"
        data = yaml.safe_load(resolved.read_text())
        resolved.write_text(yaml.safe_dump({**data, "topology": topology, "topology_schedule": schedule}))
    said = []
    runs = find_runs(tmp_path, say=said.append)
    assert [r.config for r in runs] == ["rigl 90%", "rigl 90%"] and said == []
    assert runs[0].settings["topology.drop_fraction"] == 0.3 and runs[0].settings["topology.end"] == 1600


def test_what_a_pooled_table_would_hide_is_said(tmp_path):
    """compare / evaluate dropped unfinished runs, pooled runs evaluated with other episode counts and lost every
    'vs dense' to a dense run with other settings, all without a word."""
    for seed in (0, 1):
        write_run(tmp_path / f"dense{seed}", seed, -150.0, {}, method="dense", sparsity=0.0)
        write_run(tmp_path / f"rigl{seed}", seed, -140.0, {"distribution": "erk"})
    unfinished = tmp_path / "rigl2"
    unfinished.mkdir()
    np.savez(unfinished / "evaluations.npz", timesteps=np.array([100]), results=np.array([[-1.0]]))
    (unfinished / "command.txt").write_text("python -m sparse_rl.train\n")
    zoo = tmp_path / "zoo"  # an rl_zoo3.train run: it was called interrupted, and --resume refused it
    zoo.mkdir()
    np.savez(zoo / "evaluations.npz", timesteps=np.array([100]), results=np.array([[-1.0]]))
    np.savez(tmp_path / "rigl1" / "evaluations.npz", timesteps=np.array([100, 200]), results=np.zeros((2, 5)))
    said = []
    find_runs(tmp_path, say=said.append)
    assert said[0] == f"1 unfinished run folder(s) left out (no run.json: interrupted; --resume finishes them): {unfinished}"
    assert said[1] == ("1 run folder(s) not written by python -m sparse_rl.train left out (e.g. rl_zoo3.train runs: no "
                       f"run.json, which reports read; train with python -m sparse_rl.train to compare): {zoo}")
    assert said[2] == ("sac Pendulum-v1: the runs' training-time evaluations used different episode counts (dense: [1]; "
                       "rigl 90%: [1, 5])")
    write_run(tmp_path / "dense2", 2, -150.0, {}, method="dense", sparsity=0.0, extra={"n_envs": 4})
    said.clear()
    find_runs(tmp_path, say=said.append)
    assert any(line.startswith("sac Pendulum-v1: 'vs dense' is n/a: the dense runs differ in settings") for line in said)


def test_the_notes_go_into_the_report(tmp_path):
    from sparse_rl.analysis.report import write_report

    write_run(tmp_path / "runs" / "a", 0, -100.0, {"distribution": "erk"})
    runs = find_runs(tmp_path / "runs", say=lambda line: None)
    paths = write_report(runs, tmp_path / "out", ["a note about the runs"])
    assert "## Notes\n\n- a note about the runs" in paths["markdown"].read_text()
    assert "<li>a note about the runs</li>" in paths["html"].read_text()


def test_runs_that_did_not_train_or_rewire_are_said(tmp_path):
    """A SET run whose schedule never fired was reported as SET, and one that took no gradient step as trained."""
    for seed, (name, summary) in enumerate((("set", {"topology_updates": 0, "n_updates": 50}),
                                            ("untrained", {"n_updates": 0}),
                                            ("fine", {"topology_updates": 3, "n_updates": 50}), ("old", {}))):
        write_run(tmp_path / name, seed, -100.0, method="set")
        run_json = tmp_path / name / "run.json"
        run_json.write_text(json.dumps({**json.loads(run_json.read_text()), **summary}))
    said = []
    find_runs(tmp_path, say=said.append)
    inert = [line for line in said if "gradient step" in line or "update" in line]
    assert inert == [f"{tmp_path / 'set'} (set 90%) ran no set update (its schedule never fired): its masks stayed as "
                     "initialised, a static network in effect",
                     f"{tmp_path / 'untrained'} (set 90%) took no gradient step: an untrained agent (learning_starts >= "
                     "its steps)"]


def test_configurations_of_fewer_than_3_seeds_are_said(tmp_path):
    """compare printed "[-1224.6, -1045.4]" for 2 seeds as a 95 % CI: the two seeds' own values."""
    for seed in range(3):
        write_run(tmp_path / f"sparse{seed}", seed, -100.0)
    for seed in range(2):
        write_run(tmp_path / f"dense{seed}", seed, -100.0, method="dense", sparsity=0.0)
    said = []
    note_few_seeds(find_runs(tmp_path, say=lambda line: None), say=said.append)
    assert said == [
        "sac Pendulum-v1: fewer than 3 seeds in dense (2): their 95 % CIs are bootstrap ranges of so few runs (the "
        "seeds' own values; one seed: a point), not intervals to judge by"]
