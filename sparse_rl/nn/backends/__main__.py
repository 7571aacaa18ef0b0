"""``python -m sparse_rl.nn.backends [--build]``: build the compiled CPU kernel now and list the usable backends.

The set-up (``make install``) runs this once so the first training run does not pay for the compile. A failed build
is not an error: the package then runs on the torch/reference path (one warning line says so).
"""

from __future__ import annotations

import argparse
import sys

import torch as th

from sparse_rl.nn import backends
from sparse_rl.nn.backends import _build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_rl.nn.backends", description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", action="store_true", help="compile (or find in the cache) the CPU kernel")
    args = parser.parse_args(argv)
    if args.build:
        library = _build.load()
        print(f"cpu kernel: {'ready in ' + str(_build.cache_dir()) if library is not None else 'unavailable'}")
    devices = ["cpu"] + (["cuda"] if th.cuda.is_available() else [])
    for device in devices:
        print(f"backends usable on {device}: {', '.join(backends.available(device))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
