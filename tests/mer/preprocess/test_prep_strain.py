"""Optical strain against analytic flow fields (catches the np.gradient axis-order mistake)."""

from __future__ import annotations

import numpy as np
import pytest

from mer.preprocess.strain import optical_strain

Y, X = np.mgrid[0:32, 0:40].astype(np.float64)  # rows = y, columns = x; non-square on purpose


@pytest.mark.parametrize(
    "name, u, v, expected",
    [
        ("dilation", 0.05 * X, 0.05 * Y, 0.05 * np.sqrt(2)),  # u_x = v_y = a
        ("stretch x", 0.03 * X, 0 * Y, 0.03),  # u_x = a only
        ("shear u=ky", 0.04 * Y, 0 * X, 0.04 / np.sqrt(2)),  # u_y = k: sqrt(k^2 / 2)
        ("pure shear", 0.02 * Y, 0.02 * X, 0.02 * np.sqrt(2)),  # u_y = v_x = k: sqrt(2 k^2)
        ("rotation", -0.03 * Y, 0.03 * X, 0.0),  # rigid: no strain
        ("translation", 0 * X + 1.5, 0 * Y - 0.7, 0.0),
    ],
)
def test_analytic(name, u, v, expected):
    s = optical_strain(u, v)
    assert s.shape == u.shape and s.dtype == np.float32
    np.testing.assert_allclose(s, expected, atol=1e-6)


def test_axis_order_matters():
    # u = a*x and u = a*y give different strain; a swapped np.gradient would give the opposite values
    a = 0.1
    assert optical_strain(a * X, 0 * X)[5, 5] == pytest.approx(a)
    assert optical_strain(a * Y, 0 * X)[5, 5] == pytest.approx(a / np.sqrt(2))
