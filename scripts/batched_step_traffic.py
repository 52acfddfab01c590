#!/usr/bin/env python3
"""The memory traffic of one batched training step (mer.train.batched), counted op by op without running it.

    python scripts/batched_step_traffic.py --out benchmarks/results   # the release's size: 17 folds x 256

Runs the step (forward, loss, backward of F stacked folds under vmap, as ``train_folds_batched`` does: its
``stacked_forward``, Linear weights stacked transposed; ``--untransposed``: as the model holds them) on
the meta device, so any machine counts the full size in seconds, and records every op that reaches the
dispatcher after vmap's batching rules: the bytes it reads and writes (its tensor arguments and results;
views and allocations excluded), in eager PyTorch, where every op goes to memory and back. Matrix
products, convolutions and attention are counted apart from the rest (element-wise ops, reductions,
copies, normalisation), whose traffic divided by a GPU's bandwidth is what eager execution costs beyond
the matrix work, and what fusion (torch.compile) could save. The optimizer is not included (Adam:
7 x 4 bytes per parameter per step, given in the table). On the meta device attention takes the math
path (q kᵀ, softmax, v) instead of a fused kernel; at the release's shapes its traffic is a few MB.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import sys
from pathlib import Path

import torch
from torch.func import vmap
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mer.train.batched import cross_entropy_rows, linear_weights, stacked_forward  # noqa: E402
from mer.train.models import build_model  # noqa: E402

NO_TRAFFIC = {  # views and allocations: no bytes move
    "view", "_unsafe_view", "expand", "permute", "transpose", "t", "select", "slice", "unsqueeze", "squeeze",
    "as_strided", "alias", "detach", "split", "unbind", "split_with_sizes", "_reshape_alias", "unflatten",
    "empty", "empty_like", "new_empty", "new_empty_strided", "empty_strided",
}  # fmt: skip
MATRIX = {
    "mm", "bmm", "addmm", "baddbmm", "convolution", "convolution_backward",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_efficient_attention_backward",
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_backward",
}  # fmt: skip


def _tensors(a):
    if isinstance(a, torch.Tensor):
        yield a
    elif isinstance(a, (list, tuple)):
        for x in a:
            yield from _tensors(x)


class TrafficCounter(TorchDispatchMode):
    """{op name: [calls, bytes]} of the ops run inside it (arguments read, results written)."""

    def __init__(self):
        super().__init__()
        self.ops: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
        # batched matrix products by operand shapes: [calls, FLOPs] (which products carry the step's FLOPs)
        self.bmm: dict[tuple, list[int]] = collections.defaultdict(lambda: [0, 0])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        if name not in NO_TRAFFIC:
            moved = sum(t.numel() * t.element_size() for t in _tensors([args, list((kwargs or {}).values()), out]))
            self.ops[name][0] += 1
            self.ops[name][1] += moved
        if name == "bmm":
            (f, m, k), n = args[0].shape, args[1].shape[2]
            entry = self.bmm[(tuple(args[0].shape), tuple(args[1].shape))]
            entry[0] += 1
            entry[1] += 2 * f * m * k * n
        return out


def count(model_name: str, folds: int, batch: int, image_size: int = 28, transposed: bool = True) -> dict:
    """Traffic of one forward + loss + backward of ``folds`` stacked copies of the model, batch each
    (``transposed``: the Linear weights stacked as mer.train.batched stacks them)."""
    torch.manual_seed(0)
    model = build_model(model_name, {}, image_size=image_size)
    base = copy.deepcopy(model).to("meta")
    meta = torch.device("meta")
    flipped = linear_weights(model) if transposed else frozenset()
    params = {
        k: torch.empty((folds, *(v.mT if k in flipped else v).shape), device=meta, requires_grad=True)
        for k, v in model.named_parameters()
    }
    buffers = {k: torch.empty((folds, *v.shape), device=meta, dtype=v.dtype) for k, v in model.named_buffers()}
    n_params = sum(p.numel() for p in model.parameters())
    run = stacked_forward(base, flipped)
    loss_fn = vmap(cross_entropy_rows, in_dims=(0, 0, 0, 0, None))
    x = torch.empty(folds, batch, 3, image_size, image_size, device=meta)
    y = torch.zeros(folds, batch, dtype=torch.long, device=meta)
    valid, weights = torch.ones(folds, batch, device=meta), torch.ones(folds, 3, device=meta)
    base.train()
    counter, flops = TrafficCounter(), FlopCounterMode(display=False)  # torch's count checks ours
    with flops, counter:
        loss_fn(run(params, buffers, x), y, valid, weights, 0.0).sum().backward()
    ops = {k: {"calls": c, "bytes": b, "matrix": k in MATRIX} for k, (c, b) in counter.ops.items()}
    bmm = [
        {"a": list(a), "b": list(b), "calls": c, "flop": f}
        for (a, b), (c, f) in sorted(counter.bmm.items(), key=lambda kv: -kv[1][1])
    ]
    matrix = sum(v["bytes"] for v in ops.values() if v["matrix"])
    total = sum(v["bytes"] for v in ops.values())
    return {
        "model": model_name,
        "transposed": transposed,
        "folds": folds,
        "batch": batch,
        "n_params": n_params,
        "bytes_total": total,
        "bytes_matrix": matrix,
        "bytes_other": total - matrix,
        "bytes_adam": 7 * 4 * n_params * folds,
        "flop_bmm": sum(e["flop"] for e in bmm),
        "flop_bmm_torch": flops.get_flop_counts()["Global"].get(torch.ops.aten.bmm, 0),
        "bmm_shapes": bmm,
        "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1]["bytes"])),
    }


def markdown(res: dict, bandwidth: float, rows: int = 15) -> str:
    gb, ms = (lambda b: b / 1e9), (lambda b: b / bandwidth * 1e3)
    lines = [
        f"# Memory traffic of one batched step: {res['model']}, {res['folds']} folds x batch {res['batch']}"
        + ("" if res["transposed"] else ", Linear weights untransposed"),
        "",
        "Eager forward + loss + backward, counted on the meta device (`python scripts/batched_step_traffic.py "
        f"--model {res['model']} --folds {res['folds']} --batch {res['batch']}"
        f"{'' if res['transposed'] else ' --untransposed'}`); "
        f"times at {bandwidth / 1e12:.1f} TB/s.",
        "",
        "| | GB | ms at that bandwidth |",
        "|---|---:|---:|",
        f"| matrix products, convolutions, attention | {gb(res['bytes_matrix']):.1f} | {ms(res['bytes_matrix']):.1f} |",
        f"| everything else (element-wise, reductions, copies, norms) | {gb(res['bytes_other']):.1f} | "
        f"{ms(res['bytes_other']):.1f} |",
        f"| Adam (7 x 4 B per parameter; not counted above) | {gb(res['bytes_adam']):.1f} | "
        f"{ms(res['bytes_adam']):.1f} |",
        "",
        "| op | calls | GB | ms | matrix |",
        "|---|---:|---:|---:|---|",
    ]
    for name, v in list(res["ops"].items())[:rows]:
        lines.append(
            f"| {name} | {v['calls']} | {gb(v['bytes']):.2f} | {ms(v['bytes']):.2f} | {'yes' if v['matrix'] else ''} |"
        )
    lines += [
        "",
        f"Batched matrix products: {res['flop_bmm'] / 1e12:.2f} TFLOP in {res['ops']['bmm']['calls']} calls; "
        "the largest by FLOPs (operand shapes (F, M, K) @ (F, K, N)):",
        "",
        "| A | B | calls | TFLOP |",
        "|---|---|---:|---:|",
    ]
    for e in res["bmm_shapes"][:8]:
        lines.append(f"| {tuple(e['a'])} | {tuple(e['b'])} | {e['calls']} | {e['flop'] / 1e12:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="htnet_original")
    ap.add_argument("--folds", type=int, default=17)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--bandwidth", type=float, default=4.3e12, help="bytes/s for the ms column (H200 copy: 4.3e12)")
    ap.add_argument(
        "--untransposed", action="store_true", help="stack the Linear weights as the model holds them (the old layout)"
    )
    ap.add_argument("--out", help="folder for batched_step_traffic-MODEL-FxB[-untransposed].{json,md}")
    args = ap.parse_args(argv)
    res = count(args.model, args.folds, args.batch, transposed=not args.untransposed)
    md = markdown(res, args.bandwidth)
    print(md)
    if args.out:
        suffix = "-untransposed" if args.untransposed else ""
        stem = Path(args.out) / f"batched_step_traffic-{args.model}-{args.folds}x{args.batch}{suffix}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
        stem.with_suffix(".md").write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
