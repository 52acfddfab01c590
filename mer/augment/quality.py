"""Are generated samples plausible? Per-class channel statistics, nearest-neighbour distances, image grids.

* Channel statistics: for each class, mean and std of every channel (u, v, strain) over all pixels of the
  real training samples and of the generated ones.
* Memorisation check: the Euclidean distance (over all C·H·W values) from each generated sample to its
  nearest training sample, against the leave-one-out nearest-neighbour distance among the real training
  samples themselves. A generated sample much closer to a training image than real samples are to each
  other (below the 1st percentile of real-to-real distances, ``near_copy_fraction``) is a likely copy.
  A median ratio gen→train / real→real far above 1 means the samples are off the data manifold (noise).
* Grid: per class, a few real and a few generated samples, each shown as its 3 channels side by side
  with a diverging colour map centred on 0 (shared limits per channel).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["channel_stats", "nn_distances", "quality_report", "report_markdown", "save_grid"]

CHANNELS = ("u", "v", "strain")


def channel_stats(x: np.ndarray, y: np.ndarray) -> dict[int, dict[str, list[float]]]:
    """{class: {"n", "mean": [C], "std": [C]}} over samples and pixels of x (M, C, H, W)."""
    out = {}
    for c in np.unique(y):
        xc = x[y == c].astype(np.float64)
        out[int(c)] = {"n": int(len(xc)), "mean": xc.mean((0, 2, 3)).tolist(), "std": xc.std((0, 2, 3)).tolist()}
    return out


def _pairwise_min(a: np.ndarray, b: np.ndarray, exclude_self: bool = False, chunk: int = 512) -> np.ndarray:
    """For each row of a (N, D): the smallest Euclidean distance to a row of b (M, D)."""
    b2 = (b * b).sum(1)
    out = np.empty(len(a))
    for s in range(0, len(a), chunk):
        blk = a[s : s + chunk]
        d2 = (blk * blk).sum(1)[:, None] + b2[None] - 2.0 * blk @ b.T
        if exclude_self:
            d2[np.arange(len(blk)), np.arange(s, s + len(blk))] = np.inf
        out[s : s + chunk] = np.sqrt(np.maximum(d2.min(1), 0.0))
    return out


def nn_distances(x_gen: np.ndarray, x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gen→train NN distance (N,), real→real leave-one-out NN distance (M,)), flattened images, float64."""
    g = x_gen.reshape(len(x_gen), -1).astype(np.float64)
    r = x_train.reshape(len(x_train), -1).astype(np.float64)
    rr = _pairwise_min(r, r, exclude_self=True) if len(r) > 1 else np.full(len(r), np.nan)
    return _pairwise_min(g, r) if len(g) else np.zeros(0), rr


def _summary(d: np.ndarray) -> dict[str, float]:
    if len(d) == 0:
        return {"n": 0}
    q = np.percentile(d, [1, 25, 50, 75])
    return {
        "n": int(len(d)),
        "min": float(d.min()),
        "p01": float(q[0]),
        "p25": float(q[1]),
        "median": float(q[2]),
        "p75": float(q[3]),
        "mean": float(d.mean()),
    }


def quality_report(x_gen: np.ndarray, y_gen: np.ndarray, x_train: np.ndarray, y_train: np.ndarray) -> dict:
    """Everything above as a JSON-ready dict: ``per_class`` (real vs generated stats, NN distances) and
    ``overall`` (NN summaries, median ratio, near-copy fraction)."""
    if x_gen.shape[1:] != x_train.shape[1:]:
        raise ValueError(f"generated {x_gen.shape[1:]} and real {x_train.shape[1:]} images differ in shape")
    real, gen = channel_stats(x_train, y_train), channel_stats(x_gen, y_gen)
    d_gen, d_rr = nn_distances(x_gen, x_train)
    thr = float(np.nanpercentile(d_rr, 1)) if len(d_rr) > 1 else float("nan")
    per_class = {}
    for c in sorted(set(real) | set(gen)):
        m = y_gen == c
        per_class[c] = {
            "real": real.get(c),
            "generated": gen.get(c),
            "mean_abs_diff": (
                np.abs(np.subtract(gen[c]["mean"], real[c]["mean"])).tolist() if c in gen and c in real else None
            ),
            "std_ratio": (np.divide(gen[c]["std"], real[c]["std"]).tolist() if c in gen and c in real else None),
            "nn_gen_to_train": _summary(d_gen[m]),
            "nn_real_to_real": _summary(d_rr[y_train == c]),
        }
    med_rr = float(np.median(d_rr)) if len(d_rr) > 1 else float("nan")
    return {
        "channels": list(CHANNELS[: x_train.shape[1]]) if x_train.shape[1] <= 3 else list(range(x_train.shape[1])),
        "n_generated": int(len(x_gen)),
        "n_train": int(len(x_train)),
        "per_class": per_class,
        "overall": {
            "nn_gen_to_train": _summary(d_gen),
            "nn_real_to_real": _summary(d_rr),
            "median_ratio_gen_over_real": float(np.median(d_gen) / med_rr) if len(d_gen) else None,
            "near_copy_threshold": thr,
            "near_copy_fraction": float((d_gen < thr).mean()) if len(d_gen) else None,
        },
    }


def report_markdown(rep: dict) -> str:
    """A short human-readable rendering of :func:`quality_report`'s dict."""
    ch = rep["channels"]
    o = rep["overall"]
    lines = [
        f"# DDPM sample quality ({rep['n_generated']} generated, {rep['n_train']} training samples)",
        "",
        "| class | n real | n gen | channel | mean real | mean gen | std real | std gen |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c, v in rep["per_class"].items():
        r, g = v["real"], v["generated"]
        for k, name in enumerate(ch):
            lines.append(
                f"| {c} | {r['n'] if r else 0} | {g['n'] if g else 0} | {name} | "
                f"{r['mean'][k]:.3f} | {g['mean'][k] if g else float('nan'):.3f} | "
                f"{r['std'][k]:.3f} | {g['std'][k] if g else float('nan'):.3f} |"
            )
    gtr, rr = o["nn_gen_to_train"], o["nn_real_to_real"]
    lines += [
        "",
        "Nearest-neighbour distance (Euclidean over all values):",
        "",
        "| | n | min | p01 | median | mean |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in (("generated → training", gtr), ("real → real (leave-one-out)", rr)):
        if s.get("n"):
            lines.append(
                f"| {name} | {s['n']} | {s['min']:.3f} | {s['p01']:.3f} | {s['median']:.3f} | {s['mean']:.3f} |"
            )
    if o["near_copy_fraction"] is not None:
        lines += [
            "",
            f"Median ratio generated/real: {o['median_ratio_gen_over_real']:.3f} (≈ 1: as close to the "
            "training set as real samples are to each other; ≫ 1: off-manifold; ≪ 1: copies).",
            f"Near copies (closer than the 1st percentile of real→real, {o['near_copy_threshold']:.3f}): "
            f"{100 * o['near_copy_fraction']:.1f}% of generated samples.",
        ]
    return "\n".join(lines) + "\n"


def save_grid(
    x_gen: np.ndarray,
    y_gen: np.ndarray,
    x_real: np.ndarray,
    y_real: np.ndarray,
    path: str | Path,
    *,
    per_class: int = 4,
    class_names: dict[int, str] | None = None,
    seed: int = 0,
) -> Path:
    """PNG: one row per (class, real|generated), ``per_class`` samples each, channels side by side
    (diverging ``RdBu_r``, symmetric limits per channel from the real data's 99th percentile of |value|)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    classes = sorted(set(np.unique(y_real).tolist()) | set(np.unique(y_gen).tolist()))
    nch = x_real.shape[1]
    lim = [float(np.percentile(np.abs(x_real[:, k]), 99)) or 1.0 for k in range(nch)]
    rows = [(c, kind) for c in classes for kind in ("real", "generated")]
    fig, axes = plt.subplots(
        len(rows), per_class * nch, figsize=(per_class * nch * 0.9, len(rows) * 1.0 + 0.4), squeeze=False
    )
    for r, (c, kind) in enumerate(rows):
        xs = (x_real if kind == "real" else x_gen)[(y_real if kind == "real" else y_gen) == c]
        pick = rng.choice(len(xs), size=min(per_class, len(xs)), replace=False) if len(xs) else []
        for j in range(per_class):
            for k in range(nch):
                ax = axes[r, j * nch + k]
                ax.set_xticks([]), ax.set_yticks([])
                if j < len(pick):
                    ax.imshow(xs[pick[j], k], cmap="RdBu_r", vmin=-lim[k], vmax=lim[k])
                else:  # fewer samples than columns: leave blank (keep the first axis for the row label)
                    for side in ax.spines.values():
                        side.set_visible(False)
                if r == 0:
                    ax.set_title(CHANNELS[k] if nch == 3 else str(k), fontsize=7)
        name = class_names.get(c, str(c)) if class_names else str(c)
        axes[r, 0].set_ylabel(f"{name}\n{kind}", fontsize=7)
    fig.suptitle("real vs DDPM-generated samples per class (u, v, strain side by side)", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
