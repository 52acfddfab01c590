"""How much the folds agree on the layer ranking and the selected sets."""

from __future__ import annotations

from collections import Counter

import numpy as np


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks (1 = smallest), ties share their mean rank."""
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v), np.float64)
    r[order] = np.arange(1, len(v) + 1)
    for val in np.unique(v):
        m = v == val
        r[m] = r[m].mean()
    return r


def ranking_agreement(scores: list[dict], criterion: str = "abs") -> dict:
    """Agreement of per-fold layer scores {layer: T} (lower = removed earlier; |T| for 'abs').

    Returns {'layers', 'mean_rank', 'spearman_mean' (mean pairwise Spearman ρ over fold pairs, 1 = identical
    rankings), 'kendall_w' (Kendall's coefficient of concordance, 0..1, no tie correction), 'folds'}."""
    if not scores:
        raise ValueError("no fold scores")
    layers = list(scores[0])
    if any(list(s) != layers for s in scores):
        raise ValueError("the folds scored different layer sets")
    m, n = len(scores), len(layers)
    vals = np.array([[abs(s[k]) if criterion == "abs" else s[k] for k in layers] for s in scores])
    ranks = np.stack([_ranks(v) for v in vals])  # (folds, layers)
    rho = []
    for i in range(m):
        for j in range(i + 1, m):
            a, b = ranks[i] - ranks[i].mean(), ranks[j] - ranks[j].mean()
            den = np.sqrt((a * a).sum() * (b * b).sum())
            rho.append(float((a * b).sum() / den) if den > 0 else 1.0)
    R = ranks.sum(0)
    S = float(((R - R.mean()) ** 2).sum())
    w = 12 * S / (m * m * (n**3 - n)) if n > 1 and m > 1 else 1.0
    return {
        "layers": layers,
        "mean_rank": ranks.mean(0).round(3).tolist(),
        "spearman_mean": float(np.mean(rho)) if rho else 1.0,
        "kendall_w": float(w),
        "folds": m,
    }


def selection_agreement(selected: list[list[str]]) -> dict:
    """{'frequency': {layer: folds that removed it}, 'modal_set', 'modal_share' (share of folds that removed
    exactly the most common set)}."""
    sets = Counter(tuple(sorted(s)) for s in selected)
    modal, count = sets.most_common(1)[0] if sets else ((), 0)
    freq = Counter(name for s in selected for name in s)
    return {
        "frequency": dict(sorted(freq.items())),
        "modal_set": list(modal),
        "modal_share": count / max(1, len(selected)),
    }
