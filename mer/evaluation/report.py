"""Merging a run's fold predictions into pooled MEGC metrics, tables and plots.

    from mer.evaluation.report import write_report
    metrics = write_report("runs/demo")      # reads folds/*/predictions.csv, writes the files below

Writes RUNDIR/predictions.csv (all folds, one row per sample), metrics.json, megc_log.txt, summary.md,
confusion.png and learning_curves.png. UF1/UAR are computed on the pooled predictions of all folds
(overall and on each dataset's share), never averaged over folds (the MEGC2019 protocol; ``mer/metrics.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mer.io import (
    PredictionRow,
    atomic_write_json,
    atomic_write_text,
    write_predictions,
)
from mer.labels import LABEL_NAMES


class IncompleteRun(RuntimeError):
    """Some folds of the run have no predictions yet."""


class DamagedFold(IncompleteRun):
    """A finished fold's output files are missing or damaged (the message names them and the fix)."""


def collect(root: Path, *, partial: bool = False) -> tuple[list[PredictionRow], list[dict], list[dict]]:
    """(rows sorted by sample index, fold results, folds.json entries); checks that every fold is finished,
    its outputs are whole (mer.evaluation.integrity) and every held-out sample is predicted exactly once
    (nothing lost, nothing double-counted). A damaged finished fold raises DamagedFold (with ``partial``:
    it is left out like an unfinished one, with a warning)."""
    import warnings

    from mer.evaluation.integrity import fold_problem, read_fold_predictions, run_labels

    root = Path(root)
    folds = json.loads((root / "folds.json").read_text())
    labels = run_labels(root)
    rows, results, missing, damaged = [], [], [], []
    for f in folds:
        d = root / "folds" / f["dir"]
        if not (d / "result.json").exists():
            missing.append(f["name"])
            continue
        problem = fold_problem(d, f["test"], labels, model=False)  # (mer train also checks model.pt)
        if problem is not None:
            damaged.append((f["name"], problem))
            continue
        results.append(json.loads((d / "result.json").read_text()))
        rows += read_fold_predictions(d / "predictions.csv", f["test"], labels)
    if damaged:
        lines = [f"fold {name}: {why}" for name, why in damaged]
        msg = (
            f"{len(damaged)} finished fold(s) have damaged outputs: "
            + "; ".join(lines[:5])
            + (f"; ... ({len(lines)} in all)" if len(lines) > 5 else "")
            + ". Rerun `mer train` with the same options: it trains these folds again and keeps the others"
        )
        if not partial:
            raise DamagedFold(msg)
        warnings.warn(msg + " (left out of this --partial score)", RuntimeWarning, stacklevel=2)
        missing += [name for name, _ in damaged]
    if missing and not partial:
        raise IncompleteRun(
            f"{len(missing)} of {len(folds)} folds are not finished ({', '.join(missing[:8])}"
            f"{' ...' if len(missing) > 8 else ''}); rerun `mer train` with the same options to "
            "finish them, or `mer evaluate --partial` to score the finished ones"
        )
    if not rows:
        raise IncompleteRun("no fold is finished yet")
    idx = [r.index for r in rows]
    if len(set(idx)) != len(idx):
        dup = sorted({i for i in idx if idx.count(i) > 1})
        raise RuntimeError(
            f"samples predicted by more than one fold: {dup[:10]} (protocol with overlapping "
            "test sets; pooled metrics would double-count them)"
        )
    rows.sort(key=lambda r: r.index)
    return rows, results, folds


def selection_of(results: list[dict]) -> tuple[str, bool]:
    """(selection label, valid estimate) of a run from its folds' result.json (every fold names how its
    epoch was chosen; a run with any oracle-selected fold is not a valid estimate)."""
    labels = list(dict.fromkeys(r["selection"] for r in results))
    valid = all(r.get("valid_estimate", not r.get("oracle", False)) for r in results)
    return " + ".join(labels), valid


def compute_metrics(
    rows: list[PredictionRow], results: list[dict], config: dict, n_folds: int, excluded: list | None = None
) -> dict:
    """The metrics.json dict. config: the run's config.json (a TrainConfig as a dict); ``excluded``: samples
    the preparation could not use (uid, reason)."""
    from mer.metrics import breakdown, per_class

    yt = np.array([r.label for r in rows])
    yp = np.array([r.pred for r in rows])
    ds = np.array([r.dataset for r in rows])
    scores = breakdown(yt, yp, ds, labels=(0, 1, 2), overall="all")
    pc = per_class(yt, yp)
    secs = [r["seconds"] for r in results]
    selection, valid = selection_of(results)
    return {
        "excluded": list(excluded or []),
        "selection": selection,
        "oracle": not valid,
        "valid_estimate": valid,
        "protocol": config["protocol"],
        "model": config["model"],
        "input": config["input"],
        "flow": (
            "htnet-release (precomputed)"
            if str(config.get("data") or "").startswith("htnet-release:")
            else config["prep"]["flow"]
        ),
        "augment": config["augment"],
        "seed": config["seed"],
        "labels": list(LABEL_NAMES),
        "folds": n_folds,
        "folds_finished": len(results),
        "n": int(len(rows)),
        "scores": scores,
        "per_class": {k: [float(v) for v in pc[k]] for k in ("f1", "recall", "precision")},
        "timing": {
            "fold_seconds_total": round(float(np.sum(secs)), 1),
            "fold_seconds_mean": round(float(np.mean(secs)), 2),
            "fold_seconds_max": round(float(np.max(secs)), 2),
            "fold_cpu_seconds_mean": round(float(np.mean([r.get("cpu_seconds", np.nan) for r in results])), 2),
            "epoch_seconds_mean": round(float(np.mean([r["seconds_per_epoch"] for r in results])), 3),
            "epochs_selected_mean": round(float(np.mean([r["epoch_selected"] for r in results])), 2),
        },
    }


def format_table(m: dict, markdown: bool = True) -> str:
    """The results table: UF1/UAR overall and per dataset, with the selection mode in the title."""
    title = (
        f"{m['model']} ({m['input']}, {m['flow']}, augment {m['augment']}), {m['protocol']}, seed {m['seed']}"
        f" - selection: {m['selection']}"
    )
    if m["folds_finished"] < m["folds"]:
        title += f" - PARTIAL: {m['folds_finished']} of {m['folds']} folds"
    lines = [f"**{title}**" if markdown else title, "", *_score_rows(m["scores"])]
    if m.get("excluded"):
        lines.append("")
        lines.append(
            f"{len(m['excluded'])} sample(s) excluded (could not be prepared): "
            + "; ".join(f"{e['uid']} ({e['reason'].split(':')[0]})" for e in m["excluded"])
        )
    if m["oracle"]:
        lines.append("")
        lines.append(
            "oracle: the epoch was chosen on the held-out subjects (the released HTNet's evaluation); "
            "these numbers are NOT a valid estimate of generalisation."
        )
    if m.get("last_epoch"):
        last = m["last_epoch"]
        lines += [
            "",
            f"The same training, selection: {last['selection']}",
            "",
            *_score_rows(last["scores"]),
        ]
    return "\n".join(lines)


def _score_rows(scores: dict) -> list[str]:
    """The table's header and one row per set ('all' first as 'composite (all)')."""
    rows = ["| set | n | UF1 | UAR |", "|---|---:|---:|---:|"]
    for name, s in scores.items():
        label = "composite (all)" if name == "all" else name
        rows.append(f"| {label} | {s['n']} | {s['uf1']:.4f} | {s['uar']:.4f} |")
    return rows


def last_epoch_scores(root: Path, folds: list[dict], config: dict) -> dict | None:
    """An oracle run's folds also save the last epoch's test predictions (predictions_last_epoch.csv): the
    same training scored with a fixed budget. Pooled like the main scores; None when any fold lacks them."""
    from mer.evaluation.integrity import read_fold_predictions
    from mer.metrics import breakdown

    paths = [root / "folds" / f["dir"] / "predictions_last_epoch.csv" for f in folds]
    if not paths or not all(p.exists() for p in paths):
        return None
    rows = sorted(
        (r for p, f in zip(paths, folds, strict=True) for r in read_fold_predictions(p, f["test"])),
        key=lambda r: r.index,
    )
    yt, yp = np.array([r.label for r in rows]), np.array([r.pred for r in rows])
    return {
        "selection": f"fixed budget ({config['epochs']} epochs, last epoch)",
        "valid_estimate": True,
        "n": len(rows),
        "scores": breakdown(yt, yp, np.array([r.dataset for r in rows]), labels=(0, 1, 2), overall="all"),
    }


def write_report(root, *, partial: bool = False, print_table: bool = True, plots: bool = True) -> dict:
    """Recompute everything from the saved fold predictions of run ``root``; returns metrics.json's dict."""
    from mer.metrics import write_megc_log

    root = Path(root)
    config = json.loads((root / "config.json").read_text())
    rows, results, folds = collect(root, partial=partial)
    ex_path = root / "excluded.json"
    excluded = json.loads(ex_path.read_text()) if ex_path.exists() else []
    m = compute_metrics(rows, results, config, len(folds), excluded)
    m["folds_scored"] = [r["fold"] for r in results]  # which held-out folds (pooling partial runs: disjoint)
    # over the folds scored above (all of them, or with ``partial`` the finished ones): the two tables of an
    # oracle run always describe the same held-out samples
    done = {r["dir"] for r in results}
    last = last_epoch_scores(root, [f for f in folds if f["dir"] in done], config)
    if last is not None:
        m["last_epoch"] = last
    write_predictions(root / "predictions.csv", rows)
    # the MEGC log in fold order (one header per held-out subject)
    write_megc_log(root / "megc_log.txt", rows, [r.pred for r in rows], [r.label for r in rows])
    table = format_table(m)
    atomic_write_text(root / "summary.md", table + "\n")
    if plots:
        from mer.evaluation.plots import plot_confusions, plot_learning_curves

        m["plots"] = [
            str(plot_confusions(m, root / "confusion.png").name),
            str(plot_learning_curves(root, m, root / "learning_curves.png").name),
        ]
    atomic_write_json(root / "metrics.json", m)
    if print_table:
        print(table)
        print(
            f"wrote {root}/metrics.json, predictions.csv, megc_log.txt, summary.md"
            + (", confusion.png, learning_curves.png" if plots else "")
        )
    return m
