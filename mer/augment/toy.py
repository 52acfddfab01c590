"""A small labelled set of flow-like images to exercise and time the DDPM without any dataset.

Each image (3, H, W) holds a Gaussian bump at a class-specific place with class-specific signs in u and v
(strain = bump², always positive), a random amplitude and jitter, plus blocky smooth noise; channels are
standardised over the set. Default class sizes 250/109/83 are those of the MEGC2019 composite
(negative/positive/surprise). It is a timing and sanity fixture, not a model of real micro-expressions.
"""

from __future__ import annotations

import numpy as np

__all__ = ["toy_flow_set"]

_CENTRES = [(0.3, 0.3), (0.7, 0.35), (0.5, 0.75)]


def toy_flow_set(
    counts: tuple[int, ...] = (250, 109, 83), size: int = 28, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (x (M, 3, size, size) float32, standardised per channel; y (M,) int64), shuffled; ≤ 3 classes."""
    if len(counts) > len(_CENTRES) or size < 4:
        raise ValueError(f"at most {len(_CENTRES)} classes and size >= 4, got {len(counts)} classes, size {size}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    xs, ys = [], []
    for c, n in enumerate(counts):
        for _ in range(n):
            cy, cx = (v + rng.normal(0, 0.05) for v in _CENTRES[c])
            bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 0.12**2))
            amp = rng.normal(1.0, 0.2)
            img = np.stack(
                [amp * bump * (1 if c != 1 else -1), amp * bump * (1 if c == 2 else -0.5), abs(amp) * bump**2]
            )
            block = size // 4 + 1
            img += 0.15 * np.stack(
                [np.kron(rng.normal(0, 1, (4, 4)), np.ones((block, block)))[:size, :size] for _ in range(3)]
            )
            xs.append(img)
            ys.append(c)
    x = np.asarray(xs)
    x = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / x.std(axis=(0, 2, 3), keepdims=True)
    order = rng.permutation(len(ys))
    return x[order].astype(np.float32), np.asarray(ys, dtype=np.int64)[order]
