"""GPU benchmark of the fused agent-attention kernels (CUDA and Triton) against PyTorch baselines.

Suite plugin: ``NAME`` and ``run(cfg) -> list[dict]`` (one row per shape x dtype x implementation x
pass). Also runnable on its own (what ``scripts/gpu_check.sh`` does)::

    python benchmarks/suites/agent_attention_gpu.py --out benchmarks/results/h100-2026-11-24-agent_attention_gpu
    python benchmarks/suites/agent_attention_gpu.py --quick

Shapes: DeiT-T-like (B=128, H=3, N=196, n=49, d=64), Swin-T stage-1-like (B=128, H=3, N=3136,
n=9 and 49, d=32), long (B=8, H=8, N=16384, n=64, d=64); fp16 and bf16; biases (1, H, n, N) and
(1, H, N, n) (shared over the batch, learnable). Implementations in the same process run:

  cuda / triton    the fused kernels (agentattn.agent_attention(..., backend=...))
  eager            the reference composition (naive.agent_attention_ref), what the original code runs
  sdpa2_mem_eff    two F.scaled_dot_product_attention calls with float masks, memory-efficient backend
  softmax_flash    plain softmax attention over the N tokens (SDPA flash backend, no bias), same shape

Per row: median ms (CUDA events, warm-up first, never on zeros), bytes = Q, K, V, O read/written once
(forward; fwd+bwd adds dO, dQ, dK, dV), achieved GB/s and % of the card's peak HBM bandwidth (looked up
by name in PEAK_BW), TFLOP/s (forward 8·B·H·N·n·d, fwd+bwd 3x), peak memory above the inputs, and the
speed-up against eager. ``check_targets(rows)`` evaluates the issue's targets.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

NAME = "agent_attention_gpu"


@dataclass
class GpuBenchConfig:
    shapes: list = field(
        default_factory=lambda: [
            # name, B, H, N, n, d
            ("deit_t", 128, 3, 196, 49, 64),
            ("swin_s1_n9", 128, 3, 3136, 9, 32),
            ("swin_s1_n49", 128, 3, 3136, 49, 32),
            ("long", 8, 8, 16384, 64, 64),
        ]
    )
    dtypes: tuple = ("float16", "bfloat16")
    impls: tuple = ("cuda", "triton", "eager", "sdpa2_mem_eff", "softmax_flash")
    passes: tuple = ("fwd", "fwd_bwd")
    warmup: int = 10
    reps: int = 30
    quick: bool = False


def _cfg(cfg) -> GpuBenchConfig:
    if isinstance(cfg, GpuBenchConfig):
        return cfg
    get = (lambda k, d=None: cfg.get(k, d)) if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
    c = GpuBenchConfig()
    if get("quick", False):
        c.quick, c.warmup, c.reps = True, 3, 10
        c.shapes = [("swin_s1_n9", 32, 3, 3136, 9, 32), ("deit_t", 32, 3, 196, 49, 64)]
        c.dtypes = ("float16",)
    return c


def _time_ms(fn, warmup: int, reps: int) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _peak_mem_mb(fn) -> float:
    import torch

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _make_impl(impl: str, q, k, v, a, b1, b2, s):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import agentattn
    from agentattn.ops.agent_attention.naive import agent_attention_ref, agent_attention_sdpa

    if impl in ("cuda", "triton"):
        return lambda: agentattn.agent_attention(q, k, v, a, b1, b2, s, backend=impl)
    if impl == "eager":
        return lambda: agent_attention_ref(q, k, v, a, b1, b2, s)
    if impl == "sdpa2_mem_eff":

        def f():
            with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
                return agent_attention_sdpa(q, k, v, a, b1, b2, s)

        return f
    if impl == "softmax_flash":

        def f():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, scale=s)

        return f
    raise ValueError(f"unknown implementation {impl!r}")


def _bench_one(name, B, H, N, n, d, dtype_name, impl, pss, c: GpuBenchConfig) -> dict:
    import torch

    dtype = getattr(torch, dtype_name)
    g = torch.Generator(device="cuda").manual_seed(0)
    mk = lambda *sh: torch.randn(*sh, generator=g, device="cuda", dtype=dtype)  # noqa: E731
    q, k, v, a = mk(B, H, N, d), mk(B, H, N, d), mk(B, H, N, d), mk(B, H, n, d)
    b1, b2 = 0.02 * mk(1, H, n, N), 0.02 * mk(1, H, N, n)
    s = d**-0.5
    train = pss == "fwd_bwd"
    if train:
        for t in (q, k, v, a, b1, b2):
            t.requires_grad_()
    elt = torch.finfo(dtype).bits // 8
    tensors = 4 if not train else 9
    nbytes = tensors * B * H * N * d * elt
    flops = 8 * B * H * N * n * d * (3 if train else 1)
    if impl == "softmax_flash":
        flops = 4 * B * H * N * N * d * (3 if train else 1)
    row = dict(
        suite=NAME,
        shape=name,
        B=B,
        H=H,
        N=N,
        n=n,
        d=d,
        dtype=dtype_name,
        impl=impl,
        pass_=pss,
        bytes=nbytes,
        flops=flops,
    )
    try:
        f = _make_impl(impl, q, k, v, a, b1, b2, s)
        if train:
            grad = mk(B, H, N, d)
            fwd = f

            def f():  # noqa: F811
                out = fwd()
                out.backward(grad)
                for t in (q, k, v, a, b1, b2):
                    t.grad = None

        with torch.no_grad() if not train else torch.enable_grad():
            ms = _time_ms(f, c.warmup, c.reps)
            mem = _peak_mem_mb(f)
    except Exception as e:  # a baseline that cannot run this shape is recorded, not fatal
        row.update(error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
        torch.cuda.empty_cache()
        return row
    peak = common.peak_bandwidth(torch.cuda.get_device_name())
    gbs = nbytes / (ms * 1e-3) / 1e9
    row.update(
        ms=round(ms, 4),
        gb_s=round(gbs, 1),
        pct_peak_bw=(round(100 * gbs * 1e9 / peak, 1) if peak else None),
        tflops=round(flops / (ms * 1e-3) / 1e12, 2),
        peak_mem_mb=round(mem, 1),
    )
    return row


def run(cfg=None) -> list[dict]:
    """Benchmark rows (see the module docstring). Needs an NVIDIA GPU; returns [] without one."""
    import torch

    if not torch.cuda.is_available():
        print(f"[{NAME}] no CUDA device: skipped", file=sys.stderr)
        return []
    c = _cfg(cfg or {})
    import agentattn

    avail = agentattn.backends()["cuda"]
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda x, **k: x  # noqa: E731
    jobs = [
        (sh, dt, impl, pss)
        for sh in c.shapes
        for dt in c.dtypes
        for impl in c.impls
        for pss in c.passes
        if not (impl in ("cuda", "triton") and impl not in avail)
    ]
    rows = []
    for (name, B, H, N, n, d), dt, impl, pss in tqdm(jobs, desc=NAME):
        rows.append(_bench_one(name, B, H, N, n, d, dt, impl, pss, c))
    eager = {(r["shape"], r["dtype"], r["pass_"]): r.get("ms") for r in rows if r["impl"] == "eager"}
    flash = {(r["shape"], r["dtype"], r["pass_"]): r.get("ms") for r in rows if r["impl"] == "softmax_flash"}
    for r in rows:
        key = (r["shape"], r["dtype"], r["pass_"])
        if r.get("ms") and eager.get(key):
            r["speedup_vs_eager"] = round(eager[key] / r["ms"], 2)
        if r.get("ms") and flash.get(key):
            r["speedup_vs_flash"] = round(flash[key] / r["ms"], 2)
    return rows


def check_targets(rows: list[dict]) -> list[dict]:
    """The issue's performance targets, evaluated on the fused rows (cuda and triton separately)."""
    out = []

    def find(shape, dtype, impl, pss):
        return next(
            (
                r
                for r in rows
                if r["shape"] == shape
                and r["dtype"] == dtype
                and r["impl"] == impl
                and r["pass_"] == pss
                and r.get("ms")
            ),
            None,
        )

    for impl in ("cuda", "triton"):
        for dtype in ("float16", "bfloat16"):
            for shape in ("swin_s1_n9", "swin_s1_n49"):
                r = find(shape, dtype, impl, "fwd")
                if r:
                    out.append(
                        dict(
                            impl=impl,
                            dtype=dtype,
                            target=f"{shape} fwd >= 60% peak BW",
                            value=r.get("pct_peak_bw"),
                            ok=(r.get("pct_peak_bw") or 0) >= 60,
                        )
                    )
                    out.append(
                        dict(
                            impl=impl,
                            dtype=dtype,
                            target=f"{shape} fwd >= 3x eager",
                            value=r.get("speedup_vs_eager"),
                            ok=(r.get("speedup_vs_eager") or 0) >= 3,
                        )
                    )
            for shape in ("deit_t", "swin_s1_n9", "swin_s1_n49", "long"):
                r = find(shape, dtype, impl, "fwd_bwd")
                e = find(shape, dtype, "eager", "fwd_bwd")
                if r:
                    out.append(
                        dict(
                            impl=impl,
                            dtype=dtype,
                            target=f"{shape} fwd+bwd >= 2x eager",
                            value=r.get("speedup_vs_eager"),
                            ok=(r.get("speedup_vs_eager") or 0) >= 2,
                        )
                    )
                    if e:
                        ratio = round(r["peak_mem_mb"] / e["peak_mem_mb"], 3) if e["peak_mem_mb"] else None
                        out.append(
                            dict(
                                impl=impl,
                                dtype=dtype,
                                target=f"{shape} train peak mem <= 1/3 eager",
                                value=ratio,
                                ok=ratio is not None and ratio <= 1 / 3,
                            )
                        )
        for shape, want in (("swin_s1_n9", 4), ("swin_s1_n49", 4), ("long", 20)):
            r = find(shape, "float16", impl, "fwd")
            if r:
                out.append(
                    dict(
                        impl=impl,
                        dtype="float16",
                        target=f"{shape} fwd >= {want}x flash softmax",
                        value=r.get("speedup_vs_flash"),
                        ok=(r.get("speedup_vs_flash") or 0) >= want,
                    )
                )
    return out


def to_markdown(rows: list[dict], targets: list[dict], device: str) -> str:
    lines = [
        f"# {NAME} on {device}",
        "",
        "| shape | dtype | impl | pass | ms | GB/s | % peak BW | TFLOP/s | peak MB | x eager | x flash |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['shape']} | {r['dtype']} | {r['impl']} | {r['pass_']} | error: {r['error']} | | | | | | |"
            )
            continue
        cells = [
            r.get(k, "")
            for k in (
                "shape",
                "dtype",
                "impl",
                "pass_",
                "ms",
                "gb_s",
                "pct_peak_bw",
                "tflops",
                "peak_mem_mb",
                "speedup_vs_eager",
                "speedup_vs_flash",
            )
        ]
        lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    lines += ["", "## Targets", "", "| impl | dtype | target | value | met |", "|---|---|---|---|---|"]
    lines += [
        f"| {t['impl']} | {t['dtype']} | {t['target']} | {t['value']} | {'yes' if t['ok'] else 'NO'} |" for t in targets
    ]
    return "\n".join(lines) + "\n"


def _meta() -> dict:
    import torch

    import agentattn

    commit = common.git_commit()
    return dict(
        device=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        peak_bw=common.peak_bandwidth(torch.cuda.get_device_name()) if torch.cuda.is_available() else None,
        torch=torch.__version__,
        cuda=torch.version.cuda,
        commit=commit,
        backends=agentattn.backends(),
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog="example: python benchmarks/suites/agent_attention_gpu.py --quick"
    )
    ap.add_argument("--out", help="output path prefix: writes <out>.json and <out>.md")
    ap.add_argument("--quick", action="store_true", help="two small shapes, fp16, fewer repetitions")
    args = ap.parse_args(argv)
    cfg = GpuBenchConfig() if not args.quick else _cfg({"quick": True})
    rows = run(cfg)
    if not rows:
        return 1
    targets = check_targets(rows)
    meta = _meta()
    md = to_markdown(rows, targets, meta["device"])
    print(md)
    if args.out:
        common.write_result(args.out, dict(meta=meta, config=asdict(cfg), rows=rows, targets=targets), md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
