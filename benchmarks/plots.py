"""PNG plots of a result document (matplotlib, Agg backend): latency and memory against N.

    make_plots(doc, prefix) -> [prefix-latency.png, prefix-memory.png]

Both read the ``attention_sweep`` rows. One panel per (pass, (n, d)) line of the sweep that has the most N
values (at most two (n, d) pairs): median time (error bars: interquartile range) or peak memory per
implementation against N, log-log. The latency panels mark the crossover N of fused agent attention
against SDPA softmax attention (``attention_sweep.crossovers``) with a dashed vertical line.
"""

from __future__ import annotations

from pathlib import Path

STYLE = {  # impl -> (colour, marker, line style)
    "agent_fused": ("tab:red", "o", "-"),
    "agent_eager": ("tab:orange", "s", "--"),
    "agent_sdpa2": ("tab:brown", "^", "--"),
    "softmax_sdpa": ("tab:blue", "o", "-"),
    "softmax_eager": ("tab:cyan", "s", "--"),
}


def _sweep(doc: dict) -> tuple[list[dict], dict]:
    for s in doc.get("suites", []):
        if s["name"] == "attention_sweep" and s["status"] == "ok":
            return [r for r in s["rows"] if r.get("status") == "ok"], (s.get("summary") or {})
    return [], {}


def _panels(rows: list[dict]) -> list[tuple]:
    """The (n, d) pairs with the most measured N (up to two), crossed with the passes present."""
    count: dict[tuple, set] = {}
    for r in rows:
        if r["family"] == "agent":
            count.setdefault((r["n"], r["d"]), set()).add(r["N"])
    pairs = sorted(count, key=lambda k: (-len(count[k]), -k[0]))[:2]
    passes = [p for p in ("fwd", "fwd_bwd") if any(r["pass"] == p for r in rows)]
    return [(p, n, d) for (n, d) in pairs for p in passes]


def _series(rows, impl, pss, n, d, key):
    pts = sorted(
        (r["N"], r)
        for r in rows
        if r["impl"] == impl
        and r["pass"] == pss
        and r["d"] == d
        and (r["family"] == "softmax" or r["n"] == n)
        and r.get(key) is not None
    )
    return [N for N, _ in pts], [r for _, r in pts]


def _figure(doc, rows, summary, key: str, ylabel: str, path: Path, crossover: bool) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = _panels(rows)
    if not panels:
        return None
    ncols = 2 if len(panels) > 1 else 1
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 4.4 * nrows), squeeze=False)
    h = doc["header"]
    for ax, (pss, n, d) in zip(axes.flat, panels, strict=False):  # an odd panel count leaves one spare axis
        for impl, (col, mk, ls) in STYLE.items():
            Ns, rs = _series(rows, impl, pss, n, d, key)
            if not Ns:
                continue
            ys = [r[key] for r in rs]
            if key == "median_ms":
                err = [
                    [max(0.0, y - r.get("p25_ms", y)) for y, r in zip(ys, rs, strict=True)],
                    [max(0.0, r.get("p75_ms", y) - y) for y, r in zip(ys, rs, strict=True)],
                ]
                ax.errorbar(Ns, ys, yerr=err, color=col, marker=mk, ls=ls, ms=4, capsize=2, label=impl)
            else:
                ax.plot(Ns, ys, color=col, marker=mk, ls=ls, ms=4, label=impl)
                if pss == "fwd_bwd" and key == "peak_mem_mb":
                    Ns2, rs2 = _series(rows, impl, pss, n, d, "saved_mb")
                    if Ns2:
                        ax.plot(Ns2, [r["saved_mb"] for r in rs2], color=col, ls=":", lw=1)
        if crossover:
            for x in summary.get("crossovers", []):
                if (x["pass"], x["n"], x["d"], x["softmax"], x.get("stat")) != (pss, n, d, "softmax_sdpa", "median"):
                    continue
                if x.get("crossover_N"):
                    ax.axvline(x["crossover_N"], color="k", ls="--", lw=1)
                    ax.annotate(
                        f"crossover N≈{x['crossover_N']}",
                        (x["crossover_N"], 0.95),
                        rotation=90,
                        xycoords=("data", "axes fraction"),
                        ha="right",
                        va="top",
                        fontsize=8,
                    )
                elif x.get("first_faster_N"):
                    ax.annotate(
                        f"agent_fused faster than softmax_sdpa from N={x['first_faster_N']} on",
                        (0.02, 0.97),
                        xycoords="axes fraction",
                        va="top",
                        fontsize=8,
                    )
                else:
                    ax.annotate(
                        "agent_fused not faster than softmax_sdpa at the largest N",
                        (0.02, 0.97),
                        xycoords="axes fraction",
                        va="top",
                        fontsize=8,
                    )
        ax.set_xscale("log")
        ax.set_yscale("log")
        Ns_all = sorted({r["N"] for r in rows if r["pass"] == pss and r["d"] == d})
        ax.set_xticks(Ns_all, [str(N) for N in Ns_all], fontsize=7)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("N (tokens)")
        ax.set_ylabel(ylabel)
        title = "forward" if pss == "fwd" else "forward + backward"
        ax.set_title(f"{title}, agents n={n}, head dim d={d}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    B, H = rows[0]["B"], rows[0]["H"]
    extra = " (dotted: saved for backward + output)" if key == "peak_mem_mb" else ""
    fig.suptitle(
        f"{ylabel} vs N{extra}: B={B}, H={H}, {rows[0]['dtype']}, {h['device']} "
        f"({h['machine']}, {h['date_utc'][:10]}, load {h.get('load_average_start')})",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(doc: dict, prefix: Path) -> list[Path]:
    """Write ``<prefix>-latency.png`` and ``<prefix>-memory.png``; returns the paths written."""
    rows, summary = _sweep(doc)
    if not rows:
        return []
    prefix = Path(prefix)
    out = [_figure(doc, rows, summary, "median_ms", "median time (ms)", Path(f"{prefix}-latency.png"), True)]
    if any(r.get("peak_mem_mb") is not None for r in rows):
        out.append(_figure(doc, rows, summary, "peak_mem_mb", "peak memory (MiB)", Path(f"{prefix}-memory.png"), False))
    return [p for p in out if p is not None]
