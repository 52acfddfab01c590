#!/usr/bin/env python3
"""Training throughput of a model on the HTNet release's LOSO folds: CPU seconds per fold-epoch for one
fold at a time (1 and 2 threads), several folds per step (--fold-batch, mer.train.batched) and two worker
processes side by side, then the minutes a full 68-fold LOSO seed takes at a given epoch budget.

    flock /tmp/cpu-heavy.lock python scripts/train_throughput.py --release ../shared/data/htnet_release \\
        --model htnet_small_lape --epochs 4 --out benchmarks/results/train-throughput.json

Each setting trains real LOSO folds (the release's tiles, batch 64, Adam, fixed budget) for --epochs epochs
into a scratch folder and reports the median per-fold epoch time of the epochs after the first (warm-up);
the two-worker setting runs two single-thread processes at once and reports their epoch time (each core
trains its own fold). Prints a Markdown table; --out writes JSON with the machine and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _cpu_name() -> str:
    """'AMD EPYC (family 25 model 17)': the model name and, as VMs often hide the name, family and model."""
    info = {}
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or "unknown"
    return f"{info.get('model name', 'unknown')} (family {info.get('cpu family', '?')} model {info.get('model', '?')})"


def measure(
    release: str, model: str, epochs: int, threads: int, fold_batch: int, first_fold: int, batch: int, lr: float
) -> dict:
    """Train folds first_fold .. first_fold + max(1, fold_batch) - 1 in this process; per-fold epoch seconds."""
    import torch

    from mer.train import TrainConfig
    from mer.train.batched import train_folds_batched
    from mer.train.data import load_inputs
    from mer.train.folds import build_folds, fold_dirname
    from mer.train.loop import FoldTask, train_fold

    torch.set_num_threads(threads)
    cfg = TrainConfig(
        data=f"htnet-release:{release}",
        model=model,
        epochs=epochs,
        batch_size=batch,
        lr=lr,
        fold_batch=fold_batch,
        progress=False,
        out="unused",
    )
    inputs = load_inputs(cfg)
    folds = build_folds(inputs.samples, "loso", loso_folds=inputs.loso_folds)
    ids = [(s.dataset, s.subject, s.clip) for s in inputs.samples]
    subjects = [(s.dataset, s.subject) for s in inputs.samples]
    with tempfile.TemporaryDirectory() as tmp:
        tasks = [
            FoldTask(
                cfg=cfg,
                index=i,
                name=folds[i].name,
                dirname=fold_dirname(i, folds[i]),
                fold_dir=str(Path(tmp) / str(i)),
                train=folds[i].train,
                test=folds[i].test,
                x=inputs.x,
                y=inputs.y,
                subjects=subjects,
                ids=ids,
            )
            for i in range(first_fold, first_fold + max(1, fold_batch))
        ]
        t0, c0 = time.perf_counter(), time.process_time()
        if fold_batch > 1:
            results = train_folds_batched(tasks, progress=False)
        else:
            results = [train_fold(tasks[0], progress=False)]
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        hist = [json.loads((Path(t.fold_dir) / "history.json").read_text()) for t in tasks]
    per_epoch = statistics.median(h["seconds"] for hs in hist for h in hs[1:])
    return {
        "model": model,
        "threads": threads,
        "fold_batch": fold_batch,
        "folds": len(tasks),
        "epochs": epochs,
        "fold_epoch_seconds": round(per_epoch, 4),
        "wall_seconds": round(wall, 2),
        "cpu_seconds_per_fold": round(cpu / len(tasks), 2),
        "n_fit": results[0]["n_fit"],
    }


def _child(args, threads: int, fold_batch: int, first_fold: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        __file__,
        "--release",
        args.release,
        "--model",
        args.model,
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--_one",
        f"{threads},{fold_batch},{first_fold}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--release", required=True, help="the HTNet release folder")
    ap.add_argument("--model", default="htnet_small_lape")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per measurement (the first is warm-up)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--fold-batches", default="4,17", help="fold_batch values to measure (besides 1)")
    ap.add_argument("--budget-epochs", default="20,30,40", help="epoch budgets to project a 68-fold seed for")
    ap.add_argument("--out", help="write the JSON here")
    ap.add_argument("--_one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._one:  # a child: one measurement, JSON on stdout
        threads, fold_batch, first = (int(v) for v in args._one.split(","))
        print(
            json.dumps(
                measure(args.release, args.model, args.epochs, threads, fold_batch, first, args.batch_size, args.lr)
            )
        )
        return 0
    rows = []

    def one(threads, fold_batch, first=0):
        p = _child(args, threads, fold_batch, first)
        out, _ = p.communicate()
        return json.loads(out.strip().splitlines()[-1])

    for threads in (1, 2):
        rows.append({"setting": f"one fold, {threads} thread(s)", **one(threads, 1)})
    for g in (int(v) for v in args.fold_batches.split(",") if v):
        for threads in (1, 2):
            rows.append({"setting": f"fold_batch {g}, {threads} thread(s)", **one(threads, g)})
    procs = [_child(args, 1, 1, first) for first in (0, 1)]  # --workers 2: two 1-thread processes at once
    pair = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    rows.append(
        {
            "setting": "2 workers x 1 thread (one fold each, side by side)",
            **pair[0],
            "fold_epoch_seconds": round(statistics.mean(r["fold_epoch_seconds"] for r in pair), 4),
            "parallel_folds": 2,
        }
    )
    for r in rows:  # the machine's throughput: fold-epochs per second over all the folds running at once
        r["fold_epochs_per_second"] = round(r.get("parallel_folds", 1) / r["fold_epoch_seconds"], 3)
    best = max(rows, key=lambda r: r["fold_epochs_per_second"])
    projection = {
        e: round(68 * e / best["fold_epochs_per_second"] / 60, 1)
        for e in (int(v) for v in args.budget_epochs.split(","))
    }
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "torch": __import__("torch").__version__,
            "python": platform.python_version(),
        },
        "rows": rows,
        "fastest": best["setting"],
        "loso_minutes_per_seed_at_epochs": projection,
    }
    print(
        f"{report['machine']['cpu']}, {report['machine']['cores']} cores; {args.model}, batch {args.batch_size}, "
        f"{rows[0]['n_fit']} training samples per fold"
    )
    print("| setting | s per fold-epoch | fold-epochs / s | CPU s per fold |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['setting']} | {r['fold_epoch_seconds']:.3f} | {r['fold_epochs_per_second']:.2f} | "
            f"{r['cpu_seconds_per_fold']:.1f} |"
        )
    print(
        f"fastest: {best['setting']}; 68 folds x E epochs: "
        + ", ".join(f"E={e}: {m} min" for e, m in projection.items())
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
