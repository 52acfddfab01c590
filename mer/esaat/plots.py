"""The transfer-entropy bar plot of an ESAAT run."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_transfer_entropy(summary: dict, path) -> Path:
    """Per attention layer: transfer entropy T({layer}) of every fold (grouped bars), the layers removed in
    at least one fold marked with their count. ``summary``: ``prune_run``'s dict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folds = summary["per_fold"]
    layers = list(folds[0]["layer_te"])
    freq = summary["selection_agreement"]["frequency"]
    m, n = len(folds), len(layers)
    width = 0.8 / max(1, m)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * n + 2), 3.6))
    for i, f in enumerate(folds):
        ax.bar(
            np.arange(n) + (i - (m - 1) / 2) * width,
            [f["layer_te"][k] for k in layers],
            width,
            label=f["fold"] if m <= 10 else None,
        )
    ax.axhline(0, color="k", lw=0.6)
    for j, name in enumerate(layers):
        if freq.get(name):
            ax.annotate(
                f"removed {freq[name]}/{m}",
                (j, 0),
                xytext=(0, -22),
                textcoords="offset points",
                ha="center",
                fontsize=7,
                color="tab:red",
            )
    ax.set_xticks(np.arange(n))
    ax.set_xticklabels([name.replace(".attn", "") for name in layers], rotation=20, fontsize=8)
    ax.set_ylabel("transfer entropy T (nats)")
    ra = summary["ranking_agreement"]
    ax.set_title(
        f"ESAAT on {summary['model']}: T(layer) = H(all) - H(layer skipped)\nranking agreement: Spearman "
        f"{ra['spearman_mean']:.2f}, Kendall W {ra['kendall_w']:.2f}",
        fontsize=9,
    )
    if m <= 10:
        ax.legend(fontsize=7, ncol=min(m, 5))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
