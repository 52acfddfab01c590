"""Run the benchmark suites and write one result set: JSON (validated), Markdown and PNG plots.

    python benchmarks/run.py                          # every suite, CPU, full size
    python benchmarks/run.py --quick                  # about a minute on an idle 2-core machine
    python benchmarks/run.py --device cuda            # on a GPU machine (GPU-only suites run too)
    python benchmarks/run.py --only attention_sweep,models --out /tmp/bench

A suite is ``benchmarks/suites/<name>.py`` with ``NAME`` and ``run(cfg) -> list[dict]`` (one row per
measurement); ``cfg`` is a dict with ``device``, ``quick``, ``tiny``. Optional: ``DEVICES`` (the devices it
runs on; a ``*_gpu`` suite without it is taken as CUDA-only), ``COLUMNS`` (Markdown columns),
``summarize(rows) -> dict``. A suite that raises is reported as ``failed`` with its traceback; the others
still run. Outputs in ``--out`` (default ``benchmarks/results``): ``<machine>-<date>[-quick|-tiny].json``
(validated against ``benchmarks/schema.json``), the same name ``.md``, and ``-latency.png`` /
``-memory.png``. Exit status: 0 when every suite ran and every kernel passed its correctness check,
1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import common  # noqa: E402
import schema  # noqa: E402


# --------------------------------------------------------------------------------------- discovery
class Suite:
    """A discovered suite file: its module, or the error that stopped it from importing."""

    def __init__(self, path: Path):
        self.path, self.module, self.error = path, None, None
        self.name = path.stem
        try:
            spec = importlib.util.spec_from_file_location(f"bench_suite_{path.stem}", path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod  # dataclasses and pickling look the module up by name
            spec.loader.exec_module(mod)
            if not isinstance(getattr(mod, "NAME", None), str) or not callable(getattr(mod, "run", None)):
                raise TypeError(f"{path} is not a suite: it needs NAME (a string) and run(cfg) -> list[dict]")
            self.module, self.name = mod, mod.NAME
        except Exception:
            self.error = traceback.format_exc(limit=6)

    @property
    def devices(self) -> tuple:
        declared = getattr(self.module, "DEVICES", None)
        if declared:
            return tuple(declared)
        return ("cuda",) if self.name.endswith("_gpu") else ("cpu", "cuda")


def discover(dirs: list[Path]) -> list[Suite]:
    """Every ``*.py`` (not starting with ``_``) in ``dirs``, in name order; later dirs add suites."""
    found: dict[str, Suite] = {}
    for d in dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"suite directory {d} does not exist")
        for p in sorted(d.glob("*.py")):
            if p.name.startswith("_"):
                continue
            s = Suite(p)
            if s.name in found:
                s.error = s.error or f"duplicate suite NAME {s.name!r} (also in {found[s.name].path})"
                s.name = f"{s.name}@{p}"
            found[s.name] = s
    return list(found.values())


# -------------------------------------------------------------------------------------------- running
def _clean(x):
    """JSON-safe: non-finite floats -> None, tuples -> lists, other objects -> str."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if x is None or isinstance(x, (bool, int, str)):
        return x
    return str(x)


def run_suite(s: Suite, cfg: dict) -> dict:
    """Run one suite; never raises. Returns the result record of the schema's ``$defs/suite``."""
    rec = {
        "name": s.name,
        "file": str(s.path.relative_to(common.REPO)) if s.path.is_relative_to(common.REPO) else str(s.path),
        "status": "ok",
        "seconds": 0.0,
        "note": "",
        "error": None,
        "rows": [],
        "summary": None,
    }
    if s.error:
        rec.update(status="failed", error=s.error)
        return rec
    if cfg["device"] not in s.devices:
        rec.update(status="skipped", note=f"runs on {'/'.join(s.devices)} only; this run is --device {cfg['device']}")
        return rec
    t0 = time.perf_counter()
    try:
        rows = s.module.run(dict(cfg))
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise TypeError(f"{s.name}.run() must return a list of dicts, got {type(rows).__name__}")
        rec["rows"] = _clean(rows)
        if not rows:
            rec["note"] = "no rows"
        if callable(getattr(s.module, "summarize", None)):
            rec["summary"] = _clean(s.module.summarize(rows))
    except Exception:
        rec.update(status="failed", error=traceback.format_exc(limit=8))
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    return rec


def suite_markdown(s: Suite | None, rec: dict) -> str:
    head = f"## {rec['name']}: {rec['status']} ({rec['seconds']:.0f} s)\n\n"
    if rec["note"]:
        head += f"{rec['note']}\n\n"
    if rec["status"] == "failed":
        return head + "```\n" + rec["error"].rstrip() + "\n```\n"
    if rec["status"] == "skipped":
        return head
    mod = s.module if s else None
    if mod is not None and callable(getattr(mod, "to_markdown", None)):
        try:
            body = mod.to_markdown(rec["rows"])
        except Exception as e:
            body = f"(to_markdown failed: {type(e).__name__}: {e})\n\n" + common.markdown_table(rec["rows"])
    else:
        body = common.markdown_table(rec["rows"], getattr(mod, "COLUMNS", None))
    if rec.get("summary") and mod is not None and callable(getattr(mod, "summary_markdown", None)):
        body += "\n" + mod.summary_markdown(rec["summary"])
    return head + body


def header_markdown(h: dict, cfg: dict) -> str:
    gpu = h["gpu"]["name"] if h.get("gpu") else "none"
    be = h.get("agentattn_backends", {})
    lines = [
        f"# Benchmarks: {h['machine']}, {h['date_utc']}",
        "",
        f"- machine: `{h['hostname']}`; CPU: {h['cpu']}, {h['cpu_cores']} cores, torch threads "
        f"{h['torch_threads']}; GPU: {gpu}; device of this run: {h['device']}",
        f"- python {h['python']}, torch {h['torch']}, triton {h['triton']}; agentattn backends: "
        f"{be.get('cpu')} (CPU), {be.get('cuda')} (CUDA)",
        f"- commit {h['git_commit']}",
        f"- load average (1, 5, 15 min) at start {h['load_average_start']}, at end {h['load_average_end']}",
        f"- command: `python benchmarks/run.py {' '.join(cfg['argv'])}`",
    ]
    if h["note"]:
        lines.append(f"- note: {h['note']}")
    return "\n".join(lines) + "\n\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(
        description="Run the benchmark suites (attention sweep, models, kernels) and write JSON, Markdown and "
        "PNG plots.",
        epilog="examples:\n  python benchmarks/run.py --quick\n  python benchmarks/run.py --device cpu\n"
        "  python benchmarks/run.py --only attention_sweep --out /tmp/bench",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="small sizes and short timing budgets (about a minute)")
    ap.add_argument("--tiny", action="store_true", help="test size: seconds, numbers not meaningful (used by tests)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to run (default cpu)")
    ap.add_argument("--only", help="comma-separated suite names to run (default: all discovered)")
    ap.add_argument("--out", default=str(HERE / "results"), help="output directory (default benchmarks/results)")
    ap.add_argument(
        "--suite-path", action="append", default=[], metavar="DIR", help="another directory of suite files (repeatable)"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads before running (default: torch's choice). On a machine shared with "
        "other jobs 1 gives far steadier times: a parallel region waits for its slowest thread",
    )
    ap.add_argument("--note", default="", help="free text stored in the header (e.g. how loaded the machine was)")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    ap.add_argument("--list", action="store_true", help="list the discovered suites and exit")
    args = ap.parse_args(argv)

    suites = discover([HERE / "suites"] + [Path(p) for p in args.suite_path])
    if args.list:
        for s in suites:
            print(f"{s.name:24s} {'/'.join(s.devices) if s.module else 'import error'}  {s.path}")
        return 0
    only = None
    if args.only:
        only = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = sorted(set(only) - {s.name for s in suites})
        if unknown:
            print(f"error: unknown suite(s) {unknown}; discovered: {[s.name for s in suites]}", file=sys.stderr)
            return 2
        suites = [s for s in suites if s.name in only]
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print(
                "error: --device cuda but torch.cuda.is_available() is False (CPU build or no GPU); use --device cpu",
                file=sys.stderr,
            )
            return 2

    if args.threads is not None:
        import torch

        if args.threads < 1:
            print(f"error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    cfg = {
        "quick": bool(args.quick or args.tiny),
        "tiny": bool(args.tiny),
        "device": args.device,
        "only": only,
        "argv": list(argv),
    }
    header = common.machine_info(args.device)
    header.update(device=args.device, load_average_end=None, note=args.note)
    results, by_name = [], {s.name: s for s in suites}
    for s in suites:
        print(f"[run.py] suite {s.name} ...", file=sys.stderr, flush=True)
        rec = run_suite(s, {k: cfg[k] for k in ("quick", "tiny", "device")})
        print(
            f"[run.py] suite {s.name}: {rec['status']} in {rec['seconds']:.1f} s, {len(rec['rows'])} rows",
            file=sys.stderr,
            flush=True,
        )
        results.append(rec)
    header["load_average_end"] = common.load_average()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{header['machine']}-{header['date_utc'][:10]}" + ("-tiny" if args.tiny else "-quick" if args.quick else "")
    doc = {
        "schema_version": 1,
        "header": header,
        "config": cfg,
        "suites": results,
        "plots": [],
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    if not args.no_plots:
        try:
            import plots

            doc["plots"] = [Path(p).name for p in plots.make_plots(doc, out / stem)]
        except Exception:
            print(
                "[run.py] plots failed (results are still written):\n" + traceback.format_exc(limit=4), file=sys.stderr
            )
    doc = _clean(doc)
    errors = schema.validate(doc)
    md = header_markdown(header, cfg) + "\n".join(suite_markdown(by_name.get(r["name"]), r) for r in results)
    if doc["plots"]:
        md += "\n## Plots\n\n" + "\n".join(f"![{Path(p).stem}]({p})" for p in doc["plots"]) + "\n"
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / f"{stem}.md").write_text(md)
    print(md)
    print(
        f"[run.py] wrote {out / stem}.json, .md" + (f" and {len(doc['plots'])} plots" if doc["plots"] else ""),
        file=sys.stderr,
    )

    failed = [r["name"] for r in results if r["status"] == "failed"]
    bad_checks = [
        f"{r['name']}:{row.get('impl')}" for r in results for row in r["rows"] if row.get("status") == "failed check"
    ]
    if errors:
        print(
            "[run.py] the result file does not match benchmarks/schema.json:\n  " + "\n  ".join(errors[:20]),
            file=sys.stderr,
        )
    if failed:
        print(f"[run.py] FAILED suites: {failed} (tracebacks in the Markdown/JSON)", file=sys.stderr)
    if bad_checks:
        print(
            f"[run.py] kernels that FAILED their correctness check (not timed): {sorted(set(bad_checks))}",
            file=sys.stderr,
        )
    return 1 if (errors or failed or bad_checks) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
