#!/usr/bin/env python3
"""The README's real-data table as one picture: each model's honest UF1 (every seed, mean ± std) beside
its oracle UF1, the linear floor, and the paper's figures.

    python scripts/real_results_figure.py      # -> benchmarks/results/real-summary.{png,json}

Nothing is trained or re-scored: the numbers are read from the committed result files of the runs (the
ones the README's real-data table quotes; ``SOURCES`` names each), and the JSON written beside the figure
lists every plotted value with the file it came from. The paper's figures (HTNet 0.8603, + LAPE 0.8713,
ESAAT 0.8852 UF1) are quoted from the papers, not measured. The full-size row covers the folds that have
run on a GPU (its clips are named in its pooled.json); its own linear floor, on the same clips, is drawn
on its row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the paper's UF1 figures (HTNet: Wang et al. 2024; + LAPE and ESAAT: Zhang et al. 2025), quoted
PAPER = {"HTNet": 0.8603, "LAPE": 0.8713, "ESAAT": 0.8852}

LOSO = "real-loso-2026-12-03/ablation.json"
ESAAT = "real-esaat-seeds-2026-12-04/esaat_table.json"
DDPM = "real-esaat-ddpm-seeds-2026-12-04/esaat_table.json"
FLOOR = "real-linear-floor-2026-12-03/linear_floor.json"
FULL = "real-release-gpu-2026-12-04/pooled.json"

# (row label, honest source, oracle source or None, paper key or None); a source is (file, selector):
# for ablation.json the run config, for esaat_table.json the start of the row label
SOURCES = [
    ("released structure, dim 32", (LOSO, "released_scaled"), (LOSO, "released_scaled"), "HTNet"),
    ("working HTNet (htnet_small)", (LOSO, "htnet"), (LOSO, "htnet"), "HTNet"),
    ("+ LAPE", (ESAAT, "base:"), (LOSO, "lape"), "LAPE"),
    ("+ LAPE + agent attention", (LOSO, "lape_agent"), (LOSO, "lape_agent"), None),
    ("LAPE fine-tuned (ESAAT's control)", (ESAAT, "control:"), None, None),
    ("ESAAT k = 1", (ESAAT, "ESAAT k=1"), None, "ESAAT"),
    ("ESAAT k = 2", (ESAAT, "ESAAT k=2"), None, None),
    ("ESAAT k = 3", (ESAAT, "ESAAT k=3"), None, None),
    ("control + DDPM", (DDPM, "control + DDPM"), None, None),
    ("paper's chain: ESAAT k = 1 + DDPM", (DDPM, "the paper's chain: ESAAT k=1"), None, "ESAAT"),
    ("paper's chain, k = 2", (DDPM, "the paper's chain: ESAAT k=2"), None, None),
    ("paper's chain, k = 3", (DDPM, "the paper's chain: ESAAT k=3"), None, None),
]


class MissingResult(Exception):
    """A result file or an entry in it that the figure needs is not there."""


def _load(results: Path, rel: str) -> dict:
    path = results / rel
    if not path.is_file():
        raise MissingResult(f"{path}: not found (the figure reads the committed results; is --results right?)")
    return json.loads(path.read_text())


def _uf1s(results: Path, source: tuple[str, str], oracle: bool = False) -> list[float]:
    """Per-seed pooled UF1 of one configuration (ablation.json: honest or oracle; esaat_table.json: honest)."""
    rel, sel = source
    data = _load(results, rel)
    if rel.endswith("ablation.json"):
        rows = sorted((r for r in data["rows"] if r["config"] == sel), key=lambda r: r["seed"])
        vals = [r["oracle"]["uf1"] if oracle else r["uf1"] for r in rows if not oracle or r.get("oracle")]
    else:
        rows = [r for r in data["rows"] if r["label"].startswith(sel)]
        if len(rows) > 1:
            raise MissingResult(f"{results / rel}: {len(rows)} rows start with {sel!r}; expected one")
        vals = [run["scores"]["all"]["uf1"] for run in rows[0]["per_run"]] if rows else []
    if not vals:
        raise MissingResult(f"{results / rel}: no {'oracle ' if oracle else ''}scores for {sel!r}")
    return vals


def _summary(vals: list[float]) -> dict:
    return {
        "per_seed": vals,
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else None,
    }


def collect(results: Path) -> dict:
    """Every plotted number, with where it came from."""
    floor = next(
        r
        for r in _load(results, FLOOR)["results"]
        if r["input"] == "flow" and r["protocol"] == "loso"  # the README's floor: the flow image, LOSO
    )
    rows = []
    for label, honest, oracle, paper in SOURCES:
        rows.append(
            {
                "label": label,
                "honest": _summary(_uf1s(results, honest)),
                "honest_source": honest[0],
                "oracle": _summary(_uf1s(results, oracle, oracle=True)) if oracle else None,
                "oracle_source": oracle[0] if oracle else None,
                "paper": PAPER[paper] if paper else None,
            }
        )
    full = _load(results, FULL)
    same = [r for r in full.get("same_clips", []) if r["path"].endswith(".csv")]
    if not same:
        raise MissingResult(f"{results / FULL}: no linear floor on the same clips ('same_clips' with a CSV)")
    full_row = {
        "label": f"released HTNet, full size (H200; {full['folds_finished']} of 68 folds, {full['n']} clips)",
        "honest": _summary([full["last_epoch"]["scores"]["all"]["uf1"]]),
        "honest_source": FULL,
        "oracle": _summary([full["scores"]["all"]["uf1"]]),
        "oracle_source": FULL,
        "paper": PAPER["HTNet"],
        "floor_same_clips": same[0]["uf1"],
    }
    return {
        "what": "pooled LOSO UF1 on the real MEGC2019 composite (the HTNet release's flow images): honest "
        "(last epoch of a fixed budget) and oracle (the release's test-fold epoch selection: not a valid "
        "estimate); the paper's figures quoted",
        "floor": {"uf1": floor["runs"][0]["scores"]["all"]["uf1"], "source": FLOOR},
        "rows": [*rows, full_row],
        "paper_figures": PAPER,
    }


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    fig, ax = plt.subplots(figsize=(9.5, 0.42 * len(rows) + 2.2))
    ys = list(range(len(rows)))[::-1]
    floor = data["floor"]["uf1"]
    ax.axvline(floor, color="0.45", ls="--", lw=1)
    ax.text(floor, -0.85, f" linear floor {floor:.3f}", color="0.35", fontsize=8, va="bottom")
    for y, r in zip(ys, rows, strict=True):
        h = r["honest"]
        ax.scatter(h["per_seed"], [y] * len(h["per_seed"]), s=14, color="tab:blue", alpha=0.55, zorder=3)
        if h["std"] is not None:
            ax.plot([h["mean"] - h["std"], h["mean"] + h["std"]], [y, y], color="tab:blue", lw=2.2, zorder=2)
        ax.scatter([h["mean"]], [y], marker="|", s=160, color="tab:blue", zorder=4)
        if r["oracle"]:
            o = r["oracle"]
            ax.scatter(o["per_seed"], [y] * len(o["per_seed"]), s=22, facecolors="none", edgecolors="tab:orange")
            ax.scatter([o["mean"]], [y], marker="|", s=160, color="tab:orange", zorder=4)
        if r["paper"] is not None:
            ax.scatter([r["paper"]], [y], marker="*", s=90, color="tab:red", zorder=5)
        if "floor_same_clips" in r:
            ax.plot([r["floor_same_clips"]] * 2, [y - 0.35, y + 0.35], color="0.45", lw=1.5)
    ax.set_yticks(ys, [r["label"] for r in rows], fontsize=8.5)
    ax.set_xlabel("pooled UF1, leave-one-subject-out (68 folds; the last row: its folds)")
    ax.set_xlim(0.55, 0.92)
    ax.set_ylim(-1, len(rows) - 0.4)
    ax.grid(axis="x", alpha=0.3)
    handles = [
        plt.Line2D([], [], color="tab:blue", marker="o", ls="-", ms=4, label="honest: last epoch (seeds, mean ± std)"),
        plt.Line2D([], [], color="tab:orange", marker="o", mfc="none", ls="", label="oracle: test-fold selection"),
        plt.Line2D([], [], color="tab:red", marker="*", ls="", ms=9, label="the paper's figure"),
        plt.Line2D([], [], color="0.45", ls="--", label="linear floor (last row: on its clips)"),
    ]
    ax.legend(handles=handles, fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, frameon=False)
    ax.set_title("Real MEGC2019 composite: honest vs oracle selection", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results", help="the results folder")
    ap.add_argument("--out", type=Path, default=None, help="folder for real-summary.{png,json} (default: --results)")
    args = ap.parse_args(argv)
    try:
        data = collect(args.results)
    except MissingResult as e:
        print(f"real_results_figure: {e}", file=sys.stderr)
        return 1
    out = args.out or args.results
    out.mkdir(parents=True, exist_ok=True)
    (out / "real-summary.json").write_text(json.dumps(data, indent=1) + "\n")
    plot(data, out / "real-summary.png")
    print(f"wrote {out / 'real-summary.png'} and real-summary.json ({len(data['rows'])} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
