"""Shared helpers of the benchmark suites: machine header, timing, memory, FLOP rates, Markdown tables.

Suites import it as ``common`` (``benchmarks/`` is put on ``sys.path`` by ``run.py`` and by each suite's
``__main__``). Nothing here queries a GPU unless the caller asks for a CUDA measurement.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import platform
import re
import socket
import statistics
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Peak HBM bandwidth in bytes/s by device-name substring (first match wins; vendor datasheets).
PEAK_BW = [
    ("H200", 4.8e12),
    ("H100 PCIe", 2.0e12),
    ("H100 NVL", 3.9e12),
    ("H100", 3.35e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),
    ("L40S", 0.864e12),
    ("RTX 4090", 1.008e12),
]


def peak_bandwidth(device_name: str | None) -> float | None:
    """Peak memory bandwidth (bytes/s) of a GPU by name, or None when it is not in ``PEAK_BW``."""
    if not device_name:
        return None
    for key, bw in PEAK_BW:
        if key.lower() in device_name.lower():
            return bw
    return None


# ------------------------------------------------------------------------------------------ machine
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_result(prefix: str, payload: dict, markdown: str) -> None:
    """A standalone suite run's output: ``<prefix>.json`` (``payload``) and ``<prefix>.md``."""
    import json

    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    with open(prefix + ".json", "w") as f:
        json.dump(payload, f, indent=1, default=str)
    with open(prefix + ".md", "w") as f:
        f.write(markdown)
    print(f"wrote {prefix}.json and {prefix}.md")


def git_commit() -> str | None:
    """HEAD commit of the repository, with ``+dirty`` when tracked files differ from it."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("+dirty" if dirty else "")) if sha else None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(device: str = "cpu") -> dict:
    """The header of a run: machine, CPU, GPU, versions, commit, date (UTC), load."""
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    gpu = None
    if device == "cuda" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        gpu = {
            "name": p.name,
            "memory_gib": round(p.total_memory / 2**30, 1),
            "capability": f"{p.major}.{p.minor}",
            "peak_bw_bytes_s": peak_bandwidth(p.name),
            "cuda": torch.version.cuda,
        }
    try:
        import agentattn

        backends = agentattn.backends()
    except Exception as e:  # the header must not fail because of the package under test
        backends = {"error": f"{type(e).__name__}: {e}"}
    return {
        "machine": machine_tag(device),
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "agentattn_backends": backends,
        "git_commit": git_commit(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "load_average_start": load_average(),
    }


def machine_tag(device: str = "cpu") -> str:
    """A short file-name tag: the GPU model on CUDA (``h200``), else the CPU family and core count
    (``amd-epyc-2c``)."""
    import torch

    if device == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        m = re.search(r"(H200|H100|A100|L40S|RTX ?\d{4}|V100|T4|L4)", name)
        base = m.group(1) if m else name
    else:
        base = cpu_model()
        for junk in ("(R)", "(TM)", "CPU", "Processor", "@"):
            base = base.replace(junk, " ")
        base = " ".join(base.split()[:3])
        base = f"{base}-{os.cpu_count()}c"
    return re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-") or "machine"


# ------------------------------------------------------------------------------------------- timing
def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def time_fn(
    fn, device: str = "cpu", warmup: int = 2, min_reps: int = 3, max_reps: int = 30, budget_s: float = 0.5
) -> dict:
    """Wall time of ``fn()`` after up to ``warmup`` calls (fewer when they use up ``budget_s``): at least
    ``min_reps`` timed calls, more until ``budget_s`` seconds of timed calls or ``max_reps``. CUDA: timed
    with events around each call.

    Returns {'median_ms', 'min_ms', 'p25_ms', 'p75_ms', 'iqr_ms', 'reps'}.
    """
    t0 = time.perf_counter()
    for _ in range(warmup):  # warm-up calls stop early once they have used the budget (slow calls)
        fn()
        _sync(device)
        if time.perf_counter() - t0 > budget_s:
            break
    times: list[float] = []
    while len(times) < min_reps or (sum(times) < budget_s and len(times) < max_reps):
        times.append(_timed_call(fn, device))
    return _stats(times)


def _stats(times_s: list[float]) -> dict:
    ms = sorted(1e3 * t for t in times_s)
    q = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else [ms[0]] * 3
    return {
        "median_ms": round(statistics.median(ms), 4),
        "min_ms": round(ms[0], 4),
        "p25_ms": round(q[0], 4),
        "p75_ms": round(q[2], 4),
        "iqr_ms": round(q[2] - q[0], 4),
        "reps": len(ms),
    }


def time_round_robin(
    fns: dict, device: str = "cpu", warmup: int = 2, min_reps: int = 3, max_reps: int = 30, budget_s: float = 0.5
) -> dict:
    """``time_fn`` for several functions at once, called in turn (one call of each per round) so that load
    from other processes falls on all of them alike. Each function stops once it has ``min_reps`` calls
    and either ``budget_s`` seconds of timed calls or ``max_reps`` calls; the fast ones keep going while
    the slow ones are done. Returns {key: stats} with the keys of ``fns``. A function that raises is
    dropped and its entry is the exception."""
    out: dict = {}
    live = dict(fns)
    for key, fn in list(live.items()):  # warm-up, each on its own (at least one call)
        t0 = time.perf_counter()
        try:
            for _ in range(max(1, warmup)):
                fn()
                _sync(device)
                if time.perf_counter() - t0 > budget_s:
                    break
        except Exception as e:
            out[key] = e
            del live[key]
    times: dict = {k: [] for k in live}
    while live:
        for key in list(live):
            try:
                times[key].append(_timed_call(live[key], device))
            except Exception as e:
                out[key] = e
                del live[key]
                continue
            n, spent = len(times[key]), sum(times[key])
            if n >= min_reps and (spent >= budget_s or n >= max_reps):
                out[key] = _stats(times[key])
                del live[key]
    return out


def _timed_call(fn, device: str) -> float:
    if device == "cuda":
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------- memory
@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (the profiler's C++ start/stop lines) for the duration of the block."""
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_memory_bytes(fn, device: str = "cpu") -> tuple[int, str]:
    """Peak memory allocated by ``fn()`` above what was allocated before it, and the method used.

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset. CPU: ``torch.profiler`` with
    ``profile_memory=True``: the maximum of the running sum of the allocation (+) and free (-) events of the
    CPU allocator during the call, in time order (tensors only: scratch memory a kernel takes from
    ``malloc`` directly is not seen).
    """
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base), "cuda max_memory_allocated"
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += int(e.nbytes())
        peak = max(peak, cur)
    return int(peak), "torch.profiler profile_memory (peak of allocation events)"


def saved_tensor_bytes(fn, exclude=()) -> int:
    """Bytes of the distinct storages autograd saves for backward during ``fn()`` (a forward with grad
    enabled), plus its output, not counting the storages of ``exclude`` (the inputs). What a training step
    holds per call between forward and backward."""
    import torch

    skip = {t.untyped_storage().data_ptr() for t in exclude if isinstance(t, torch.Tensor)}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in skip and s.device.type != "meta":
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    outs = out if isinstance(out, (tuple, list)) else (out,)
    for o in outs:
        if isinstance(o, torch.Tensor) and o.untyped_storage().data_ptr() not in skip:
            seen[o.untyped_storage().data_ptr()] = o.untyped_storage().nbytes()
    return int(sum(seen.values()))


# -------------------------------------------------------------------------------------------- tables
def fmt(x) -> str:
    if x is None:
        return ""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if x == 0 or not math.isfinite(x):
            return str(x)
        a = abs(x)
        if a >= 1e5:
            return f"{x:.3g}"
        if a >= 100:
            return f"{x:.0f}"
        if a >= 1:
            return f"{x:.3g}"
        return f"{x:.3g}"
    if isinstance(x, int) and abs(x) >= 10000:
        return f"{x:,}"
    return str(x).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict], columns: list[str] | None = None, headers: dict | None = None) -> str:
    """A Markdown table of ``rows`` with ``columns`` (default: keys in first-seen order)."""
    if not rows:
        return "(no rows)\n"
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    headers = headers or {}
    out = ["| " + " | ".join(headers.get(c, c) for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        out.append("| " + " | ".join(fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(out) + "\n"


def progress(it, desc: str, total: int | None = None):
    """tqdm when available (to stderr), else the iterable."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return it
    return tqdm(it, desc=desc, total=total, leave=False, mininterval=2.0)
