"""Merging a run's fold predictions into pooled MEGC metrics, tables and plots.

    from mer.evaluation.report import write_report
    metrics = write_report("runs/demo")      # reads folds/*/predictions.csv, writes the files below

Writes RUNDIR/predictions.csv (all folds, one row per sample), metrics.json, megc_log.txt, summary.md,
confusion.png and learning_curves.png. UF1/UAR are computed on the pooled predictions of all folds
(overall and on each dataset's share), never averaged over folds (MER_DATA.md).
"""
from __future__ import annotations

import csv
import json
from collections import namedtuple
from pathlib import Path

import numpy as np

from mer.train.config import TrainConfig
from mer.train.rundir import atomic_write_json, atomic_write_text

LABEL_NAMES = ("negative", "positive", "surprise")
Row = namedtuple("Row", "index dataset subject clip label pred probs")


class IncompleteRun(RuntimeError):
    """Some folds of the run have no predictions yet."""


def read_fold_rows(path: Path) -> list[Row]:
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return [Row(int(d["index"]), d["dataset"], d["subject"], d["clip"], int(d["label"]), int(d["pred"]),
                    tuple(float(d[f"p_{n}"]) for n in LABEL_NAMES)) for d in r]


def collect(root: Path, *, partial: bool = False) -> tuple[list[Row], list[dict], list[dict]]:
    """(rows sorted by sample index, fold results, folds.json entries); checks that every fold is finished
    and every held-out sample is predicted exactly once (nothing lost, nothing double-counted)."""
    root = Path(root)
    folds = json.loads((root / "folds.json").read_text())
    rows, results, missing = [], [], []
    for f in folds:
        d = root / "folds" / f["dir"]
        if not (d / "result.json").exists():
            missing.append(f["name"])
            continue
        results.append(json.loads((d / "result.json").read_text()))
        got = read_fold_rows(d / "predictions.csv")
        if sorted(r.index for r in got) != sorted(f["test"]):
            raise RuntimeError(f"{d}/predictions.csv does not hold exactly the fold's test samples")
        rows += got
    if missing and not partial:
        raise IncompleteRun(f"{len(missing)} of {len(folds)} folds are not finished ({', '.join(missing[:8])}"
                            f"{' ...' if len(missing) > 8 else ''}); rerun `mer train` with the same options to "
                            "finish them, or `mer evaluate --partial` to score the finished ones")
    if not rows:
        raise IncompleteRun("no fold is finished yet")
    idx = [r.index for r in rows]
    if len(set(idx)) != len(idx):
        dup = sorted({i for i in idx if idx.count(i) > 1})
        raise RuntimeError(f"samples predicted by more than one fold: {dup[:10]} (protocol with overlapping "
                           "test sets; pooled metrics would double-count them)")
    rows.sort(key=lambda r: r.index)
    return rows, results, folds


def compute_metrics(rows: list[Row], results: list[dict], cfg: TrainConfig, n_folds: int,
                    excluded: list | None = None) -> dict:
    """The metrics.json dict; ``excluded``: samples the preparation could not use (uid, reason)."""
    from mer.metrics import breakdown, per_class

    yt = np.array([r.label for r in rows])
    yp = np.array([r.pred for r in rows])
    ds = np.array([r.dataset for r in rows])
    scores = breakdown(yt, yp, ds, labels=(0, 1, 2), overall="all")
    pc = per_class(yt, yp)
    secs = [r["seconds"] for r in results]
    return {
        "excluded": list(excluded or []),
        "selection": cfg.selection_label,
        "oracle": bool(cfg.reproduce_htnet_oracle),
        "valid_estimate": not cfg.reproduce_htnet_oracle,
        "protocol": cfg.protocol,
        "model": cfg.model,
        "input": cfg.input,
        "flow": cfg.prep.flow,
        "augment": cfg.augment,
        "seed": cfg.seed,
        "labels": list(LABEL_NAMES),
        "folds": n_folds,
        "folds_finished": len(results),
        "n": int(len(rows)),
        "scores": scores,
        "per_class": {k: [float(v) for v in pc[k]] for k in ("f1", "recall", "precision")},
        "timing": {"fold_seconds_total": round(float(np.sum(secs)), 1),
                   "fold_seconds_mean": round(float(np.mean(secs)), 2),
                   "fold_seconds_max": round(float(np.max(secs)), 2),
                   "fold_cpu_seconds_mean": round(float(np.mean([r.get("cpu_seconds", np.nan) for r in results])), 2),
                   "epoch_seconds_mean": round(float(np.mean([r["seconds_per_epoch"] for r in results])), 3),
                   "epochs_selected_mean": round(float(np.mean([r["epoch_selected"] for r in results])), 2)},
    }


def format_table(m: dict, markdown: bool = True) -> str:
    """The results table: UF1/UAR overall and per dataset, with the selection mode in the title."""
    title = (f"{m['model']} ({m['input']}, {m['flow']}, augment {m['augment']}), {m['protocol']}, seed {m['seed']}"
             f" - selection: {m['selection']}")
    if m["folds_finished"] < m["folds"]:
        title += f" - PARTIAL: {m['folds_finished']} of {m['folds']} folds"
    lines = [f"**{title}**" if markdown else title, ""]
    lines.append("| set | n | UF1 | UAR |")
    lines.append("|---|---:|---:|---:|")
    for name, s in m["scores"].items():
        label = "composite (all)" if name == "all" else name
        lines.append(f"| {label} | {s['n']} | {s['uf1']:.4f} | {s['uar']:.4f} |")
    if m.get("excluded"):
        lines.append("")
        lines.append(f"{len(m['excluded'])} sample(s) excluded (could not be prepared): "
                     + "; ".join(f"{e['uid']} ({e['reason'].split(':')[0]})" for e in m["excluded"]))
    if m["oracle"]:
        lines.append("")
        lines.append("ORACLE: the epoch was chosen on the held-out subjects (HTNet's released evaluation); "
                     "these numbers are NOT a valid estimate of generalisation.")
    return "\n".join(lines)


def write_report(root, *, partial: bool = False, print_table: bool = True, plots: bool = True) -> dict:
    """Recompute everything from the saved fold predictions of run ``root``; returns metrics.json's dict."""
    from mer.metrics import write_megc_log

    root = Path(root)
    cfg = TrainConfig.from_dict(json.loads((root / "config.json").read_text()))
    rows, results, folds = collect(root, partial=partial)
    ex_path = root / "excluded.json"
    excluded = json.loads(ex_path.read_text()) if ex_path.exists() else []
    m = compute_metrics(rows, results, cfg, len(folds), excluded)
    lines = ["index,dataset,subject,clip,label,pred," + ",".join(f"p_{n}" for n in LABEL_NAMES)]
    lines += [f"{r.index},{r.dataset},{r.subject},{r.clip},{r.label},{r.pred}," + ",".join(f"{p:.6f}" for p in r.probs)
              for r in rows]
    atomic_write_text(root / "predictions.csv", "\n".join(lines) + "\n")
    # the MEGC log in fold order (one header per held-out subject)
    write_megc_log(root / "megc_log.txt", rows, [r.pred for r in rows], [r.label for r in rows])
    table = format_table(m)
    atomic_write_text(root / "summary.md", table + "\n")
    if plots:
        from mer.evaluation.plots import plot_confusions, plot_learning_curves

        m["plots"] = [str(plot_confusions(m, root / "confusion.png").name),
                      str(plot_learning_curves(root, m, root / "learning_curves.png").name)]
    atomic_write_json(root / "metrics.json", m)
    if print_table:
        print(table)
        print(f"wrote {root}/metrics.json, predictions.csv, megc_log.txt, summary.md"
              + (", confusion.png, learning_curves.png" if plots else ""))
    return m
