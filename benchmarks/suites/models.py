"""Models with agent attention against the same models with softmax attention: parameters, FLOPs, latency.

Suite plugin (``NAME``, ``run(cfg) -> list[dict]``); also runs on its own::

    python benchmarks/suites/models.py --quick

Models:

- every registered MER variant (``mer.models.list_models()``), as registered and with its attention swapped
  (``create_model(name, attn='softmax'|'agent')``); a swapped configuration equal to another registered
  variant is reported once, with ``same_as``; one that cannot be built (``htnet_original`` has one token per
  attention, fewer than 9 agents) is ``not applicable`` with the reason;
- a DeiT-T-like ViT built here (224 px, patch 16, dim 192, depth 12, 3 heads, MLP 4x, class token,
  1000 classes) with softmax attention (SDPA; qkv bias) in every block against the same with
  ``agentattn.AgentAttention(agent_num=49, window=14, num_prefix_tokens=1)`` in every block.

Per model: parameters; forward FLOPs per image from ``torch.utils.flop_counter.FlopCounterMode``
(matrix products, convolutions, and agentattn's op through the formula it registers, 8·B·H·N·n·d;
softmax attention counted through its explicit q kᵀ / P v path because the counter has no formula for the
CPU SDPA kernel; softmax, norms, GELU, pooling and elementwise adds are not counted), MACs = FLOPs / 2
(one multiply-add = one MAC, as fvcore-based papers count), ``attn_flops`` = the part in the attention
core (q kᵀ and P v, or the agent op); inference latency per batch (eval, ``torch.inference_mode``) at a
small and a large batch (1 and 64; ``--quick`` 1 and 8), median and minimum, and throughput (images/s,
from the median) at the large batch.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

NAME = "models"
COLUMNS = [
    "model",
    "attn",
    "registered",
    "same_as",
    "status",
    "params",
    "mflops",
    "mmacs",
    "attn_mflops",
    "ms_b_small",
    "min_ms_b_small",
    "ms_b_large",
    "min_ms_b_large",
    "img_s",
    "note",
]
HEADERS = {
    "mflops": "MFLOPs/img",
    "mmacs": "MMACs/img",
    "attn_mflops": "attn-core MFLOPs/img",
    "ms_b_small": "ms @ b_small",
    "ms_b_large": "ms @ b_large",
    "min_ms_b_small": "min ms @ b_small",
    "min_ms_b_large": "min ms @ b_large",
    "img_s": "img/s @ b_large",
}


@dataclass
class ModelsConfig:
    device: str = "cpu"
    batch_small: int = 1
    batch_large: int = 64
    warmup: int = 1
    min_reps: int = 3
    max_reps: int = 10
    budget_s: float = 1.0
    variants: tuple | None = None  # None = every registered MER variant
    vit: tuple = (224, 16, 192, 12, 3, 49)  # image, patch, dim, depth, heads, agents


def make_config(cfg: dict | None) -> ModelsConfig:
    cfg = cfg or {}
    c = ModelsConfig(device=cfg.get("device", "cpu"))
    if cfg.get("quick"):
        c.batch_large, c.min_reps, c.budget_s = 8, 2, 0.2
    if cfg.get("tiny"):
        c.batch_large, c.warmup, c.min_reps, c.budget_s = 2, 1, 1, 0.0
        c.variants = ("htnet_tiny", "htnet_tiny_lape_agent")
        c.vit = (32, 8, 32, 2, 2, 4)
    return c


# ------------------------------------------------------------------------------------ DeiT-T-like ViT
def build_vit(
    attn: str,
    image: int = 224,
    patch: int = 16,
    dim: int = 192,
    depth: int = 12,
    heads: int = 3,
    agents: int = 49,
    num_classes: int = 1000,
):
    """A DeiT-style ViT, x (B, 3, image, image) -> (B, num_classes); ``attn`` = 'softmax' | 'agent'."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    import agentattn

    grid = image // patch

    class SoftmaxAttention(nn.Module):
        """timm/DeiT ``Attention``: qkv (C -> 3C, bias), heads of C/H, SDPA (``fused``) or explicit."""

        def __init__(self):
            super().__init__()
            self.qkv, self.proj, self.fused = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), True

        def forward(self, x):  # (B, N, C) -> (B, N, C)
            B, N, C = x.shape
            q, k, v = self.qkv(x).reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)
            if self.fused:
                o = F.scaled_dot_product_attention(q, k, v)
            else:
                o = ((q * (C // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v
            return self.proj(o.transpose(1, 2).reshape(B, N, C))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
            self.attn = (
                SoftmaxAttention()
                if attn == "softmax"
                else agentattn.AgentAttention(
                    dim, heads, qkv_bias=True, agent_num=agents, window=grid, num_prefix_tokens=1
                )
            )
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch_embed = nn.Conv2d(3, dim, patch, patch)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 1 + grid * grid, dim))
            self.blocks = nn.Sequential(*[Block() for _ in range(depth)])
            self.norm, self.head = nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, num_classes)

        def forward(self, x):
            x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, grid², C)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
            return self.head(self.norm(self.blocks(x))[:, 0])

    if attn not in ("softmax", "agent"):
        raise ValueError(f"attn must be 'softmax' or 'agent', got {attn!r}")
    return ViT()


# ----------------------------------------------------------------------------------------- measuring
def count_flops(model, x) -> dict:
    """Forward FLOPs with softmax branches on their explicit path: {'flops', 'attn_flops'}."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    switched = [m for m in model.modules() if hasattr(m, "fused") and m.__class__.__name__ == "SoftmaxAttention"]
    saved = [m.fused for m in switched]
    try:
        for m in switched:
            m.fused = False
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(x)
    finally:
        for m, f in zip(switched, saved, strict=True):
            m.fused = f
    by_op = {str(k): int(v) for k, v in fc.get_flop_counts().get("Global", {}).items()}
    attn = sum(v for k, v in by_op.items() if "bmm" in k or "agent_attention" in k)
    return {"flops": int(fc.get_total_flops()), "attn_flops": attn}


def measure(model, image: int, c: ModelsConfig) -> dict:
    import torch

    model = model.to(c.device).eval()
    out = {"params": sum(p.numel() for p in model.parameters())}
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(1, 3, image, image, generator=g).to(c.device)
    f = count_flops(model, x1)
    out.update(
        flops=f["flops"],
        macs=f["flops"] // 2,
        mflops=round(f["flops"] / 1e6, 2),
        mmacs=round(f["flops"] / 2e6, 2),
        attn_flops=f["attn_flops"],
        attn_mflops=round(f["attn_flops"] / 1e6, 2),
    )
    for tag, b in (("small", c.batch_small), ("large", c.batch_large)):
        x = torch.randn(b, 3, image, image, generator=g).to(c.device)
        with torch.inference_mode():
            t = common.time_fn(
                lambda: model(x),
                c.device,
                warmup=c.warmup,
                min_reps=c.min_reps,
                max_reps=c.max_reps,
                budget_s=c.budget_s,
            )
        out[f"ms_b_{tag}"], out[f"iqr_ms_b_{tag}"], out[f"min_ms_b_{tag}"] = t["median_ms"], t["iqr_ms"], t["min_ms"]
        out["reps"] = t["reps"]
    out["img_s"] = round(c.batch_large / (out["ms_b_large"] * 1e-3), 1)
    return out


def _attn_label(attn) -> str:
    kinds = {attn} if isinstance(attn, str) else set(attn)
    return kinds.pop() if len(kinds) == 1 else "mixed"


def _entries(c: ModelsConfig) -> list[dict]:
    """What to build: registered variants and their attention-swapped counterparts, without duplicates."""
    from mer.models.registry import list_models, variant_config

    names = list(c.variants) if c.variants is not None else list_models()
    entries = [
        dict(model=n, registered=True, cfg=variant_config(n), error=None, image=variant_config(n).image_size)
        for n in names
    ]
    for n in names:
        label = _attn_label(variant_config(n).attn)
        if label not in ("softmax", "agent"):
            continue
        other = "agent" if label == "softmax" else "softmax"
        try:
            cfg, err = variant_config(n, attn=other), None
            cfg.level_shapes()
            from mer.models.htnet import HTNet

            HTNet(cfg)  # agent counts are checked when the layers are built
        except Exception as e:
            cfg, err = None, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        entries.append(
            dict(model=n, registered=False, cfg=cfg, error=err, attn=other, image=variant_config(n).image_size)
        )
    return entries


def run(cfg: dict | None = None) -> list[dict]:
    """One row per model configuration (see the module docstring)."""
    import torch

    from mer.models.htnet import HTNet

    c = cfg if isinstance(cfg, ModelsConfig) else make_config(cfg)
    rows: list[dict] = []
    done: list[tuple] = []  # (HTNetConfig, row) already measured
    base = dict(suite=NAME, batch_small=c.batch_small, batch_large=c.batch_large)
    entries = _entries(c)
    image, patch, dim, depth, heads, agents = c.vit
    vit_name = f"deit_t_like_{image}px_p{patch}_d{dim}_L{depth}_h{heads}"
    for e in common.progress(entries + [dict(vit=a) for a in ("softmax", "agent")], NAME, total=len(entries) + 2):
        if "vit" in e:
            row = dict(
                base,
                model=vit_name,
                kind="vit",
                attn=e["vit"],
                registered=False,
                same_as=None,
                source="benchmarks/suites/models.py",
                status="ok",
                image_size=image,
                params=None,
                note=f"{'AgentAttention n=' + str(agents) if e['vit'] == 'agent' else 'SDPA'} in all "
                f"{depth} blocks, {(image // patch) ** 2 + 1} tokens",
            )
            try:
                torch.manual_seed(0)
                row.update(measure(build_vit(e["vit"], image, patch, dim, depth, heads, agents), image, c))
            except Exception as ex:
                row.update(status="error", note=f"{type(ex).__name__}: {str(ex).splitlines()[0][:200]}")
            rows.append(row)
            continue
        attn = e.get("attn") or _attn_label(e["cfg"].attn)
        row = dict(
            base,
            model=e["model"],
            kind="htnet",
            attn=attn,
            registered=e["registered"],
            same_as=None,
            source="mer.models.create_model" + ("" if e["registered"] else f"(..., attn='{attn}')"),
            status="ok",
            note="",
            image_size=e["image"],
            params=None,
        )
        if e["error"]:
            row.update(status="not applicable", note=e["error"])
            rows.append(row)
            continue
        twin = next((r for cfg_, r in done if cfg_ == e["cfg"]), None)
        if twin is not None:
            keep = {k: row[k] for k in ("model", "attn", "registered", "source")}
            row.update(
                {k: v for k, v in twin.items() if k not in keep},
                same_as=twin["model"],
                note=f"same configuration as {twin['model']} (numbers copied)",
            )
            rows.append(row)
            continue
        try:
            torch.manual_seed(0)
            row.update(measure(HTNet(e["cfg"]), e["cfg"].image_size, c))
        except Exception as ex:
            row.update(status="error", note=f"{type(ex).__name__}: {str(ex).splitlines()[0][:200]}")
        rows.append(row)
        done.append((e["cfg"], row))
    return rows


def to_markdown(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)\n"
    b = rows[0]
    return (
        f"Batches: small = {b['batch_small']}, large = {b['batch_large']}; FLOPs and MACs per image, forward.\n\n"
        + common.markdown_table(rows, COLUMNS, HEADERS)
    )


def summarize(rows: list[dict]) -> dict:
    """Agent / softmax ratios per model (params, FLOPs, latency at the large batch)."""
    pairs = {}
    for r in rows:
        if r["status"] == "ok" and r["attn"] in ("softmax", "agent"):
            pairs.setdefault(r["model"], {})[r["attn"]] = r  # a variant and its swapped counterpart
    out = []
    for model, p in pairs.items():
        if "softmax" in p and "agent" in p:
            a, s = p["agent"], p["softmax"]
            out.append(
                dict(
                    model=model,
                    params_agent=a["params"],
                    params_softmax=s["params"],
                    mmacs_agent=a["mmacs"],
                    mmacs_softmax=s["mmacs"],
                    latency_ratio_b_large=round(a["ms_b_large"] / s["ms_b_large"], 3),
                )
            )
    return {"agent_vs_softmax": out}


def summary_markdown(summary: dict) -> str:
    return "### Agent vs softmax attention, same model\n\n" + common.markdown_table(
        summary.get("agent_vs_softmax", []), headers={"latency_ratio_b_large": "agent/softmax time @ b_large"}
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Models with agent vs softmax attention (a suite of benchmarks/run.py).",
        epilog="example: python benchmarks/suites/models.py --quick",
    )
    ap.add_argument("--quick", action="store_true", help="batch 1 and 8, few repetitions")
    ap.add_argument("--tiny", action="store_true", help="test size")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = ap.parse_args(argv)
    rows = run(vars(args))
    print(to_markdown(rows))
    print(summary_markdown(summarize(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
