"""``python -m sparse_rl.export RUN_DIR -o OUT_DIR [--format safetensors|onnx]``: export a trained agent.

``safetensors`` (default): ``policy.safetensors`` + ``policy.json``, loaded without pickle by
``sparse_rl.load_exported``; ``onnx``: ``policy.onnx`` for ONNX Runtime, raw observations in, ``model.predict``'s
actions out. See :mod:`sparse_rl.harness.export`.
"""

from __future__ import annotations

import argparse
import sys

from sparse_rl.harness.export import FORMATS, export_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_rl.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run folder written by python -m sparse_rl.train")
    parser.add_argument("-o", "--output", required=True, help="export folder")
    parser.add_argument("--best", action="store_true", help="export best_model.zip instead of the final model")
    parser.add_argument("--format", choices=FORMATS, default="safetensors",
                        help="safetensors + JSON (default, loaded by sparse_rl.load_exported) or onnx (policy.onnx: raw "
                             "observations in, model.predict actions out)")
    args = parser.parse_args(argv)
    try:
        out = export_run(args.run_dir, args.output, args.best, args.format)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"exported to {out} ({size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
