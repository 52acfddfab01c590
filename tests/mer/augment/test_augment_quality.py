"""Sample-quality report: channel statistics, NN distances that expose copies and noise, the grid."""

import numpy as np

from mer.augment.quality import channel_stats, nn_distances, quality_report, report_markdown, save_grid


def real_set(seed=0):
    rng = np.random.default_rng(seed)
    y = np.array([0] * 30 + [1] * 20)
    x = (rng.normal(size=(50, 3, 6, 6)) + 2.0 * y[:, None, None, None]).astype(np.float32)
    return x, y


def test_channel_stats_and_nn_against_brute_force():
    x, y = real_set()
    s = channel_stats(x, y)
    np.testing.assert_allclose(s[1]["mean"], x[y == 1].astype(np.float64).mean((0, 2, 3)))
    np.testing.assert_allclose(s[0]["std"], x[y == 0].astype(np.float64).std((0, 2, 3)))
    g = x[:5] + 0.1
    d_gen, d_rr = nn_distances(g, x)
    flat, gflat = x.reshape(50, -1).astype(np.float64), g.reshape(5, -1).astype(np.float64)
    brute = np.sqrt(((gflat[:, None] - flat[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(d_gen, brute, rtol=1e-6, atol=1e-6)
    full = np.sqrt(((flat[:, None] - flat[None]) ** 2).sum(-1))
    np.fill_diagonal(full, np.inf)
    np.testing.assert_allclose(d_rr, full.min(1), rtol=1e-6, atol=1e-6)


def test_report_flags_copies_and_noise():
    x, y = real_set()
    copies = quality_report(x[[0, 1, 30, 31]] + 1e-3, y[[0, 1, 30, 31]], x, y)
    assert copies["overall"]["near_copy_fraction"] == 1.0
    assert copies["overall"]["median_ratio_gen_over_real"] < 0.01
    fresh_x, fresh_y = real_set(seed=1)  # new draws from the same distribution: ratio ≈ 1, no copies
    fresh = quality_report(fresh_x, fresh_y, x, y)
    assert 0.7 < fresh["overall"]["median_ratio_gen_over_real"] < 1.3
    assert fresh["overall"]["near_copy_fraction"] < 0.1
    noise = quality_report(10 * np.random.default_rng(2).normal(size=(8, 3, 6, 6)), np.zeros(8, int), x, y)
    assert noise["overall"]["median_ratio_gen_over_real"] > 3
    assert abs(fresh["per_class"][1]["mean_abs_diff"][0]) < 0.3
    assert "near copies" in report_markdown(copies).lower()


def test_grid_png(tmp_path):
    x, y = real_set()
    p = save_grid(x[:3], np.array([1, 1, 1]), x, y, tmp_path / "g.png", per_class=2)
    assert p.exists() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
