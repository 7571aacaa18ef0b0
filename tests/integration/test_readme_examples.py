"""The README's plain-PyTorch RigL example runs as written and trains a truly sparse MLP."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _example(tag: str) -> str:
    match = re.search(rf"<!-- example: {tag} -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert match, f"README.md has no python block after '<!-- example: {tag} -->'"
    return match.group(1)


def test_pytorch_rigl_example_runs_and_learns():
    namespace: dict = {}
    exec(compile(_example("pytorch-rigl"), "README.md", "exec"), namespace)
    net, layers, x, y, rigl = (namespace[k] for k in ("net", "layers", "x", "y", "rigl"))
    assert rigl.num_updates == 8
    assert all(layer.density < 0.2 for layer in layers.values())
    assert sum(layer.nnz for layer in layers.values()) == namespace["nnz_at_start"]
    assert namespace["loss_fn"]().item() < 0.5 * y.var().item()


def test_sb3_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_example("sb3"), "README.md", "exec"), namespace)
    model = namespace["model"]
    assert type(model.policy).__name__ == "SparseSACPolicy" and model.num_timesteps == 800
    assert model.policy.topology_state["updater"]["num_updates"] == 3  # steps 250, 400, 550 (start 100, end 0.8 * 800)
    assert (tmp_path / "sparse_sac.zip").is_file()
