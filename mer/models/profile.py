"""Parameters, FLOPs/MACs and CPU latency of a model (used by ``mer models``).

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``: it counts matrix products (mm, addmm, bmm),
convolutions and ops with a registered formula (agentattn's agent-attention op: 8·B·H·N·n·d forward), at
2 FLOPs per multiply-add. So MACs = FLOPs / 2 exactly, the convention of fvcore-based papers (one MAC per
multiply-add of matmuls/convs). Not counted: softmax, LayerNorm, GELU, pooling, bias and residual adds
(about 1-3% of the total here). Softmax attention branches are counted through their reference path
(q kᵀ and P v as bmm): FlopCounterMode has no formula for the CPU SDPA kernel.
"""

from __future__ import annotations

import platform
import statistics
import time

import torch
import torch.nn as nn

from mer.models.layers import SoftmaxAttention


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, x: torch.Tensor) -> dict:
    """Forward FLOPs of ``model(x)``: {'flops', 'macs', 'by_op': {op: flops}} (see the module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode

    softmax = [m for m in model.modules() if isinstance(m, SoftmaxAttention)]
    saved = [m.fused for m in softmax]
    was_training = model.training
    try:
        for m in softmax:
            m.fused = False
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(x)
    finally:
        for m, f in zip(softmax, saved, strict=True):
            m.fused = f
        model.train(was_training)
    total = fc.get_total_flops()
    by_op = {str(k): int(v) for k, v in fc.get_flop_counts().get("Global", {}).items()}
    return {"flops": int(total), "macs": int(total) // 2, "by_op": by_op}


def median_ms(fn, reps: int = 5, warmup: int = 2, stat: str = "median") -> float:
    """Median (or ``stat='min'``) wall time of ``fn()`` in ms over ``reps`` runs after ``warmup`` runs. The
    minimum is the better estimate of the unloaded time on a machine shared with other jobs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    if stat not in ("median", "min"):
        raise ValueError(f"stat must be 'median' or 'min', got {stat!r}")
    return 1e3 * (min(times) if stat == "min" else statistics.median(times))


def latency_ms(model: nn.Module, x: torch.Tensor, reps: int = 5, stat: str = "median") -> float:
    """Median inference time (eval mode, no grad) of one forward on ``x``, in ms."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return median_ms(lambda: model(x), reps=reps, stat=stat)
    finally:
        model.train(was_training)


def train_step_ms(model: nn.Module, x: torch.Tensor, reps: int = 5, stat: str = "median") -> float:
    """Median time of forward + cross-entropy backward (train mode, no optimiser step) on ``x``, in ms."""
    y = torch.zeros(x.shape[0], dtype=torch.long)
    was_training = model.training
    model.train()

    def step():
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()

    try:
        return median_ms(step, reps=reps, stat=stat)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
