#!/usr/bin/env python3
"""One table over finished `mer prune` runs (and the `mer train` run they started from).

Each row is ``LABEL=DIR``: a `mer prune` output folder (esaat.json + metrics.json) or, with ``--base``, the
`mer train` run it pruned (its honest scores: the last epoch for an oracle run). Writes OUT/esaat_table.md
and OUT/esaat_table.json: pooled and per-dataset UF1/UAR, mean parameters and forward FLOPs per image of the
fold models, the modal set of removed layers with its share of folds, the fine-tuning set's DDPM samples,
and CPU seconds per fold (the sum of the folds' ``cpu_seconds`` / folds). Nothing is trained.

Example (what benchmarks/results/real-esaat-loso-*/README.md reports)::

    python scripts/esaat_table.py --out runs/real/esaat-table \\
        --base "base: htnet_small_lape, last epoch=runs/real/lape-s0-fixed" \\
        --row "control: fine-tuning alone (k=0)=runs/real/esaat-control-k0" \\
        --row "ESAAT k=1 (signed T)=runs/real/esaat-signed-k1"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DATASETS = ("casme2", "samm", "smic")


def _pair(text: str) -> tuple[str, Path]:
    label, sep, path = text.rpartition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=DIR, got {text!r}")
    return label, Path(path)


def _short(layer: str) -> str:
    return layer.replace(".attn", "").replace("levels.", "L").replace(".blocks.", "b")


def _cpu_per_fold(run: Path) -> float | None:
    secs = [json.loads(p.read_text()).get("cpu_seconds") for p in sorted((run / "folds").glob("*/result.json"))]
    secs = [s for s in secs if s is not None]
    return sum(secs) / len(secs) if secs else None


def _scores(metrics: dict) -> dict:
    s = metrics["last_epoch"]["scores"] if metrics.get("oracle") else metrics["scores"]
    return {k: {"uf1": s[k]["uf1"], "uar": s[k]["uar"]} for k in ("all", *DATASETS) if k in s}


def base_row(label: str, run: Path) -> dict:
    """The `mer train` run a prune started from (its honest scores, its cost from the first prune row)."""
    if not (run / "metrics.json").is_file():
        raise FileNotFoundError(f"{run}: no metrics.json; --base takes a finished `mer train` run")
    return {
        "label": label,
        "dir": str(run),
        "kind": "train",
        "scores": _scores(json.loads((run / "metrics.json").read_text())),
        "cpu_s_per_fold": _cpu_per_fold(run),
    }


def prune_row(label: str, out: Path) -> dict:
    """One `mer prune` output folder."""
    if not (out / "esaat.json").is_file() or not (out / "metrics.json").is_file():
        raise FileNotFoundError(f"{out}: no esaat.json/metrics.json; --row takes a finished `mer prune` output folder")
    e = json.loads((out / "esaat.json").read_text())
    sel = e["selection_agreement"]
    aug = e.get("augment", {"kind": "none"})
    return {
        "label": label,
        "dir": str(out),
        "kind": "prune",
        "scores": _scores(json.loads((out / "metrics.json").read_text())),
        "params": e["after"]["params"],
        "flops": e["after"]["flops"],
        "before": {k: e["before"][k] for k in ("params", "flops") if k in e["before"]},
        "removed_modal": list(sel["modal_set"]),
        "removed_modal_share": sel["modal_share"],
        "augment": aug,
        "cpu_s_per_fold": _cpu_per_fold(out),
        "criterion": e["config"]["criterion"],
        "remove": e["config"].get("remove"),
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| configuration | UF1 | UAR | CASME II / SAMM / SMIC-HS UF1 | params | MFLOPs/image "
        "| removed (modal set, share of folds) | DDPM samples per fold | CPU s/fold |",
        "|---|---:|---:|---|---:|---:|---|---:|---:|",
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
            f"| {r['label']} | {s['all']['uf1']:.3f} | {s['all']['uar']:.3f} | {per} | {params} | {flops} "
            f"| {removed} | {gen} | {cpu} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--base", type=_pair, help="LABEL=DIR of the `mer train` run the prunes started from")
    ap.add_argument(
        "--row", type=_pair, action="append", default=[], help="LABEL=DIR of a `mer prune` output, repeatable"
    )
    ap.add_argument("--out", required=True, type=Path, help="folder for esaat_table.md and esaat_table.json")
    a = ap.parse_args(argv)
    if not a.row:
        ap.error("give at least one --row LABEL=DIR")
    try:
        rows = ([base_row(*a.base)] if a.base else []) + [prune_row(*r) for r in a.row]
    except FileNotFoundError as e:
        print(f"esaat_table: error: {e}", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    md = markdown(rows)
    (a.out / "esaat_table.md").write_text(md + "\n")
    (a.out / "esaat_table.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
