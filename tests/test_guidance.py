"""Guidance (classifier, classifier-free), ADM_G and ADM-U upsampling on tiny random networks."""
import pytest
import torch

import adm
from adm.diffusion import Diffusion, DiffusionConfig, space_timesteps
from adm.errors import ConfigError
from adm.guided import ADM_G, to_uint8, upsample
from adm.sampling import get_sampler
from adm.nn import ADM, ADM_U, ADM_classifier, ADMConfig, ADMUConfig, ClassifierConfig
from adm.sampling import SAMPLERS, classifier_free_guidance, classifier_guidance, sample_ddim, sample_ddpm
from adm.sampling.guidance import TimestepSigma, autoguidance
from adm.sampling.registry import names as sampler_names
from helpers import randomized


DIFF = DiffusionConfig(steps=100, noise_schedule="cosine", learn_sigma=True)
NET = dict(image_size=8, model_channels=32, num_res_blocks=1, attention_resolutions=(4,), channel_mult=(1, 2))


@pytest.fixture(scope="module")
def nets():
    return {
        "cond": randomized(ADM(ADMConfig(**NET, num_classes=3, diffusion=DIFF)), 0),
        "cfg": randomized(ADM(ADMConfig(**NET, num_classes=3, null_class=True, diffusion=DIFF)), 1),
        "uncond": randomized(ADM(ADMConfig(**NET, diffusion=DIFF)), 2),
        "clf": randomized(ADM_classifier(ClassifierConfig(**NET, num_classes=3, num_head_channels=32,
                                                          diffusion=DIFF)), 3),
        "clf5": ADM_classifier(ClassifierConfig(**NET, num_classes=5, num_head_channels=32, diffusion=DIFF)),
        "sr": randomized(ADM_U(ADMUConfig(**{**NET, "image_size": 16, "attention_resolutions": ()}, small_size=8,
                                          num_classes=3, diffusion=DIFF)), 4),
    }


def test_adm_g_is_exported():
    assert adm.ADM_G is ADM_G


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_sample_shapes_and_range(nets, sampler):
    g = ADM_G(nets["cond"], nets["clf"], scale=3.0)
    images = g.sample(torch.tensor([0, 2]), steps=3, sampler=sampler, seed=0)
    assert images.shape == (2, 3, 8, 8) and images.abs().max() <= 1.0
    u8 = ADM_G.to_uint8(images)
    assert u8.dtype == torch.uint8 and u8.shape == (2, 8, 8, 3)


def test_to_uint8_truncates_like_guided_diffusion():
    x = torch.tensor([-1.5, -1.0, -0.999, 0.0, 0.999, 1.0, 2.0]).view(1, 1, 1, 7)
    assert to_uint8(x).flatten().tolist() == [0, 0, 0, 127, 254, 255, 255]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_scale_zero_is_unguided(nets, sampler):
    plain = ADM_G(nets["cond"]).sample([0, 2], steps=3, sampler=sampler, seed=7)
    zero = ADM_G(nets["cond"], nets["clf"], scale=0.0).sample([0, 2], steps=3, sampler=sampler, seed=7)
    assert torch.equal(plain, zero)
    guided = ADM_G(nets["cond"], nets["clf"], scale=10.0).sample([0, 2], steps=3, sampler=sampler, seed=7)
    assert not torch.allclose(plain, guided, atol=1e-3)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_zero_scale_cond_fn_matches_no_cond_fn(nets, sampler):
    """classifier_guidance(scale=0) composed with a sampler changes nothing (up to rounding)."""
    d = Diffusion.from_config(DIFF, "5")
    fn = sample_ddpm if sampler == "ddpm" else sample_ddim
    y = torch.tensor([0, 1])
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = lambda z: torch.zeros_like(z)  # noqa: E731
    a = fn(nets["cond"], d, x, model_kwargs={"y": y}, noise=noise)
    b = fn(nets["cond"], d, x, model_kwargs={"y": y}, noise=noise,
           cond_fn=classifier_guidance(nets["clf"], 0.0, labels=y))
    assert torch.allclose(a, b, atol=1e-4)  # eps re-derived from x_0 and back: rounding through the chain


def test_classifier_gradient_is_scaled_log_prob_gradient(nets):
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t, y = torch.tensor([10, 50]), torch.tensor([2, 0])
    grad1 = classifier_guidance(nets["clf"], 1.0)(x, t, y=y)
    grad3 = classifier_guidance(nets["clf"], 3.0, labels=y)(x, t)
    x_in = x.clone().requires_grad_(True)
    torch.log_softmax(nets["clf"](x_in, t), -1)[[0, 1], y].sum().backward()
    assert torch.allclose(grad1, x_in.grad, atol=1e-6) and torch.allclose(grad3, 3 * grad1, atol=1e-6)


def test_seeds_do_not_depend_on_batching(nets):
    g = ADM_G(nets["cond"], nets["clf"], scale=2.0)
    whole = g.sample(n=3, steps=3, seed=100)  # random labels, drawn per image from its seed
    parts = g.sample(n=3, steps=3, seed=100, batch_size=2)
    tail = g.sample(n=1, steps=3, seed=[102])
    assert torch.allclose(whole, parts, atol=1e-5) and torch.allclose(whole[2:], tail, atol=1e-5)


def test_unconditional_model_guided_by_classifier(nets):
    """The paper's Table 4: the classifier alone carries the class."""
    g = ADM_G(nets["uncond"], nets["clf"], scale=5.0)
    a = g.sample([0, 0], steps=4, sampler="ddim", seed=0)
    b = g.sample([2, 2], steps=4, sampler="ddim", seed=0)
    assert a.shape == (2, 3, 8, 8) and not torch.allclose(a, b, atol=1e-4)


def test_classifier_free_guidance(nets):
    m = nets["cfg"]
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t, y = torch.tensor([5, 60]), torch.tensor([1, 2])
    null = torch.full_like(y, m.null_label)
    cond, uncond = m(x, t, y), m(x, t, null)
    for w in (0.0, 1.0, 4.0):
        out = classifier_free_guidance(m, w, m.null_label)(x, t, y=y)
        # (one doubled batch against two single ones: float rounding of ~5e-6 per output, amplified by w)
        assert torch.allclose(out[:, :3], uncond[:, :3] + w * (cond[:, :3] - uncond[:, :3]), atol=1e-4)
        assert torch.allclose(out[:, 3:], cond[:, 3:], atol=2e-5)  # the variance: the conditional one
    plain = ADM_G(m).sample([1, 2], steps=4, sampler="dpmpp2m", seed=3)
    assert torch.equal(plain, ADM_G(m, scale=1.0).sample([1, 2], steps=4, sampler="dpmpp2m", seed=3))
    guided = ADM_G(m, scale=3.0).sample([1, 2], steps=4, sampler="dpmpp2m", seed=3)
    assert guided.shape == plain.shape and not torch.allclose(guided, plain, atol=1e-4)


def test_callback_and_progress(nets, capsys):
    seen = []
    ADM_G(nets["cond"]).sample([0], steps=3, sampler="ddim", callback=seen.append, progress=True)
    assert len(seen) == 3 and seen[-1]["pred_xstart"].shape == (1, 3, 8, 8)
    assert "DDIM" in capsys.readouterr().err


def respacing_for(steps, sampler, num_steps):
    return get_sampler(sampler).respacing(steps, num_steps)


def test_sampler_respacing():
    assert respacing_for(25, "ddim", 1000) == "ddim25"
    assert respacing_for(300, "ddim", 1000) == "300"  # no stride gives 300: even sections
    assert respacing_for(250, "ddpm", 1000) == "250" and respacing_for("10,15", "ddpm", 1000) == "10,15"
    assert respacing_for(None, "ddpm", 1000) == "250" and respacing_for(None, "ddim", 1000) == "ddim25"
    # DPM-Solver++: N model calls on N + 1 steps spaced in log-SNR; a string is taken as given
    assert respacing_for(10, "dpmpp2m", 1000) == "logsnr11" and respacing_for(None, "dpmpp2m", 1000) == "logsnr21"
    assert respacing_for("10", "dpmpp2m", 1000) == "10" and respacing_for("logsnr5", "ddim", 1000) == "logsnr5"
    with pytest.raises(ConfigError, match="at most 99 model calls"):
        respacing_for(100, "dpmpp2m", 100)
    with pytest.raises(ConfigError, match="logsnr"):
        respacing_for("logsnr0", "dpmpp2m", 1000)


@pytest.mark.parametrize("steps", [1, 4])
def test_dpmpp2m_steps_are_model_calls(nets, steps):
    """steps=N: the UNet runs N times, at the log-SNR spaced timesteps but t = 0, noisiest first."""
    model = nets["cond"]
    seen_t = []
    hook = model.register_forward_pre_hook(lambda _, args: seen_t.append(int(args[1][0])))
    try:
        out = ADM_G(model, nets["clf"], scale=2.0).sample([0, 1], steps=steps, sampler="dpmpp2m")
    finally:
        hook.remove()
    ab = Diffusion.from_config(DIFF, "").schedule.alphas_cumprod
    assert seen_t == space_timesteps(DIFF.steps, f"logsnr{steps + 1}", ab)[:0:-1]
    assert len(seen_t) == steps and 0 not in seen_t and out.abs().max() <= 1


def test_upsample(nets):
    sr = nets["sr"]
    low = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = upsample(sr, low, [0, 2], steps=3, seed=1)
    assert out.shape == (2, 3, 16, 16) and out.abs().max() <= 1
    as_u8 = to_uint8(low)  # the paper's NHWC uint8 batches are accepted as they are
    again = upsample(sr, as_u8, [0, 2], steps=3, seed=1)
    assert torch.allclose(again, upsample(sr, as_u8.permute(0, 3, 1, 2).float() / 127.5 - 1, [0, 2], steps=3,
                                          seed=1))
    with pytest.raises(ConfigError, match="class-conditional"):
        upsample(sr, low, steps=3)


@pytest.mark.parametrize(
    "make,call,needle",
    [
        (lambda n: ADM_G(n["cond"], n["clf"], scale=-1.0), None, ">= 0"),
        (lambda n: ADM_G(n["cond"], n["clf"]), lambda g: g.sample([0], scale=-2.0), ">= 0"),
        (lambda n: ADM_G(n["cond"], n["clf5"]), None, "5 classes but the diffusion model 3"),
        (lambda n: ADM_G(n["uncond"], n["clf"]), lambda g: g.sample([0, 3], steps=2), "label 3 does not exist"),
        (lambda n: ADM_G(n["cond"]), lambda g: g.sample([-1], steps=2), "label -1 does not exist"),
        (lambda n: ADM_G(n["uncond"]), lambda g: g.sample([0, 1], steps=2), "unconditional model without a classifier"),
        (lambda n: ADM_G(n["cond"]), lambda g: g.sample([0], steps=2, sampler="plms"), "ddpm, ddim, dpmpp2m"),
        (lambda n: ADM_G(n["cond"], scale=3.0), None, "label dropout"),
        (lambda n: ADM_G(n["cond"]), lambda g: g.sample([0], steps=2, scale=2.0), "label dropout"),
        (lambda n: ADM_G(n["cond"]), lambda g: g.sample(steps=2), "labels or a number"),
        (lambda n: ADM_G(n["cond"]), lambda g: g.sample([0, 1], n=3, steps=2), "n=3"),
        (lambda n: ADM_G(n["cond"]), lambda g: g.sample([0], steps="ddim30"), "no integer stride"),
        (lambda n: ADM_G(n["cond"]), lambda g: g.sample([0], steps=0), "positive integer"),
        (lambda n: ADM_G(n["cond"]), lambda g: g.sample([0], steps=2, eta=0.5), "ddim sampler only"),
        (lambda n: ADM_G(n["cond"]), lambda g: g.sample([0, 1], steps=2, seed=[1]), "1 seeds"),
        (lambda n: n["clf"], lambda c: classifier_guidance(c, 1.0, labels=torch.tensor([4])), "3 classes"),
    ],
)
def test_bad_input(nets, make, call, needle):
    with pytest.raises(ConfigError, match=needle):
        obj = make(nets)
        if call is not None:
            call(obj)


# --- the sigma-frame samplers, guidance intervals and autoguidance through ADM_G -------------------

SIGMA_SAMPLERS = sampler_names("sigma")
NOWHERE = (0.0, 0.0)  # no step has sigma 0 (sigma_min = 0.025 here)
EVERYWHERE = (0.0, float("inf"))


@pytest.fixture(scope="module")
def guide(nets):
    """A second ADM of the same family (same size, classes, diffusion): autoguidance's 'bad' model."""
    return randomized(ADM(ADMConfig(**NET, num_classes=3, diffusion=DIFF)), 7)


class Counted:
    """Forward calls of a module (a doubled classifier-free batch is one call), and the timesteps seen."""

    def __init__(self, module):
        self.t = []
        self.hook = module.register_forward_pre_hook(lambda _, args: self.t.append(args[1].detach().clone()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.hook.remove()


def test_sigma_frame_samplers_are_registered():
    assert SIGMA_SAMPLERS == ["euler", "heun", "edm", "euler_a", "dpmpp2m_sigma"]
    assert all(SAMPLERS[s].frame == "sigma" for s in SIGMA_SAMPLERS)
    assert [s for s in SAMPLERS if SAMPLERS[s].frame == "discrete"] == ["ddpm", "ddim", "dpmpp2m"]


@pytest.mark.parametrize("sampler", SIGMA_SAMPLERS)
def test_sigma_samplers_through_adm_g(nets, sampler):
    """Shapes and range, steps = model calls (counted on the UNet; Heun: (N + 1) // 2 steps, 2K - 1 calls),
    one callback a call, and per-image seeds that do not depend on the batch size (edm churns, euler_a
    draws every step)."""
    g = ADM_G(nets["cond"], nets["clf"], scale=3.0)
    heun = sampler in ("heun", "edm")
    for steps in (1, 4, 5):
        seen = []
        with Counted(nets["cond"]) as c:
            images = g.sample([0, 2], steps=steps, sampler=sampler, seed=0, callback=seen.append)
        assert images.shape == (2, 3, 8, 8) and images.abs().max() <= 1 and torch.isfinite(images).all()
        want = 2 * ((steps + 1) // 2) - 1 if heun else steps
        assert len(c.t) == len(seen) == want == get_sampler(sampler).model_calls(DIFF.steps,
                                                                                respacing_for(steps, sampler, 100))
        assert len(c.t) <= steps and set(seen[0]) >= {"i", "t", "x", "pred_xstart", "sigma"}
    whole = g.sample(n=3, steps=5, sampler=sampler, seed=40)
    parts = g.sample(n=3, steps=5, sampler=sampler, seed=40, batch_size=2)
    tail = g.sample(n=1, steps=5, sampler=sampler, seed=[42])
    # Equal but for float32 rounding of the batch-size-dependent kernels, which D = x - sigma eps multiplies by
    # sigma (up to 80 here): ~1e-4, at most a few 1e-3 where a pixel sits at a clamp edge; the bound is one
    # 8-bit level (the images written to disk are the same). Other seeds differ by O(1).
    # The random test network sometimes puts a pixel where that rounding flips a clamp, so: all but 1% of the
    # values within one level, none off by a tenth of the range (other seeds differ by O(1)).
    level = 1 / 127.5
    for a, b in ((whole, parts), (whole[2:], tail)):
        diff = (a - b).abs()
        assert (diff > level).float().mean() <= 0.01 and diff.max() < 0.1, diff.max()
    assert (whole[0] - whole[1]).abs().max() > 0.5


def test_sigma_sampler_steps_and_churn_rules():
    assert respacing_for(35, "heun", 1000) == "karras18" and respacing_for(36, "heun", 1000) == "karras18"
    assert respacing_for(None, "edm", 1000) == "karras256" and respacing_for(7, "euler", 1000) == "karras7"
    assert respacing_for("ddim25", "heun", 1000) == "ddim25" and respacing_for("karras9", "euler_a", 1000) == "karras9"
    assert get_sampler("heun").model_calls(1000, "ddim25") == 49 and get_sampler("euler").model_calls(1000, "") == 1000
    edm = get_sampler("edm")
    assert edm.churn_settings(1000, "karras256") == {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}
    assert edm.churn_settings(1000, "karras16")["s_churn"] == pytest.approx(2.5)  # gamma = 40/256 at any K
    assert edm.churn_settings(1000, "karras16", churn=40)["s_churn"] == 40  # EDM's S_churn as given
    assert get_sampler("heun").churn_settings(1000, "karras5")["s_churn"] == 0
    assert get_sampler("euler_a").churn_settings(1000, "karras5") is None
    with pytest.raises(ConfigError, match="noise-level schedule of the sigma-frame samplers"):
        respacing_for("karras5", "ddim", 1000)
    with pytest.raises(ConfigError, match="churn applies to the euler, heun, edm samplers"):
        get_sampler("dpmpp2m_sigma").options("karras5", churn=1.0)


def test_edm_churn_draws_noise_and_heun_churn_is_optional(nets):
    g = ADM_G(nets["cond"])
    plain = g.sample([0, 1], steps=7, sampler="heun", seed=3)
    assert torch.equal(plain, g.sample([0, 1], steps=7, sampler="heun", seed=3, churn=0.0))
    churned = g.sample([0, 1], steps=7, sampler="heun", seed=3, churn=2.0)
    edm = g.sample([0, 1], steps=7, sampler="edm", seed=3)
    assert not torch.allclose(plain, churned, atol=1e-3) and not torch.allclose(plain, edm, atol=1e-3)
    assert torch.equal(edm, g.sample([0, 1], steps=7, sampler="edm", seed=3))  # seeded


def assert_float_close(a, b, rel=5e-5):
    err = float((a - b).abs().max())
    assert err <= rel * max(1.0, float(b.abs().max())), f"max error {err:.3g}"


@pytest.mark.parametrize("guidance", ["classifier", "cfg"])
def test_euler_on_ddims_steps_is_ddim_through_adm_g(nets, guidance):
    """The relation tested: ADM_G with sampler="euler" on the spec "ddim10" (the sigmas of DDIM's 10 steps,
    the model and classifier called at exactly DDIM's timesteps) gives sampler="ddim" with steps=10 (that
    same "ddim10") up to float32 rounding, clipping and guidance included; euler_a there is DDIM with eta 1,
    draw for draw from the same per-image seeds."""
    g = ADM_G(nets["cond"], nets["clf"], scale=3.0) if guidance == "classifier" else ADM_G(nets["cfg"], scale=3.0)
    rel = 5e-5 if guidance == "classifier" else 5e-4  # w = 3 multiplies the two halves' rounding by 2w - 1 = 5
    ddim = g.sample([0, 2], steps=10, sampler="ddim", seed=5)
    assert_float_close(g.sample([0, 2], steps="ddim10", sampler="euler", seed=5), ddim, rel)
    ddim1 = g.sample([0, 2], steps=10, sampler="ddim", eta=1.0, seed=5)
    assert_float_close(g.sample([0, 2], steps="ddim10", sampler="euler_a", seed=5), ddim1, rel)
    # with an interval too: the same steps are guided in both frames
    iv = (0.3, 2.0)
    assert_float_close(g.sample([0, 2], steps="ddim10", sampler="euler", seed=5, guidance_interval=iv),
                       g.sample([0, 2], steps=10, sampler="ddim", seed=5, guidance_interval=iv), rel)
    assert (ddim - g.sample([0, 2], steps=10, sampler="ddim", seed=5, guidance_interval=iv)).abs().max() > 1e-2


ALL = ["ddpm", "ddim", "dpmpp2m", *SIGMA_SAMPLERS]


@pytest.mark.parametrize("sampler", ALL)
def test_interval_everywhere_is_no_interval_and_nowhere_is_unguided(nets, guide, sampler):
    """[0, inf] is today's guidance bit for bit; an interval holding no step's sigma is unguided sampling
    bit for bit (the classifier never runs; one conditional batch; the guide model never runs)."""
    kw = dict(steps=4, sampler=sampler, seed=11)
    cases = [  # (guided, unguided)
        (ADM_G(nets["cond"], nets["clf"], scale=4.0), ADM_G(nets["cond"])),
        (ADM_G(nets["cfg"], scale=3.0), ADM_G(nets["cfg"])),
        (ADM_G(nets["cond"], scale=2.5, guide_model=guide), ADM_G(nets["cond"])),
    ]
    for guided, unguided in cases:
        plain = guided.sample([0, 1], **kw)
        assert torch.equal(guided.sample([0, 1], guidance_interval=EVERYWHERE, **kw), plain)
        with Counted(nets["clf"]) as clf_calls, Counted(guide) as guide_calls:
            nowhere = guided.sample([0, 1], guidance_interval=NOWHERE, **kw)
        assert not clf_calls.t and not guide_calls.t
        assert torch.equal(nowhere, unguided.sample([0, 1], **kw))
        assert not torch.allclose(plain, nowhere, atol=1e-3)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp2m", "heun"])
def test_interval_guides_exactly_the_steps_inside(nets, sampler):
    """The classifier runs at the timesteps whose sigma = sqrt((1 - abar) / abar) is in [lo, hi], only."""
    lo, hi = 0.3, 2.0
    sigma_of = TimestepSigma(Diffusion.from_config(DIFF, ""))
    with Counted(nets["cond"]) as model_calls, Counted(nets["clf"]) as clf_calls:
        ADM_G(nets["cond"], nets["clf"], scale=2.0).sample([0, 1], steps=9, sampler=sampler, seed=0,
                                                          guidance_interval=(lo, hi))
    inside = [t for t in model_calls.t if lo <= float(sigma_of(t[:1])) <= hi]
    assert 0 < len(inside) < len(model_calls.t)
    assert [float(t[0]) for t in clf_calls.t] == [float(t[0]) for t in inside]


def test_timestep_sigma():
    full = Diffusion.from_config(DIFF, "")
    sigma_of = TimestepSigma(full)
    table = full.schedule.sqrt_recipm1_alphas_cumprod
    assert torch.equal(sigma_of(torch.tensor([0, 37, 99])), table[[0, 37, 99]])  # exact at the steps
    from adm.sampling.denoisers import EpsDenoiser

    sig = torch.tensor([0.05, 0.7, 3.1, 40.0], dtype=torch.float64)  # between steps: the denoiser's inverse
    t = EpsDenoiser(None, full).timesteps(sig)
    assert torch.allclose(sigma_of(t), sig, rtol=1e-5)
    rescaled = Diffusion.from_config(DIFF.replace(rescale_timesteps=True), "")
    assert torch.equal(TimestepSigma(rescaled)(rescaled.model_timesteps(torch.tensor([5]))), table[[5]])


def test_autoguidance(nets, guide):
    good, bad = nets["cond"], guide
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t, y = torch.tensor([30, 30]), torch.tensor([0, 2])
    g_out, b_out = good(x, t, y), bad(x, t, y)
    out = autoguidance(good, bad, 2.0)(x, t, y=y)
    assert torch.allclose(out[:, :3], b_out[:, :3] + 2.0 * (g_out[:, :3] - b_out[:, :3]), atol=1e-5)
    assert torch.equal(out[:, 3:], g_out[:, 3:])  # the variance: the good model's
    # w = 1 is the good model, exactly, for every sampler, without calling the guide
    for sampler in ("ddpm", "dpmpp2m", "heun", "euler_a"):
        with Counted(bad) as calls:
            one = ADM_G(good, scale=1.0, guide_model=bad).sample([0, 2], steps=3, sampler=sampler, seed=1)
        assert not calls.t and torch.equal(one, ADM_G(good).sample([0, 2], steps=3, sampler=sampler, seed=1))
    # sample(guide_model=) on a plain ADM_G; both models called once a step
    with Counted(bad) as calls:
        two = ADM_G(good).sample([0, 2], steps=3, sampler="ddim", seed=1, scale=2.0, guide_model=bad)
    assert len(calls.t) == 3 and not torch.allclose(two, ADM_G(good).sample([0, 2], steps=3, sampler="ddim", seed=1),
                                                    atol=1e-3)


@pytest.mark.parametrize(
    "call,needle",
    [
        (lambda n, g: ADM_G(n["cond"], n["clf"], guide_model=g), "do not combine"),
        (lambda n, g: ADM_G(n["cond"], n["clf"]).sample([0], steps=2, guide_model=g), "do not combine"),
        (lambda n, g: ADM_G(n["cond"], guide_model=n["uncond"]), "is unconditional but the model has 3 classes"),
        (lambda n, g: ADM_G(n["cond"], guide_model=n["clf"]), "is ADM_classifier"),
        (lambda n, g: ADM_G(n["cond"], guide_model=ADM(ADMConfig(**{**NET, "image_size": 16}, num_classes=3,
                                                                   diffusion=DIFF))), "takes 16x16x3 images"),
        (lambda n, g: ADM_G(n["cond"], guide_model=ADM(ADMConfig(**NET, num_classes=3, diffusion=DIFF.replace(
            noise_schedule="linear")))), "another diffusion"),
        (lambda n, g: ADM_G(n["cond"], n["clf"]).sample([0], steps=2, guidance_interval=(5, 0.3)),
         "sigma_lo <= sigma_hi"),
        (lambda n, g: ADM_G(n["cond"]).sample([0], steps=2, sampler="euler_a", churn=1.0), "churn applies to"),
        (lambda n, g: ADM_G(n["cond"]).sample([0], steps=2, sampler="heun", churn=-1.0), ">= 0"),
        (lambda n, g: ADM_G(n["cond"]).sample([0], steps=2, sampler="heun", eta=0.5), "ddim sampler only"),
        (lambda n, g: ADM_G(n["cond"]).sample([0], steps="karras0", sampler="heun"), "K >= 1"),
    ],
)
def test_bad_guidance_input(nets, guide, call, needle):
    with pytest.raises(ConfigError, match=needle):
        call(nets, guide)


@pytest.mark.parametrize("guidance", ["classifier", "cfg", "upsample"])
def test_channels_last_gives_the_same_images_and_restores_the_layout(nets, guidance):
    from adm.runtime import channels_last

    if guidance == "upsample":
        low = torch.rand(2, 3, 8, 8) * 2 - 1
        run = lambda cl: upsample(nets["sr"], low, [0, 1], steps=3, sampler="ddim", channels_last=cl)  # noqa: E731
        networks = [nets["sr"]]
    else:
        g = ADM_G(nets["cond"], nets["clf"], scale=3.0) if guidance == "classifier" else ADM_G(nets["cfg"], scale=2.0)
        run = lambda cl: g.sample([0, 2], steps=3, sampler="ddim", channels_last=cl)  # noqa: E731
        networks = [g.model] + ([g.classifier] if g.classifier is not None else [])
    plain = run(False)  # float32 rounding of other summation orders, which guidance scales (1e-4 as for CFG)
    torch.testing.assert_close(run(True), plain, atol=1e-4, rtol=0)
    for m in networks:  # back in the standard layout: state_dicts and later calls see what they saw
        assert all(p.is_contiguous() for p in m.parameters())
    with channels_last(networks):  # networks already channels-last stay so
        torch.testing.assert_close(run(True), plain, atol=1e-4, rtol=0)
        conv = next(p for p in networks[0].parameters() if p.dim() == 4 and p.shape[1] > 1)
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert all(p.is_contiguous() for m in networks for p in m.parameters())


def test_channels_last_is_chosen_where_it_was_measured_faster(nets, monkeypatch):
    import adm.runtime
    from adm.runtime import CHANNELS_LAST_MIN_WIDTH, prefers_channels_last

    wide = ADM(ADMConfig(**{**NET, "model_channels": CHANNELS_LAST_MIN_WIDTH}, diffusion=DIFF))
    assert not prefers_channels_last([wide], "cpu")  # float32: the convolutions gain ~2%, not worth a copy
    with torch.autocast("cpu", torch.bfloat16):
        assert prefers_channels_last([wide], "cpu")
        assert not prefers_channels_last([wide, nets["clf"]], "cpu")  # a narrow classifier: the demo's case
        assert not prefers_channels_last([nets["cond"]], "cpu")
    assert not prefers_channels_last([nets["cond"]], "cuda")
    monkeypatch.setattr(adm.runtime, "low_precision", lambda device: True)  # fp16 autocast on a GPU
    assert prefers_channels_last([nets["cond"]], "cuda")
    assert not prefers_channels_last([nets["cond"]], "mps")


def _weight_casts(fn, weight: torch.Tensor) -> int:
    """How many times `fn` casts a tensor of `weight`'s shape from float32 (the autocast weight casts)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return sum(1 for e in prof.events()
               if e.name == "aten::_to_copy" and e.input_shapes and list(e.input_shapes[0]) == list(weight.shape))


def test_frozen_networks_have_their_weights_cast_once_per_call_under_autocast():
    """Autocast caches a weight's bf16 copy only if the weight requires grad: frozen networks (as the CLI
    loads them) are sampled with each weight cast once per call, not once per step, with the same
    samples, and come back frozen; without low-precision autocast they stay frozen throughout."""
    model = randomized(ADM(ADMConfig(**NET, num_classes=3, diffusion=DIFF)), 0).eval()
    clf = randomized(ADM_classifier(ClassifierConfig(**NET, num_classes=3, num_head_channels=32, diffusion=DIFF)), 3).eval()
    # a weight shape found once in each network: the input convolution [32, 3, 3, 3]
    weight = model.input_blocks[0][0].weight
    assert sum(p.shape == weight.shape for p in [*model.parameters(), *clf.parameters()]) == 2

    def run():
        with torch.autocast("cpu", torch.bfloat16):
            return ADM_G(model, clf, scale=2.0).sample([0, 1], steps=4, sampler="ddim", seed=3)

    trained = run()
    model.requires_grad_(False), clf.requires_grad_(False)
    assert _weight_casts(run, weight) == 2  # the model's and the classifier's, once each, for 4 steps
    assert torch.equal(run(), trained)
    assert not any(p.requires_grad for p in [*model.parameters(), *clf.parameters()])
    # what the networks' weights were while sampling: unfrozen for the call under autocast only
    seen = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(weight.requires_grad))
    try:
        run()
        with_autocast, seen[:] = set(seen), []
        ADM_G(model, clf, scale=2.0).sample([0, 1], steps=2, sampler="ddim", seed=3)
    finally:
        hook.remove()
    assert with_autocast == {True} and set(seen) == {False}
