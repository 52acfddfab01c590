"""Command line of the linear floor (run as ``python -m mer.baselines.linear``).

Examples:
  # the real composite (a clone of the public HTNet release's data), every protocol, both inputs
  python -m mer.baselines.linear --htnet-release ../HTNet/datasets --input flow,tiles \\
      --protocol loso,kfold:5,holdout-dataset --seeds 0,1,2 --out benchmarks/results/real-linear-floor-DATE
  # a `mer synth` output, prepared like `mer train --data DIR` prepares it (TV-L1, cached)
  python -m mer.baselines.linear --synth data/synth --input flow --protocol loso --out runs/synth-floor

Writes OUT/linear_floor.json (every run, per dataset, per seed, the config, the machine, the command),
OUT/linear_floor.md (the table) and OUT/predictions.csv (each sample's out-of-fold prediction and
probabilities, first seed of each protocol).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATASET_NAMES = {"casme2": "CASME II", "samm": "SAMM", "smic": "SMIC-HS"}


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m mer.baselines.linear", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--htnet-release",
        type=Path,
        metavar="PATH",
        help="the public HTNet release's data folder (combined_3_class2_for_optical_flow.csv, "
        "STSNet_whole_norm_u_v_os/, ...)",
    )
    src.add_argument("--synth", type=Path, metavar="DIR", help="a `mer synth` output folder")
    ap.add_argument(
        "--input",
        default="flow",
        help="comma list of flow (whole-face 28x28 flow image) and tiles "
        "(the four facial windows tiled 2x2); default flow",
    )
    ap.add_argument(
        "--protocol",
        default="loso",
        help="comma list of loso, kfold:K (subject-grouped), holdout-dataset (train on the other "
        "datasets, test on one; pooled over the three); default loso",
    )
    ap.add_argument(
        "--seeds",
        default="0",
        help="comma list; kfold's subject assignment (the solver and the other protocols are deterministic); default 0",
    )
    ap.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic regression (1.0)")
    ap.add_argument("--class-weight", default="none", choices=("none", "balanced"))
    ap.add_argument(
        "--landmarks",
        default="shipped",
        choices=("shipped", "mtcnn", "fallback"),
        help="--htnet-release: landmarks that place the tiles (mer.data.load_htnet_release; shipped)",
    )
    ap.add_argument("--flow", default="tvl1", help="--synth: optical flow method of the preparation (tvl1)")
    ap.add_argument("--cache", default="~/.cache/mer/prepared", help="--synth: preprocessing cache folder")
    ap.add_argument("--workers", type=int, default=1, help="--synth: preprocessing processes")
    ap.add_argument(
        "--scale",
        default="raw",
        choices=("raw", "minmax"),
        help="--synth: raw maps (as the models see them) or the release's per-image min-max 0..255",
    )
    ap.add_argument("--out", type=Path, required=True, help="output folder (created)")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if sha.returncode:
        return None
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import sklearn

    return {
        "cpu": cpu,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }


def _fmt(s: dict, key: str) -> str:
    m, sd = s[f"{key}_mean"], s[f"{key}_std"]
    return f"{m:.3f}" if sd == 0 else f"{m:.3f} ± {sd:.3f}"


def markdown(report: dict) -> str:
    src = report["source"]
    lines = [
        f"# Linear floor: {src['kind']} ({src['root']})",
        "",
        "Logistic regression (lbfgs, C = {C}, class weights {cw}) on the flattened input, standardised on "
        "each fold's training subjects; pooled UF1 / UAR over the out-of-fold predictions "
        "(mer.metrics), per dataset on its share of them. Mean ± sample std over seeds where the "
        "folds depend on one (kfold); LOSO and holdout-dataset are deterministic.".format(
            C=report["config"]["C"], cw=report["config"]["class_weight"]
        ),
        "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']}, commit {report['git_commit']}",
        f"- machine: {report['machine']['cpu']}, scikit-learn {report['machine']['scikit-learn']}",
        f"- data: {report['n']} samples, {report['subjects']} subjects; channels {src.get('channels')}",
    ]
    if src["kind"] == "synth":
        lines.append(
            f"- synthetic: difficulty {src.get('difficulty')}, seed {src.get('seed')}, "
            f"flow {src['prep']['flow']}, scale {src['scale']}"
        )
    datasets = [d for d in DATASET_NAMES if d in report["results"][0]["summary"]]
    head = (
        "| input | protocol | seeds | folds | UF1 | UAR | "
        + " | ".join(f"{DATASET_NAMES[d]} UF1 / UAR" for d in datasets)
        + " | s per run |"
    )
    lines += ["", head, "|" + "---|" * (6 + len(datasets) + 1)]
    for r in report["results"]:
        s = r["summary"]
        per = " | ".join(f"{_fmt(s[d], 'uf1')} / {_fmt(s[d], 'uar')}" for d in datasets)
        secs = np.mean([x["seconds"] for x in r["runs"]])
        lines.append(
            f"| {r['input']} | {r['protocol']} | {','.join(map(str, r['seeds']))} | {r['runs'][0]['n_folds']} "
            f"| {_fmt(s['all'], 'uf1')} | {_fmt(s['all'], 'uar')} | {per} | {secs:.0f} |"
        )
    nc = sum(x["not_converged"] for r in report["results"] for x in r["runs"])
    lines += ["", f"Folds whose lbfgs run reached max_iter: {nc}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from mer.baselines.linear import LinearConfig, parse_protocol, run_protocol
    from mer.baselines.sources import INPUTS, release_features, synth_features

    inputs, protocols = _csv_list(args.input), _csv_list(args.protocol)
    try:
        seeds = [int(s) for s in _csv_list(args.seeds)]
        bad = [i for i in inputs if i not in INPUTS]
        if bad or not inputs:
            raise ValueError(f"--input must be a comma list of {INPUTS}, got {args.input!r}")
        for p in protocols:
            parse_protocol(p)
        if not protocols or not seeds:
            raise ValueError("--protocol and --seeds must name at least one value")
        cfg = LinearConfig(C=args.C, class_weight=args.class_weight)
        if args.htnet_release is not None:
            fs = release_features(args.htnet_release, inputs, landmarks=args.landmarks)
        else:
            if not (args.synth / "megc2019_composite.csv").is_file():
                raise ValueError(
                    f"--synth {args.synth}: not a `mer synth` output (no megc2019_composite.csv); "
                    f"generate one with `mer synth --out {args.synth}`"
                )
            fs = synth_features(
                args.synth,
                inputs,
                flow=args.flow,
                cache_dir=args.cache,
                workers=args.workers,
                scale=args.scale,
                progress=not args.no_progress,
            )
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    results, rows = [], {}
    for inp in inputs:
        for p in protocols:
            r = run_protocol(fs.x[inp], fs.y, fs.datasets, fs.subjects, p, seeds, cfg, progress=not args.no_progress)
            s = r["summary"]["all"]
            print(
                f"{inp:5s} {p:16s} UF1 {_fmt(s, 'uf1')}  UAR {_fmt(s, 'uar')}  "
                + "  ".join(f"{d} {r['summary'][d]['uf1_mean']:.3f}" for d in DATASET_NAMES if d in r["summary"]),
                flush=True,
            )
            rows[(inp, p)] = (r.pop("pred"), r.pop("proba"), r.pop("fold"))
            results.append({"input": inp, **r})
    report = {
        "what": "linear floor (mer.baselines.linear)",
        "command": "python -m mer.baselines.linear "
        + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": git_commit(),
        "machine": machine(),
        "source": fs.source,
        "n": int(len(fs.y)),
        "subjects": len(set(zip(fs.datasets, fs.subjects, strict=True))),
        "config": results[0]["config"],
        "seconds": round(time.perf_counter() - t0, 1),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "linear_floor.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "linear_floor.md").write_text(markdown(report))
    with open(args.out / "predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "input",
                "protocol",
                "seed",
                "dataset",
                "subject",
                "name",
                "label",
                "pred",
                "fold",
                "p_negative",
                "p_positive",
                "p_surprise",
            ]
        )
        for (inp, p), (pred, proba, fold) in rows.items():
            seed = next(r["seeds"][0] for r in results if r["input"] == inp and r["protocol"] == p)
            for i in range(len(fs.y)):
                w.writerow(
                    [
                        inp,
                        p,
                        seed,
                        fs.datasets[i],
                        fs.subjects[i],
                        fs.names[i],
                        int(fs.y[i]),
                        pred[i],
                        fold[i],
                        *proba[i],
                    ]
                )
    print(f"wrote {args.out}/linear_floor.json, linear_floor.md, predictions.csv ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
