"""The learning benchmark's report (scripts/learning_report.py): return at equal training wall clock."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("rliable")
SPEC = importlib.util.spec_from_file_location(
    "learning_report", Path(__file__).resolve().parents[2] / "scripts" / "learning_report.py")
learning_report = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(learning_report)


def _record(seed, returns, walltime, step=10):
    return {"seed": seed, "returns": returns, "timesteps": [step * (i + 1) for i in range(len(returns))],
            "walltime_s": walltime, "final": returns[-1]}


def test_each_run_scores_its_last_evaluation_within_the_shortest_runs_wall_clock():
    records = {
        "dense": [_record(s, [1.0 + s, 2.0 + s, 3.0 + s], [10.0, 20.0, 30.0 + s]) for s in range(3)],
        # twice as slow per step: at 30 s it has reached its first evaluation only (at 20 s; the next at 40 s)
        "wide": [_record(s, [5.0 + s, 9.0 + s, 12.0 + s], [20.0, 40.0, 60.0]) for s in range(3)],
    }
    result = learning_report.equal_wall_clock(records)
    assert result["wall_clock_s"] == 30.0  # dense seed 0's last evaluation
    assert result["rows"]["dense"]["per_seed"] == {0: 3.0, 1: 3.0, 2: 4.0}  # seeds 1, 2 finish after 30 s: second evaluation
    assert result["rows"]["wide"]["per_seed"] == {0: 5.0, 1: 6.0, 2: 7.0}
    assert result["rows"]["wide"]["env_steps_mean"] == 10.0
    assert result["rows"]["wide"]["iqm_vs_dense"] > 1.0
    assert "env steps reached" in learning_report.equal_wall_clock_markdown(result)


def test_the_wall_clock_section_shows_each_runs_speed():
    """The sparse-wide report said its runs "trained side by side" while their pairings varied (wide seeds at 23-26 and
    41 steps/s): each seed's steps reached and whole-run speed are listed now."""
    records = {"dense": [_record(s, [1.0, 2.0, 3.0], [10.0, 20.0, 30.0 + 10 * s]) for s in range(2)],
               "wide": [_record(s, [1.0, 2.0, 3.0], [20.0, 40.0, 60.0 * (s + 1)]) for s in range(2)]}
    result = learning_report.equal_wall_clock(records)
    assert result["rows"]["wide"]["steps_per_seed"] == {0: 10, 1: 10}
    assert result["rows"]["wide"]["steps_per_s_per_seed"] == {0: 0.5, 1: 0.2}  # 30 steps in 60 s and in 120 s
    text = learning_report.equal_wall_clock_markdown(result)
    assert "| wide | 10 / 0.5 | 10 / 0.2 |" in text and "| dense | 30 / 1.0 | 20 / 0.8 |" in text
    assert "side by side" not in text


def test_no_wall_clock_curve_gives_no_section():
    records = {"dense": [_record(0, [1.0], None), _record(1, [2.0], None)], "wide": [_record(0, [1.0], [5.0])]}
    assert learning_report.equal_wall_clock(records) is None


def test_ablations_are_compared_with_their_own_baseline():
    names = ["dense", "rigl90", "rigl90-init-dense", "rigl90-wd1e-4", "dense-wd1e-4", "rigl90-wide816-x", "static90"]
    assert learning_report.ablation_baselines(names) == {
        "rigl90-init-dense": "rigl90", "rigl90-wd1e-4": "rigl90", "dense-wd1e-4": "dense", "rigl90-wide816-x": "rigl90"}
    finals = {"dense": [10.0, 11.0, 12.0], "rigl90": [5.0, 6.0, 7.0], "rigl90-wd1e-4": [8.0, 9.0, 10.0]}
    records = {name: [{**_record(seed, [final], [1.0]), "dormant": {}, "nnz": 1, "density": 1.0, "wall_time_s": 1.0,
                       "steps_per_s": 1.0} for seed, final in enumerate(values)] for name, values in finals.items()}
    summary = learning_report.summarize(records)
    row = summary["rows"]["rigl90-wd1e-4"]
    assert row["baseline"] == "rigl90" and row["p_improvement_over_baseline"][0] == 1.0  # every seed above every seed
    assert row["iqm_vs_baseline"] == pytest.approx(1 + (9.0 - 6.0) / 6.0)
    assert "baseline" not in summary["rows"]["rigl90"]
    text = learning_report.ablation_markdown(summary)
    assert "| rigl90-wd1e-4 | rigl90 |" in text and "dense-wd1e-4" not in text


def test_the_report_lists_resumed_runs():
    """A benchmark run resumed at a session end left no trace in its record or the report."""
    row = {"iqm": [1.0, 0.5, 1.5], "mean": [1.0, 0.5, 1.5], "iqm_vs_dense": None, "p_improvement_over_dense": None,
           "dormant_end": {}, "nnz": 10, "density": 1.0, "wall_time_s": 1.0, "steps_per_s": 1.0,
           "per_seed": {0: 1.0, 1: 1.0}}
    summary = {"seeds_compared": [0, 1], "rows": {"dense": {**row, "resumes": {1: [
        {"step": 300000, "time": "t", "environments": "replayed"}]}}, "rigl90": dict(row)}}
    text = learning_report.markdown(summary, "# h")
    assert "Resumed from a checkpoint" in text and "dense seed 1 at step 300,000 (replayed)" in text
    assert "Resumed" not in learning_report.markdown({**summary, "rows": {"rigl90": dict(row)}}, "# h")


def test_a_run_resumed_twice_from_one_checkpoint_is_listed_once_with_a_count():
    """A run interrupted twice before its next checkpoint was listed twice in the same words, like a copying slip."""
    row = {"iqm": [1.0, 0.5, 1.5], "mean": [1.0, 0.5, 1.5], "iqm_vs_dense": None, "p_improvement_over_dense": None,
           "dormant_end": {}, "nnz": 10, "density": 1.0, "wall_time_s": 1.0, "steps_per_s": 1.0, "per_seed": {2: 1.0}}
    resumes = [{"step": 25000, "time": t, "environments": "replayed"} for t in ("t1", "t2")]
    text = learning_report.markdown({"seeds_compared": [2], "rows": {"dense": {**row, "resumes": {2: resumes}}}}, "# h")
    assert "dense seed 2 at step 25,000 (replayed), 2 times." in text and text.count("at step 25,000") == 1


def test_the_report_says_which_runs_predate_resume_records():
    """Runs trained before run.json recorded resumes were reported as never resumed (four SAC runs had been)."""
    records = {"dense": [{"seed": 0, "final": 1.0, "resumes": None, "dormant": {}, "nnz": 1, "density": 1.0,
                          "wall_time_s": 1.0, "steps_per_s": 1.0},
                         {"seed": 1, "final": 2.0, "resumes": [], "dormant": {}, "nnz": 1, "density": 1.0,
                          "wall_time_s": 1.0, "steps_per_s": 1.0}]}
    summary = learning_report.summarize(records)
    assert summary["rows"]["dense"]["resumes_unrecorded"] == [0]
    assert "Written before runs recorded their resumes" in learning_report.markdown(summary, "# h")
    assert "dense seed 0." in learning_report.markdown(summary, "# h")


def test_the_dormant_column_averages_the_last_measurements():
    """One measurement is noisy (PPO measures on half an episode: one run read 0.05, 0.05, then 0.35 at the end), and
    the table showed that last value alone."""
    def run(seed, fractions):
        return {"seed": seed, "final": 1.0, "resumes": [], "nnz": 1, "density": 1.0, "wall_time_s": 1.0,
                "steps_per_s": 1.0, "dormant": {"pi": [(10 * (i + 1), f) for i, f in enumerate(fractions)]}}
    summary = learning_report.summarize({"rigl90": [run(0, [0.9, 0.05, 0.05, 0.35]), run(1, [0.9, 0.1, 0.1, 0.1])]})
    assert summary["rows"]["rigl90"]["dormant_end"]["pi"] == pytest.approx((0.15 + 0.1) / 2)
    assert "mean of the last 3 measurements" in learning_report.markdown(summary, "# h")


def test_a_report_of_unfinished_runs_says_it_is_partial():
    """A partial report (committed at a session end) read like the benchmark's result."""
    records = {"dense": [_record(0, [1.0], 10.0), _record(1, [2.0], 10.0)], "rigl90": [_record(0, [1.0], 10.0)]}
    assert learning_report.partial_note(records, 4).startswith("**Partial: 3 of 4 runs finished")
    assert learning_report.partial_note(records, 3) == ""
