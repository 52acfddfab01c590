"""Per-fold DDPM augmentation: ``augment_fold`` trains on the arrays it is given, samples, caches.

Leakage rule: the only data that reaches the DDPM (its standardisation, its clip range, its minibatches,
its class counts) are the ``x_train`` / ``y_train`` arrays passed in. The caller passes one evaluation
fold's *training subjects* only; the held-out subject is never seen. The cache key hashes those arrays, so a
cached model can only be reused for exactly the same training data, config and seed.

Cache layout (``cache_dir/<fold_key>/<key>/``, every file written to a temporary name then renamed):

    model.pt               denoiser weights (EMA), config, class count, scaler, class prior, clip range, losses
    samples-<ratio>.npz    x (N, C, H, W) float32 in the caller's units, y (N,), generated = True
    meta.json              the key's inputs in readable form (shapes, class counts, config, seed)
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mer.io import atomic_write

from .diffusion import GaussianDiffusion
from .trainer import ArrayBatches, DDPMConfig, build_diffusion, class_prior, train_ddpm

__all__ = ["augment_fold", "ChannelScaler", "class_targets", "cache_key", "load_cached_model", "generate"]

CACHE_VERSION = 2
_FOLD_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")


@dataclass(frozen=True)
class ChannelScaler:
    """Per-channel standardisation fitted on training images: z = (x − mean_c) / std_c.

    mean, std: (C,) float64. A constant channel (std = 0) gets std = 1 so it stays finite.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> ChannelScaler:
        """x: (M, C, H, W)."""
        x64 = x.astype(np.float64, copy=False)
        mean = x64.mean(axis=(0, 2, 3))
        std = x64.std(axis=(0, 2, 3))
        return cls(mean, np.where(std > 0, std, 1.0))

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        m = torch.as_tensor(self.mean, dtype=x.dtype)[None, :, None, None]
        s = torch.as_tensor(self.std, dtype=x.dtype)[None, :, None, None]
        return (x - m) / s

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        m = torch.as_tensor(self.mean, dtype=z.dtype)[None, :, None, None]
        s = torch.as_tensor(self.std, dtype=z.dtype)[None, :, None, None]
        return z * s + m


def class_targets(y: np.ndarray, ratio: str | float) -> dict[int, int]:
    """How many samples to generate per class.

    ``"balance"``: every class present in ``y`` is topped up to the largest class count.
    A float r >= 0: round(r·M) samples split in the classes' proportions in ``y`` (largest remainder).
    Returns {class: count} for classes with count > 0, sorted by class.
    """
    classes, counts = np.unique(y, return_counts=True)
    if isinstance(ratio, str) and ratio.strip().lower() == "balance":
        out = {int(c): int(counts.max() - n) for c, n in zip(classes, counts, strict=True)}
    else:
        try:
            r = float(ratio)
        except (TypeError, ValueError):
            raise ValueError(f"ratio must be 'balance' or a number >= 0, got {ratio!r}") from None
        if not np.isfinite(r) or r < 0:
            raise ValueError(f"ratio must be 'balance' or a finite number >= 0, got {ratio!r}")
        total = int(round(r * len(y)))
        exact = counts / counts.sum() * total
        n = np.floor(exact).astype(int)
        for j in np.argsort(-(exact - n), kind="stable")[: total - n.sum()]:
            n[j] += 1
        out = {int(c): int(k) for c, k in zip(classes, n, strict=True)}
    return {c: k for c, k in sorted(out.items()) if k > 0}


def _check_inputs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        raise ValueError(f"x_train must be a (M, C, H, W) numpy array, got {getattr(x, 'shape', type(x))}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"x_train must be a float array (already normalised), got dtype {x.dtype}")
    if min(x.shape[2:]) < 4:
        raise ValueError(f"images must be at least 4 × 4, got {x.shape[2:]}")
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"y_train must be (M,) = ({len(x)},), got {y.shape}")
    if len(x) == 0:
        raise ValueError("x_train is empty: a fold needs training samples to train the DDPM")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"y_train must hold integer class labels, got dtype {y.dtype}")
    if y.min() < 0:
        raise ValueError(f"class labels must be >= 0, got min {y.min()}")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).reshape(len(x), -1).any(1).sum())
        raise ValueError(f"x_train holds NaN/inf in {bad} samples; clean or drop them before augmenting")
    return np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int64)


def cache_key(x: np.ndarray, y: np.ndarray, cfg: DDPMConfig, seed: int) -> str:
    """sha256 over the training arrays (dtype, shape, bytes), the config (minus display settings), the seed."""
    h = hashlib.sha256()
    h.update(f"mer.augment v{CACHE_VERSION}|{x.dtype}|{x.shape}|{y.dtype}|{y.shape}|".encode())
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    h.update(json.dumps(cfg.key_dict(), sort_keys=True).encode())
    h.update(f"|seed={int(seed)}".encode())
    return h.hexdigest()


def _ratio_tag(ratio: str | float) -> str:
    if isinstance(ratio, str) and ratio.strip().lower() == "balance":
        return "balance"
    return "r" + repr(float(ratio)).replace(".", "p")


def _seeds(seed: int) -> tuple[int, int, int, int]:
    """Independent seeds for (weight init, minibatch order, training noise, sampling)."""
    s = np.random.SeedSequence(int(seed)).generate_state(4)
    return tuple(int(v) for v in s)


def _train(x: np.ndarray, y: np.ndarray, cfg: DDPMConfig, seed: int) -> dict:
    """Train a DDPM on exactly (x, y); returns the checkpoint dict (see module docstring)."""
    s_init, s_order, s_noise, _ = _seeds(seed)
    num_classes = int(y.max()) + 1
    scaler = ChannelScaler.fit(x)
    prior = class_prior(scaler.transform(torch.from_numpy(x)).numpy(), y, num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s_init)
        diffusion = build_diffusion(cfg, num_classes, x.shape[1], prior)
    z_lo = (x.min(axis=(0, 2, 3)).astype(np.float64) - scaler.mean) / scaler.std
    z_hi = (x.max(axis=(0, 2, 3)).astype(np.float64) - scaler.mean) / scaler.std
    pad = cfg.clip_margin * (z_hi - z_lo)
    loader = ArrayBatches(x, y, cfg.batch_size, s_order)
    result = train_ddpm(diffusion, loader, cfg, seed=s_noise, transform=scaler.transform)
    return {
        "version": CACHE_VERSION,
        "state_dict": diffusion.denoiser.state_dict(),
        "cfg": cfg.to_dict(),
        "num_classes": num_classes,
        "in_channels": int(x.shape[1]),
        "image_size": [int(x.shape[2]), int(x.shape[3])],
        "prior_mean": prior[0],
        "prior_var": prior[1],
        "scaler_mean": scaler.mean.tolist(),
        "scaler_std": scaler.std.tolist(),
        "clip_lo": (z_lo - pad).tolist(),
        "clip_hi": (z_hi + pad).tolist(),
        "losses": result.losses,
        "rows_seen": result.rows_seen,
    }


def load_cached_model(ckpt: dict) -> tuple[GaussianDiffusion, ChannelScaler, DDPMConfig]:
    """Rebuild (diffusion in eval mode, scaler, config) from a checkpoint dict made by ``augment_fold``."""
    cfg = DDPMConfig.from_dict(ckpt["cfg"])
    diffusion = build_diffusion(cfg, ckpt["num_classes"], ckpt["in_channels"], (ckpt["prior_mean"], ckpt["prior_var"]))
    diffusion.denoiser.load_state_dict(ckpt["state_dict"])
    diffusion.eval()
    return diffusion, ChannelScaler(np.asarray(ckpt["scaler_mean"]), np.asarray(ckpt["scaler_std"])), cfg


def generate(
    ckpt: dict, targets: dict[int, int], seed: int, cfg: DDPMConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``targets[c]`` images of each class c from a checkpoint; returns (x (N,C,H,W) float32 in the
    training data's units, y (N,) int64), classes in ascending order. ``cfg`` overrides sampling settings."""
    diffusion, scaler, train_cfg = load_cached_model(ckpt)
    cfg = cfg or train_cfg
    h, w = ckpt["image_size"]
    c = ckpt["in_channels"]
    labels = (
        np.concatenate([np.full(n, k, dtype=np.int64) for k, n in targets.items()])
        if targets
        else np.zeros(0, np.int64)
    )
    clip = (torch.tensor(ckpt["clip_lo"]), torch.tensor(ckpt["clip_hi"])) if cfg.clip_x0 else None
    g = torch.Generator().manual_seed(_seeds(seed)[3])
    out = []
    chunks = range(0, len(labels), cfg.sample_batch)
    for s in tqdm(chunks, desc="ddpm sample", disable=not cfg.progress or len(chunks) < 2, leave=False):
        yb = torch.from_numpy(labels[s : s + cfg.sample_batch])
        shape = (len(yb), c, h, w)
        if cfg.sampler == "ddim":
            z = diffusion.sample_ddim(
                shape,
                yb,
                steps=cfg.sample_steps,
                eta=cfg.eta,
                generator=g,
                guidance=cfg.guidance,
                clip_x0=clip,
                progress=cfg.progress,
            )
        else:
            z = diffusion.sample_ancestral(
                shape, yb, generator=g, guidance=cfg.guidance, clip_x0=clip, progress=cfg.progress
            )
        out.append(scaler.inverse(z).numpy().astype(np.float32))
    x = np.concatenate(out) if out else np.zeros((0, c, h, w), np.float32)
    if not np.isfinite(x).all():
        raise FloatingPointError("DDPM produced non-finite samples; retrain with a lower lr or clip_x0=True")
    return x, labels


def augment_fold(
    x_train: np.ndarray,
    y_train: np.ndarray,
    *,
    cfg: DDPMConfig,
    cache_dir: str | Path | None,
    fold_key: str,
    seed: int,
    ratio: str | float = "balance",
) -> tuple[np.ndarray, np.ndarray]:
    """Train a class-conditional DDPM on one fold's training arrays and return generated samples.

    Args:
        x_train: (M, C, H, W) float training images of this fold only, in the caller's normalisation.
        y_train: (M,) integer labels >= 0.
        cfg: DDPM settings.
        cache_dir: where trained models and samples are kept (None: no cache, always train).
        fold_key: readable name of the fold (letters, digits, ``._=+-``), e.g. ``"casme2-sub01"``.
        seed: seeds weight init, minibatch order, training noise and sampling.
        ratio: ``"balance"`` (top every class up to the largest class count) or a float r
            (round(r·M) samples in the training class proportions).
    Returns:
        (x_gen (N, C, H, W) float32 in the units of ``x_train``, y_gen (N,) with ``y_train``'s dtype).
        N = 0 (nothing trained) when no sample is needed, e.g. already balanced classes.
    """
    if not isinstance(fold_key, str) or not _FOLD_KEY.match(fold_key) or ".." in fold_key:
        raise ValueError(f"fold_key must be letters/digits/._=+- (no '..', no '/'), got {fold_key!r}")
    if not isinstance(cfg, DDPMConfig):
        raise TypeError(f"cfg must be a DDPMConfig, got {type(cfg).__name__}")
    y_dtype = np.asarray(y_train).dtype if np.issubdtype(np.asarray(y_train).dtype, np.integer) else np.int64
    x, y = _check_inputs(x_train, y_train)
    targets = class_targets(y, ratio)
    if not targets:
        return np.zeros((0, *x.shape[1:]), np.float32), np.zeros(0, y_dtype)

    folder = None
    if cache_dir is not None:
        key = cache_key(x, y, cfg, seed)
        folder = Path(cache_dir) / fold_key / key[:20]
        samples_path = folder / f"samples-{_ratio_tag(ratio)}.npz"
        if samples_path.exists():
            with np.load(samples_path) as z:
                return z["x"].astype(np.float32), z["y"].astype(y_dtype)
        model_path = folder / "model.pt"
        ckpt = torch.load(model_path, map_location="cpu", weights_only=True) if model_path.exists() else None
    else:
        ckpt = None

    if ckpt is None:
        ckpt = _train(x, y, cfg, seed)
        if folder is not None:
            atomic_write(folder / "model.pt", lambda f: torch.save(ckpt, f))
            classes, counts = np.unique(y, return_counts=True)
            meta = {
                "fold_key": fold_key,
                "key": key,
                "x_shape": list(x.shape),
                "class_counts": {int(c): int(n) for c, n in zip(classes, counts, strict=True)},
                "seed": int(seed),
                "cfg": cfg.key_dict(),
                "final_loss": float(np.mean(ckpt["losses"][-50:] or [np.nan])),
            }
            atomic_write(folder / "meta.json", lambda f: f.write(json.dumps(meta, indent=2).encode()))

    x_gen, y_gen = generate(ckpt, targets, seed, cfg)
    if folder is not None:
        atomic_write(samples_path, lambda f: np.savez(f, x=x_gen, y=y_gen, generated=np.ones(len(y_gen), bool)))
    return x_gen, y_gen.astype(y_dtype)
