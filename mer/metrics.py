"""MEGC metrics: UF1 (macro F1) and UAR (macro recall) on pooled predictions, per-dataset shares,
confusion matrices and the challenge's log format.

Definition (per class c over the pooled predictions, then the plain mean over ``labels``):
    F1_c     = 2 TP_c / (2 TP_c + FP_c + FN_c)     (0 when TP_c + FP_c + FN_c = 0)
    recall_c = TP_c / (TP_c + FN_c)                 (0 when class c is absent from y_true)
    UF1 = mean_c F1_c,  UAR = mean_c recall_c
This equals scikit-learn's ``f1_score(..., labels=labels, average='macro', zero_division=0)`` and
``recall_score(..., labels=labels, average='macro', zero_division=0)`` (its default 'warn' gives the same
numbers; ``zero_division=1`` would count the recall of a class absent from y_true as 1 and inflate UAR).
A class absent from a subset still counts (with 0), as the MEGC2019 definition over all three classes
requires; helpers that drop absent classes (a common bug in public evaluation scripts, which catch the
exception of a 1x1 confusion matrix and skip the class) report higher numbers on small subsets. On the
full composite every class is present, so both agree there.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def confusion_matrix(y_true, y_pred, labels: Sequence[int] = (0, 1, 2)) -> np.ndarray:
    """(L, L) int64 counts, rows = true class, columns = predicted class, in ``labels`` order.
    Predictions or truths outside ``labels`` raise (they would silently vanish otherwise)."""
    yt, yp = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if yt.shape != yp.shape:
        raise ValueError(f"y_true has {yt.size} entries, y_pred {yp.size}")
    index = {int(c): i for i, c in enumerate(labels)}
    bad = sorted({int(v) for v in np.concatenate([yt, yp]) if int(v) not in index})
    if bad:
        raise ValueError(f"values {bad} are not in labels {tuple(labels)}")
    cm = np.zeros((len(labels), len(labels)), np.int64)
    for t, p in zip(yt, yp, strict=True):
        cm[index[int(t)], index[int(p)]] += 1
    return cm


def per_class(y_true, y_pred, labels: Sequence[int] = (0, 1, 2)) -> dict[str, np.ndarray]:
    """{'f1', 'recall', 'precision', 'support'}: (L,) arrays per class (0 where undefined)."""
    return per_class_from_confusion(confusion_matrix(y_true, y_pred, labels))


def uf1_uar_from_confusion(cm) -> tuple[float, float]:
    """(UF1, UAR) from an (L, L) confusion matrix (rows = true class): the same numbers as ``uf1_uar`` on
    the predictions it counts, so runs scored in parts can be pooled by adding their matrices."""
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.sum() == 0:
        raise ValueError(f"need a non-empty square confusion matrix, got shape {cm.shape} with {cm.sum()} counts")
    pc = per_class_from_confusion(cm)
    return float(pc["f1"].mean()), float(pc["recall"].mean())


def per_class_from_confusion(cm) -> dict[str, np.ndarray]:
    """``per_class`` of the predictions an (L, L) confusion matrix counts."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    fn = cm.sum(1) - tp
    fp = cm.sum(0) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
    return {"f1": f1, "recall": recall, "precision": precision, "support": cm.sum(1).astype(np.int64)}


def uf1_uar(y_true, y_pred, labels: Sequence[int] = (0, 1, 2)) -> tuple[float, float]:
    """(UF1, UAR) of pooled predictions; every class in ``labels`` counts (see the module docstring)."""
    if len(np.asarray(y_true).ravel()) == 0:
        raise ValueError("uf1_uar of an empty set of predictions")
    pc = per_class(y_true, y_pred, labels)
    return float(pc["f1"].mean()), float(pc["recall"].mean())


def breakdown(y_true, y_pred, groups, labels: Sequence[int] = (0, 1, 2), overall: str = "all") -> dict:
    """Scores of the pooled predictions and of each group's share of them (e.g. groups = the dataset of
    each sample; no retraining, no averaging of per-fold scores).

    Returns {group: {'uf1', 'uar', 'n', 'confusion' (list of lists)}} with ``overall`` for all samples.
    """
    yt, yp, g = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel(), np.asarray(groups).ravel()
    if not (yt.size == yp.size == g.size):
        raise ValueError(f"y_true ({yt.size}), y_pred ({yp.size}) and groups ({g.size}) differ in length")
    out = {}
    for name, mask in [(overall, np.ones_like(yt, bool))] + [(str(x), g == x) for x in dict.fromkeys(g)]:
        uf1, uar = uf1_uar(yt[mask], yp[mask], labels)
        out[name] = {
            "uf1": uf1,
            "uar": uar,
            "n": int(mask.sum()),
            "confusion": confusion_matrix(yt[mask], yp[mask], labels).tolist(),
        }
    return out


def megc_log_lines(samples, y_pred, y_true=None) -> list[str]:
    """The MEGC2019 log: per (dataset, subject) fold a ``<db> <subject>`` header then ``<clip> <gt> <pred>``
    lines, folds in order of first appearance. samples: objects with dataset, subject, clip (and label
    when y_true is None)."""
    y_pred = list(np.asarray(y_pred).ravel())
    if len(y_pred) != len(samples):
        raise ValueError(f"{len(samples)} samples but {len(y_pred)} predictions")
    if y_true is None:
        y_true = [s.label for s in samples]
        if any(t is None for t in y_true):
            raise ValueError("a sample has no label; pass y_true")
    y_true = list(np.asarray(y_true).ravel())
    folds: dict[tuple[str, str], list[str]] = {}
    for s, t, p in zip(samples, y_true, y_pred, strict=True):
        folds.setdefault((s.dataset, s.subject), []).append(f"{s.clip} {int(t)} {int(p)}")
    lines = []
    for (db, subj), rows in folds.items():
        lines.append(f"{db} {subj}")
        lines.extend(rows)
    return lines


def write_megc_log(path, samples, y_pred, y_true=None) -> Path:
    """Write :func:`megc_log_lines` to ``path`` (one line each)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(megc_log_lines(samples, y_pred, y_true)) + "\n")
    return path
