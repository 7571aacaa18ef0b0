"""Where the data folders the package ships live: ``configs/`` (hyperparameters) and ``envs/`` (benchmark suites).

In a source checkout (and an editable install) they are the top-level folders users read; a wheel carries copies in
``sparse_rl/_data/`` (written by ``setup.py``'s ``build_py``), so ``pip install .`` works from any directory.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
DATA_FOLDERS = ("configs", "envs")


def data_dir(name: str) -> Path:
    """The shipped ``configs`` or ``envs`` folder (the wheel's copy, else the source tree's)."""
    if name not in DATA_FOLDERS:
        raise ValueError(f"unknown data folder {name!r}; choose one of {list(DATA_FOLDERS)}")
    packaged, checkout = PACKAGE_DIR / "_data" / name, PACKAGE_DIR.parent / name
    if packaged.is_dir():
        return packaged
    if checkout.is_dir() and (PACKAGE_DIR.parent / "pyproject.toml").is_file():  # a source checkout, not site-packages
        return checkout
    raise ValueError(f"the {name}/ folder of sparse_rl is missing (looked in {PACKAGE_DIR / '_data'} and "
                     f"{PACKAGE_DIR.parent}): reinstall the package")
