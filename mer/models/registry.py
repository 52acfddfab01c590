"""Registered HTNet variants, each a dict of ``HTNetConfig`` arguments (no per-variant classes).

mer.models.list_models()                         # names, in registration order
mer.models.create_model("htnet_small_lape_agent", dropout=0.1)   # overrides any config field
"""

from __future__ import annotations

import fnmatch

from mer.models.htnet import HTNet, HTNetConfig

_VARIANTS: dict[str, dict] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_variant(name: str, description: str, base: str | None = None, **kwargs) -> None:
    """Register ``name`` = the config of ``base`` (if given) updated with ``kwargs``."""
    if name in _VARIANTS:
        raise ValueError(f"variant {name!r} is already registered")
    cfg = dict(_VARIANTS[base]) if base is not None else {}
    cfg.update(kwargs)
    HTNetConfig(**cfg).level_shapes()  # fail at registration, not at use
    _VARIANTS[name], _DESCRIPTIONS[name] = cfg, description


def list_models(pattern: str | None = None) -> list[str]:
    """Registered variant names (optionally filtered by a glob such as ``'htnet_small*'``)."""
    names = list(_VARIANTS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def variant_config(name: str, **overrides) -> HTNetConfig:
    """The resolved ``HTNetConfig`` of a variant with ``overrides`` applied."""
    if name not in _VARIANTS:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(_VARIANTS)}")
    bad = set(overrides) - set(HTNetConfig.__dataclass_fields__)
    if bad:
        raise TypeError(f"unknown HTNet options {sorted(bad)}; options: {sorted(HTNetConfig.__dataclass_fields__)}")
    return HTNetConfig(**{**_VARIANTS[name], **overrides})


def describe(name: str) -> str:
    return _DESCRIPTIONS[name]


def create_model(name: str, **overrides) -> HTNet:
    """Build a registered variant; ``overrides`` replace any ``HTNetConfig`` field."""
    return HTNet(variant_config(name, **overrides))


# --- the released configuration ---------------------------------------------------------------------
register_variant(
    "htnet_original",
    "released HTNet (28/7: 4x4 tokens, one token per block at every level)",
    image_size=28,
    patch_size=7,
    dim=256,
    heads=3,
    num_hierarchies=3,
    block_repeats=(2, 2, 10),
    num_classes=3,
    pos="block_scalar",
    attn="softmax",
    layout="regions",
)

# --- working variants: 28x28 input, patch 2 -> 14x14 tokens; level 0: 2x2 blocks of 7x7 (= the four
# region windows), level 1: one 7x7 block; every attention sees 49 tokens --------------------------------
register_variant(
    "htnet_small",
    "block-scalar positions, softmax attention over 7x7-token blocks",
    image_size=28,
    patch_size=2,
    dim=32,
    heads=2,
    num_hierarchies=2,
    block_repeats=(2, 2),
    num_classes=3,
    mlp_mult=4,
    pos="block_scalar",
    attn="softmax",
    layout="regions",
)
register_variant(
    "htnet_small_lape",
    "htnet_small + LAPE on the patch embedding",
    base="htnet_small",
    pos=("lape+block_scalar", "block_scalar"),
)
register_variant(
    "htnet_small_agent",
    "htnet_small with agent attention (9 agents per block)",
    base="htnet_small",
    attn="agent",
    agent_num=9,
)
register_variant(
    "htnet_small_lape_agent",
    "htnet_small + LAPE + agent attention (9 agents per block)",
    base="htnet_small_lape",
    attn="agent",
    agent_num=9,
)
register_variant(
    "htnet_base_lape_agent",
    "wider/deeper: dim 64, 4 heads, depth (2, 4), LAPE + agent",
    base="htnet_small_lape_agent",
    dim=64,
    heads=4,
    block_repeats=(2, 4),
    agent_num=16,
)
# --- for tests: trains in seconds ----------------------------------------------------------------------
register_variant(
    "htnet_tiny",
    "test size: 16x16 input, patch 2 -> 8x8 tokens, blocks of 4x4 = 16 tokens",
    image_size=16,
    patch_size=2,
    dim=16,
    heads=2,
    num_hierarchies=2,
    block_repeats=1,
    mlp_mult=2,
    num_classes=3,
    pos="block_scalar",
    attn="softmax",
    layout="regions",
)
register_variant(
    "htnet_tiny_lape_agent",
    "htnet_tiny + LAPE (every level) + agent attention (4 agents)",
    base="htnet_tiny",
    pos=("lape+block_scalar", "lape"),
    attn="agent",
    agent_num=4,
)
