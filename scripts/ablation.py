#!/usr/bin/env python3
"""The training ablation and the augmentation comparison on the synthetic composite (docs/training.md).

Runs ``mer train`` once per (configuration, seed) into OUT/<config>-s<seed> (a finished run is reused, an
interrupted one resumes: rerun the same command), then writes OUT/ablation.json and OUT/ablation.md with
UF1/UAR as mean ± sample standard deviation over the seeds, parameters and forward FLOPs per image, and
the mean training CPU time per fold.

Configurations (``--configs``, comma-separated; all use the regions input and the same protocol):

  released_scaled   htnet_original's structure (patch 7, 3 levels, depths 2/2/10, one token per
                    attention) at dim 32 instead of 256 (2.2 M instead of 139.6 M parameters) so that it
                    trains on a CPU
  htnet             htnet_small: the working HTNet, block-scalar positions, softmax attention
  lape              htnet_small_lape: + LAPE on the patch embedding
  lape_agent        htnet_small_lape_agent: + agent attention (the default model)
  lape_agent_ddpm   lape_agent with DDPM augmentation of each fold's training subjects (--augment ddpm)

Example (what docs/training.md reports)::

    python scripts/ablation.py --data data/synth --out runs/ablation --seeds 0,1,2 \\
        --protocol kfold:5 --epochs 20 --flow dis --workers 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {
    "released_scaled": ("htnet_original", ["dim=32"], "none"),
    "htnet": ("htnet_small", [], "none"),
    "lape": ("htnet_small_lape", [], "none"),
    "lape_agent": ("htnet_small_lape_agent", [], "none"),
    "lape_agent_ddpm": ("htnet_small_lape_agent", [], "ddpm"),
}


def profile(model_name: str, model_args: list[str], size: int) -> dict:
    """Parameters and forward FLOPs per image (FlopCounterMode, see mer.models.profile)."""
    import torch

    from mer.cli.train import _kv  # the parsing `mer train --model-arg` applies, so this is the trained model
    from mer.models import create_model
    from mer.models.profile import count_flops, count_params

    m = create_model(model_name, **_kv(model_args, "--model-arg")).eval()
    with torch.no_grad():
        f = count_flops(m, torch.randn(1, 3, size, size))
    return {"params": count_params(m), "mflops": f["flops"] / 1e6}


def run_one(a, name: str, seed: int) -> dict:
    model, margs, augment = CONFIGS[name]
    out = Path(a.out) / f"{name}-s{seed}"
    cmd = [sys.executable, "-m", "mer", "train", "--data", a.data, "--protocol", a.protocol, "--flow", a.flow,
           "--epochs", str(a.epochs), "--seed", str(seed), "--workers", str(a.workers), "--cache", a.cache,
           "--out", str(out), "--model", model, "--augment", augment, "--no-progress"]
    for kv in margs:
        cmd += ["--model-arg", kv]
    metrics = out / "metrics.json"
    m = json.loads(metrics.read_text()) if metrics.exists() else None
    if m is None or m["folds_finished"] != m["folds"]:
        print(f"[ablation] {name} seed {seed}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.time()
        subprocess.run(cmd, check=True)
        print(f"[ablation] {name} seed {seed}: {time.time() - t0:.0f} s", flush=True)
        m = json.loads(metrics.read_text())
    return {"config": name, "seed": seed, "model": model, "model_args": margs, "augment": augment,
            "uf1": m["scores"]["all"]["uf1"], "uar": m["scores"]["all"]["uar"],
            "per_dataset": {k: v for k, v in m["scores"].items() if k != "all"},
            "fold_seconds_mean": m["timing"]["fold_seconds_mean"],
            "fold_cpu_seconds_mean": m["timing"]["fold_cpu_seconds_mean"], "run": str(out)}


def _ms(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def summarise(rows: list[dict], prof: dict, a) -> str:
    lines = [f"Synthetic composite, protocol {a.protocol}, {a.epochs} epochs, {a.flow} flow, regions input; "
             f"mean ± sample std over seeds {a.seeds}; train time = mean CPU seconds per fold (one thread per fold "
             f"worker; wall time depended on the machine's other load).", "",
             "| configuration | model | UF1 | UAR | params | MFLOPs/image | CPU s/fold | seeds |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name in a.configs:
        rs = [r for r in rows if r["config"] == name]
        if not rs:
            continue
        model, margs, augment = CONFIGS[name]
        label = model + (f" ({', '.join(margs)})" if margs else "") + (" + DDPM" if augment != "none" else "")
        p = prof[name]
        lines.append(f"| {name} | {label} | {_ms([r['uf1'] for r in rs])} | {_ms([r['uar'] for r in rs])} | "
                     f"{p['params']:,} | {p['mflops']:.1f} | "
                     f"{statistics.mean(r['fold_cpu_seconds_mean'] for r in rs):.0f} | {len(rs)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/synth", help="a `mer synth` folder (default data/synth)")
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--cache", default="data/cache")
    ap.add_argument("--configs", default="released_scaled,htnet,lape,lape_agent,lape_agent_ddpm")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--protocol", default="kfold:5")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--flow", default="dis")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=28, help="input side (for the FLOP count)")
    a = ap.parse_args(argv)
    a.configs = [c for c in a.configs.split(",") if c]
    bad = [c for c in a.configs if c not in CONFIGS]
    if bad:
        ap.error(f"unknown configuration(s) {bad}; choose from {', '.join(CONFIGS)}")
    a.seeds = [int(s) for s in a.seeds.split(",")]
    if not (Path(a.data) / "synth_config.json").exists():
        ap.error(f"{a.data} is not a `mer synth` folder; make one with `mer synth --out {a.data}`")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    for seed in a.seeds:  # seed-major: a partial ablation still covers every configuration
        for name in a.configs:
            rows.append(run_one(a, name, seed))
    prof = {name: profile(CONFIGS[name][0], CONFIGS[name][1], a.size) for name in a.configs}
    table = summarise(rows, prof, a)
    (Path(a.out) / "ablation.json").write_text(json.dumps(
        {"args": {k: v for k, v in vars(a).items()}, "rows": rows, "profile": prof}, indent=1))
    (Path(a.out) / "ablation.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
