#!/usr/bin/env python3
"""The released HTNet at full size on one GPU: all 68 LOSO folds of the HTNet release, 800 epochs each.

    python scripts/gpu_release_loso.py --release /data/HTNet --out runs/release_gpu

runs ``mer train`` with the release's settings (``--preset release``: htnet_original, 139.6 M parameters,
Adam lr 5e-5, batch 256, 800 epochs, plain cross-entropy, no shuffling, the raw 0-255 tiles) and its
evaluation (``--selection oracle-release``: each fold's epoch with the best held-out accuracy, the latest
on ties), which also saves every fold's last-epoch predictions: one training gives the release-style
oracle figure and the honest fixed-budget figure side by side (summary.md, metrics.json "last_epoch").

How it fits a GPU: folds train ``--fold-batch`` (17) at a time in one vmapped step (mer.train.batched), 4
groups for the 68 folds; TF32 matrix products (``--matmul-precision high``); no per-epoch checkpoints and
no model.pt files (560 MB per fold: 38 GB for 68). Memory per group of 17: weights, gradients, two Adam
moments and the best epoch's copy, 5 x 17 x 139.6 M x 4 B = 47 GB, plus Adam's temporaries and the
activations: fits a 141 GB H200 (on an 80 GB H100 pass --fold-batch 12). Arithmetic: 68 x 800 epochs x
~431 training samples x 1.28 GFLOP (forward + backward, torch.utils.flop_counter) = 30 PFLOP of matrix
products, and per Adam step ~66 GB of optimizer traffic per group (1600 steps x 4 groups: 25 s a group
at 4.3 TB/s).

Measured (H200, torch 2.11.0+cu130, 2026-12-04; benchmarks/results/real-release-gpu-2026-12-04/): a group
of 17 folds alone on the GPU takes 230 s (~20 s start-up, 206 s training at 66 fold-epochs per second,
54 GB of GPU memory; the first lease, before the fused Adam and the stacked predictions, ~5 min). All 68
folds: ~14 min, more than one 10-minute device call. Two ways to spread it: rerun into the same --out
(finished folds are kept; a fold is finished once its result.json is written), or give each call its own
slice of folds and pool the slices' metrics.json files afterwards (what a 15-minute lease with nothing
kept between sessions needs; the per-sample files carry the release's labels and are not committed):

    python scripts/gpu_release_loso.py --release .devrun/htnet_release --out .devrun/rel_51_67 --folds 51-67
    python scripts/pool_partial_runs.py benchmarks/results/real-release-gpu-2026-12-04/folds-* .devrun/rel_51_67

Extra options are passed to ``mer train`` after these (the last one given wins), e.g. ``--seed 1``,
``--selection fixed``, ``--fold-batch 12``. Writes OUT/gpu_run.json: device, wall time, the command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULTS = [
    "--preset",
    "release",
    "--selection",
    "oracle-release",
    "--device",
    "cuda",
    "--fold-batch",
    "17",
    "--matmul-precision",
    "high",
    "--no-deterministic",
    "--checkpoint-every",
    "0",
    "--no-save-models",
    "--no-progress",
]


def mer_train_args(release: str, out: str, extra: list[str]) -> list[str]:
    """The `mer train` argument list this script runs."""
    return ["train", "--data", f"htnet-release:{release}", *DEFAULTS, "--out", out, *extra]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Any other option is passed on to `mer train`."
    )
    ap.add_argument("--release", required=True, help="the HTNet release folder (a clone of wangzhifengharrison/HTNet)")
    ap.add_argument("--out", required=True, help="the run directory")
    args, extra = ap.parse_known_args(argv)
    import torch

    from mer.cli import main as mer_main

    argv_train = mer_train_args(args.release, args.out, extra)
    device = "cpu"
    if torch.cuda.is_available():
        device = f"{torch.cuda.get_device_name(0)} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
    print(f"device: {device}; mer {' '.join(argv_train)}", flush=True)
    t0 = time.perf_counter()
    rc = mer_main(argv_train)
    wall = time.perf_counter() - t0
    print(f"wall time {wall / 60:.1f} min (rc {rc})", flush=True)
    if Path(args.out).is_dir():
        (Path(args.out) / "gpu_run.json").write_text(
            json.dumps(
                {
                    "device": device,
                    "wall_seconds": round(wall, 1),
                    "rc": rc,
                    "torch": torch.__version__,
                    "cuda": torch.version.cuda,
                    "command": [Path(sys.executable).name, *sys.argv],
                },
                indent=2,
            )
            + "\n"
        )
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
