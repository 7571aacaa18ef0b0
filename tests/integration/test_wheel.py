"""A wheel install works from any directory: the configs and suites ship inside the package."""

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_installed_elsewhere_trains_with_its_packaged_config(tmp_path):
    """configs/ and envs/ were found relative to the source tree, so a wheel could not train without -conf."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels)], check=True, cwd=tmp_path, timeout=600)
    wheel = next(wheels.glob("sparse_rl-*.whl"))
    fresh = tmp_path / "fresh"
    venv.create(fresh, with_pip=False)
    python = fresh / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies (torch, SB3, gymnasium...) come from this environment's site-packages; its .pth files (the
    # editable install of sparse_rl) are not processed from there, so sparse_rl itself comes only from the wheel
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    where = subprocess.run([str(python), "-c", "import sparse_rl, sparse_rl.harness.suites as s; print(sparse_rl.__file__); "
                            "print(s.SUITE_DIR)"], capture_output=True, text=True, cwd=elsewhere, env=env, check=True)
    package_file, suite_dir = where.stdout.split()
    assert package_file.startswith(str(site)) and suite_dir.startswith(str(site)), where.stdout
    result = subprocess.run([str(python), "-m", "sparse_rl.train", "--algo", "sac", "--env", "Pendulum-v1", "-n", "200",
                             "--eval-freq", "-1", "-v", "0", "-params", "learning_starts:50", "batch_size:16"],
                            capture_output=True, text=True, cwd=elsewhere, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    import yaml

    resolved = yaml.safe_load((elsewhere / "logs" / "sac" / "Pendulum-v1_1" / "Pendulum-v1" / "resolved.yml").read_text())
    assert resolved["sources"]["policy"] == f"{site}/sparse_rl/_data/configs/sac.yml [Pendulum-v1]"
