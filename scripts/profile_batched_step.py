#!/usr/bin/env python3
"""Where the time of one batched training step goes (mer.train.batched: F folds in one vmapped step), and
what the alternatives would save, measured in one run on the same inputs.

    python scripts/profile_batched_step.py --device cuda --out benchmarks/results   # the release's size

Builds the model (default the released HTNet, 139.6 M parameters), stacks F copies (default 17, what
scripts/gpu_release_loso.py trains together), and times a step on random 0-255 inputs of the release's
shape (F, B, 3, 28, 28) in parts: forward, loss + backward, Adam; then whole steps of each variant:

  base      what mer.train.batched does now (TF32 matmuls, StackedAdam: fused on CUDA, the stacked Linear
            weights transposed so that their gradients need no copy: mer.train.batched.linear_weights)
  foreach   StackedAdam with the foreach (multi-kernel) update instead of the fused one
  untransposed  the Linear weights stacked as the model holds them, (F, out, in): each weight gradient is
            copied into that layout every step
  benchmark torch.backends.cudnn.benchmark = True (cuDNN picks its conv algorithms by timing them)
  unfold    every Conv2d as unfold + matrix product (under vmap a conv with per-fold weights becomes one
            grouped conv with F groups; this turns it into F batched matrix products); an experiment here,
            not a model option
  explicit_attn  softmax attention written out (q kᵀ, softmax, v: the model's fused=False) instead of
            F.scaled_dot_product_attention, which vmap runs once per fold where it has no batching rule
  bf16      forward and loss under torch.autocast(bfloat16), weights and Adam in float32: what mixed
            precision would buy (it changes the release's numerics: a different experiment). Under vmap
            autocast reaches the products but not the convolutions, and a Linear's bias add stays float32
            (pytorch#192617): the report counts each matrix op's operand dtypes, so read its time with them
  highest   float32 matrix products in IEEE fp32 (set_float32_matmul_precision("highest")): base minus
            this is what TF32 buys; about equal means TF32 is not in effect in the step
  compile   (only when named in --variants) the vmapped forward under torch.compile, which can fuse the
            element-wise work around the matrix products; its compile time falls in the warm-up steps

First a GEMM probe: the step's dominant matrix product, one (256 x 1024) @ (1024 x 4096) per fold for 17
folds, timed as torch.bmm and as one torch.mm of the same FLOPs, under "highest" and "high" precision and
in bf16, with the backend's precision settings as torch reports them: it says in seconds whether the
stacked products run on the tensor cores. Also prints the vmap fallbacks seen in a step (ops run once per
fold in a loop), the FLOPs of a step (torch.utils.flop_counter, so TFLOP/s per variant) and, with --trace,
a torch.profiler table of the slowest kernels of two base steps. Times are CUDA-event means over --steps
steps after --warmup steps (wall clock on the CPU). Writes DEVICE-DATE-batched_step.{json,md} under --out
(and to $OUT when set).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import vmap
from torch.utils._python_dispatch import TorchDispatchMode

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from mer.options import parse_kv  # noqa: E402
from mer.train.batched import StackedAdam, cross_entropy_rows, linear_weights, stacked_forward  # noqa: E402
from mer.train.models import build_model  # noqa: E402

VARIANTS = ("base", "highest", "bf16", "foreach", "untransposed", "benchmark", "unfold", "explicit_attn")
# in this order: under a time cap the ones that answer the open questions (is TF32 in effect? what would
# mixed precision buy?) come first
OPT_IN = ("compile",)  # run only when named in --variants (compiling takes minutes)


class UnfoldConv2d(nn.Conv2d):
    """nn.Conv2d computed as unfold (im2col) + a matrix product: the same numbers up to rounding."""

    def forward(self, x):
        if self.groups != 1 or self.padding_mode != "zeros":
            return super().forward(x)
        B, _, H, W = x.shape
        kh, kw = self.kernel_size
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        Ho, Wo = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (B, C·kh·kw, L)
        # einsum, not weight @ cols: under vmap the broadcast matmul expands the weight to every sample
        # ((F, B, out, C·kh·kw): 77 GiB at the release's size, the first lease's OOM); einsum contracts
        # into one (out, C·kh·kw) x (C·kh·kw, B·L) product per fold
        out = torch.einsum("ok,bkl->bol", self.weight.flatten(1), cols)
        if self.bias is not None:
            out = out + self.bias[:, None]
        return out.view(B, self.out_channels, Ho, Wo)


def unfold_convs(model: nn.Module) -> int:
    """Swap every plain nn.Conv2d of ``model`` for UnfoldConv2d in place (same parameters); the count."""
    n = 0
    for m in model.modules():
        if type(m) is nn.Conv2d:
            m.__class__ = UnfoldConv2d
            n += 1
    return n


class Timer:
    """CUDA events on a GPU, perf_counter on the CPU; ms()."""

    def __init__(self, dev: torch.device):
        self.cuda = dev.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.a, self.b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.a.record()
        else:
            self.t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.b.record()
        else:
            self.t = time.perf_counter() - self.t

    def ms(self) -> float:
        if self.cuda:
            self.b.synchronize()
            return self.a.elapsed_time(self.b)
        return self.t * 1e3


def setup(model_name: str, n_folds: int, dev: torch.device, variant: str, model_kwargs: dict | None = None):
    torch.manual_seed(0)
    model = build_model(model_name, model_kwargs or {}, image_size=28)
    base = copy.deepcopy(model).to("meta")
    if variant == "unfold":
        unfold_convs(base)
    if variant == "explicit_attn":
        base.set_fused(False)
    flipped = frozenset() if variant == "untransposed" else linear_weights(model)
    params = {
        k: (v.mT if k in flipped else v).detach().to(dev).unsqueeze(0).repeat(n_folds, *[1] * v.dim()).contiguous()
        for k, v in model.named_parameters()
    }
    params = {k: v.requires_grad_() for k, v in params.items()}
    buffers = {k: v.to(dev).unsqueeze(0).repeat(n_folds, *[1] * v.dim()) for k, v in model.named_buffers()}
    n_params = sum(p.numel() for p in model.parameters())
    del model
    run = stacked_forward(base, flipped)
    if variant == "compile":
        run = torch.compile(run)
    adam = StackedAdam(params, 5e-5, fused=False if variant == "foreach" else None, flipped=flipped)
    return base, params, buffers, run, adam, n_params


class OperandDtypes(TorchDispatchMode):
    """Counts a step's matrix work (products, convolutions, attention: aten ops named *mm*, *conv*,
    *attention*) by the dtype of its first tensor operand, {op: {dtype: calls}}. Under vmap torch.autocast
    reaches only part of it (pytorch#192617: a Linear with bias keeps its bias add in float32, a
    convolution stays float32), so the bf16 variant's time is read against these counts."""

    def __init__(self):
        super().__init__()
        self.calls: dict[str, dict[str, int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if re.search(r"mm|conv|attention", name):
            t = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if t is not None:
                per = self.calls.setdefault(name, {})
                dt_name = str(t.dtype).removeprefix("torch.")
                per[dt_name] = per.get(dt_name, 0) + 1
        return func(*args, **(kwargs or {}))


def dtype_line(calls: dict[str, dict[str, int]]) -> str:
    """{op: {dtype: calls}} as 'bmm 170 bfloat16 + 85 float32, convolution 3 float32'."""
    return ", ".join(
        f"{op} " + " + ".join(f"{n} {d}" for d, n in sorted(per.items(), key=lambda t: -t[1]))
        for op, per in sorted(calls.items())
    )


def measure(args, dev: torch.device, variant: str) -> dict:
    """Mean ms of forward, loss + backward, Adam and the whole step for one variant; peak memory."""
    torch.backends.cudnn.benchmark = variant == "benchmark"
    precision = torch.get_float32_matmul_precision()
    if variant == "highest":
        torch.set_float32_matmul_precision("highest")
    try:
        return _measure(args, dev, variant)
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.benchmark = False


def _measure(args, dev: torch.device, variant: str) -> dict:
    kw = parse_kv(args.model_arg, "--model-arg")
    base, params, buffers, run, adam, n_params = setup(args.model, args.folds, dev, variant, kw)
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(args.folds, args.batch, 3, 28, 28, generator=g) * 255).to(dev)
    y = torch.randint(0, 3, (args.folds, args.batch), generator=g).to(dev)
    valid = torch.ones(args.folds, args.batch, device=dev)
    weights = torch.ones(args.folds, 3, device=dev)
    loss_fn = vmap(cross_entropy_rows, in_dims=(0, 0, 0, 0, None))
    active = torch.ones(args.folds, dtype=torch.bool)
    base.train()
    fallbacks: set[str] = set()
    parts = {"forward": [], "backward": [], "adam": [], "step": []}
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=variant == "bf16")
    for i in range(args.warmup + args.steps):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with Timer(dev) as t_step:
                with Timer(dev) as t_fwd, amp:
                    logits = run(params, buffers, x)
                with Timer(dev) as t_bwd:
                    adam.zero_grad()
                    with amp:
                        loss = loss_fn(logits, y, valid, weights, 0.0).sum()
                    loss.backward()
                with Timer(dev) as t_adam:
                    adam.step(active)
        for w in caught:
            m = re.search(r"batching rule for (\S+?)\.", str(w.message))
            if m:
                fallbacks.add(m.group(1))
        if i >= args.warmup:
            for k, t in zip(parts, (t_fwd, t_bwd, t_adam, t_step), strict=True):
                parts[k].append(t.ms())
    out = {k: sum(v) / len(v) for k, v in parts.items()}
    out["vmap_fallbacks"] = sorted(fallbacks)
    out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None
    out["n_params"] = n_params
    with OperandDtypes() as od:  # one more step, counted: which products really ran in which precision
        with amp:
            loss = loss_fn(run(params, buffers, x), y, valid, weights, 0.0).sum()
        loss.backward()
    out["operand_dtypes"] = od.calls
    adam.zero_grad()
    if variant == "base":
        from torch.utils.flop_counter import FlopCounterMode

        fc = FlopCounterMode(display=False)
        with fc:
            logits = run(params, buffers, x)
            loss_fn(logits, y, valid, weights, 0.0).sum().backward()
        out["step_flop"] = fc.get_total_flops()
        out["flop_by_op"] = {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}
        adam.zero_grad()
        if args.trace:
            out["trace"] = trace(run, params, buffers, x, y, valid, weights, loss_fn, adam, active, dev)
    del params, buffers, adam
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


def gemm_probe(dev: torch.device, folds: int = 17, m: int = 256, k: int = 1024, n: int = 4096, reps: int = 20) -> dict:
    """TFLOP/s of the step's dominant product, (folds, m, k) @ (folds, k, n), as torch.bmm and as one torch.mm
    of the same FLOPs ((folds*m, k) @ (k, n)), under "highest" and "high" float32 precision and in bf16; and
    the precision settings torch reports. Tensor cores on: "high" several times "highest"."""
    g = torch.Generator().manual_seed(0)
    a32, b32 = (torch.randn(folds, m, k, generator=g).to(dev), torch.randn(folds, k, n, generator=g).to(dev))
    flop = 2 * folds * m * k * n
    out: dict = {"shape": f"{folds} x ({m} x {k}) @ ({k} x {n})", "flop": flop}
    prev = torch.get_float32_matmul_precision()
    cases = [
        ("bmm", "highest", lambda a, b: torch.bmm(a, b)),
        ("bmm", "high", lambda a, b: torch.bmm(a, b)),
        ("mm", "highest", lambda a, b: a.reshape(-1, k) @ b[0]),
        ("mm", "high", lambda a, b: a.reshape(-1, k) @ b[0]),
        ("bmm", "bf16", lambda a, b: torch.bmm(a, b)),
    ]
    try:
        for op, prec, fn in cases:
            a, b = (a32.bfloat16(), b32.bfloat16()) if prec == "bf16" else (a32, b32)
            torch.set_float32_matmul_precision("high" if prec == "bf16" else prec)
            if prec == "high":
                out["settings"] = {
                    "float32_matmul_precision": torch.get_float32_matmul_precision(),
                    "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                    "cuda.matmul.fp32_precision": getattr(torch.backends.cuda.matmul, "fp32_precision", None),
                }
            for _ in range(3):
                fn(a, b)
            with Timer(dev) as t:
                for _ in range(reps):
                    fn(a, b)
            out[f"{op}_{prec}_tflops"] = flop / (t.ms() / reps / 1e3) / 1e12
    finally:
        torch.set_float32_matmul_precision(prev)
    return out


def trace(run, params, buffers, x, y, valid, weights, loss_fn, adam, active, dev, rows: int = 25) -> str:
    """torch.profiler table of two base steps, kernels sorted by their device time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(2):
            adam.zero_grad()
            loss_fn(run(params, buffers, x), y, valid, weights, 0.0).sum().backward()
            adam.step(active)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=70)


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    from train_throughput import _cpu_name  # this folder is on sys.path when run as a script

    return _cpu_name()


def markdown(res: dict) -> str:
    a = res["args"]
    model = " ".join([a["model"], *a.get("model_arg", [])])
    lines = [
        f"# One batched training step: {model}, {a['folds']} folds x batch {a['batch']}",
        "",
        f"{res['device']}; torch {res['torch']}; {res['date']}; "
        f"`python scripts/profile_batched_step.py {' '.join(res['argv'])}`",
        f"Means over {a['steps']} steps after {a['warmup']} warm-up steps, in one run. "
        f"FLOPs of a step (forward + backward): {res['variants']['base']['step_flop'] / 1e12:.2f} TFLOP.",
        "",
        "| variant | forward ms | loss + backward ms | Adam ms | step ms | step vs base | TFLOP/s | peak GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = res["variants"]["base"]
    for name, v in res["variants"].items():
        peak = f"{v['peak_gib']:.1f}" if v["peak_gib"] is not None else "-"
        lines.append(
            f"| {name} | {v['forward']:.1f} | {v['backward']:.1f} | {v['adam']:.1f} | {v['step']:.1f} | "
            f"{base['step'] / v['step']:.2f}x | {base['step_flop'] / v['step'] / 1e9:.2f} | {peak} |"
        )
    for name, why in res.get("failed", {}).items():
        lines.append(f"| {name} | failed: {why} | | | | | | |")
    fb = sorted({f for v in res["variants"].values() for f in v["vmap_fallbacks"]})
    lines += ["", f"vmap fallbacks (ops looped over the folds): {', '.join(fb) if fb else 'none'}.", ""]
    total = base["step_flop"]
    lines.append(
        "FLOPs by op: "
        + ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(base["flop_by_op"].items(), key=lambda t: -t[1]))
        + "."
    )
    lines += ["", "Matrix work of one step by operand dtype (calls; variants that match base not repeated):", ""]
    for name, v in res["variants"].items():
        if name == "base" or v.get("operand_dtypes") != base.get("operand_dtypes"):
            lines.append(f"- {name}: {dtype_line(v.get('operand_dtypes', {}))}")
    gp = res.get("gemm_probe")
    if gp:
        lines += ["", f"GEMM probe, {gemm_line(gp)}."]
    if "trace" in base:
        lines += ["", "Slowest ops of two base steps (torch.profiler):", "", "```", base["trace"], "```"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="htnet_original")
    ap.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model option, as `mer train --model-arg` (e.g. dim=8: the same ops at a size where a CPU step "
        "is mostly the host's dispatch cost)",
    )
    ap.add_argument("--folds", type=int, default=17, help="folds stacked in one step (default 17)")
    ap.add_argument("--batch", type=int, default=256, help="minibatch per fold (default 256, the release's)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, of {', '.join(VARIANTS + OPT_IN)} (default: all but {', '.join(OPT_IN)})",
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--gemm",
        default="17,256,1024,4096",
        help="F,M,K,N of the GEMM probe, (F, M, K) @ (F, K, N); 'none' skips it (default: the step's largest)",
    )
    ap.add_argument("--trace", action="store_true", help="add a torch.profiler table of two base steps")
    ap.add_argument("--out", default=None, help="folder for DEVICE-DATE-batched_step.{json,md}")
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS) - set(OPT_IN))
    if unknown or "base" not in variants:
        ap.error(f"--variants: {', '.join(unknown) or 'base missing'}; choose from {', '.join(VARIANTS + OPT_IN)}")
    dev = torch.device(args.device)
    gemm = _gemm_shape(ap, args.gemm) if args.gemm != "none" else None
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # as scripts/gpu_release_loso.py trains (--matmul-precision high)
    try:
        return _profile(args, dev, variants, gemm, sys.argv[1:] if argv is None else list(argv))
    finally:
        torch.set_float32_matmul_precision(prev)


def _profile(args, dev: torch.device, variants: list[str], gemm, argv: list[str]) -> int:
    res = {
        "device": device_name(dev),
        "torch": torch.__version__,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "argv": argv,
        "args": vars(args),
        "variants": {},
    }
    if gemm is not None:
        res["gemm_probe"] = gp = gemm_probe(dev, *gemm)
        print(f"gemm probe: {gemm_line(gp)}", flush=True)
    for v in variants:
        t0 = time.perf_counter()
        try:
            res["variants"][v] = measure(args, dev, v)
        except (torch.OutOfMemoryError, RuntimeError) as e:  # one variant's failure must not lose the others
            res.setdefault("failed", {})[v] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            print(f"{v}: FAILED ({res['failed'][v]})", flush=True)
            torch.backends.cudnn.benchmark = False
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            write(res, args)
            continue
        write(res, args)
        r = res["variants"][v]
        base_dt = res["variants"].get("base", {}).get("operand_dtypes")
        print(
            f"{v}: step {r['step']:.1f} ms (forward {r['forward']:.1f}, backward {r['backward']:.1f}, "
            f"Adam {r['adam']:.1f}); fallbacks {r['vmap_fallbacks'] or 'none'} [{time.perf_counter() - t0:.0f} s]"
            + (
                f"; operands {dtype_line(r['operand_dtypes'])}"
                if v != "base" and r["operand_dtypes"] != base_dt
                else ""
            ),
            flush=True,
        )
    print(markdown(res))
    return 0


def gemm_line(gp: dict) -> str:
    """The probe's result in one sentence."""
    return (
        f"{gp['shape']}: bmm {gp['bmm_highest_tflops']:.3g} TFLOP/s in IEEE fp32 (highest), "
        f"{gp['bmm_high_tflops']:.3g} with TF32 allowed (high), {gp['bmm_bf16_tflops']:.3g} in bf16; the same "
        f"FLOPs as one mm: {gp['mm_highest_tflops']:.3g} / {gp['mm_high_tflops']:.3g}; settings {gp['settings']}"
    )


def _gemm_shape(ap, text: str) -> tuple[int, int, int, int]:
    try:
        dims = tuple(int(v) for v in text.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 4 or min(dims) < 1:
        ap.error(f"--gemm {text!r}: give four positive integers F,M,K,N (e.g. 17,256,1024,4096) or 'none'")
    return dims


def write(res: dict, args) -> None:
    """DEVICE-DATE-batched_step.{json,md} under --out and $OUT (after every variant: a time cap that stops
    the script keeps what was measured)."""
    if "base" not in res["variants"]:
        return
    md = markdown(res)
    stem = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', res['device'])}-{res['date'][:10]}-batched_step"
    for folder in filter(None, [args.out, os.environ.get("OUT")]):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
        (Path(folder) / f"{stem}.md").write_text(md)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
