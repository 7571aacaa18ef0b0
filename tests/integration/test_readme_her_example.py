"""The README's Dict-observation / HER example runs as written: a sparse SAC with HER and RigL on BitFlippingEnv."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_her_example_runs_sparse_with_topology_updates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    match = re.search(r"<!-- example: sb3-her -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert match, "README.md has no python block after '<!-- example: sb3-her -->'"
    namespace: dict = {}
    exec(compile(match.group(1), "README.md", "exec"), namespace)
    model = namespace["model"]
    assert type(model.policy).__name__ == "SparseSACMultiInputPolicy" and model.policy.sparse_config.sparsity == 0.9
    assert model.policy.topology_state["updater"]["num_updates"] == 2  # steps 200, 300 (start 100, end 0.8 * 400)
