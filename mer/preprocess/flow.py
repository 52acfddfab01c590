"""Dense optical flow onset -> apex (OpenCV): TV-L1 (default), DIS or Farneback.

Convention: ``flow[y, x] = (u, v)`` such that ``apex(x + u, y + v) ~ onset(x, y)``; u to the right, v
downwards, in pixels of the input images.
"""

from __future__ import annotations

import cv2
import numpy as np

METHODS = ("tvl1", "farneback", "dis")


def _grey_u8(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    return img


def compute_flow(onset: np.ndarray, apex: np.ndarray, method: str = "tvl1") -> np.ndarray:
    """(H, W, 2) float32 flow from ``onset`` to ``apex`` (both (H, W) or (H, W, 3) BGR, same size)."""
    if onset.shape[:2] != apex.shape[:2]:
        raise ValueError(f"onset {onset.shape[:2]} and apex {apex.shape[:2]} differ in size")
    a, b = _grey_u8(onset), _grey_u8(apex)
    if method == "tvl1":
        # OpenCV defaults (tau 0.25, lambda 0.15, theta 0.3, 5 scales, 5 warps, epsilon 0.01)
        of = cv2.optflow.DualTVL1OpticalFlow_create()
        flow = of.calc(a, b, None)
    elif method == "dis":
        of = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        flow = of.calc(a, b, None)
    elif method == "farneback":
        flow = cv2.calcOpticalFlowFarneback(
            a, b, None, pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0
        )
    else:
        raise ValueError(f"flow method must be one of {METHODS}, got {method!r}")
    return np.ascontiguousarray(flow, dtype=np.float32)
