"""GaussianDiffusion: samplers against an exact denoiser, shapes and seeds, and a tiny model overfitting one batch."""

import pytest
import torch
from torch import nn

from mer.augment import DDPMConfig, GaussianDiffusion, UNet, train_ddpm


class GaussianOracle(nn.Module):
    """Exact ε-predictor when class y's data are N(mu[y], sd² I): ε* = √(1−ᾱ)(x − √ᾱ μ)/(ᾱ sd² + 1 − ᾱ)."""

    def __init__(self, mu: torch.Tensor, sd: float):
        super().__init__()
        self.mu, self.sd, self.ab = mu, sd, None

    def forward(self, x, t, y):
        ab = self.ab[t][:, None, None, None]
        mu = self.mu[y][:, :, None, None]
        return (1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * self.sd**2 + 1 - ab)


MU = torch.tensor([[1.0, -1.0, 0.5], [-2.0, 0.0, 3.0]])
SD = 0.5


def oracle_diffusion(T=100):
    o = GaussianOracle(MU, SD)
    d = GaussianDiffusion(o, T)
    o.ab = d.alphas_cumprod
    return d


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_samplers_reproduce_the_data_distribution_with_an_exact_denoiser(sampler):
    d = oracle_diffusion(1000)
    y = torch.tensor([0] * 200 + [1] * 200)
    if sampler == "ancestral":
        x = d.sample_ancestral((400, 3, 4, 4), y, seed=0)
    else:
        x = d.sample_ddim((400, 3, 4, 4), y, steps=25, seed=0)
    for c in range(2):
        xc = x[y == c]
        # 3200 values per channel: standard error of the mean 0.5/√3200 ≈ 0.009, of the std ≈ 0.006
        torch.testing.assert_close(xc.mean((0, 2, 3)), MU[c], atol=0.04, rtol=0)
        # 1000-step ancestral sampling is exact in distribution up to that error; 25-step DDIM is slightly
        # under-dispersed (≈ 0.46 vs 0.5)
        sd_tol = 0.03 if sampler == "ancestral" else 0.07
        torch.testing.assert_close(xc.std((0, 2, 3)), torch.full((3,), SD), atol=sd_tol, rtol=0)


def test_eq10_step_equals_posterior_mean_step_when_unclipped():
    d = oracle_diffusion(50)
    x = torch.randn(6, 3, 4, 4)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    for i in (1, 10, 49):
        a = d.p_sample(x, i, y, generator=torch.Generator().manual_seed(3))  # eq. 10 form
        b = d.p_sample(x, i, y, generator=torch.Generator().manual_seed(3), clip_x0=(-1e9, 1e9))  # μ̃(x̂₀, x_t)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # last step adds no noise
    torch.testing.assert_close(
        d.p_sample(x, 0, y, generator=torch.Generator().manual_seed(1)),
        d.p_sample(x, 0, y, generator=torch.Generator().manual_seed(2)),
    )


@pytest.mark.parametrize("size", [14, 28, 32, 56])
def test_unet_shapes(size):
    net = UNet(num_classes=3, base=4, mults=(1, 2, 2), emb_dim=16)
    x = torch.randn(2, 3, size, size)
    out = net(x, torch.tensor([0, 999]), torch.tensor([0, 3]))  # 3 = null class
    assert out.shape == x.shape
    assert torch.all(out == 0), "output conv is zero-initialised (ε̂ = 0 at the start)"
    # ... on top of a live body: its features give the zero conv a gradient, so training can start
    # (a body that outputs a constant would leave it at exactly 0: GroupNorm -> 0, SiLU(0) = 0)
    out.sum().backward()
    assert net.out.weight.grad.abs().sum() > 0


def test_unet_body_layout_conditioning_and_gradients():
    """The module docstring's layout (base 16, mults (1, 2, 2)): channels, and each level's skip into its up
    block. Once the output conv is non-zero, the output depends on each sample's x, t and y (null class
    included) and on nothing else in the batch, and every parameter gets a gradient (no dead block)."""
    net = UNet(num_classes=2, base=16, mults=(1, 2, 2), emb_dim=16)
    io = lambda blocks: [(b.conv1.in_channels, b.conv1.out_channels) for b in blocks]  # noqa: E731
    assert io(net.down_blocks) == [(16, 16), (16, 32), (32, 32)]
    assert io([net.mid]) == [(32, 32)]
    assert io(net.up_blocks) == [(64, 32), (64, 32), (48, 16)]  # each concatenates its level's skip
    torch.manual_seed(0)
    nn.init.normal_(net.out.weight, std=0.1)
    x = torch.randn(1, 3, 28, 28).repeat(4, 1, 1, 1).requires_grad_()  # one image, four conditionings
    t, y = torch.tensor([10, 10, 10, 500]), torch.tensor([0, 0, 1, 0])
    seen = {}
    for name, blocks in (("down", net.down_blocks), ("up", net.up_blocks)):
        for i, b in enumerate(blocks):
            b.register_forward_hook(lambda m, args, o, key=(name, i): seen.__setitem__(key, (args[0], o)))
    out = net(x, t, y)
    for i in range(3):  # the up block of each level gets that level's down-block output as its skip, verbatim
        (_, skip), (up_in, _) = seen["down", i], seen["up", 2 - i]
        assert torch.equal(up_in[:, -skip.shape[1] :], skip), f"level {i}: skip not concatenated"
    null = net(x[:1], t[:1], torch.tensor([2]))  # 2 = null class
    for a, b, what in [
        (out[0], out[1], None),
        (out[0], out[2], "class"),
        (out[0], out[3], "timestep"),
        (out[0], null[0], "null class"),
    ]:
        if what is None:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # same (x, t, y): same output
        else:
            assert (a - b).abs().max() > 1e-3, f"the output does not depend on the {what}"
    (grad_x,) = torch.autograd.grad(out[0].sum(), x, retain_graph=True)
    assert grad_x[0].abs().sum() > 0 and torch.all(grad_x[1:] == 0), "samples must not mix (GroupNorm, not BatchNorm)"
    out.square().sum().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not dead, f"parameters without a gradient: {dead}"


def test_unet_odd_size_and_bad_input():
    net = UNet(num_classes=2, base=4, mults=(1, 2, 2), emb_dim=16)
    nn.init.normal_(net.out.weight)
    out = net(torch.randn(1, 3, 25, 19), torch.tensor([5]), torch.tensor([1]))
    assert out.shape == (1, 3, 25, 19) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        net(torch.randn(1, 2, 8, 8), torch.tensor([5]), torch.tensor([1]))


def tiny_diffusion(seed=0, T=200):
    torch.manual_seed(seed)
    return GaussianDiffusion(UNet(2, base=8, mults=(1, 2), emb_dim=32), T, null_class=2, gaussian_skip=True)


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_sampler_shapes_and_seed_determinism(sampler):
    d = tiny_diffusion(T=20)
    nn.init.normal_(d.denoiser.out.weight, std=0.1)  # non-trivial denoiser
    y = torch.tensor([0, 1, 1])
    kw = dict(seed=7) if sampler == "ancestral" else dict(seed=7, steps=5)
    run = d.sample_ancestral if sampler == "ancestral" else d.sample_ddim
    a, b = run((3, 3, 8, 8), y, **kw), run((3, 3, 8, 8), y, **kw)
    c = run((3, 3, 8, 8), y, **{**kw, "seed": 8})
    assert a.shape == (3, 3, 8, 8) and torch.isfinite(a).all()
    assert torch.equal(a, b), "same seed must give identical samples"
    assert not torch.allclose(a, c), "another seed must give other samples"
    with pytest.raises(ValueError, match="y must be"):
        run((3, 3, 8, 8), torch.tensor([0, 1]), **kw)


def test_guidance_needs_null_class():
    d = GaussianDiffusion(UNet(2, base=4, mults=(1,), emb_dim=16), 10)
    with pytest.raises(ValueError, match="null class"):
        d.sample_ddim((1, 3, 8, 8), torch.tensor([0]), steps=2, seed=0, guidance=2.0)
    with pytest.raises(ValueError, match="null_class"):
        d.loss(torch.zeros(1, 3, 8, 8), torch.tensor([0]), p_uncond=0.5)
    with pytest.raises(ValueError, match="p_uncond"):
        DDPMConfig(guidance=2.0)


def test_tiny_model_overfits_one_batch_and_matches_its_class_statistics():
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([[1.0, -1.0, 0.5], [-1.0, 1.0, -0.5]])
    y = torch.tensor([0] * 4 + [1] * 4)
    x = mu[y][:, :, None, None] + 0.3 * torch.randn(8, 3, 8, 8, generator=g)
    d = tiny_diffusion(T=200)
    cfg = DDPMConfig(
        base_channels=8,
        channel_mults=(1, 2),
        emb_dim=32,
        timesteps=200,
        train_steps=600,
        batch_size=8,
        lr=3e-3,
        ema_decay=None,
        progress=False,
    )
    res = train_ddpm(d, iter(lambda: (x, y), None), cfg, seed=0)
    first, last = sum(res.losses[:20]) / 20, sum(res.losses[-20:]) / 20
    assert last < 0.6 * first, f"loss should drop a lot on one repeated batch: {first:.3f} -> {last:.3f}"
    ys = torch.tensor([0] * 64 + [1] * 64)
    lo, hi = x.amin((0, 2, 3)), x.amax((0, 2, 3))
    xs = d.sample_ddim((128, 3, 8, 8), ys, steps=20, seed=1, clip_x0=(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo)))
    for c in range(2):
        # Tolerance 0.3: the class means differ by 2.0 (channels 0, 1) and 1.0 (channel 2), so samples of
        # the wrong class or ignoring the class miss by >= 0.5-1.0; the sampler itself is exact to ~0.03
        # (oracle test above), so 0.3 bounds the error of the tiny, briefly trained network.
        torch.testing.assert_close(xs[ys == c].mean((0, 2, 3)), x[y == c].mean((0, 2, 3)), atol=0.3, rtol=0)
        # spread: real 0.3 per channel; samples within a factor 2 (neither collapsed nor noise-dominated)
        sd = xs[ys == c].std((0, 2, 3))
        assert bool(((sd > 0.15) & (sd < 0.6)).all()), sd


def test_class_prior_skip_equals_the_exact_gaussian_denoiser():
    """With an untrained (zero-output) U-Net, the class-prior skip is the exact ε-predictor of N(μ_y, σ²_y)."""
    from mer.augment.trainer import class_prior

    z = torch.randn(40, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0] * 25 + [1] * 15)
    z[y == 1] += 2.0
    mean, var = class_prior(z.numpy(), y.numpy(), num_classes=3)  # class 2 absent: gets overall stats
    assert mean.shape == (4, 3, 4, 4)
    torch.testing.assert_close(mean[1], z[y == 1].mean(0))
    torch.testing.assert_close(var[0], z[y == 0].var(0, unbiased=False))
    torch.testing.assert_close(mean[2], z.mean(0))
    torch.testing.assert_close(mean[3], z.mean(0))
    d = GaussianDiffusion(
        UNet(3, base=4, mults=(1,), emb_dim=16), 100, null_class=3, gaussian_skip=True, prior_mean=mean, prior_var=var
    )
    x, t, yy = torch.randn(4, 3, 4, 4), torch.tensor([0, 10, 50, 99]), torch.tensor([0, 1, 2, 3])
    ab = d.alphas_cumprod[t][:, None, None, None]
    want = (1 - ab).sqrt() * (x - ab.sqrt() * mean[yy]) / (ab * var[yy] + 1 - ab)
    torch.testing.assert_close(d.model_eps(x, t, yy), want)
    with pytest.raises(ValueError, match="both"):
        GaussianDiffusion(UNet(3, base=4, mults=(1,), emb_dim=16), 10, prior_mean=mean)
