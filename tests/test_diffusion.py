"""The Gaussian process as tensor math: identities, loss terms, the stop-gradient, timestep samplers."""
import math

import pytest
import torch

from adm.diffusion import (
    Diffusion,
    DiffusionConfig,
    LossSecondMomentSampler,
    LossType,
    MeanType,
    Schedule,
    VarType,
    create_timestep_sampler,
    discretized_gaussian_log_likelihood,
    normal_kl,
    training_losses,
)
from adm.diffusion import gaussian as G
from adm.errors import ConfigError
from adm.sampling import bpd_loop


def process(**kw) -> Diffusion:
    return Diffusion.from_config(DiffusionConfig(**{"steps": 100, **kw}))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 1, 50, 99])
    return x0, noise, t


def test_from_config_maps_flags():
    d = process(learn_sigma=True, rescale_learned_sigmas=True, predict_xstart=True)
    assert (d.mean_type, d.var_type, d.loss_type) == (MeanType.START_X, VarType.LEARNED_RANGE, LossType.RESCALED_MSE)
    d = process(sigma_small=True, use_kl=True)
    assert (d.mean_type, d.var_type, d.loss_type) == (MeanType.EPSILON, VarType.FIXED_SMALL, LossType.RESCALED_KL)
    assert process().var_type == VarType.FIXED_LARGE


def test_model_timesteps_map_and_rescale():
    d = Diffusion.from_config(DiffusionConfig(steps=4000, rescale_timesteps=True), "10")
    t = torch.arange(10)
    assert d.model_timesteps(t).tolist() == pytest.approx([m / 4 for m in d.schedule.timestep_map.tolist()])
    plain = Diffusion.from_config(DiffusionConfig(steps=1000), "ddim10")
    assert plain.model_timesteps(t).tolist() == list(range(0, 1000, 100))


def test_q_sample_and_predictions_invert(batch):
    x0, noise, t = batch
    s = process().schedule
    x_t = G.q_sample(s, x0, t, noise)
    assert torch.allclose(G.predict_xstart_from_eps(s, x_t, t, noise), x0, atol=1e-4)
    eps = G.predict_eps_from_xstart(s, x_t, t, x0)
    assert torch.allclose(eps[1:], noise[1:], atol=1e-3)  # at t = 0 eps is barely determined
    mean, var, log_var = G.q_mean_variance(s, x0, t)
    assert torch.allclose(var.log(), log_var, atol=1e-5) and mean.shape == x0.shape


def test_posterior_mean_roundtrip_through_xprev(batch):
    x0, noise, t = batch
    s = process().schedule
    x_t = G.q_sample(s, x0, t, noise)
    mean, var, _ = G.q_posterior_mean_variance(s, x0, x_t, t)
    assert torch.allclose(G.predict_xstart_from_xprev(s, x_t, t, mean), x0, atol=1e-3)
    assert (var[0] == 0).all() and (var[1:] > 0).all()  # beta-tilde_0 = 0


def test_learned_range_endpoints(batch):
    _, _, t = batch
    s = process().schedule
    lo = G.learned_range_variance(s, t, -torch.ones(4, 3, 2, 2))[1]
    hi = G.learned_range_variance(s, t, torch.ones(4, 3, 2, 2))[1]
    assert torch.allclose(lo[:, 0, 0, 0], s.posterior_log_variance_clipped[t].float())
    assert torch.allclose(hi[:, 0, 0, 0], s.betas[t].log().float())


def test_fixed_variances(batch):
    _, _, t = batch
    s = process().schedule
    x = torch.zeros(4, 1, 1, 1)
    small, _ = G.fixed_variance(s, t, x, small=True)
    large, log_large = G.fixed_variance(s, t, x, small=False)
    assert torch.allclose(small.flatten(), s.posterior_variance[t].float())
    assert large.flatten()[0] == pytest.approx(s.posterior_variance[1].item())  # step 0 borrows beta-tilde_1
    assert torch.allclose(large.flatten()[1:], s.betas[t[1:]].float()) and torch.allclose(large.log(), log_large)


def test_normal_kl_and_discretized_likelihood():
    m = torch.randn(10)
    assert normal_kl(m, torch.zeros(10), m, 0.0).abs().max() == 0
    assert normal_kl(torch.zeros(1), torch.zeros(1), 1.0, 0.0).item() == pytest.approx(0.5)
    # The 256 bins of [-1, 1] hold all the probability.
    bins = torch.linspace(-1, 1, 256)
    for mean, log_scale in [(0.0, -1.0), (0.3, -3.0), (-0.9, 0.5)]:
        logp = discretized_gaussian_log_likelihood(bins, means=torch.full_like(bins, mean),
                                                   log_scales=torch.full_like(bins, log_scale))
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=2e-3)


def test_vb_sends_no_gradient_into_the_mean(batch):
    x0, noise, t = batch
    d = process(learn_sigma=True, rescale_learned_sigmas=True)
    x_t = d.q_sample(x0, t, noise)
    out = torch.randn(4, 6, 8, 8, requires_grad=True)
    terms = training_losses(d, out, x0, x_t, t, noise)
    (g_vb,) = torch.autograd.grad(terms["vb"].sum(), out, retain_graph=True)
    assert g_vb[:, :3].abs().max() == 0 and g_vb[:, 3:].abs().max() > 0
    (g_mse,) = torch.autograd.grad(terms["mse"].sum(), out)
    assert g_mse[:, 3:].abs().max() == 0 and g_mse[:, :3].abs().max() > 0


def test_loss_types_relate(batch):
    x0, noise, t = batch
    out = torch.randn(4, 6, 8, 8)
    x_t = process().q_sample(x0, t, noise)
    mse = training_losses(process(learn_sigma=True), out, x0, x_t, t, noise)
    hybrid = training_losses(process(learn_sigma=True, rescale_learned_sigmas=True), out, x0, x_t, t, noise)
    kl = training_losses(process(learn_sigma=True, use_kl=True), out, x0, x_t, t, noise)
    assert torch.allclose(hybrid["vb"], mse["vb"] * 100 / 1000)  # lambda = 0.001 as vb * T / 1000
    assert torch.allclose(kl["loss"], mse["vb"] * 100, rtol=1e-5)  # rescaled_kl: the bound times T
    assert torch.allclose(mse["loss"], mse["mse"] + mse["vb"])
    assert set(training_losses(process(), out[:, :3], x0, x_t, t, noise)) == {"loss", "mse"}
    xstart = training_losses(process(predict_xstart=True), x0, x0, x_t, t, noise)
    assert xstart["mse"].abs().max() == 0


def test_mean_types(batch):
    x0, noise, t = batch
    eps_d, x0_d = process(), process(predict_xstart=True)
    x_t = eps_d.q_sample(x0, t, noise)
    a = eps_d.p_mean_variance(noise, x_t, t, clip_denoised=False)
    b = x0_d.p_mean_variance(x0, x_t, t, clip_denoised=False)
    prev_d = Diffusion(eps_d.schedule, MeanType.PREVIOUS_X, VarType.FIXED_LARGE)
    c = prev_d.p_mean_variance(b["mean"], x_t, t, clip_denoised=False)
    assert torch.allclose(a["mean"], b["mean"], atol=1e-3) and torch.allclose(c["pred_xstart"], x0, atol=1e-3)
    clipped = x0_d.p_mean_variance(3 * x0, x_t, t, denoised_fn=lambda z: z / 3)
    assert torch.allclose(clipped["pred_xstart"], x0, atol=1e-6)  # denoised_fn before clipping


def test_learned_variance_needs_2c_channels(batch):
    x0, noise, t = batch
    with pytest.raises(ConfigError, match="6 channels"):
        process(learn_sigma=True).p_mean_variance(noise, x0, t)


def test_uniform_timestep_sampler():
    t, w = create_timestep_sampler("uniform", 50).sample(1000, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() < 50 and torch.equal(w, torch.ones(1000))
    with pytest.raises(ConfigError, match="uniform"):
        create_timestep_sampler("importance", 50)


def test_loss_second_moment_sampler():
    assert LossSecondMomentSampler(process()).num_timesteps == 100
    s = LossSecondMomentSampler(4, history_per_term=2, uniform_prob=0.0)
    assert torch.equal(s.weights(), torch.ones(4, dtype=torch.float64))  # uniform until warmed up
    s.update_with_local_losses(torch.tensor([0, 0, 1, 1, 2, 2, 3]), torch.tensor([1.0, 1.0, 2.0, 2.0, 3, 3, 4]))
    assert not s.warmed_up()
    s.update_with_all_losses([3, 3], [4.0, 4.0])  # the oldest of t=3 shifts out
    p = s.weights() / s.weights().sum()
    assert torch.allclose(p, torch.tensor([1.0, 2, 3, 4], dtype=torch.float64) / 10)
    t, w = s.sample(20000, generator=torch.Generator().manual_seed(0))
    assert (w * 1.0).mean().item() == pytest.approx(1.0, rel=0.05)  # importance weights are unbiased
    assert torch.allclose(w, 1 / (4 * p[t]).float())
    state = s.state_dict()
    fresh = LossSecondMomentSampler(4, history_per_term=2, uniform_prob=0.0)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.weights(), s.weights())


def test_bpd_loop():
    d = process(steps=20, learn_sigma=True, noise_schedule="cosine")
    x0 = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def model(x, t):  # a crude eps-predictor with a fixed variance interpolation
        return torch.cat([0.5 * x, torch.zeros_like(x)], dim=1)

    torch.manual_seed(0)
    out = bpd_loop(model, d, x0)
    assert out["vb"].shape == (2, 20) and out["mse"].shape == (2, 20)
    assert torch.allclose(out["total_bpd"], out["vb"].sum(1) + out["prior_bpd"])
    assert bool((out["vb"][:, :-1] >= 0).all()) and bool(torch.isfinite(out["total_bpd"]).all())
    assert out["prior_bpd"].max() < 0.1  # x_T is nearly N(0, I)
    assert math.isfinite(out["xstart_mse"].sum().item())
