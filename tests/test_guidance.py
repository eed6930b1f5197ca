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
