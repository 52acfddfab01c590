"""Optical flow methods recover a known sub-pixel translation of a textured image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mer.preprocess.flow import compute_flow


def shifted_texture(size=96, dx=0.37, dy=-0.62, seed=0):
    """(onset, apex) uint8: smooth random texture and the same moved by (dx, dy) px (exact Fourier shift)."""
    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur(rng.uniform(0, 255, (size, size)).astype(np.float32), (0, 0), 2.0).astype(np.float64)
    tex = (tex - tex.min()) / (tex.max() - tex.min()) * 235 + 10
    ky, kx = np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :]
    moved = np.real(np.fft.ifft2(np.fft.fft2(tex) * np.exp(-2j * np.pi * (kx * dx + ky * dy))))
    return tex.round().astype(np.uint8), np.clip(moved.round(), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("method, tol", [("tvl1", 0.1), ("dis", 0.1), ("farneback", 0.1)])
@pytest.mark.parametrize("dx, dy", [(0.37, -0.62), (-0.25, 0.15)])
def test_subpixel_shift(method, tol, dx, dy):
    a, b = shifted_texture(dx=dx, dy=dy)
    flow = compute_flow(a, b, method)
    assert flow.shape == (96, 96, 2) and flow.dtype == np.float32
    inner = flow[16:-16, 16:-16]
    assert abs(float(np.median(inner[..., 0])) - dx) < tol
    assert abs(float(np.median(inner[..., 1])) - dy) < tol


def test_flow_errors():
    a = np.zeros((10, 10), np.uint8)
    with pytest.raises(ValueError, match="differ in size"):
        compute_flow(a, np.zeros((10, 12), np.uint8))
    with pytest.raises(ValueError, match="flow method"):
        compute_flow(a, a, "lk")
