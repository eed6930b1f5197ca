"""Sigma-frame denoisers, EDM samplers and guidance wrappers: DDIM exactness, convergence order, guidance
identities, k-diffusion compatibility."""
import dataclasses
import functools
import importlib
import importlib.util
import math
import sys
import types

import pytest
import torch

from adm.diffusion import Diffusion, DiffusionConfig, space_timesteps
from adm.errors import ConfigError
from adm.nn import ADM, ADM_classifier, ADMConfig, ClassifierConfig
from adm.sampling import (
    SeededNoise,
    classifier_free_guidance,
    classifier_guidance,
    get_sampler,
    sample_ddim,
)
from adm.sampling.denoiser_guidance import (
    Autoguided,
    ClassifierFreeGuided,
    ClassifierGuided,
    Thresholded,
    dynamic_threshold,
)
from adm.sampling.denoisers import EpsDenoiser
from adm.sampling.guidance import TimestepSigma, limit_to_interval
from adm.sampling.karras import (
    KARRAS_SAMPLERS,
    karras_calls,
    karras_sigmas,
    sample_dpmpp_2m,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    timestep_sigmas,
)
from adm.sampling.sigma_frame import KARRAS_SIGMA_MAX, karras_levels, schedule_sigmas
from helpers import randomized

NET = dict(image_size=8, model_channels=32, num_res_blocks=1, attention_resolutions=(4,), channel_mult=(1, 2))
Y = torch.tensor([0, 2])
ZERO_NOISE = torch.zeros_like


@functools.cache
def nets(schedule="cosine", learn_sigma=True, steps=1000):
    """(config, conditional ADM, classifier, ADM with a null class, a second 'bad' ADM): tiny and random."""
    cfg = DiffusionConfig(steps=steps, noise_schedule=schedule, learn_sigma=learn_sigma)
    model = randomized(ADM(ADMConfig(**NET, num_classes=3, diffusion=cfg)), 0)
    clf = randomized(ADM_classifier(ClassifierConfig(**NET, num_classes=3, num_head_channels=32, diffusion=cfg)), 3)
    cfg_model = randomized(ADM(ADMConfig(**NET, num_classes=3, null_class=True, diffusion=cfg)), 1)
    bad = randomized(ADM(ADMConfig(**NET, num_classes=3, diffusion=cfg)), 5)
    return cfg, model, clf, cfg_model, bad


def x_T(n=2, seed=0):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def assert_float_close(a, b, rel=5e-5):
    """Equal up to float32 rounding through a 10-step chain of a random network: a perturbation of x_T by
    one ulp already moves DDIM's samples by ~1e-5 of their scale."""
    scale = max(1.0, float(b.abs().max()))
    err = float((a - b).abs().max())
    assert err <= rel * scale, f"max error {err:.3g} at scale {scale:.3g}"


def euler_from(denoiser, xT, sigmas, **kw):
    """Euler from ADM's x_T: x = x_T sqrt(1 + sigma_0^2) puts it in the sigma frame."""
    return sample_euler(denoiser, xT * (1 + sigmas[0] ** 2).sqrt(), sigmas, disable=True, **kw)


# --- the denoiser ----------------------------------------------------------------------------------


def test_eps_denoiser_is_the_exact_denoiser_of_an_eps_oracle():
    """For x_0 ~ N(0, S^2) the exact eps-predictor gives D(x, sigma) = S^2 / (S^2 + sigma^2) x."""
    S = 0.5
    d = Diffusion.from_config(DiffusionConfig(steps=1000, noise_schedule="cosine"))
    ab = d.schedule.alphas_cumprod

    def oracle(x, t, **_):
        a = ab[t.long()].float().view(-1, 1, 1, 1)
        return (1 - a).sqrt() * x / (a * S * S + 1 - a)

    den = EpsDenoiser(oracle, d, quantize=True)
    x = x_T(3)
    sigma = den.sigmas[[0, 400, 999]]
    want = S * S / (S * S + sigma.view(-1, 1, 1, 1) ** 2) * x
    assert torch.allclose(den(x, sigma), want, rtol=1e-5, atol=1e-6)


def test_sigma_table_and_timesteps():
    cfg = DiffusionConfig(steps=1000, noise_schedule="linear")
    full = Diffusion.from_config(cfg)
    den = EpsDenoiser(None, full)
    assert den.sigmas.shape == (1000,) and bool((den.sigmas[1:] > den.sigmas[:-1]).all())
    ab0 = full.schedule.alphas_cumprod[0].item()
    assert den.sigma_min == pytest.approx(math.sqrt((1 - ab0) / ab0))
    assert den.sigma_max == pytest.approx(float(den.sigmas[-1]), rel=1e-6)
    table = full.schedule.sqrt_recipm1_alphas_cumprod
    assert den.sigma_to_t(table[[0, 10, 999]]).tolist() == pytest.approx([0, 10, 999], abs=1e-9)
    mid = (table[10].log() * 0.75 + table[11].log() * 0.25).exp().view(1)  # a quarter of the way in log sigma
    assert den.sigma_to_t(mid).item() == pytest.approx(10.25, abs=1e-9)
    assert den.sigma_to_t(torch.tensor([1e-6, 1e6])).tolist() == [0.0, 999.0]  # clamped to the table
    quant = EpsDenoiser(None, full, quantize=True)
    assert quant.sigma_to_t(mid).tolist() == [10] and quant.timesteps(mid).dtype == torch.int64
    # Respaced and rescaled: the timesteps the samplers give the model at the same steps.
    d = Diffusion.from_config(dataclasses.replace(cfg, steps=400, rescale_timesteps=True), "ddim8")
    steps = torch.arange(8)
    sig = d.schedule.sqrt_recipm1_alphas_cumprod.float()
    assert torch.equal(EpsDenoiser(None, d, quantize=True).timesteps(sig), d.model_timesteps(steps))
    assert torch.allclose(EpsDenoiser(None, d).timesteps(sig), d.model_timesteps(steps), atol=1e-3)
    between = EpsDenoiser(None, d).timesteps(((sig[2].double().log() + sig[3].double().log()) / 2).exp().view(1))
    assert between.item() == pytest.approx(float(d.model_timesteps(torch.tensor([2, 3])).mean()), abs=1e-3)


def test_eps_denoiser_rejects_previous_x_models():
    from adm.diffusion import MeanType

    d = dataclasses.replace(Diffusion.from_config(DiffusionConfig(steps=100)), mean_type=MeanType.PREVIOUS_X)
    with pytest.raises(ConfigError):
        EpsDenoiser(None, d)


# --- exactness against DDIM ------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("learn_sigma", [True, False])
@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("clip", [False, True])
def test_euler_on_ddim_sigmas_is_ddim(schedule, learn_sigma, guided, clip):
    """Euler at the sigmas of DDIM-10's timesteps is DDIM (eta 0), classifier guidance and clipping included:
    clip_denoised is Thresholded(D, None) under the guidance, as DDIM clips before it shifts eps."""
    cfg, model, clf, _, _ = nets(schedule, learn_sigma)
    full, d10 = Diffusion.from_config(cfg), Diffusion.from_config(cfg, "ddim10")
    cond_fn = classifier_guidance(clf, 3.0, labels=Y) if guided else None
    want = sample_ddim(model, d10, x_T(), model_kwargs={"y": Y}, cond_fn=cond_fn, clip_denoised=clip, noise=ZERO_NOISE)
    den = EpsDenoiser(model, full, quantize=True)
    den = Thresholded(den, None) if clip else den
    den = ClassifierGuided(den, cond_fn) if guided else den
    sigmas = timestep_sigmas(full, "ddim10")
    assert len(sigmas) == 11 and sigmas[-1] == 0
    assert_float_close(euler_from(den, x_T(), sigmas, extra_args={"y": Y}), want)


@pytest.mark.parametrize("guided", [False, True])
def test_euler_on_a_respaced_diffusion_is_ddim(guided):
    """The denoiser of a respaced process (its own sigma table and timestep_map), with rescaled timesteps
    and a respacing of the respacing: still DDIM on the same steps."""
    cfg, model, clf, _, _ = nets("cosine", True)
    cfg = dataclasses.replace(cfg, rescale_timesteps=True)
    cond_fn = classifier_guidance(clf, 2.0, labels=Y) if guided else None
    d100 = Diffusion.from_config(cfg, "100")
    keep = space_timesteps(100, "10")
    d10 = dataclasses.replace(d100, schedule=d100.schedule.respaced(keep))
    want = sample_ddim(model, d10, x_T(), model_kwargs={"y": Y}, cond_fn=cond_fn, clip_denoised=False, noise=ZERO_NOISE)
    for den_process, sigmas in [(d100, timestep_sigmas(d100, "10")), (d10, timestep_sigmas(d10))]:
        den = EpsDenoiser(model, den_process, quantize=True)
        den = ClassifierGuided(den, cond_fn) if guided else den
        assert_float_close(euler_from(den, x_T(), sigmas, extra_args={"y": Y}), want)
    # Unquantized, the table's float32 sigmas land a few 1e-6 steps off the integer timesteps: close.
    den = EpsDenoiser(model, d100)
    den = ClassifierGuided(den, cond_fn) if guided else den
    assert_float_close(euler_from(den, x_T(), timestep_sigmas(d100, "10"), extra_args={"y": Y}), want, rel=1e-3)


def test_explicit_steps_and_spec_agree():
    d = Diffusion.from_config(DiffusionConfig(steps=1000, noise_schedule="cosine"))
    assert torch.equal(timestep_sigmas(d, "ddim10"), timestep_sigmas(d, steps=range(0, 1000, 100)))
    d10 = Diffusion.from_config(DiffusionConfig(steps=1000, noise_schedule="cosine"), "ddim10")
    assert torch.equal(timestep_sigmas(d10), timestep_sigmas(d, "ddim10"))
    with pytest.raises(ConfigError):
        timestep_sigmas(d, "10", steps=[1, 2])


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_euler_ancestral_on_ddim_sigmas_is_ddim_with_eta(eta):
    """Ancestral steps with the same per-image draws are DDIM with eta (eta 1: the DDPM posterior)."""
    cfg, model, _, _, _ = nets("linear", True)
    full, d10 = Diffusion.from_config(cfg), Diffusion.from_config(cfg, "ddim10")
    want = sample_ddim(model, d10, x_T(), eta=eta, model_kwargs={"y": Y}, noise=SeededNoise([3, 4]))
    sigmas = timestep_sigmas(full, "ddim10")
    got = sample_euler_ancestral(Thresholded(EpsDenoiser(model, full, quantize=True), None),
                                 x_T() * (1 + sigmas[0] ** 2).sqrt(), sigmas, {"y": Y}, eta=eta, disable=True,
                                 noise=SeededNoise([3, 4]))
    assert_float_close(got, want)


def test_classifier_free_guidance_matches_the_eps_form():
    """CFG on the denoiser is adm.sampling.classifier_free_guidance on eps: as one step and through DDIM."""
    cfg, _, _, m, _ = nets("cosine", True)
    full, d10 = Diffusion.from_config(cfg), Diffusion.from_config(cfg, "ddim10")
    x, sigma = x_T() * 3, torch.tensor([2.0, 0.3])
    eps_form = EpsDenoiser(classifier_free_guidance(m, 3.0, m.null_label), full)(x, sigma, y=Y)
    den_form = ClassifierFreeGuided(EpsDenoiser(m, full), 3.0, m.null_label)(x, sigma, y=Y)
    assert torch.allclose(den_form, eps_form, atol=1e-5)
    want = sample_ddim(classifier_free_guidance(m, 3.0, m.null_label), d10, x_T(), model_kwargs={"y": Y},
                       clip_denoised=False, noise=ZERO_NOISE)
    den = ClassifierFreeGuided(EpsDenoiser(m, full, quantize=True), 3.0, m.null_label)
    assert_float_close(euler_from(den, x_T(), timestep_sigmas(full, "ddim10"), extra_args={"y": Y}), want)


# --- convergence order on Gaussian data ----------------------------------------------------------------

MU, S = 0.3, 0.5  # x_0 ~ N(MU, S^2)


def gaussian_denoiser(x, sigma, **_):
    """E[x_0 | x] for x = x_0 + sigma n: exact for Gaussian data."""
    s2 = sigma.view(-1, 1, 1, 1) ** 2
    return MU + S * S / (S * S + s2) * (x - MU)


def solver_error(sampler, n):
    sigmas = karras_sigmas(n, 0.002, 80.0, dtype=torch.float64)
    x = MU + math.sqrt(S * S + 80.0 ** 2) * x_T(4).double()
    # Along the ODE x - MU scales as sqrt(S^2 + sigma^2); the last step (to 0) returns D at sigma_min.
    sigma_min = torch.tensor([0.002], dtype=torch.float64)
    exact = gaussian_denoiser(MU + (x - MU) * math.sqrt(S * S + 0.002 ** 2) / math.sqrt(S * S + 80.0 ** 2), sigma_min)
    return float((sampler(gaussian_denoiser, x, sigmas, disable=True) - exact).abs().max())


@pytest.mark.parametrize("sampler,order", [(sample_heun, 2), (sample_dpmpp_2m, 2), (sample_euler, 1)])
def test_convergence_order(sampler, order):
    errors = [solver_error(sampler, n) for n in (32, 64, 128)]
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    assert all(0.85 * 2 ** order < r < 1.2 * 2 ** order for r in ratios), (errors, ratios)  # 4.3, 4.1 for Heun


def test_heun_calls_and_callback():
    calls, seen = [], []

    def counting(x, sigma, **_):
        calls.append(float(sigma[0]))
        return gaussian_denoiser(x, sigma)

    sigmas = karras_sigmas(5, 0.01, 10.0)
    sample_heun(counting, x_T() * 10, sigmas, callback=seen.append, disable=True)
    assert len(calls) == 9 == karras_calls("heun", 5)
    assert [s["i"] for s in seen] == list(range(5))
    assert set(seen[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}
    for name in KARRAS_SAMPLERS:
        calls.clear()
        KARRAS_SAMPLERS[name](counting, x_T() * 10, sigmas, disable=True)
        assert len(calls) == karras_calls(name, 5)


def test_karras_sigmas():
    s = karras_sigmas(10, 0.002, 80.0)
    assert s.shape == (11,) and s[-1] == 0 and bool((s[1:] < s[:-1]).all())
    assert s[0].item() == pytest.approx(80.0) and s[-2].item() == pytest.approx(0.002)
    ramp = s[:-1].double() ** (1 / 7)
    assert torch.allclose(ramp[1:] - ramp[:-1], (ramp[1:] - ramp[:-1]).mean().expand(9), atol=1e-5)


def test_churn_with_seeds_does_not_depend_on_the_batch():
    sigmas = karras_sigmas(6, 0.01, 10.0)
    x = x_T(3) * 10
    both = sample_heun(gaussian_denoiser, x, sigmas, s_churn=2.0, noise=SeededNoise([1, 2, 3]), disable=True)
    last = sample_heun(gaussian_denoiser, x[2:], sigmas, s_churn=2.0, noise=SeededNoise([3]), disable=True)
    assert torch.allclose(both[2:], last, atol=1e-6)
    plain = sample_heun(gaussian_denoiser, x, sigmas, disable=True)
    assert not torch.allclose(both, plain, atol=1e-3)
    # Churn limited to sigmas in [s_tmin, s_tmax] that no step reaches: Algorithm 1.
    assert torch.equal(sample_heun(gaussian_denoiser, x, sigmas, s_churn=2.0, s_tmin=20.0, disable=True), plain)


# --- guidance wrappers ------------------------------------------------------------------------------


def guided_denoisers(interval):
    """(guided, unguided) denoisers for classifier, classifier-free and autoguidance."""
    cfg, model, clf, m, bad = nets("cosine", True)
    full = Diffusion.from_config(cfg)
    good = EpsDenoiser(model, full)
    return {
        "classifier": (ClassifierGuided(good, classifier_guidance(clf, 4.0), interval), good),
        "cfg": (ClassifierFreeGuided(EpsDenoiser(m, full), 3.0, m.null_label, interval), EpsDenoiser(m, full)),
        "auto": (Autoguided(good, EpsDenoiser(bad, full), 2.5, interval), good),
    }


@pytest.mark.parametrize("kind", ["classifier", "cfg", "auto"])
def test_guidance_intervals(kind):
    sigmas = karras_sigmas(4, 0.01, 80.0)
    x = x_T() * 80

    def run(den):
        return sample_heun(den, x, sigmas, extra_args={"y": Y}, disable=True)

    plain_guided, unguided = guided_denoisers(None)[kind]
    everywhere, _ = guided_denoisers((0.0, math.inf))[kind]
    nowhere, _ = guided_denoisers((100.0, 200.0))[kind]
    guided = run(plain_guided)
    assert torch.equal(run(everywhere), guided)
    assert torch.equal(run(nowhere), run(unguided))
    assert not torch.allclose(guided, run(unguided), atol=1e-3)
    # Per image: guided where sigma is in [1, 10], not elsewhere.
    part, _ = guided_denoisers((1.0, 10.0))[kind]
    sig = torch.tensor([5.0, 20.0])
    with torch.no_grad():
        out = part(x, sig, y=Y)
        assert_float_close(out[:1], plain_guided(x, sig, y=Y)[:1], rel=1e-6)  # a doubled batch rounds differently
        assert_float_close(out[1:], unguided(x, sig, y=Y)[1:], rel=1e-6)


def test_weight_one_is_the_good_or_conditional_model():
    cfg, model, _, m, bad = nets("cosine", True)
    full = Diffusion.from_config(cfg)
    x, sigma = x_T() * 4, torch.tensor([3.0, 3.0])
    good = EpsDenoiser(model, full)

    def never(*a, **k):
        raise AssertionError("the bad model is not needed at w = 1")

    assert torch.equal(Autoguided(good, never, 1.0)(x, sigma, y=Y), good(x, sigma, y=Y))
    cond = EpsDenoiser(m, full)
    assert torch.equal(ClassifierFreeGuided(cond, 1.0, m.null_label)(x, sigma, y=Y), cond(x, sigma, y=Y))
    # and the formulas at other weights
    d_good, d_bad = good(x, sigma, y=Y), EpsDenoiser(bad, full)(x, sigma, y=Y)
    auto = Autoguided(good, EpsDenoiser(bad, full), 2.0)(x, sigma, y=Y)
    assert torch.allclose(auto, d_bad + 2 * (d_good - d_bad), atol=1e-5)
    d_null = cond(x, sigma, y=torch.full_like(Y, m.null_label))
    # (a doubled batch against a single one: float32 rounding of eps, times sigma = 3; measured 1.1e-5)
    assert torch.allclose(ClassifierFreeGuided(cond, 0.0, m.null_label)(x, sigma, y=Y), d_null, atol=5e-5)


def test_wrappers_forward_the_sigma_table_and_check_arguments():
    cfg, model, clf, _, _ = nets("cosine", True)
    den = EpsDenoiser(model, Diffusion.from_config(cfg))
    wrapped = Thresholded(ClassifierFreeGuided(ClassifierGuided(den, classifier_guidance(clf)), 2.0, 3), 0.99)
    assert wrapped.sigma_max == den.sigma_max and wrapped.sigmas is den.sigmas
    for bad in [lambda: ClassifierFreeGuided(den, -1.0, 3), lambda: Autoguided(den, den, float("nan")),
                lambda: Autoguided(den, den, 2.0, (5.0, 1.0)), lambda: Thresholded(den, 1.5),
                lambda: ClassifierGuided(lambda x, s: x, classifier_guidance(clf))]:
        with pytest.raises(ConfigError):
            bad()
    with pytest.raises(ConfigError):
        ClassifierFreeGuided(den, 2.0, 3)(x_T(), 1.0)  # no labels


def test_dynamic_threshold():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 3, 8, 8, generator=g) * torch.tensor([0.2, 2.0, 5.0]).view(3, 1, 1, 1)
    out = dynamic_threshold(x0, 0.9)
    s = torch.quantile(x0.abs().flatten(1), 0.9, dim=1).clamp(min=1).view(3, 1, 1, 1)
    assert torch.allclose(out, x0.clamp(-s, s) / s, atol=1e-6)
    assert torch.equal(out[0], x0[0])  # within [-1, 1]: untouched
    assert float(out.abs().max()) <= 1 and torch.equal(dynamic_threshold(x0, None), x0.clamp(-1, 1))


# --- k-diffusion ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kdiff():
    """k_diffusion.sampling and .external. The package's __init__ imports its training and evaluation
    code too (torchvision, clip, wandb, ...); without those, the two modules load on their own with
    their one helper from k_diffusion.utils."""
    if importlib.util.find_spec("k_diffusion") is None:
        pytest.skip("k-diffusion is not installed")
    pytest.importorskip("torchdiffeq")
    pytest.importorskip("torchsde")
    try:
        k = importlib.import_module("k_diffusion")
        return k.sampling, k.external
    except ImportError:
        pass
    for name in [n for n in sys.modules if n == "k_diffusion" or n.startswith("k_diffusion.")]:
        del sys.modules[name]
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = list(importlib.util.find_spec("k_diffusion").submodule_search_locations)
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    pkg.utils = utils
    saved = {n: sys.modules.get(n) for n in ("k_diffusion", "k_diffusion.utils")}
    sys.modules.update({"k_diffusion": pkg, "k_diffusion.utils": utils})
    try:
        return importlib.import_module("k_diffusion.sampling"), importlib.import_module("k_diffusion.external")
    finally:
        for name in [n for n in sys.modules if n == "k_diffusion" or n.startswith("k_diffusion.")]:
            del sys.modules[name]
        sys.modules.update({n: m for n, m in saved.items() if m is not None})


def test_karras_sigmas_match_k_diffusion(kdiff):
    ks, _ = kdiff
    assert torch.allclose(karras_sigmas(12, 0.006, 80.0), ks.get_sigmas_karras(12, 0.006, 80.0), rtol=1e-5)


@pytest.mark.parametrize("name,kwargs", [("euler", {}), ("heun", {}), ("heun", {"s_churn": 1.0}),
                                         ("euler", {"s_churn": 1.0}), ("euler_ancestral", {"eta": 1.0}),
                                         ("dpmpp_2m", {})])
def test_k_diffusion_samplers_on_the_eps_denoiser(kdiff, name, kwargs):
    ks, _ = kdiff
    cfg, model, _, _, _ = nets("cosine", True)
    den = EpsDenoiser(model, Diffusion.from_config(cfg))
    sigmas = karras_sigmas(5, den.sigma_min, 80.0)
    x = x_T() * 80.0
    torch.manual_seed(0)
    want = getattr(ks, f"sample_{name}")(den, x, sigmas, extra_args={"y": Y}, disable=True, **kwargs)
    torch.manual_seed(0)
    got = KARRAS_SAMPLERS[name](den, x, sigmas, extra_args={"y": Y}, disable=True, **kwargs)
    assert_float_close(got, want, rel=1e-6)  # the same arithmetic: equal in practice


@pytest.mark.parametrize("quantize", [True, False])
def test_adm_samplers_on_k_diffusions_openai_denoiser(kdiff, quantize):
    """k-diffusion's wrapper of guided-diffusion models is our EpsDenoiser (unrespaced): same D, same samples."""
    _, kext = kdiff
    cfg, model, _, _, _ = nets("linear", True)
    full = Diffusion.from_config(cfg)
    kden = kext.OpenAIDenoiser(model, types.SimpleNamespace(alphas_cumprod=full.schedule.alphas_cumprod.numpy()),
                               quantize=quantize, has_learned_sigmas=True)
    den = EpsDenoiser(model, full, quantize=quantize)
    x, sigma = x_T() * 5, torch.tensor([4.0, 0.05])
    with torch.no_grad():
        assert torch.allclose(kden(x, sigma, y=Y), den(x, sigma, y=Y), rtol=1e-5, atol=1e-5)
    sigmas = karras_sigmas(5, den.sigma_min, 80.0)
    for sampler in (sample_heun, sample_dpmpp_2m):
        got = sampler(kden, x_T() * 80, sigmas, {"y": Y}, disable=True)
        assert_float_close(got, sampler(den, x_T() * 80, sigmas, {"y": Y}, disable=True), rel=1e-4)


# --- the sigma-frame samplers in the registry (adm.sampling.sigma_frame) ------------------------------


def test_registry_sigma_samplers_run_the_steps_of_the_process_they_are_given():
    """Called like the discrete samplers, with no schedule: every step of `diffusion`, at its timesteps
    exactly (euler there is DDIM); heun makes 2K - 1 calls on those K steps."""
    cfg, model, _, _, _ = nets("cosine", True)
    d10 = Diffusion.from_config(cfg, "ddim10")
    want = sample_ddim(model, d10, x_T(), model_kwargs={"y": Y}, noise=ZERO_NOISE)
    assert_float_close(get_sampler("euler")(model, d10, x_T(), model_kwargs={"y": Y}), want)
    seen = []

    def counting(x, t, **kw):
        seen.append(t.tolist())
        return model(x, t, **kw)

    get_sampler("heun")(counting, d10, x_T(), model_kwargs={"y": Y})
    steps = set(d10.schedule.timestep_map.tolist())
    assert len(seen) == 19 == get_sampler("heun").model_calls(10, "") and all(set(t) <= steps for t in seen)


def test_karras_schedule_of_an_adm_model():
    for schedule, steps in [("cosine", 1000), ("linear", 1000), ("linear", 20)]:  # sigma_max 1e4, 157, inf
        d = Diffusion.from_config(DiffusionConfig(steps=steps, noise_schedule=schedule))
        table = d.schedule.sqrt_recipm1_alphas_cumprod
        sigmas, quantized = schedule_sigmas(d, "karras12")
        assert not quantized and sigmas.shape == (13,) and sigmas[-1] == 0
        assert sigmas[0].item() == pytest.approx(min(KARRAS_SIGMA_MAX, float(table[-1])), rel=1e-6)
        assert sigmas[-2].item() == pytest.approx(float(table[0]), rel=1e-6)
        assert torch.allclose(sigmas, karras_sigmas(12, float(table[0]), min(80.0, float(table[-1]))))
    d = Diffusion.from_config(DiffusionConfig(steps=1000, noise_schedule="cosine"))
    sigmas, quantized = schedule_sigmas(d, "ddim10")
    assert quantized and torch.equal(sigmas, timestep_sigmas(d, "ddim10"))
    assert karras_levels("karras7") == 7 and karras_levels("ddim7") is None
    with pytest.raises(ConfigError):
        karras_levels("karras")


def test_classifier_guided_reads_a_limited_cond_fn():
    """limit_to_interval's None (no image inside) is the unguided denoiser exactly; inside, the guided one;
    a batch across the boundary is guided per image."""
    cfg, model, clf, _, _ = nets("cosine", True)
    full = Diffusion.from_config(cfg)
    den, grad = EpsDenoiser(model, full), classifier_guidance(clf, 4.0)
    sigma_of = TimestepSigma(full)
    x, sigma = x_T() * 3, torch.tensor([2.0, 2.0])
    with torch.no_grad():
        outside = ClassifierGuided(den, limit_to_interval(grad, (5.0, 9.0), sigma_of))(x, sigma, y=Y)
        inside = ClassifierGuided(den, limit_to_interval(grad, (1.0, 3.0), sigma_of))(x, sigma, y=Y)
        assert torch.equal(outside, den(x, sigma, y=Y))
        assert torch.equal(inside, ClassifierGuided(den, grad)(x, sigma, y=Y))
        both = torch.tensor([2.0, 6.0])
        mixed = ClassifierGuided(den, limit_to_interval(grad, (1.0, 3.0), sigma_of))(x, both, y=Y)
        assert_float_close(mixed[:1], ClassifierGuided(den, grad)(x, both, y=Y)[:1], rel=1e-6)
        assert_float_close(mixed[1:], den(x, both, y=Y)[1:], rel=1e-6)
    assert limit_to_interval(grad, None) is grad
    with pytest.raises(ConfigError, match="sigma_of"):
        limit_to_interval(grad, (1.0, 2.0))
