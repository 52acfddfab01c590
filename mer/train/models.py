"""Building the model of a run: a registered `mer.models` name, or ``module:callable`` for your own.

    model = build_model("htnet_small_lape_agent", {}, image_size=28)
    model = build_model("mypkg.nets:make_net", {"width": 32}, image_size=28)   # callable(**kwargs) -> nn.Module

Either way the model must map (B, 3, S, S) float32 to (B, 3) logits; checked on a dummy batch.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

NUM_CLASSES = 3


class ModelError(ValueError):
    """The model name is unknown, cannot be imported, or does not fit the run's inputs."""


def build_model(name: str, kwargs: dict, *, image_size: int, check: bool = True) -> nn.Module:
    """A fresh model (random init from the current torch RNG state)."""
    if ":" in name:
        mod, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise ModelError(f"model {name!r}: cannot import {attr} from {mod} ({e})") from None
        model = factory(**kwargs)
    else:
        from mer.models import create_model, list_models

        names = list(list_models())
        if name not in names:
            raise ModelError(f"unknown model {name!r}; registered: {', '.join(names)} (see `mer models`)")
        model = create_model(name, **kwargs)
    if check:
        with torch.no_grad():
            was = model.training
            model.eval()
            try:
                out = model(torch.zeros(2, 3, image_size, image_size))
            except Exception as e:
                raise ModelError(
                    f"model {name!r} does not accept (B, 3, {image_size}, {image_size}) inputs: "
                    f"{type(e).__name__}: {e}. Match --size to the model's image size or pass "
                    "--model-arg image_size=..."
                ) from e
            model.train(was)
        if tuple(out.shape) != (2, NUM_CLASSES):
            raise ModelError(
                f"model {name!r} returned {tuple(out.shape)} for a batch of 2; expected (2, {NUM_CLASSES}) logits"
            )
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
