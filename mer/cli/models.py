"""``mer models``: every registered HTNet variant with parameters, FLOPs/MACs, tokens per attention and
CPU latency."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  mer models                                   # table of every variant (latency on 1 thread)
  mer models --models 'htnet_small*' --threads 2
  mer models --no-latency                      # parameters, FLOPs, tokens only (fast)
  mer models --json > models.json              # machine-readable, with per-layer attention info

Columns: params; FLOPs and MACs of one forward at batch 1 (FlopCounterMode: matmuls, convolutions and the
agent-attention op at 2 FLOPs per multiply-add, MACs = FLOPs/2 as fvcore-based papers count them; softmax,
norms, GELU and pooling are not counted); attention branches per kind; tokens per attention (per level:
tokens x blocks per image); CPU latency (median, or --stat min) of inference at batch 1 and 64 and of a training step
(forward + backward, no optimiser) at batch 64, in ms.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "models",
        help="list the HTNet variants: parameters, FLOPs/MACs, tokens per attention, CPU latency",
        description="Build every registered HTNet variant (mer.models.list_models) and report its size, "
        "compute and CPU latency.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models", default=None, help="glob over variant names (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurements")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for latency (default 1)")
    p.add_argument("--reps", type=int, default=5, help="timed runs per measurement (median; default 5)")
    p.add_argument(
        "--stat",
        default="median",
        choices=["median", "min"],
        help="latency statistic over the runs (min: closer to the unloaded time on a shared machine)",
    )
    p.add_argument("--batch", type=int, default=64, help="the large batch size (default 64)")
    return p


def _tokens(info: list[dict]) -> str:
    """'L0 49x4, L1 49x1' from attention_info rows (one entry per level that has attention slots)."""
    seen = {}
    for r in info:
        seen.setdefault(r["level"], f"L{r['level']} {r['tokens']}x{r['blocks']}")
    return ", ".join(seen.values())


def _kinds(info: list[dict]) -> str:
    counts = {}
    for r in info:
        counts[r["kind"]] = counts.get(r["kind"], 0) + 1
    return " ".join(f"{v} {k}" for k, v in counts.items())


def run(args) -> int:
    import json

    import torch
    from tqdm import tqdm

    from mer.models import create_model, describe, list_models
    from mer.models.profile import count_flops, count_params, latency_ms, machine, train_step_ms

    if args.threads < 1 or args.reps < 1 or args.batch < 1:
        raise SystemExit("mer models: --threads, --reps and --batch must be >= 1")
    names = list_models(args.models)
    if not names:
        raise SystemExit(f"mer models: no variant matches {args.models!r}; variants: {', '.join(list_models())}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name in tqdm(names, desc="models", disable=args.json, leave=False):
        model = create_model(name)
        S, C = model.cfg.image_size, model.cfg.channels
        x1 = torch.randn(1, C, S, S)
        info = model.attention_info()
        row = {
            "name": name,
            "description": describe(name),
            "params": count_params(model),
            **count_flops(model, x1),
            "attention": info,
            "config": model.cfg.to_dict(),
        }
        if not args.no_latency:
            xb = torch.randn(args.batch, C, S, S)
            row["latency_ms_b1"] = latency_ms(model, x1, args.reps, args.stat)
            row[f"latency_ms_b{args.batch}"] = latency_ms(model, xb, args.reps, args.stat)
            row[f"train_step_ms_b{args.batch}"] = train_step_ms(model, xb, args.reps, args.stat)
        rows.append(row)
        del model

    if args.json:
        print(
            json.dumps(
                {"machine": machine(), "batch": args.batch, "reps": args.reps, "stat": args.stat, "models": rows},
                indent=1,
            )
        )
        return 0
    head = ["model", "params", "MFLOPs", "MMACs", "attention", "tokens/attn (level tokens x blocks)"]
    if not args.no_latency:
        head += ["b1 ms", f"b{args.batch} ms", f"train b{args.batch} ms"]
    table = []
    for r in rows:
        line = [
            r["name"],
            f"{r['params']:,}",
            f"{r['flops'] / 1e6:.1f}",
            f"{r['macs'] / 1e6:.1f}",
            _kinds(r["attention"]),
            _tokens(r["attention"]),
        ]
        if not args.no_latency:
            line += [
                f"{r['latency_ms_b1']:.2f}",
                f"{r[f'latency_ms_b{args.batch}']:.1f}",
                f"{r[f'train_step_ms_b{args.batch}']:.1f}",
            ]
        table.append(line)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *table, strict=True)]

    def fmt(cells):
        return "  ".join(
            str(c).ljust(w) if i in (0, 4, 5) else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    m = machine()
    print(
        f"# {m['cpu']}, torch {m['torch']}, {m['threads']} thread(s); FLOPs/MACs per image (forward); "
        f"latency: {args.stat} of {args.reps} runs, ms"
    )
    print(fmt(head))
    print("  ".join("-" * w for w in widths))
    for line in table:
        print(fmt(line))
    return 0
