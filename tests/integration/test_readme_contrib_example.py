"""The README's sb3-contrib example runs as written: a 90 %-sparse TQC trained with RigL, saved and loaded."""

import pytest

from tests.integration.test_readme_examples import _example

pytest.importorskip("sb3_contrib")


def test_sb3_contrib_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_example("sb3-contrib"), "README.md", "exec"), namespace)
    model = namespace["model"]
    assert type(model.policy).__name__ == "SparseTQCPolicy" and model.num_timesteps == 400
    assert model.policy.topology_state["updater"]["num_updates"] == 2  # steps 200 and 300 (start 100, end 0.8 * 400)
    assert 0.0 < namespace["sparsity_report"](model)["total"]["density"] < 0.5
