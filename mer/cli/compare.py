"""``mer compare``: is one model better than another on the same subjects (paired bootstrap over subjects)."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  mer compare runs/lape-s0 runs/lape-s1 runs/lape-s2 --against runs/floor/predictions.csv
  mer compare runs/esaat-k1 --against runs/control --boot 5000 --out k1_vs_control.json
  mer compare runs/k1-s0 runs/k1-s1 runs/k1-s2 --against runs/base-s0 runs/base-s1 runs/base-s2 --runs paired
  mer compare runs/release-oracle --against runs/floor/predictions.csv --which selected   # the oracle's pick
  mer compare runs/big-0-16+runs/big-17-33 --against runs/floor/predictions.csv --common-subjects

Each side is one or more `mer train` run folders (several: seeds, scored as their mean and resampled
with the subjects, see --runs) or predictions CSVs (a run's predictions.csv, or the linear floor's:
`python -m mer.baselines.linear`). Both sides must hold the same held-out subjects and samples. A run
trained with --selection oracle-release is compared at its last epoch (its honest estimate) unless
--which selected. A run trained in parts (--folds slices in separate folders) is one argument, its parts
joined with + (they must hold disjoint subjects). --common-subjects scores every run on the subjects all
of them hold (e.g. a partial run against the floor) and says how many that is. Nothing is retrained.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compare",
        help="is model A better than model B on the same subjects? (paired bootstrap of UF1/UAR)",
        description="Compare the pooled UF1/UAR of two sets of runs scored on the same subjects, with a 95 % "
        "interval for the difference from a paired bootstrap over subjects (within each database).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("a", nargs="+", metavar="A", help="run folders or predictions CSVs of model A")
    p.add_argument("--against", nargs="+", required=True, metavar="B", help="the same for model B")
    p.add_argument(
        "--which",
        choices=("honest", "selected"),
        default="honest",
        help="honest: an oracle-selection run at its last epoch, other runs at their selection; selected: every "
        "run at its own selection (default: honest)",
    )
    p.add_argument(
        "--common-subjects",
        action="store_true",
        help="score every run on the subjects all of them hold, instead of refusing runs that hold different ones",
    )
    p.add_argument(
        "--runs",
        choices=("resample", "paired", "fixed"),
        default="resample",
        help="how a side's several runs (seeds) enter each draw: resample (with replacement, each side on its "
        "own; default), paired (run i of A with run i of B, e.g. a pruned model and its base, same order), "
        "fixed (the runs given: an interval conditional on those seeds)",
    )
    p.add_argument("--boot", type=int, default=2000, help="bootstrap draws (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    p.add_argument("--out", help="also write the result as JSON here")
    return p


def run(args) -> int:
    import sys
    from pathlib import Path

    from mer.evaluation.compare import compare, format_comparison, join_parts, load_predictions

    def load(arg: str):  # a path, or the parts of one run joined with + (a path that exists wins)
        parts = [arg] if Path(arg).exists() or "+" not in arg else arg.split("+")
        return join_parts([load_predictions(p, args.which) for p in parts])

    try:
        a = [load(p) for p in args.a]
        b = [load(p) for p in args.against]
        res = compare(a, b, n_boot=args.boot, seed=args.seed, common=args.common_subjects, runs=args.runs)
    except (OSError, ValueError, KeyError) as e:
        print(f"mer compare: error: {e}", file=sys.stderr)
        return 2
    print(format_comparison(res))
    if args.out:
        from mer.io import atomic_write_json

        atomic_write_json(Path(args.out), res)
        print(f"wrote {args.out}")
    return 0
