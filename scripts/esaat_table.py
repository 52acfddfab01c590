#!/usr/bin/env python3
"""One table over finished `mer prune` runs (and the `mer train` run they started from).

Each row is ``LABEL=DIR[,DIR...]``: a `mer prune` output folder (esaat.json + metrics.json) or, with
``--base``, the `mer train` run it pruned (its honest scores: the last epoch for an oracle run). Several
folders (comma-separated, one per seed) make one row with UF1/UAR as mean ± sample standard deviation over
them. Writes OUT/esaat_table.md and OUT/esaat_table.json: pooled and per-dataset UF1/UAR, mean parameters
and forward FLOPs per image of the fold models, the modal set of removed layers with its share of folds
(over every fold of every run in the row), the fine-tuning set's DDPM samples, CPU seconds per fold (the
sum of the folds' ``cpu_seconds`` / folds), the number of runs and, with ``--base``, each row's UF1 minus
that of the base run it pruned (esaat.json names it), paired seed by seed. Nothing is trained.

Example (what benchmarks/results/real-esaat-*/README.md reports)::

    python scripts/esaat_table.py --out runs/real/esaat-table \\
        --base "base: htnet_small_lape, last epoch=runs/real/lape-s0-fixed,runs/real/lape-s1-fixed" \\
        --row "control: fine-tuning alone (k=0)=runs/real/esaat-control-k0-s0,runs/real/esaat-control-k0-s1" \\
        --row "ESAAT k=1 (signed T)=runs/real/esaat-signed-k1-s0,runs/real/esaat-signed-k1-s1"
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

DATASETS = ("casme2", "samm", "smic")


def _pair(text: str) -> tuple[str, list[Path]]:
    label, sep, paths = text.rpartition("=")
    dirs = [Path(x) for x in paths.split(",") if x.strip()]
    if not sep or not label or not dirs:
        raise argparse.ArgumentTypeError(f"expected LABEL=DIR[,DIR...], got {text!r}")
    return label, dirs


def _short(layer: str) -> str:
    return layer.replace(".attn", "").replace("levels.", "L").replace(".blocks.", "b")


def _fold_cpu(run: Path) -> list[float]:
    secs = [json.loads(p.read_text()).get("cpu_seconds") for p in sorted((run / "folds").glob("*/result.json"))]
    return [s for s in secs if s is not None]


def _scores(metrics: dict) -> dict:
    s = metrics["last_epoch"]["scores"] if metrics.get("oracle") else metrics["scores"]
    return {k: {"uf1": s[k]["uf1"], "uar": s[k]["uar"]} for k in ("all", *DATASETS) if k in s}


def _combine(label: str, dirs: list[Path], runs: list[dict], kind: str) -> dict:
    """One row over several runs (seeds): mean scores, their sample std (None for one run), all folds' CPU."""
    keys = [k for k in runs[0]["scores"] if all(k in r["scores"] for r in runs)]
    mean = {k: {m: statistics.mean(r["scores"][k][m] for r in runs) for m in ("uf1", "uar")} for k in keys}
    std = (
        {k: {m: statistics.stdev(r["scores"][k][m] for r in runs) for m in ("uf1", "uar")} for k in keys}
        if len(runs) > 1
        else None
    )
    cpu = [c for d in dirs for c in _fold_cpu(d)]
    return {
        "label": label,
        "dirs": [str(d) for d in dirs],
        "kind": kind,
        "n_runs": len(runs),
        "scores": mean,
        "scores_std": std,
        "per_run": [{"dir": str(d), "scores": r["scores"]} for d, r in zip(dirs, runs, strict=True)],
        "cpu_s_per_fold": statistics.mean(cpu) if cpu else None,
    }


def base_row(label: str, dirs: list[Path]) -> dict:
    """The `mer train` run(s) the prunes started from (honest scores; the cost from the first prune row)."""
    runs = []
    for run in dirs:
        if not (run / "metrics.json").is_file():
            raise FileNotFoundError(f"{run}: no metrics.json; --base takes finished `mer train` runs")
        runs.append({"scores": _scores(json.loads((run / "metrics.json").read_text()))})
    return _combine(label, dirs, runs, "train")


def prune_row(label: str, dirs: list[Path]) -> dict:
    """`mer prune` output folder(s), one per seed."""
    from mer.esaat.agreement import selection_agreement  # what `mer prune` reports as its modal set

    es, runs = [], []
    for out in dirs:
        if not (out / "esaat.json").is_file() or not (out / "metrics.json").is_file():
            raise FileNotFoundError(
                f"{out}: no esaat.json/metrics.json; --row takes finished `mer prune` output folders"
            )
        es.append(json.loads((out / "esaat.json").read_text()))
        runs.append({"scores": _scores(json.loads((out / "metrics.json").read_text()))})
    crit = {e["config"]["criterion"] for e in es}
    remove = {e["config"].get("remove") for e in es}
    if len(crit) > 1 or len(remove) > 1:
        raise ValueError(
            f"row {label!r}: its runs differ in criterion {sorted(crit)} or layers removed {sorted(remove)}; "
            "one row takes the same configuration at different seeds"
        )
    # the modal set over every fold of every run (esaat.json's per_fold lists each fold's removed layers)
    agree = selection_agreement([f["removed"] for e in es for f in e["per_fold"]])
    augs = [e.get("augment", {"kind": "none"}) for e in es]
    row = _combine(label, dirs, runs, "prune")
    for r, e in zip(row["per_run"], es, strict=True):
        r["base_run"] = e.get("run")
    row.update(
        params=statistics.mean(e["after"]["params"] for e in es),
        flops=statistics.mean(e["after"]["flops"] for e in es),
        before={k: es[0]["before"][k] for k in ("params", "flops") if k in es[0]["before"]},
        removed_modal=agree["modal_set"],
        removed_modal_share=agree["modal_share"],
        augment={
            "kind": augs[0].get("kind", "none"),
            "n_generated_mean": statistics.mean(a.get("n_generated_mean", 0.0) for a in augs),
        },
        criterion=crit.pop(),
        remove=remove.pop(),
    )
    return row


def _same_run(a: str, b: str) -> bool:
    """Two spellings of one run folder: equal once resolved, or (folders moved since) equal names."""
    return Path(a).resolve() == Path(b).resolve() or Path(a).name == Path(b).name


def add_paired_deltas(rows: list[dict]) -> None:
    """Per prune row, UF1 minus the UF1 of the base run it pruned (esaat.json's ``run``), seed by seed:
    ``delta_uf1`` (mean, sample std or None, n). Rows whose base runs are not all in --base get none."""
    base = next((r for r in rows if r["kind"] == "train"), None)
    if base is None:
        return
    for r in (r for r in rows if r["kind"] == "prune"):
        ds = []
        for run in r["per_run"]:
            b = next((x for x in base["per_run"] if run.get("base_run") and _same_run(x["dir"], run["base_run"])), None)
            if b is None:
                break
            ds.append(run["scores"]["all"]["uf1"] - b["scores"]["all"]["uf1"])
        else:
            r["delta_uf1"] = {
                "mean": statistics.mean(ds),
                "std": statistics.stdev(ds) if len(ds) > 1 else None,
                "n": len(ds),
            }


def _delta(r: dict) -> str:
    d = r.get("delta_uf1")
    if d is None:
        return "-"
    return f"{d['mean']:+.3f}" + ("" if d["std"] is None else f" ± {d['std']:.3f}")


def _cell(r: dict, key: str, metric: str) -> str:
    m = f"{r['scores'][key][metric]:.3f}"
    return m if r["scores_std"] is None else f"{m} ± {r['scores_std'][key][metric]:.3f}"


def markdown(rows: list[dict]) -> str:
    lines = [
        "| configuration | UF1 | UAR | CASME II / SAMM / SMIC-HS UF1 | params | MFLOPs/image "
        "| removed (modal set, share of folds) | DDPM samples per fold | CPU s/fold | runs | ΔUF1 vs base (paired) |",
        "|---|---:|---:|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    first_prune = next((r for r in rows if r["kind"] == "prune"), None)
    for r in rows:
        s = r["scores"]
        per = " / ".join(f"{s[d]['uf1']:.3f}" if d in s else "-" for d in DATASETS)
        if r["kind"] == "train":
            b = first_prune["before"] if first_prune else {}
            params = f"{b['params']:,.0f}" if "params" in b else "-"
            flops = f"{b['flops'] / 1e6:.1f}" if "flops" in b else "-"
            removed, gen = "-", "-"
        else:
            params, flops = f"{r['params']:,.0f}", f"{r['flops'] / 1e6:.1f}"
            removed = f"{', '.join(_short(x) for x in r['removed_modal']) or '-'} ({r['removed_modal_share']:.2f})"
            a = r["augment"]
            gen = f"{a['n_generated_mean']:.0f}" if a.get("kind", "none") != "none" else "0"
        cpu = (
            f"{r['cpu_s_per_fold']:.0f}" + (" (training)" if r["kind"] == "train" else "")
            if r["cpu_s_per_fold"]
            else "-"
        )
        lines.append(
            f"| {r['label']} | {_cell(r, 'all', 'uf1')} | {_cell(r, 'all', 'uar')} | {per} | {params} | {flops} "
            f"| {removed} | {gen} | {cpu} | {r['n_runs']} | {_delta(r)} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--base", type=_pair, help="LABEL=DIR[,DIR...] of the `mer train` run(s) the prunes started from")
    ap.add_argument(
        "--row",
        type=_pair,
        action="append",
        default=[],
        help="LABEL=DIR[,DIR...] of `mer prune` output(s), one per seed; repeatable",
    )
    ap.add_argument("--out", required=True, type=Path, help="folder for esaat_table.md and esaat_table.json")
    a = ap.parse_args(argv)
    if not a.row:
        ap.error("give at least one --row LABEL=DIR")
    try:
        rows = ([base_row(*a.base)] if a.base else []) + [prune_row(*r) for r in a.row]
    except (FileNotFoundError, ValueError) as e:
        print(f"esaat_table: error: {e}", file=sys.stderr)
        return 2
    add_paired_deltas(rows)
    a.out.mkdir(parents=True, exist_ok=True)
    md = markdown(rows)
    (a.out / "esaat_table.md").write_text(md + "\n")
    (a.out / "esaat_table.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
