"""Calibration of the synthetic composite against the real one: flow-map statistics per dataset and class,
class separability, subject effects and class-mean maps, side by side (issue 16).

    python -m mer.synth.calibrate --htnet-release PATH --synth data/synth [--synth data/synth-0.35 ...] \\
        --cache ~/.cache/mer/prepared --out benchmarks/results/synth-calibration-DATE

The real flow images of the public HTNet release are min-max normalised to 0..255 per image and channel,
so their physical scale (pixels) is gone. Every statistic below is therefore computed on that scale for
both sources: the synthetic maps (``PreparedSet.face``, the whole-face 28x28 u, v, strain the models see)
get the same per-image min-max first. Per image and channel (values v, median m, MAD-based sigma s):

    level   = m                        where "no motion" sits on 0..255 (strain: its floor)
    peak_z  = max |v - m| / s          how far the strongest motion stands out of the background
    active  = share of pixels with |v - m| > 40   area that moves clearly
    spread  = standard deviation of v
    affine_r2 = share of the map's variance that a plane a + b x + c y explains (global motion: head
              drift/rotation/zoom; min-max is affine per channel, so this is scale-free)

Over samples (each pixel standardised over all samples): F = per-pixel one-way ANOVA F of the 3 classes
(mean over pixels), class_eta2 / subject_eta2 = share of the pixel variance explained by the class / by the
subject (mean over pixels), and the class-mean maps (each image centred on its median) with their
pattern correlation between the sources. The synthetic maps' physical magnitudes (mean |u|, |v|, strain in
pixels of the 28 grid) are reported too (no real counterpart). Writes calibration.json, calibration.md
and calibration.png (class-mean maps and F maps).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

CHANNELS = ("u", "v", "strain")
CLASSES = ("negative", "positive", "surprise")
DATASETS = ("casme2", "samm", "smic")
ACTIVE = 40.0


def affine_r2(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N, C): R^2 of the least-squares plane a + b*col + c*row fitted to each map."""
    n, c, h, w = x.shape
    rows, cols = np.mgrid[0:h, 0:w]
    A = np.stack([np.ones(h * w), cols.ravel(), rows.ravel()], 1)
    Y = np.asarray(x, np.float64).reshape(n * c, h * w).T  # (HW, N*C)
    coef, *_ = np.linalg.lstsq(A, Y, rcond=None)
    res = ((Y - A @ coef) ** 2).sum(0)
    tot = ((Y - Y.mean(0)) ** 2).sum(0)
    return np.where(tot > 0, 1 - res / np.where(tot > 0, tot, 1), 0.0).reshape(n, c)


def image_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """(N, 3, S, S) maps on the 0..255 per-image scale -> {'level', 'peak_z', 'active', 'spread',
    'affine_r2'}: (N, 3) each."""
    f = np.asarray(x, np.float64).reshape(len(x), x.shape[1], -1)
    med = np.median(f, axis=2, keepdims=True)
    dev = np.abs(f - med)
    sigma = 1.4826 * np.median(dev, axis=2) + 1e-6
    return {
        "level": med[..., 0],
        "peak_z": dev.max(axis=2) / sigma,
        "active": (dev > ACTIVE).mean(axis=2),
        "spread": f.std(axis=2),
        "affine_r2": affine_r2(x),
    }


def separability(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> dict[str, np.ndarray]:
    """Per pixel, on features standardised over the samples: 'F' (3, S, S) one-way ANOVA F between the
    classes, 'class_eta2' and 'subject_eta2' (3, S, S): variance share explained by class / by subject."""
    x = np.asarray(x, np.float64)
    n = len(x)
    z = (x - x.mean(0)) / (x.std(0) + 1e-12)
    classes = np.unique(y)
    between = np.zeros(x.shape[1:])
    within = np.zeros(x.shape[1:])
    for k in classes:
        zk = z[y == k]
        mk = zk.mean(0)
        between += len(zk) * mk**2
        within += ((zk - mk) ** 2).sum(0)
    subj = np.zeros(x.shape[1:])
    for g in np.unique(groups):
        zg = z[groups == g]
        subj += len(zg) * zg.mean(0) ** 2
    total = (z**2).sum(0) + 1e-12
    F = (between / (len(classes) - 1)) / (within / (n - len(classes)) + 1e-12)
    return {"F": F, "class_eta2": between / total, "subject_eta2": subj / total}


def class_mean_maps(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(3 classes, 3 channels, S, S): mean over each class of the images centred on their own median."""
    f = np.asarray(x, np.float64)
    c = f - np.median(f.reshape(len(f), f.shape[1], -1), axis=2)[..., None, None]
    return np.stack([c[y == k].mean(0) for k in range(len(CLASSES))])


def describe(x_minmax, y, datasets, subjects, x_raw=None) -> dict:
    """Every statistic of one source (see the module docstring), JSON-ready."""
    y = np.asarray(y)
    datasets = np.asarray(datasets)
    groups = np.array([f"{d}/{s}" for d, s in zip(datasets, subjects, strict=True)])
    st = image_stats(x_minmax)
    medians = ("peak_z", "affine_r2")  # skewed: the median image
    per = {}
    for d in DATASETS:
        for k, cname in enumerate(CLASSES):
            m = (datasets == d) & (y == k)
            if not m.any():
                continue
            row = {"n": int(m.sum())}
            for name, v in st.items():
                agg = np.median if name in medians else np.mean
                row[name] = {c: round(float(agg(v[m, i])), 3) for i, c in enumerate(CHANNELS)}
            if x_raw is not None:
                r = np.asarray(x_raw, np.float64)[m]
                row["raw_mean_abs"] = {c: round(float(np.abs(r[:, i]).mean()), 4) for i, c in enumerate(CHANNELS)}
                row["raw_p99_abs"] = {
                    c: round(float(np.percentile(np.abs(r[:, i]), 99)), 4) for i, c in enumerate(CHANNELS)
                }
            per[f"{d}/{cname}"] = row
    sep = separability(x_minmax, y, groups)
    overall = {
        name: {
            c: round(float(np.median(v[:, i]) if name in medians else v[:, i].mean()), 3)
            for i, c in enumerate(CHANNELS)
        }
        for name, v in st.items()
    }
    for name, v in sep.items():
        overall[name] = {c: round(float(v[i].mean()), 4) for i, c in enumerate(CHANNELS)}
    return {"n": int(len(y)), "overall": overall, "per_dataset_class": per}


def compare_patterns(a: np.ndarray, b: np.ndarray) -> dict:
    """Pattern correlation of two (3, 3, S, S) class-mean map stacks, per class and channel."""
    return {
        f"{CLASSES[k]}/{CHANNELS[c]}": round(float(np.corrcoef(a[k, c].ravel(), b[k, c].ravel())[0, 1]), 3)
        for k in range(len(CLASSES))
        for c in range(len(CHANNELS))
    }


def plot(sources: dict, path: Path) -> None:
    """One row per source: the class-mean centred maps (3 classes x u, v, strain) and the per-pixel F maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(sources)
    ncol = len(CLASSES) * len(CHANNELS) + len(CHANNELS)
    fig, axes = plt.subplots(len(names), ncol, figsize=(ncol * 0.95, len(names) * 1.2 + 0.5), squeeze=False)
    lim = {c: max(np.abs(s["means"][:, c]).max() for s in sources.values()) for c in range(len(CHANNELS))}
    fmax = max(s["F"].max() for s in sources.values())
    for r, name in enumerate(names):
        s = sources[name]
        for k in range(len(CLASSES)):
            for c in range(len(CHANNELS)):
                ax = axes[r, k * len(CHANNELS) + c]
                ax.imshow(s["means"][k, c], cmap="coolwarm", vmin=-lim[c], vmax=lim[c])
                if r == 0:
                    ax.set_title(f"{CLASSES[k][:3]} {CHANNELS[c]}", fontsize=7)
        for c in range(len(CHANNELS)):
            ax = axes[r, len(CLASSES) * len(CHANNELS) + c]
            ax.imshow(s["F"][c], cmap="magma", vmin=0, vmax=fmax)
            if r == 0:
                ax.set_title(f"F {CHANNELS[c]}", fontsize=7)
        axes[r, 0].set_ylabel(name, fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        "class-mean flow maps (per-image 0..255, centred on each image's median; shared colour scale "
        "per channel) and per-pixel class F",
        fontsize=7,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def _table(name: str, stats: dict, key: str) -> list[str]:
    lines = [f"| {name} | " + " | ".join(f"{key} {c}" for c in CHANNELS) + " |", "|---|---|---|---|"]
    for group, row in stats.items():
        lines.append(f"| {group} (n {row['n']}) | " + " | ".join(f"{row[key][c]:.3g}" for c in CHANNELS) + " |")
    return lines


def markdown(report: dict) -> str:
    lines = [
        "# Synthetic vs real composite: flow-map statistics",
        "",
        "Whole-face 28x28 flow images, per-image min-max 0..255 (the release's normalisation, applied to the "
        "synthetic maps). Definitions: `python -m mer.synth.calibrate --help` / the module docstring.",
        "",
        f"- command: `{report['command']}`",
        "",
    ]
    keys = ["level", "peak_z", "active", "affine_r2", "F", "class_eta2", "subject_eta2"]
    lines += [
        "| source | n | " + " | ".join(f"{k} (u / v / strain)" for k in keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for name, s in report["sources"].items():
        o = s["overall"]
        lines.append(
            f"| {name} | {s['n']} | " + " | ".join(" / ".join(f"{o[k][c]:.3g}" for c in CHANNELS) for k in keys) + " |"
        )
    for name, s in report["sources"].items():
        lines += ["", f"## {name}: per dataset and class", ""]
        per = s["per_dataset_class"]
        cols = ["level", "peak_z", "active", "affine_r2"]
        if "raw_mean_abs" in next(iter(per.values())):
            cols.append("raw_mean_abs")
        lines += [
            "| dataset/class | n | " + " | ".join(f"{k} (u / v / strain)" for k in cols) + " |",
            "|---|---|" + "---|" * len(cols),
        ]
        for group, row in per.items():
            lines.append(
                f"| {group} | {row['n']} | "
                + " | ".join(" / ".join(f"{row[k][c]:.3g}" for c in CHANNELS) for k in cols)
                + " |"
            )
    if report.get("pattern_correlation"):
        lines += [
            "",
            "## Class-mean map pattern correlation with the real composite",
            "",
            "| source | " + " | ".join(next(iter(report["pattern_correlation"].values()))) + " |",
            "|---|" + "---|" * 9,
        ]
        for name, pc in report["pattern_correlation"].items():
            lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in pc.values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m mer.synth.calibrate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--htnet-release", type=Path, required=True, metavar="PATH", help="the real composite")
    ap.add_argument(
        "--synth", type=Path, action="append", default=[], metavar="DIR", help="a `mer synth` output (repeatable)"
    )
    ap.add_argument("--flow", default="tvl1", help="optical flow of the synthetic preparation (tvl1)")
    ap.add_argument("--cache", default="~/.cache/mer/prepared", help="preprocessing cache")
    ap.add_argument("--workers", type=int, default=1, help="preprocessing processes")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    from mer.baselines.sources import minmax_per_image, release_features, synth_features

    try:
        real = release_features(args.htnet_release, ["flow"])
        synths = {}
        for d in args.synth:
            fs = synth_features(
                d, ["flow"], flow=args.flow, cache_dir=args.cache, workers=args.workers, scale="raw", progress=False
            )
            synths[f"synth d={fs.source.get('difficulty')} ({d.name})"] = fs
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = {
        "command": "python -m mer.synth.calibrate " + " ".join(sys.argv[1:] if argv is None else argv),
        "sources": {},
        "pattern_correlation": {},
    }
    plots = {}
    real_means = None
    for name, fs, raw in [("real", real, None)] + [(n, f, f.x["flow"]) for n, f in synths.items()]:
        mm = fs.x["flow"] if raw is None else minmax_per_image(raw)
        report["sources"][name] = describe(mm, fs.y, fs.datasets, fs.subjects, x_raw=raw)
        groups = np.array([f"{d}/{s}" for d, s in zip(fs.datasets, fs.subjects, strict=True)])
        means = class_mean_maps(mm, fs.y)
        plots[name] = {"means": means, "F": separability(mm, fs.y, groups)["F"]}
        if real_means is None:
            real_means = means
        else:
            report["pattern_correlation"][name] = compare_patterns(real_means, means)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calibration.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "calibration.md").write_text(markdown(report))
    plot(plots, args.out / "calibration.png")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
