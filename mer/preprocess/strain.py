"""Optical strain of a flow field.

    strain = sqrt(u_x^2 + v_y^2 + 1/2 (u_y + v_x)^2)

with u_x = du/dx (x = column), u_y = du/dy (y = row). ``np.gradient(u)`` returns (du/drow, du/dcol) =
(u_y, u_x): the order is easy to get wrong, so it is spelled out here and tested against analytic fields.
Strain is dimensionless (pixels per pixel): it does not change when flow and grid are rescaled together.
"""

from __future__ import annotations

import numpy as np


def optical_strain(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(H, W) float32 strain magnitude of the flow (u, v), each (H, W), central differences."""
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    u_y, u_x = np.gradient(u)  # axis 0 = rows = y, axis 1 = columns = x
    v_y, v_x = np.gradient(v)
    return np.sqrt(u_x**2 + v_y**2 + 0.5 * (u_y + v_x) ** 2).astype(np.float32)
