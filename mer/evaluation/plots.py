"""Plots of a run: confusion matrices (pooled, per dataset) and learning curves (mean over folds).

Titles carry the run's selection mode, so an oracle (test-fold selection) figure is never mistaken for a
valid estimate.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from mer.labels import LABEL_NAMES


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short_selection(m: dict) -> str:
    return m["selection"]


def plot_confusions(m: dict, path) -> Path:
    """One panel per score set (all, then each dataset): counts and row-normalised colour."""
    plt = _plt()
    sets = list(m["scores"].items())
    fig, axes = plt.subplots(1, len(sets), figsize=(3.6 * len(sets), 4.0), squeeze=False)
    for ax, (name, s) in zip(axes[0], sets, strict=True):
        cm = np.array(s["confusion"], dtype=float)
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(3), [n[:3] for n in LABEL_NAMES])
        ax.set_yticks(range(3), [n[:3] for n in LABEL_NAMES])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{name} (n={s['n']})\nUF1 {s['uf1']:.3f}  UAR {s['uar']:.3f}", fontsize=9)
    fig.suptitle(f"{m['model']} - {m['protocol']} - {_short_selection(m)}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_learning_curves(root, m: dict, path) -> Path:
    """Mean (± std) over folds of the per-epoch train loss, and validation UF1 / oracle test accuracy when
    the run recorded them."""
    plt = _plt()
    root = Path(root)
    hists = []
    for h in sorted((root / "folds").glob("*/history.json")):
        try:
            hists.append(json.loads(h.read_text()))
        except ValueError:  # a damaged fold's (mer.evaluation.integrity names it); not plotted
            continue
    keys = [("train_loss", "train loss"), ("train_acc", "train accuracy")]
    if any("val_uf1" in r for h in hists for r in h):
        keys += [("val_loss", "validation loss"), ("val_uf1", "validation UF1")]
    if any("oracle_test_acc" in r for h in hists for r in h):
        keys += [("oracle_test_acc", "oracle: held-out accuracy")]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.8 * len(keys), 3.4), squeeze=False)
    for ax, (k, label) in zip(axes[0], keys, strict=True):
        n = max((len(h) for h in hists), default=0)
        vals = np.full((len(hists), n), np.nan)
        for i, h in enumerate(hists):
            for r in h:
                if k in r:
                    vals[i, r["epoch"] - 1] = r[k]
        if n:
            ep = np.arange(1, n + 1)
            with warnings.catch_warnings():  # epochs that only some folds reached (early stopping)
                warnings.simplefilter("ignore", RuntimeWarning)
                mu, sd = np.nanmean(vals, 0), np.nanstd(vals, 0)
            ax.plot(ep, mu)
            ax.fill_between(ep, mu - sd, mu + sd, alpha=0.25)
        ax.set_xlabel("epoch")
        ax.set_title(label, fontsize=9)
    fig.suptitle(f"{m['model']} - {len(hists)} folds, mean ± std - {_short_selection(m)}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
