"""``python -m sparse_rl.compare LOG_DIR [-o REPORT_DIR]``: dense-vs-sparse report from training run folders.

Writes learning-curve PNGs (mean and 95 % CI over seeds, one line per method/sparsity), and a table of final return,
ratio to dense, parameters, FLOPs, wall time and steps per second, as ``report.md`` and ``report.html``.
"""

from __future__ import annotations

import argparse
import sys

from sparse_rl.analysis.report import markdown_table, summary_rows, write_report
from sparse_rl.analysis.runs import find_runs, note_few_seeds, print_and_keep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_rl.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("log_dir", help="folder holding run folders (searched recursively)")
    parser.add_argument("-o", "--output", default=None, help="report folder (default: LOG_DIR/report)")
    args = parser.parse_args(argv)
    try:
        notes: list[str] = []
        runs = find_runs(args.log_dir, say=print_and_keep(notes))
        note_few_seeds(runs, print_and_keep(notes))
        paths = write_report(runs, args.output or f"{args.log_dir.rstrip('/')}/report", notes)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown_table(summary_rows(runs)))
    print(f"report: {paths['html']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
