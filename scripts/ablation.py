#!/usr/bin/env python3
"""The training ablation and the augmentation comparison, on the synthetic or the real composite.

Runs ``mer train`` once per (configuration, seed) into OUT/<config>-s<seed> (a finished run is reused after
checking that its config.json is the one asked for; an interrupted one resumes: rerun the same command),
then writes OUT/ablation.json and OUT/ablation.md with UF1/UAR as mean ± sample standard deviation over
the seeds, pooled and per dataset, parameters and forward FLOPs per image, and the mean training CPU time
per fold.

``--data`` is a `mer synth` folder or ``htnet-release:PATH`` (the public HTNet release, real data).
``--selection oracle-release`` trains each fold once and scores it twice: honestly at the last epoch of the
fixed budget (the table's main columns) and with the release's test-fold epoch selection (the "oracle"
columns: not a valid estimate; they show how much a published figure can owe to that selection).

Configurations (``--configs``, comma-separated; all use the regions input and the same protocol):

  released_scaled   htnet_original's structure (patch 7, 3 levels, depths 2/2/10, one token per
                    attention) at dim 32 instead of 256 (2.2 M instead of 139.6 M parameters) so that it
                    trains on a CPU
  htnet             htnet_small: the working HTNet, block-scalar positions, softmax attention
  lape              htnet_small_lape: + LAPE on the patch embedding
  lape_agent        htnet_small_lape_agent: + agent attention (the default model)
  lape_agent_ddpm   lape_agent with DDPM augmentation of each fold's training subjects (--augment ddpm)

Examples (what docs/training.md and the README report)::

    python scripts/ablation.py --data data/synth --out runs/ablation --seeds 0,1,2 \\
        --protocol kfold:5 --epochs 20 --flow dis --workers 2
    python scripts/ablation.py --data htnet-release:../shared/data/htnet_release --input face --protocol loso \\
        --lr 3e-4 --epochs 35 --selection oracle-release --configs htnet,lape,lape_agent --out runs/real
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

    from mer.models import create_model
    from mer.models.profile import count_flops, count_params
    from mer.options import parse_kv  # the parsing `mer train --model-arg` applies: this is the trained model

    m = create_model(model_name, **parse_kv(model_args, "--model-arg")).eval()
    with torch.no_grad():
        f = count_flops(m, torch.randn(1, 3, size, size))
    return {"params": count_params(m), "mflops": f["flops"] / 1e6}


def is_release(data: str) -> bool:
    from mer.train.data import RELEASE_PREFIX  # the spelling `mer train --data` accepts

    return data.startswith(RELEASE_PREFIX)


def expected_config(a, name: str, seed: int) -> dict:
    """The config.json fields a reused run must have (so that the table never mixes other settings in)."""
    model, _, augment = CONFIGS[name]
    want = {
        "data": a.data,
        "protocol": a.protocol,
        "epochs": a.epochs,
        "seed": seed,
        "model": model,
        "augment": augment,
        "input": a.input,
        "selection": a.selection,
    }
    if a.lr is not None:
        want["lr"] = a.lr
    return want


def _same_data(a: str, b: str) -> bool:
    """Data specs equal up to how the path is written (relative or absolute)."""
    pa, pb = (x.split(":", 1) if is_release(x) else ("", x) for x in (a, b))
    return pa[0] == pb[0] and Path(pa[1]).expanduser().resolve() == Path(pb[1]).expanduser().resolve()


def check_reused(out: Path, want: dict) -> None:
    have = {
        "input": "regions",
        "selection": "fixed",  # runs written before these options existed
        **json.loads((out / "config.json").read_text()),
    }
    diff = {
        k: (have.get(k), v)
        for k, v in want.items()
        if not (_same_data(have[k], v) if k == "data" else have.get(k) == v)
    }
    if diff:
        raise SystemExit(
            f"error: {out} holds a finished run with other settings "
            f"({', '.join(f'{k}: {h!r}, asked {w!r}' for k, (h, w) in diff.items())}); "
            f"use another --out, or delete that run to retrain it"
        )


def run_one(a, name: str, seed: int) -> dict:
    model, margs, augment = CONFIGS[name]
    out = Path(a.out) / f"{name}-s{seed}"
    cmd = [
        sys.executable,
        "-m",
        "mer",
        "train",
        "--data",
        a.data,
        "--protocol",
        a.protocol,
        "--epochs",
        str(a.epochs),
        "--seed",
        str(seed),
        "--workers",
        str(a.workers),
        "--out",
        str(out),
        "--model",
        model,
        "--augment",
        augment,
        "--input",
        a.input,
        "--selection",
        a.selection,
        "--no-progress",
    ]
    if not is_release(a.data):  # the release ships its flow: no preprocessing, no cache
        cmd += ["--flow", a.flow, "--cache", a.cache]
    if a.lr is not None:
        cmd += ["--lr", str(a.lr)]
    for kv in margs:
        cmd += ["--model-arg", kv]
    cmd += a.train_arg
    metrics = out / "metrics.json"
    m = json.loads(metrics.read_text()) if metrics.exists() else None
    if m is None or m["folds_finished"] != m["folds"]:
        if a.only_finished:
            print(f"[ablation] {name} seed {seed}: not finished in {out}; left out (--only-finished)", flush=True)
            return None
        print(f"[ablation] {name} seed {seed}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.time()
        subprocess.run(cmd, check=True)
        print(f"[ablation] {name} seed {seed}: {time.time() - t0:.0f} s", flush=True)
        m = json.loads(metrics.read_text())
    else:
        check_reused(out, expected_config(a, name, seed))
    # An oracle run's main scores are the test-fold selection; its honest scores are the last epoch's.
    honest = m["last_epoch"]["scores"] if m["oracle"] else m["scores"]
    oracle = m["scores"] if m["oracle"] else None
    return {
        "config": name,
        "seed": seed,
        "model": model,
        "model_args": margs,
        "augment": augment,
        "selection": m["selection"],
        "uf1": honest["all"]["uf1"],
        "uar": honest["all"]["uar"],
        "per_dataset": {k: v for k, v in honest.items() if k != "all"},
        "oracle": None
        if oracle is None
        else {
            "uf1": oracle["all"]["uf1"],
            "uar": oracle["all"]["uar"],
            "per_dataset": {k: v for k, v in oracle.items() if k != "all"},
        },
        "fold_seconds_mean": m["timing"]["fold_seconds_mean"],
        "fold_cpu_seconds_mean": m["timing"]["fold_cpu_seconds_mean"],
        "run": str(out),
    }


def _ms(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


DATASETS = (("casme2", "CASME II"), ("samm", "SAMM"), ("smic", "SMIC-HS"))


def summarise(rows: list[dict], prof: dict, a) -> str:
    data = (
        "Real MEGC2019 composite (the HTNet release's flow images)"
        if is_release(a.data)
        else f"Synthetic composite, {a.flow} flow"
    )
    lr = "" if a.lr is None else f", lr {a.lr:g}"
    oracle = any(r["oracle"] for r in rows)
    lines = [
        f"{data}, {a.input} input, protocol {a.protocol}, {a.epochs} epochs{lr}; UF1/UAR pooled over the "
        f"out-of-fold predictions at the last epoch (honest), mean ± sample std over the seeds listed; "
        f"train time = mean CPU seconds per fold (one thread per fold worker)."
    ]
    if oracle:
        lines.append(
            "Oracle columns: the same runs scored at the epoch with the best test-fold accuracy (the "
            "released HTNet's selection, latest best on ties): NOT a valid estimate."
        )
    head = ["configuration", "model", "UF1", "UAR"] + [f"{label} UF1" for _, label in DATASETS]
    head += ["oracle UF1", "oracle UAR"] if oracle else []
    head += ["params", "MFLOPs/image", "CPU s/fold", "seeds"]
    lines += ["", "| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for name in a.configs:
        rs = [r for r in rows if r["config"] == name]
        if not rs:
            continue
        model, margs, augment = CONFIGS[name]
        label = model + (f" ({', '.join(margs)})" if margs else "") + (" + DDPM" if augment != "none" else "")
        p = prof[name]
        cells = [name, label, _ms([r["uf1"] for r in rs]), _ms([r["uar"] for r in rs])]
        cells += [
            _ms([r["per_dataset"][d]["uf1"] for r in rs]) if all(d in r["per_dataset"] for r in rs) else ""
            for d, _ in DATASETS
        ]
        if oracle:
            os_ = [r["oracle"] for r in rs if r["oracle"]]
            cells += [_ms([o["uf1"] for o in os_]), _ms([o["uar"] for o in os_])] if len(os_) == len(rs) else ["", ""]
        cpu = statistics.mean(r["fold_cpu_seconds_mean"] for r in rs)
        cells += [f"{p['params']:,}", f"{p['mflops']:.1f}", f"{cpu:.0f}", ",".join(str(r["seed"]) for r in rs)]
        lines.append("| " + " | ".join(cells) + " |")
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
    ap.add_argument("--input", choices=("regions", "face"), default="regions", help="mer train --input")
    ap.add_argument("--lr", type=float, default=None, help="mer train --lr (default: mer train's)")
    ap.add_argument(
        "--selection",
        choices=("fixed", "oracle-release"),
        default="fixed",
        help="oracle-release: also the oracle columns (the honest ones stay the last epoch's)",
    )
    ap.add_argument(
        "--only-finished",
        action="store_true",
        help="tabulate the finished runs only (train nothing; a seed column says which went in)",
    )
    ap.add_argument(
        "--train-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more `mer train` argument, repeatable (e.g. --train-arg=--batch-size=32)",
    )
    a = ap.parse_args(argv)
    a.configs = [c for c in a.configs.split(",") if c]
    bad = [c for c in a.configs if c not in CONFIGS]
    if bad:
        ap.error(f"unknown configuration(s) {bad}; choose from {', '.join(CONFIGS)}")
    a.seeds = [int(s) for s in a.seeds.split(",")]
    if is_release(a.data):
        if not Path(a.data.split(":", 1)[1]).expanduser().is_dir():
            ap.error(f"{a.data}: no such folder (the HTNet release's root, with its input/ and datasets/)")
    elif not (Path(a.data) / "synth_config.json").exists():
        ap.error(
            f"{a.data} is neither a `mer synth` folder nor htnet-release:PATH; make one with `mer synth --out {a.data}`"
        )
    Path(a.out).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    for seed in a.seeds:  # seed-major: a partial ablation still covers every configuration
        for name in a.configs:
            row = run_one(a, name, seed)
            if row is not None:
                rows.append(row)
    if not rows:
        raise SystemExit(f"error: no finished run in {a.out} for {a.configs} x seeds {a.seeds}")
    prof = {name: profile(CONFIGS[name][0], CONFIGS[name][1], a.size) for name in {r["config"] for r in rows}}
    table = summarise(rows, prof, a)
    (Path(a.out) / "ablation.json").write_text(
        json.dumps({"args": {k: v for k, v in vars(a).items()}, "rows": rows, "profile": prof}, indent=1)
    )
    (Path(a.out) / "ablation.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
