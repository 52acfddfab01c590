"""``mer prune``: ESAAT on a trained run, fold by fold (the held-out subject never informs the selection).

The ESAAT and fine-tuning options are generated from :class:`mer.esaat.ESAATConfig` / ``FinetuneConfig``.
"""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  mer prune --run runs/demo --remove 2                  # remove 2 attention layers per fold -> runs/demo/esaat/k2
  mer prune --run runs/demo --budget 0.85               # keep at most 85% of the parameters
  mer prune --run runs/demo --flops-budget 0.8 --out runs/demo_f80
  mer prune --run runs/demo --remove 0 --no-convert     # control: fine-tuning alone, nothing removed/converted
  mer prune --run runs/demo --remove 2 --criterion signed --augment ddpm   # + per-fold DDPM samples (the paper's chain)
  mer prune --run runs/demo --remove 2 --workers 2      # two folds at a time; rerun the same command to resume

Per fold: a calibration set of that fold's training samples -> transfer entropy of every attention layer
to the head (H(all) - H(layer skipped), Gaussian estimate Σ log std) -> greedy selection -> removal
(fade-out λ 1 -> 0 during the first --fade-epochs, then folded away) -> the remaining softmax layers
become agent attention (q/k/v/proj carried over) -> fine-tuning on the training samples (+ with --augment
ddpm, samples of a DDPM trained on them; class weights from the real ones) -> prediction of
the held-out subjects. Scored like `mer evaluate` (pooled UF1/UAR). Writes OUT/esaat.json (selected
layers, transfer entropies, before/after params/FLOPs/latency/UF1/UAR, ranking agreement across folds),
OUT/transfer_entropy.png, OUT/summary.md, OUT/metrics.json and per-fold models (mer.esaat.load_pruned).
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    from mer.esaat import ESAATConfig
    from mer.options import add_options

    p = subparsers.add_parser(
        "prune",
        help="ESAAT: remove low-transfer-entropy attention layers of a trained run, agent attention "
        "for the rest, fine-tune and evaluate per fold",
        description="Entropy-based selection of attention layers to remove (ESAAT) on every fold of a "
        "`mer train` run, conversion of the rest to agent attention, fine-tuning, and evaluation with the "
        "run's protocol.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", required=True, help="a finished `mer train` run directory")
    p.add_argument("--out", help="output folder (default RUN/esaat/<k2|budget0.85|flops0.8>)")
    add_options(p, ESAATConfig)  # --remove/--budget/--flops-budget, --convert ... and the fine-tuning options
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="prune N folds at once in worker processes, the cores split between them (default 1; the latency "
        "column is then measured while the other workers run)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a non-empty output folder (without it, the same options resume it)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def run(args) -> int:
    import sys

    from mer.esaat import ESAATConfig, prune_run
    from mer.esaat.pipeline import format_summary
    from mer.options import options_from_args
    from mer.train.runner import FoldFailure

    try:
        cfg = options_from_args(ESAATConfig, args)
        summary = prune_run(
            args.run, cfg, args.out, force=args.force, progress=not args.no_progress, workers=args.workers
        )
    except (ValueError, FileNotFoundError, FileExistsError, TypeError) as e:
        print(f"mer prune: error: {e}", file=sys.stderr)
        return 2
    except FoldFailure as e:
        print(f"mer prune: {e}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    from pathlib import Path

    out = Path(args.out) if args.out else Path(args.run) / "esaat" / cfg.tag()
    print(f"wrote {out}/esaat.json, summary.md, metrics.json, transfer_entropy.png, folds/*/model.pt")
    return 0
