#!/usr/bin/env python3
"""How good are the per-fold DDPM samples of `mer prune --augment ddpm` (or `mer train --augment ddpm`)?

For every fold of a finished `mer train` run with saved models, rebuild the fold's normalised fit arrays
exactly as `mer prune` does, fetch that fold's DDPM samples through the same code (from the cache: a
fold missing there is trained, ~40 CPU s), and score them with ``mer.augment.quality_report`` against the
fit samples: per class and channel the mean difference and the std ratio (standardised units), the median
nearest-neighbour distance of generated to training images over that of real to real, and the share of
near copies. Writes OUT/ddpm_quality.json (per fold + median/min/max over folds) and prints the summary.
Statistics only: no image of the data is written.

Example (benchmarks/results/real-esaat-ddpm-loso-2026-12-04/)::

    python scripts/ddpm_fold_quality.py --run runs/real/lape-s0-fixed --ddpm-cache runs/real/ddpm_cache \\
        --out runs/real/ddpm-quality
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def fold_quality(run: Path, cache: str | None, progress: bool = True) -> list[dict]:
    from tqdm.auto import tqdm

    from mer.augment.quality import quality_report
    from mer.esaat.pipeline import ESAATConfig, _read_run, ddpm_samples
    from mer.train import normalise
    from mer.train.data import load_inputs

    tcfg, folds = _read_run(run)
    cfg = ESAATConfig(remove=0, augment="ddpm", ddpm_cache=cache)
    inputs = load_inputs(tcfg, workers=1, progress=False)
    x, y = inputs.x, inputs.y
    recs = []
    for fold in tqdm(folds, desc="DDPM quality", unit="fold", disable=not progress):
        src = run / "folds" / fold["dir"]
        if not (src / "model.pt").is_file():
            raise FileNotFoundError(f"{src}/model.pt missing: the run must keep its models (no --no-save-models)")
        fit = np.asarray(json.loads((src / "result.json").read_text())["split"]["fit"], np.int64)
        ck = torch.load(src / "model.pt", map_location="cpu", weights_only=True)
        x_fit = normalise(x[fit], np.asarray(ck["norm_mean"]), np.asarray(ck["norm_std"]))
        x_gen, y_gen = ddpm_samples(cfg, tcfg, fold, x_fit, y[fit])
        r = quality_report(x_gen, y_gen, x_fit, y[fit])
        recs.append(
            {
                "fold": fold["name"],
                "n_train": r["n_train"],
                "n_generated": r["n_generated"],
                "generated_per_class": {int(c): int((y_gen == c).sum()) for c in np.unique(y_gen)},
                "median_ratio_gen_over_real": r["overall"]["median_ratio_gen_over_real"],
                "near_copy_fraction": r["overall"]["near_copy_fraction"],
                "class_mean_abs_diff": {int(c): v["mean_abs_diff"] for c, v in r["per_class"].items()},
                "class_std_ratio": {int(c): v["std_ratio"] for c, v in r["per_class"].items()},
            }
        )
    return recs


def summarise(recs: list[dict]) -> dict:
    def spread(key: str) -> dict:
        v = np.array([r[key] for r in recs], float)
        return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}

    classes = sorted({c for r in recs for c, v in r["class_mean_abs_diff"].items() if v is not None})
    per_class = {}
    for c in classes:
        d = np.array([r["class_mean_abs_diff"][c] for r in recs if r["class_mean_abs_diff"].get(c) is not None])
        s = np.array([r["class_std_ratio"][c] for r in recs if r["class_std_ratio"].get(c) is not None])
        per_class[c] = {
            "mean_abs_diff_median_per_channel": np.median(d, 0).round(3).tolist(),
            "std_ratio_median_per_channel": np.median(s, 0).round(3).tolist(),
        }
    return {
        "folds": len(recs),
        "channels": ["u", "v", "strain"],
        "units": "standardised with each fold's fit statistics",
        **{k: spread(k) for k in ("n_train", "n_generated", "median_ratio_gen_over_real", "near_copy_fraction")},
        "generated_classes": per_class,
        "per_fold": recs,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, type=Path, help="a finished `mer train` run with saved models")
    ap.add_argument("--ddpm-cache", help="the DDPM cache of the prune (default: mer prune's default)")
    ap.add_argument("--out", required=True, type=Path, help="folder for ddpm_quality.json")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    try:
        summary = summarise(fold_quality(a.run, a.ddpm_cache, progress=not a.no_progress))
    except (FileNotFoundError, ValueError) as e:
        print(f"ddpm_fold_quality: error: {e}", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "ddpm_quality.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "per_fold"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
