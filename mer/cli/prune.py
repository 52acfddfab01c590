"""``mer prune``: ESAAT on a trained run, fold by fold (the held-out subject never informs the selection)."""
from __future__ import annotations

import argparse

EXAMPLES = """examples:
  mer prune --run runs/demo --remove 2                  # remove 2 attention layers per fold -> runs/demo/esaat/k2
  mer prune --run runs/demo --budget 0.85               # keep at most 85% of the parameters
  mer prune --run runs/demo --flops-budget 0.8 --out runs/demo_f80
  mer prune --run runs/demo --remove 0 --no-convert     # control: fine-tuning alone, nothing removed/converted

Per fold: a calibration set of that fold's training samples -> transfer entropy of every attention layer
to the head (H(all) - H(layer skipped), Gaussian estimate Σ log std) -> greedy selection -> removal
(fade-out λ 1 -> 0 during the first --fade-epochs, then folded away) -> the remaining softmax layers
become agent attention (q/k/v/proj carried over) -> fine-tuning on the training samples -> prediction of
the held-out subjects. Scored like `mer evaluate` (pooled UF1/UAR). Writes OUT/esaat.json (selected
layers, transfer entropies, before/after params/FLOPs/latency/UF1/UAR, ranking agreement across folds),
OUT/transfer_entropy.png, OUT/summary.md, OUT/metrics.json and per-fold models (mer.esaat.load_pruned).
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "prune", help="ESAAT: remove low-transfer-entropy attention layers of a trained run, agent attention "
        "for the rest, fine-tune and evaluate per fold",
        description="Entropy-based selection of attention layers to remove (ESAAT) on every fold of a "
        "`mer train` run, conversion of the rest to agent attention, fine-tuning, and evaluation with the "
        "run's protocol.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished `mer train` run directory")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--remove", type=int, metavar="K", help="remove K attention layers per fold")
    what.add_argument("--budget", type=float, metavar="FRACTION",
                      help="remove layers until the model keeps at most FRACTION of its parameters")
    what.add_argument("--flops-budget", type=float, metavar="FRACTION",
                      help="remove layers until the model keeps at most FRACTION of its FLOPs")
    p.add_argument("--out", help="output folder (default RUN/esaat/<k2|budget0.85|flops0.8>)")
    p.add_argument("--no-convert", action="store_true", help="keep the remaining layers as they are "
                   "(default: softmax -> agent attention)")
    p.add_argument("--agent-num", type=int, help="agents per converted layer (default: the model's)")
    p.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs (default 10; 0 = none)")
    p.add_argument("--fade-epochs", type=int, default=3,
                   help="epochs of the λ 1 -> 0 fade-out of removed layers (default 3; 0 = removed at once)")
    p.add_argument("--lr", type=float, default=5e-4, help="fine-tuning Adam learning rate (default 5e-4)")
    p.add_argument("--batch-size", type=int, default=64, help="fine-tuning batch size (default 64)")
    p.add_argument("--calib", type=int, default=256, help="calibration samples per fold (default 256)")
    p.add_argument("--skip-scale", type=float, default=2.0,
                   help="removed block computes skip_scale·x before its FFN: 2 = attention -> identity (default, "
                   "the fade-out's end point), 1 = sub-layer skipped (needs --fade-epochs 0)")
    p.add_argument("--criterion", choices=("abs", "signed"), default="abs",
                   help="greedy: smallest |T| (default) or smallest signed T")
    p.add_argument("--full-cov", action="store_true", help="entropy from the full covariance (½ log det)")
    p.add_argument("--seed", type=int, default=0, help="calibration draw, agent init, batch order (default 0)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def run(args) -> int:
    import sys

    from mer.esaat import ESAATConfig, FinetuneConfig, prune_run
    from mer.esaat.pipeline import format_summary

    try:
        cfg = ESAATConfig(remove=args.remove, budget=args.budget, flops_budget=args.flops_budget,
                          convert=not args.no_convert, agent_num=args.agent_num, skip_scale=args.skip_scale,
                          criterion=args.criterion, calib_size=args.calib, full_cov=args.full_cov, seed=args.seed,
                          finetune=FinetuneConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                                  fade_epochs=args.fade_epochs))
        summary = prune_run(args.run, cfg, args.out, force=args.force, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, FileExistsError, TypeError) as e:
        print(f"mer prune: error: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    from pathlib import Path

    out = Path(args.out) if args.out else Path(args.run) / "esaat" / cfg.tag()
    print(f"wrote {out}/esaat.json, summary.md, metrics.json, transfer_entropy.png, folds/*/model.pt")
    return 0
