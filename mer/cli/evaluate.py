"""``mer evaluate``: recompute a run's pooled metrics, tables, MEGC log and plots from its saved predictions."""
from __future__ import annotations

import argparse

EXAMPLES = """examples:
  mer evaluate runs/demo                 # rewrite metrics.json, summary.md, megc_log.txt, plots
  mer evaluate runs/loso --partial       # score the folds finished so far (labelled PARTIAL)
  mer evaluate runs/loso --json          # print metrics.json instead of the table

Nothing is retrained: the fold predictions (RUNDIR/folds/*/predictions.csv) are pooled and scored as in
the MEGC2019 challenge (UF1/UAR over all folds, and over each dataset's share).
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate", help="recompute tables and plots of a training run from its saved predictions",
        description="Pool the fold predictions of a `mer train` run directory and write UF1/UAR overall and "
        "per dataset, confusion matrices, learning curves, the MEGC log and a summary table.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory written by `mer train`")
    p.add_argument("--partial", action="store_true", help="score only the finished folds")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    p.add_argument("--json", action="store_true", help="print metrics.json")
    return p


def run(args) -> int:
    import json
    import sys
    from pathlib import Path

    from mer.evaluation import IncompleteRun, write_report

    root = Path(args.run)
    if not (root / "config.json").exists() or not (root / "folds.json").exists():
        print(f"mer evaluate: error: {root} is not a `mer train` run directory (no config.json / folds.json)",
              file=sys.stderr)
        return 2
    try:
        m = write_report(root, partial=args.partial, print_table=not args.json, plots=not args.no_plots)
    except IncompleteRun as e:
        print(f"mer evaluate: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(m, indent=2))
    return 0
