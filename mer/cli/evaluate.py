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
        "evaluate",
        help="recompute tables and plots of a training run from its saved predictions",
        description="Pool the fold predictions of a `mer train` run directory and write UF1/UAR overall and "
        "per dataset, confusion matrices, learning curves, the MEGC log and a summary table.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run directory written by `mer train`")
    p.add_argument("--partial", action="store_true", help="score only the finished folds")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    p.add_argument("--json", action="store_true", help="print metrics.json")
    return p


def run(args) -> int:
    """`mer evaluate`: a missing, unfinished or damaged run is one ``mer evaluate: error: ...`` line (exit 2)."""
    import json
    import sys
    from pathlib import Path

    from mer.cli.prepare import plain_warnings
    from mer.evaluation import IncompleteRun, write_report

    def fail(msg: str) -> int:
        print(f"mer evaluate: error: {msg}", file=sys.stderr)
        return 2

    plain_warnings()
    root = Path(args.run)
    if not (root / "config.json").exists() or not (root / "folds.json").exists():
        return fail(f"{root} is not a `mer train` run directory (no config.json / folds.json)")
    for name in ("config.json", "folds.json"):
        try:
            json.loads((root / name).read_text())
        except (OSError, ValueError) as e:
            return fail(
                f"{root / name} is damaged ({type(e).__name__}: {e}); rerun `mer train` with the same "
                "options and --out to rewrite it (finished folds are kept)"
            )
    try:
        m = write_report(root, partial=args.partial, print_table=not args.json, plots=not args.no_plots)
    except IncompleteRun as e:  # also DamagedFold: a finished fold's outputs are missing or damaged
        return fail(str(e))
    except OSError as e:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return fail(f"{e.strerror or e}{where}; check the disk and the folder's permissions, then rerun")
    if args.json:
        print(json.dumps(m, indent=2))
    return 0
