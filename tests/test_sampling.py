"""Samplers as functions: determinism, respacing, seeds, the DPM-Solver++(2M) order, the facade loops."""
import math

import pytest
import torch

from adm.compat.diffusion import create_gaussian_diffusion
from adm.diffusion import Diffusion, DiffusionConfig, Schedule
from adm.errors import ConfigError
from adm.sampling import (
    SAMPLERS,
    SeededNoise,
    get_sampler,
    initial_noise,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
)


S = 0.5  # the toy data: x_0 ~ N(0, S^2 I)


def gaussian_oracle(steps: int = 1000, schedule: str = "cosine", learn_sigma: bool = False):
    """The exact eps-predictor for Gaussian data, as a model function of the original timesteps."""
    ab = Schedule.create(schedule, steps).alphas_cumprod

    def model(x, t, **_):
        a = ab[t.long()].float().view(-1, 1, 1, 1)
        eps = (1 - a).sqrt() * x / (a * S * S + 1 - a)
        return torch.cat([eps, torch.tanh(x)], dim=1) if learn_sigma else eps

    return model, ab


def exact_ode_sample(x_T: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE from step T-1 to 0 (a rescaling for Gaussian data), then E[x_0 | x at 0]."""
    a0, aT = ab[0].item(), ab[-1].item()
    std0, stdT = math.sqrt(a0 * S * S + 1 - a0), math.sqrt(aT * S * S + 1 - aT)
    return x_T * std0 / stdT * math.sqrt(a0) * S * S / (a0 * S * S + 1 - a0)


def process(respacing="", steps=1000, schedule="cosine", **kw) -> Diffusion:
    return Diffusion.from_config(DiffusionConfig(steps=steps, noise_schedule=schedule, **kw), respacing)


def x_T(n=4, seed=0):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_ddim_eta0_is_deterministic():
    model, _ = gaussian_oracle(learn_sigma=True)
    d = process("20", learn_sigma=True)
    torch.manual_seed(1)
    a = sample_ddim(model, d, x_T())
    torch.manual_seed(2)
    b = sample_ddim(model, d, x_T())
    assert torch.equal(a, b)
    torch.manual_seed(2)
    assert not torch.equal(sample_ddim(model, d, x_T(), eta=1.0), a)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_respacing_that_keeps_every_step_changes_nothing(sampler):
    model, _ = gaussian_oracle(steps=40, learn_sigma=True)
    results = []
    for spec in ["", "40", "ddim40", "20,20"]:
        d = process(spec, steps=40, learn_sigma=True)
        results.append(get_sampler(sampler)(model, d, x_T(), noise=SeededNoise([5, 6, 7, 8])))
    for r in results[1:]:
        assert torch.allclose(r, results[0], atol=1e-6)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_seeded_samples_do_not_depend_on_the_batch(sampler):
    model, _ = gaussian_oracle(learn_sigma=True)
    d = process("10", learn_sigma=True)
    seeds = [11, 12, 13, 14]

    def run(part):
        noise = SeededNoise(part)
        return get_sampler(sampler)(model, d, initial_noise(noise, (len(part), 3, 8, 8)), noise=noise)

    whole = run(seeds)
    halves = torch.cat([run(seeds[:2]), run(seeds[2:])])
    single = run(seeds[3:])
    assert torch.allclose(whole, halves, atol=1e-6) and torch.allclose(whole[3:], single, atol=1e-6)
    assert not torch.allclose(whole[0], whole[1])


def test_seeded_noise_checks_the_batch():
    with pytest.raises(ValueError, match="2 seeds"):
        SeededNoise([1, 2])(torch.zeros(3, 1))


def test_dpmpp_2m_is_second_order():
    model, ab = gaussian_oracle()
    xT = x_T()
    exact = exact_ode_sample(xT, ab)
    err = {}
    for name, fn in [("ddim", sample_ddim), ("dpm", sample_dpmpp_2m)]:
        for n in (20, 100):
            err[name, n] = (fn(model, process(str(n)), xT, clip_denoised=False) - exact).abs().max().item()
    assert err["dpm", 20] < err["ddim", 20] / 5 and err["dpm", 100] < err["ddim", 100] / 5
    assert err["dpm", 100] < 3e-3
    assert err["ddim", 20] / err["ddim", 100] < 8  # first order: about 5x for 5x the steps


def test_dpmpp_2m_reads_the_last_step_without_a_call():
    """K steps cost K - 1 model calls; with one call the solver is one DDIM step (first order)."""
    model, _ = gaussian_oracle(learn_sigma=True)
    calls = []

    def counted(x, t, **kw):
        calls.append(t[0].item())
        return model(x, t, **kw)

    for spec in ("2", "logsnr9"):  # the kept timesteps, noisiest first, all but t = 0
        calls.clear()
        d = process(spec, learn_sigma=True)
        sample_dpmpp_2m(counted, d, x_T(), clip_denoised=False)
        assert calls == d.schedule.timestep_map.tolist()[:0:-1]
    assert calls[0] == 999 and len(calls) == 8
    ddim_first_step = []
    sample_ddim(model, process("2", learn_sigma=True), x_T(), clip_denoised=False,
                callback=lambda s: ddim_first_step.append(s["sample"]))
    one_call = sample_dpmpp_2m(model, process("2", learn_sigma=True), x_T(), clip_denoised=False)
    # equal up to float32 rounding of x_0 = (x - sigma eps) / alpha with alpha = 0.006 at t = T-1
    assert torch.allclose(one_call, ddim_first_step[0], rtol=1e-3, atol=1e-6)
    single = process("1", learn_sigma=True)  # a one-step chain: the model's x_0 prediction
    assert torch.allclose(sample_dpmpp_2m(model, single, x_T()), sample_ddim(model, single, x_T()))


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_dpmpp_2m_converges_on_the_log_snr_spacing(schedule):
    model, ab = gaussian_oracle(schedule=schedule)
    xT = x_T()
    a0, aT = ab[0].item(), ab[-1].item()
    exact_x0 = xT * math.sqrt((a0 * S * S + 1 - a0) / (aT * S * S + 1 - aT))  # the ODE's x at step 0
    err = [(sample_dpmpp_2m(model, process(f"logsnr{n}", schedule=schedule), xT, clip_denoised=False)
            - exact_x0).abs().max().item() for n in (51, 201)]
    assert err[1] < 1e-3 and err[1] < err[0] / 4


def test_get_sampler_lists_valid_names():
    with pytest.raises(ConfigError, match="ddpm, ddim, dpmpp2m, euler, heun, edm, euler_a, dpmpp2m_sigma"):
        get_sampler("plms")


def test_callback_and_progress(capsys):
    model, _ = gaussian_oracle()
    seen = []
    sample_ddpm(model, process("5"), x_T(), callback=seen.append, progress=True)
    assert [s["t"] for s in seen] == [4, 3, 2, 1, 0] and [s["i"] for s in seen] == [0, 1, 2, 3, 4]
    assert set(seen[0]) == {"i", "t", "x", "sample", "pred_xstart"}
    assert "DDPM" in capsys.readouterr().err


def test_clip_and_denoised_fn():
    model, _ = gaussian_oracle()
    d = process("5")
    seen = []
    sample_ddim(model, d, 30 * x_T(), callback=seen.append)
    assert max(s["pred_xstart"].abs().max().item() for s in seen) <= 1.0
    calls = []
    sample_ddim(model, d, x_T(), denoised_fn=lambda z: calls.append(1) or z)
    assert len(calls) == 5


# --- the facade's loops -------------------------------------------------------------------------

def test_facade_cond_fn_gets_original_rescaled_timesteps():
    model, _ = gaussian_oracle(steps=4000, schedule="linear")
    diffusion = create_gaussian_diffusion(steps=4000, rescale_timesteps=True, timestep_respacing="4")
    seen_model, seen_cond = [], []

    def model_fn(x, t, y=None):
        seen_model.append(t[0].item())
        return model(x, (t * 4).round())

    def cond_fn(x, t, y=None):
        seen_cond.append(t[0].item())
        assert y is not None
        return torch.zeros_like(x)

    diffusion.p_sample_loop(model_fn, (2, 3, 8, 8), cond_fn=cond_fn, model_kwargs={"y": torch.tensor([0, 1])})
    expected = [m * 1000 / 4000 for m in reversed(diffusion.timestep_map)]
    assert seen_model == pytest.approx(expected) and seen_cond == pytest.approx(expected)


def test_facade_generator_and_progressive():
    model, _ = gaussian_oracle()
    diffusion = create_gaussian_diffusion(noise_schedule="cosine", timestep_respacing="6")
    a = diffusion.p_sample_loop(model, (2, 3, 8, 8), generator=torch.Generator().manual_seed(3))
    b = diffusion.p_sample_loop(model, (2, 3, 8, 8), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.device.type == "cpu"  # a plain function: the CPU
    torch.manual_seed(0)
    loop = diffusion.ddim_sample_loop(model, [2, 3, 8, 8], eta=0.5)
    torch.manual_seed(0)
    steps = list(diffusion.ddim_sample_loop_progressive(model, [2, 3, 8, 8], eta=0.5))
    assert len(steps) == 6 and torch.equal(steps[-1]["sample"], loop)
    torch.manual_seed(0)
    steps = list(diffusion.p_sample_loop_progressive(model, [2, 3, 8, 8]))
    torch.manual_seed(0)
    assert torch.equal(steps[-1]["sample"], diffusion.p_sample_loop(model, [2, 3, 8, 8]))


def test_facade_attributes_and_reverse_ddim():
    model, _ = gaussian_oracle()
    diffusion = create_gaussian_diffusion(noise_schedule="cosine", timestep_respacing="ddim50")
    assert diffusion.num_timesteps == 50 and diffusion.timestep_map[:3] == [0, 20, 40]
    assert diffusion.alphas_cumprod.dtype.name == "float64" and diffusion.betas.shape == (50,)
    x = x_T(2)
    t = torch.tensor([10, 10])
    up = diffusion.ddim_reverse_sample(model, x, t, clip_denoised=False)["sample"]
    back = diffusion.ddim_sample(model, up, t + 1, clip_denoised=False)["sample"]
    assert torch.allclose(back, x, atol=1e-2)  # the ODE run forwards then backwards
    with pytest.raises(ValueError):
        diffusion.ddim_reverse_sample(model, x, t, eta=0.5)


def test_dpmpp_2m_with_classifier_guidance_converges_and_keeps_x0_in_range():
    """Guided x_0 = x_0 + (1 - alpha_bar) / sqrt(alpha_bar) * g is huge at high noise: the solver must
    threshold it (as DPM-Solver++ does), or the 2M extrapolation diverges to saturated images
    (unthresholded: mean error 0.50 at 10 steps, 0.94 at 20; thresholded: 0.07, 0.06)."""
    model, _ = gaussian_oracle(learn_sigma=True)
    target = torch.full((1, 3, 8, 8), 0.3)

    def cond_fn(x, t, **_):  # 2 * grad_x log N(target; x, I)
        return 2.0 * (target - x)

    reference = sample_ddim(model, process("500", learn_sigma=True), x_T(), cond_fn=cond_fn)
    for n in (10, 20):
        seen = []
        dpm = sample_dpmpp_2m(model, process(str(n), learn_sigma=True), x_T(), cond_fn=cond_fn,
                              callback=lambda s: seen.append(s["pred_xstart"]))
        assert all(p.abs().max() <= 1 for p in seen)
        assert (dpm - reference).abs().mean() < 0.15
