"""``mer augment``: train a class-conditional DDPM on arrays, generate samples, write a quality report."""

from __future__ import annotations

import argparse

EXAMPLES = """\
examples:
  # time the default settings on the built-in toy set (what docs/augment.md reports)
  mer augment --toy --out runs/ddpm_toy --threads 1
  # balance the classes of the arrays in train.npz (keys x (M,3,H,W) float, y (M,) int)
  mer augment --data train.npz --out runs/ddpm
  # twice as many generated samples as real ones, ancestral sampling, more training
  mer augment --data train.npz --out runs/ddpm --ratio 2.0 --sampler ancestral --train-steps 2000
  # reuse a trained model (same data/config/seed) from a cache folder
  mer augment --data train.npz --out runs/ddpm --cache-dir cache/ddpm --fold-key all

outputs in --out: generated.npz (x, y, generated=True), report.json + report.md (per-class channel
statistics and nearest-neighbour distances vs the training set), grid.png (real vs generated per class,
channels u, v, strain side by side), config.json, timing.json.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    from mer.augment.trainer import DDPMConfig
    from mer.options import add_options

    p = subparsers.add_parser(
        "augment",
        help="train a DDPM on flow images, generate class-balancing samples, report their quality",
        description="Train a class-conditional DDPM (cosine schedule, ε-prediction, U-Net) on the arrays "
        "of an .npz file, generate samples (class balance or a ratio), and write a sample-quality report and "
        "an image grid. Inside LOSO training use `mer train --augment ddpm`, which trains one DDPM per fold "
        "on that fold's training subjects only.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="NPZ", help="an .npz with x (M, C, H, W) float and y (M,) int")
    src.add_argument(
        "--toy",
        action="store_true",
        help="use mer.augment.toy.toy_flow_set(): 442 flow-like 3×28×28 images in 3 classes "
        "(250/109/83), for timing and sanity checks without data",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument(
        "--ratio",
        default="balance",
        help="'balance' (top every class up to the largest) or a number r (r·M samples in the class "
        "proportions); default: balance",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", metavar="DIR", help="cache trained models and samples here (default: none)")
    p.add_argument("--fold-key", default="standalone", help="cache sub-folder name (default: standalone)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--grid-per-class", type=int, default=4, help="samples per class and kind in grid.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_options(p, DDPMConfig)  # every DDPMConfig field with its help and default
    return p


def _load_npz(path: str):
    import numpy as np

    try:
        z = np.load(path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"mer augment: cannot read {path!r} as .npz: {e}") from e
    missing = {"x", "y"} - set(z.files)
    if missing:
        raise SystemExit(
            f"mer augment: {path!r} lacks key(s) {sorted(missing)}; it has {z.files}. "
            "Save with np.savez(path, x=images (M,3,H,W), y=labels (M,))."
        )
    return z["x"], z["y"]


def run(args) -> int:
    import json
    import time
    from pathlib import Path

    import numpy as np
    import torch

    from mer.augment import DDPMConfig, augment_fold
    from mer.augment.quality import quality_report, report_markdown, save_grid
    from mer.options import options_from_args

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = options_from_args(DDPMConfig, args, progress=not args.no_progress)
    except ValueError as e:
        raise SystemExit(f"mer augment: {e}") from e
    try:
        ratio = args.ratio if args.ratio.strip().lower() == "balance" else float(args.ratio)
    except ValueError:
        raise SystemExit(f"mer augment: --ratio must be 'balance' or a number, got {args.ratio!r}") from None
    if args.toy:
        from mer.augment.toy import toy_flow_set

        x, y = toy_flow_set()
    else:
        x, y = _load_npz(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        xg, yg = augment_fold(
            x, y, cfg=cfg, cache_dir=args.cache_dir, fold_key=args.fold_key, seed=args.seed, ratio=ratio
        )
    except ValueError as e:
        raise SystemExit(f"mer augment: {e}") from e
    timing = {
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
        "threads": torch.get_num_threads(),
        "n_train": int(len(x)),
        "n_generated": int(len(xg)),
        "image_shape": list(x.shape[1:]),
    }
    np.savez(out / "generated.npz", x=xg, y=yg, generated=np.ones(len(yg), bool))
    (out / "config.json").write_text(
        json.dumps(
            {**cfg.to_dict(), "ratio": ratio, "seed": args.seed, "data": "toy" if args.toy else str(args.data)},
            indent=2,
        )
    )
    (out / "timing.json").write_text(json.dumps(timing, indent=2))
    if len(xg) == 0:
        print("mer augment: the classes are already balanced for this ratio; nothing generated")
        return 0
    rep = quality_report(xg, yg, np.asarray(x, np.float32), np.asarray(y).astype(np.int64))
    (out / "report.json").write_text(json.dumps(rep, indent=2, default=float))
    (out / "report.md").write_text(report_markdown(rep))
    save_grid(
        xg,
        yg,
        np.asarray(x, np.float32),
        np.asarray(y).astype(np.int64),
        out / "grid.png",
        per_class=args.grid_per_class,
        seed=args.seed,
    )
    print(report_markdown(rep))
    print(
        f"{len(xg)} samples in {timing['wall_s']:.1f} s wall ({timing['cpu_s']:.1f} s CPU, "
        f"{timing['threads']} threads) -> {out}/"
    )
    return 0
