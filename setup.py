"""Build hook only (the metadata is in pyproject.toml): wheels carry the top-level ``configs/`` and ``envs/`` folders
as ``sparse_rl/_data/``, so an installed package finds its hyperparameter files and benchmark suites from any
directory (:mod:`sparse_rl.harness.resources`)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DATA_FOLDERS = ("configs", "envs")


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        for name in DATA_FOLDERS:
            target = Path(self.build_lib) / "sparse_rl" / "_data" / name
            shutil.copytree(ROOT / name, target, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPyWithData})
