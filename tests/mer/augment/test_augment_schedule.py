"""Cosine schedule (mer.augment.schedule): closed form, monotonicity, clipping, q_sample marginals."""

import math

import pytest
import torch

from mer.augment.schedule import cosine_alpha_bar, cosine_betas, q_sample, schedule_terms


@pytest.mark.parametrize("T", [10, 100, 1000])
def test_alpha_bar_monotone_in_unit_interval(T):
    ab = schedule_terms(cosine_betas(T))["alphas_cumprod"]
    assert ab.dtype == torch.float64 and ab.shape == (T,)
    assert bool((ab > 0).all()) and bool((ab <= 1).all())
    assert bool((ab[1:] < ab[:-1]).all()), "ᾱ must decrease strictly"


@pytest.mark.parametrize("T", [50, 1000])
def test_matches_closed_form_cos2(T):
    s = 0.008
    betas = cosine_betas(T, s=s)
    ab = torch.cumprod(1 - betas, 0)
    t = torch.arange(1, T + 1, dtype=torch.float64)
    closed = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
    unclipped = betas < 0.999
    # wherever no β was clipped so far, the product of (1 − β) reproduces cos²(...)/cos²(s...) exactly
    upto = int(unclipped.long().cumprod(0).sum())
    torch.testing.assert_close(ab[:upto], closed[:upto], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(cosine_alpha_bar(t, T, s), closed, rtol=0, atol=0)
    assert float(cosine_alpha_bar(torch.tensor(0.0), T)) == pytest.approx(1.0, abs=1e-15)


def test_betas_clipped_at_0999():
    betas = cosine_betas(1000)
    assert float(betas.max()) == pytest.approx(0.999)
    assert bool((betas > 0).all())
    assert float(cosine_betas(1000, max_beta=0.5).max()) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="max_beta"):
        cosine_betas(10, max_beta=1.0)


def test_posterior_terms_consistent():
    d = schedule_terms(cosine_betas(100))
    # μ̃ coefficients: for x_t = √ᾱ_t x0 (no noise), μ̃ = √ᾱ_{t−1} x0
    c1, c2 = d["posterior_mean_coef1"], d["posterior_mean_coef2"]
    torch.testing.assert_close(c1 + c2 * d["sqrt_alphas_cumprod"], d["alphas_cumprod_prev"].sqrt())
    assert float(d["posterior_variance"][0]) == 0.0
    assert bool((d["posterior_variance"][1:] <= d["betas"][1:]).all())


@pytest.mark.parametrize("i", [0, 10, 50, 99])
def test_q_sample_marginal_mean_and_variance(i):
    T = 100
    d = schedule_terms(cosine_betas(T))
    g = torch.Generator().manual_seed(i)
    n = 40000
    x0 = torch.tensor([1.5, -0.5], dtype=torch.float64).repeat(n, 1)[:, :, None, None]  # (n, 2, 1, 1)
    t = torch.full((n,), i, dtype=torch.long)
    xt = q_sample(
        x0,
        t,
        torch.randn(x0.shape, generator=g, dtype=torch.float64),
        d["sqrt_alphas_cumprod"],
        d["sqrt_one_minus_alphas_cumprod"],
    )
    ab = float(d["alphas_cumprod"][i])
    want_mean = torch.tensor([1.5, -0.5], dtype=torch.float64) * math.sqrt(ab)
    se = math.sqrt((1 - ab) / n)  # standard error of the mean
    assert torch.allclose(xt.mean((0, 2, 3)), want_mean, atol=5 * se + 1e-12)
    # sample variance: relative standard error sqrt(2/n) ≈ 0.7%; allow 5 of them
    var = xt.var((0, 2, 3))
    assert torch.allclose(var, torch.full_like(var, 1 - ab), rtol=5 * math.sqrt(2 / n), atol=1e-12)


def test_q_sample_t0_is_almost_x0():
    d = schedule_terms(cosine_betas(1000))
    x0 = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    xt = q_sample(
        x0,
        torch.zeros(4, dtype=torch.long),
        torch.randn_like(x0),
        d["sqrt_alphas_cumprod"],
        d["sqrt_one_minus_alphas_cumprod"],
    )
    # at the first step √(1−ᾱ_1) ≈ 6e-3 for the cosine schedule
    assert float(d["sqrt_one_minus_alphas_cumprod"][0]) < 0.01
    assert float((xt - x0).abs().max()) < 0.05


def test_q_sample_shape_errors():
    d = schedule_terms(cosine_betas(10))
    with pytest.raises(ValueError, match="same shape"):
        q_sample(
            torch.zeros(2, 3, 4, 4),
            torch.zeros(2, dtype=torch.long),
            torch.zeros(2, 3, 4, 5),
            d["sqrt_alphas_cumprod"],
            d["sqrt_one_minus_alphas_cumprod"],
        )
    with pytest.raises(ValueError, match="t must be"):
        q_sample(
            torch.zeros(2, 3, 4, 4),
            torch.zeros(3, dtype=torch.long),
            torch.zeros(2, 3, 4, 4),
            d["sqrt_alphas_cumprod"],
            d["sqrt_one_minus_alphas_cumprod"],
        )
