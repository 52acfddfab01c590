#!/usr/bin/env python3
"""Pool the scores of one experiment trained in parts (``mer train --folds``, e.g. one GPU lease per
slice of the full-size HTNet run) from the parts' metrics.json alone: no per-sample predictions needed.

    python scripts/pool_partial_runs.py lease1/metrics.json lease2/metrics.json ... [--out pooled.json]

UF1 and UAR of pooled predictions depend only on the pooled confusion matrix, so the parts' matrices
(overall and per dataset; the oracle run's last-epoch scores too) are added and scored. Refused: parts of
different experiments (model, protocol, seed, selection, input, flow, augment, number of folds) and parts
that share a held-out fold (its samples would count twice). Prints a table, PARTIAL while folds are
missing; --out writes the pooled numbers as JSON.

``--same-clips CSV`` scores other models' out-of-fold predictions on the same clips: the rows of the
pooled folds (``dataset/subject``) of a ``mer train`` predictions.csv or a linear-floor predictions.csv
(``python -m mer.baselines.linear``; its LOSO rows, one line per input and seed); given a ``mer train`` run
folder, its selected predictions and, when its folds saved them (--selection oracle-release), the last
epoch's, one line each, e.g.

    python scripts/pool_partial_runs.py RESULTS/folds-* --same-clips runs/floor/predictions.csv
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


def _read_rows(path: str) -> list[dict]:
    """A predictions CSV's rows; for a ``mer train`` run folder, its predictions.csv (the run's selection)
    and, where every fold saved them, the folds' last-epoch predictions, told apart by a ``selection`` key."""
    from mer.evaluation.compare import last_epoch_rows, read_prediction_csv

    run = Path(path)
    if not run.is_dir():
        return read_prediction_csv(run)
    rows = [dict(r, selection="run's selection") for r in read_prediction_csv(run / "predictions.csv")]
    return rows + [dict(r, selection="last epoch") for r in last_epoch_rows(run) or []]


def same_clips(path: str, pooled: dict) -> list[dict]:
    """UF1/UAR (all and per dataset) of the predictions in ``path`` (a CSV, or a ``mer train`` run folder) on
    the clips of the pooled folds; one entry per (input, seed, selection) group where those are known."""
    import numpy as np

    from mer.metrics import uf1_uar

    if pooled["protocol"] != "loso":
        raise ValueError(f"--same-clips matches clips by LOSO fold (dataset/subject); this run is {pooled['protocol']}")
    rows = _read_rows(path)  # refuses a CSV without the columns dataset, subject, label, pred
    if "protocol" in rows[0]:
        rows = [r for r in rows if r["protocol"] == pooled["protocol"]]
    folds = set(pooled["folds_scored"])
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if f"{r['dataset']}/{r['subject']}" in folds:
            key = " ".join(f"{k}={r[k]}" for k in ("input", "seed", "selection") if k in r)
            groups.setdefault(key, []).append(r)
    if not groups:
        raise ValueError(f"{path}: no {pooled['protocol']} predictions of the pooled folds")
    out = []
    for key, rs in groups.items():
        y, pred = (np.array([int(r[c]) for r in rs]) for c in ("label", "pred"))
        ds = np.array([r["dataset"] for r in rs])
        entry = {"path": path, "group": key, "n": len(rs)}
        entry["uf1"], entry["uar"] = uf1_uar(y, pred)
        entry["datasets"] = {}
        for d in sorted(set(ds)):
            uf1, uar = uf1_uar(y[ds == d], pred[ds == d])
            entry["datasets"][d] = {"uf1": uf1, "uar": uar}
        out.append(entry)
    return out


def format_same_clips(entries: list[dict], n_pooled: int) -> str:
    sets = sorted({d for e in entries for d in e["datasets"]})
    lines = [
        "Other predictions on the same clips:",
        "",
        "| predictions | n | UF1 | UAR | " + " | ".join(f"{d} UF1" for d in sets) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(sets),
    ]
    for e in entries:
        per = " | ".join(f"{e['datasets'][d]['uf1']:.4f}" if d in e["datasets"] else "-" for d in sets)
        name = f"{e['path']} ({e['group']})" if e["group"] else e["path"]
        lines.append(f"| {name} | {e['n']} | {e['uf1']:.4f} | {e['uar']:.4f} | {per} |")
    short = [e for e in entries if e["n"] != n_pooled]
    if short:
        covers = "; ".join(f"{e['path']} covers {e['n']}" for e in short)
        lines += ["", f"NOTE: the pooled run has {n_pooled} clips; {covers}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("metrics", nargs="+", help="metrics.json of each part (or its run folder)")
    ap.add_argument("--out", help="write the pooled numbers here (JSON)")
    ap.add_argument(
        "--same-clips",
        nargs="+",
        default=[],
        metavar="CSV",
        help="other models' predictions.csv files or run folders, scored on the pooled folds' clips",
    )
    args = ap.parse_args(argv)
    paths = [Path(p) / "metrics.json" if Path(p).is_dir() else Path(p) for p in args.metrics]
    try:
        pooled = pool([json.loads(p.read_text()) for p in paths], [str(p) for p in paths])
        others = [e for csv_path in args.same_clips for e in same_clips(csv_path, pooled)]
    except (OSError, ValueError, KeyError) as e:
        print(f"pool_partial_runs: error: {e}", file=sys.stderr)
        return 2
    from mer.evaluation.report import format_table

    print(f"{len(pooled['parts'])} parts pooled\n\n{format_table(pooled)}")
    if others:
        pooled["same_clips"] = others
        print("\n" + format_same_clips(others, pooled["n"]))
    if args.out:
        Path(args.out).write_text(json.dumps(pooled, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
