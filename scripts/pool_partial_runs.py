#!/usr/bin/env python3
"""Pool the scores of one experiment trained in parts (``mer train --folds``, e.g. one GPU lease per
slice of the full-size HTNet run) from the parts' metrics.json alone: no per-sample predictions needed.

    python scripts/pool_partial_runs.py lease1/metrics.json lease2/metrics.json ... [--out pooled.json]

UF1 and UAR of pooled predictions depend only on the pooled confusion matrix, so the parts' matrices
(overall and per dataset; the oracle run's last-epoch scores too) are added and scored. Refused: parts of
different experiments (model, protocol, seed, selection, input, flow, augment, number of folds) and parts
that share a held-out fold (its samples would count twice). Prints a table, PARTIAL while folds are
missing; --out writes the pooled numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SAME = ("model", "protocol", "seed", "selection", "oracle", "input", "flow", "augment", "folds", "labels")


def _pool_scores(parts: list[dict]) -> dict:
    import numpy as np

    from mer.metrics import uf1_uar_from_confusion

    sets = sorted({k for p in parts for k in p})
    out = {}
    for name in sets:
        cm = sum(np.asarray(p[name]["confusion"]) for p in parts if name in p)
        uf1, uar = uf1_uar_from_confusion(cm)
        out[name] = {"uf1": uf1, "uar": uar, "n": int(cm.sum()), "confusion": cm.tolist()}
    return out


def pool(metrics: list[dict], names: list[str]) -> dict:
    """The pooled metrics of ``metrics`` (metrics.json dicts of ``mer train`` runs, ``names`` for messages)."""
    if not metrics:
        raise ValueError("give the metrics.json of at least one part")
    first = metrics[0]
    for m, name in zip(metrics[1:], names[1:], strict=True):
        diff = [k for k in SAME if m.get(k) != first.get(k)]
        if diff:
            raise ValueError(f"{name} is another experiment than {names[0]}: differs in {', '.join(diff)}")
    seen: dict[str, str] = {}
    for m, name in zip(metrics, names, strict=True):
        if "folds_scored" not in m:
            raise ValueError(f"{name} does not list its folds (folds_scored): rescore it with `mer evaluate --partial`")
        for f in m["folds_scored"]:
            if f in seen:
                raise ValueError(f"fold {f} is in both {seen[f]} and {name}: its samples would count twice")
            seen[f] = name
    out = {k: first[k] for k in SAME if k in first}
    out.update(
        excluded=first.get("excluded", []),  # run-level (samples that could not be prepared): the same in every part
        parts=names,
        folds_scored=sorted(seen),
        folds_finished=len(seen),
        scores=_pool_scores([m["scores"] for m in metrics]),
    )
    out["n"] = out["scores"]["all"]["n"]
    if all("last_epoch" in m for m in metrics):
        out["last_epoch"] = {
            "selection": first["last_epoch"]["selection"],
            "scores": _pool_scores([m["last_epoch"]["scores"] for m in metrics]),
        }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("metrics", nargs="+", help="metrics.json of each part (or its run folder)")
    ap.add_argument("--out", help="write the pooled numbers here (JSON)")
    args = ap.parse_args(argv)
    paths = [Path(p) / "metrics.json" if Path(p).is_dir() else Path(p) for p in args.metrics]
    try:
        pooled = pool([json.loads(p.read_text()) for p in paths], [str(p) for p in paths])
    except (OSError, ValueError, KeyError) as e:
        print(f"pool_partial_runs: error: {e}", file=sys.stderr)
        return 2
    from mer.evaluation.report import format_table

    print(f"{len(pooled['parts'])} parts pooled\n\n{format_table(pooled)}")
    if args.out:
        Path(args.out).write_text(json.dumps(pooled, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
