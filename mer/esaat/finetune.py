"""Fine-tuning a pruned model, with the optional fade-out of the layers being removed.

The layers in ``fade`` are still present at the start: their blocks compute (2 - λ)·x + λ·Attn(LN(x)) with
λ falling linearly from 1 to 0 over the first ``fade_epochs`` epochs (per optimiser step), after which they
are folded away (``replace_attention(name, None, skip_scale=2.0)``: the same function, without the
branch's parameters and FLOPs). With ``fade_epochs=0`` the caller removes them before fine-tuning.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mer.esaat.remove import fade_lambda, remove_layers, set_fade
from mer.options import option

_G = "fine-tuning"


@dataclass
class FinetuneConfig:
    """Fine-tuning after removal/conversion (Adam, cross-entropy, on the fold's training samples only)."""

    epochs: int = option(10, "fine-tuning epochs (0: none; the pruned model is evaluated as it is)", group=_G)
    lr: float = option(5e-4, "fine-tuning Adam learning rate (half the training default of 1e-3)", group=_G)
    batch_size: int = option(64, "fine-tuning minibatch size", group=_G)
    weight_decay: float = option(0.0, "fine-tuning Adam L2 weight decay", group=_G)
    fade_epochs: int = option(3, "epochs of the λ 1 -> 0 fade-out of the removed layers (0: removed at once)", group=_G)
    class_weights: str = option(
        "balanced",
        "cross-entropy weights: n / (K n_c) on the fine-tuning set's real samples (balanced) or none",
        choices=("balanced", "none"),
        group=_G,
    )
    deterministic: bool = option(True, "torch.use_deterministic_algorithms while fine-tuning", group=_G)

    def __post_init__(self):
        if self.epochs < 0 or self.fade_epochs < 0:
            raise ValueError(f"epochs ({self.epochs}) and fade_epochs ({self.fade_epochs}) must be >= 0")
        if self.fade_epochs > self.epochs:
            raise ValueError(
                f"fade_epochs={self.fade_epochs} exceeds epochs={self.epochs}: the fade must end "
                "(λ = 0) before the layers are folded away; lower fade_epochs or raise epochs"
            )
        if self.class_weights not in ("balanced", "none"):
            raise ValueError(f"class_weights must be 'balanced' or 'none', got {self.class_weights!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def _class_weights(y: np.ndarray, mode: str, num_classes: int) -> torch.Tensor | None:
    if mode == "none":
        return None
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    return torch.tensor(np.where(counts > 0, len(y) / (num_classes * np.maximum(counts, 1)), 1.0), dtype=torch.float32)


def finetune(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    cfg: FinetuneConfig,
    *,
    fade: Sequence[str] = (),
    skip_scale: float = 2.0,
    seed: Sequence[int] = (0,),
    n_real: int | None = None,
    progress: bool = False,
    desc: str = "fine-tune",
) -> list[dict]:
    """Fine-tune ``model`` in place on normalised inputs ``x`` (n, C, S, S) float32 and labels ``y`` (n,);
    the layers ``fade`` fade out and are folded away (see the module docstring). Batch order of epoch e from
    ``numpy.random.default_rng([*seed, e])``; the caller seeds torch. ``n_real``: the first ``n_real`` samples
    are real, the rest generated (DDPM); the class weights come from the real labels only, so an augmented
    and a plain fine-tuning weight the classes alike (default: all samples are real). Returns the per-epoch history
    [{'epoch', 'train_loss', 'train_acc', 'lambda', 'seconds'}]."""
    from tqdm.auto import tqdm

    fade = list(fade)
    if fade and skip_scale != 2.0:
        raise ValueError(
            f"the fade-out ends at the identity branch (x + x, skip_scale 2.0), got skip_scale="
            f"{skip_scale}; use fade_epochs=0 with another skip_scale"
        )
    if fade and cfg.fade_epochs == 0:
        remove_layers(model, fade, skip_scale)
        fade = []
    n = len(y)
    if n == 0:
        raise ValueError("no fine-tuning samples")
    xt, yt = torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.int64))
    num_classes = int(model(xt[:1]).shape[-1]) if cfg.epochs else 0
    n_real = n if n_real is None else n_real
    if not 0 < n_real <= n:
        raise ValueError(f"n_real={n_real} must be in 1..{n} (the real samples come first)")
    weight = _class_weights(np.asarray(y)[:n_real], cfg.class_weights, num_classes) if cfg.epochs else None
    steps = (n + cfg.batch_size - 1) // cfg.batch_size
    fade_steps = cfg.fade_epochs * steps
    history: list[dict] = []
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(cfg.deterministic)
    try:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        step = 0
        for epoch in tqdm(range(cfg.epochs), desc=desc, unit="epoch", leave=False, disable=not progress):
            t0 = time.perf_counter()
            model.train()
            order = torch.from_numpy(np.random.default_rng([*seed, epoch]).permutation(n))
            tot, correct, lam = 0.0, 0, None
            for s in range(steps):
                if fade:
                    lam = fade_lambda(step + 1, fade_steps)  # the last fade step runs at λ = 0
                    set_fade(model, fade, lam)
                b = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
                logits = model(xt[b])
                loss = F.cross_entropy(logits, yt[b], weight=weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                tot += loss.item() * len(b)
                correct += int((logits.argmax(1) == yt[b]).sum())
            if fade and step >= fade_steps:  # λ has reached 0: fold the identity branches away
                remove_layers(model, fade, skip_scale)
                fade = []
            history.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": tot / n,
                    "train_acc": correct / n,
                    "lambda": lam,
                    "seconds": round(time.perf_counter() - t0, 3),
                }
            )
    finally:
        torch.use_deterministic_algorithms(prev)
    if fade:  # epochs == 0 (the config forbids fade_epochs > epochs otherwise)
        remove_layers(model, fade, skip_scale)
    return history
