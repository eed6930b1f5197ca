"""Beta schedules and respacing: behaviour and the errors bad input gets."""
import pytest
import torch

from adm.diffusion import DiffusionConfig, Diffusion, Schedule, make_betas, space_timesteps
from adm.diffusion.schedule import LOG_SNR_MIN, count_timesteps
from adm.errors import ConfigError


def test_linear_schedule_scales_with_T():
    b = make_betas("linear", 4000)
    assert b.dtype == torch.float64 and b.shape == (4000,)
    assert b[0].item() == pytest.approx(0.0001 / 4) and b[-1].item() == pytest.approx(0.02 / 4)


def test_cosine_schedule_is_clipped_and_monotone():
    b = make_betas("cosine", 1000)
    assert b.max().item() == pytest.approx(0.999) and bool((b[1:] >= b[:-1]).all())


@pytest.mark.parametrize("schedule,steps", [("quadratic", 1000), ("linear", 0), ("cosine", -3), ("linear", 2.5)])
def test_bad_schedule(schedule, steps):
    with pytest.raises(ConfigError):
        make_betas(schedule, steps)


@pytest.mark.parametrize("spec", ["", "1000", "ddim1000", [1000], 1000, "500,500"])
def test_respacing_that_keeps_every_step(spec):
    assert space_timesteps(1000, spec) == list(range(1000))
    full, same = Schedule.create("cosine", 1000), Schedule.create("cosine", 1000, spec)
    for name, table in full.tables().items():
        assert torch.allclose(table.double(), same.tables()[name].double(), rtol=1e-12, atol=0), name


def test_respaced_schedule_keeps_alpha_bar():
    full = Schedule.create("linear", 1000)
    spaced = Schedule.create("linear", 1000, "10,15,20")
    keep = spaced.timestep_map
    assert spaced.num_timesteps == 45 and spaced.original_num_steps == 1000
    assert torch.allclose(spaced.alphas_cumprod, full.alphas_cumprod[keep], rtol=1e-12)
    # Respacing a respaced schedule composes the maps.
    twice = spaced.respaced([0, 10, 44])
    assert twice.timestep_map.tolist() == keep[[0, 10, 44]].tolist()
    assert torch.allclose(twice.alphas_cumprod, full.alphas_cumprod[twice.timestep_map], rtol=1e-12)


def test_sections_with_remainder():
    # 300 steps into sections of 100: the guided-diffusion docstring's example.
    steps = space_timesteps(300, "10,15,20")
    assert len(steps) == 45 and steps[0] == 0 and steps[-1] == 299 and 100 in steps and 200 in steps


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("abc", "does not parse"),
        ("10,,5", "does not parse"),
        ("-5", "does not parse"),
        ("2.5", "does not parse"),
        ("2000", "only 1000"),
        ("0", "at least 1"),
        ("5,600", "cannot keep 600"),
        ("ddim", "positive step count"),
        ("ddimx", "positive step count"),
        ("ddim0", "positive step count"),
        ("ddim300", "no integer stride"),
        ("ddim2000", "only 1000"),
        ("logsnr", "positive step count"),
        ("logsnr0", "positive step count"),
        ("logsnr1001", "only 1000"),
    ],
)
def test_bad_respacing(spec, needle):
    with pytest.raises(ConfigError, match=needle):
        space_timesteps(1000, spec)


def test_bad_respacing_from_config():
    with pytest.raises(ConfigError, match="respacing"):
        Diffusion.from_config(DiffusionConfig(timestep_respacing="fast"))
    with pytest.raises(ConfigError, match="noise schedule"):
        Diffusion.from_config(DiffusionConfig(noise_schedule="sqrt"))


def test_bad_betas():
    with pytest.raises(ConfigError):
        Schedule.from_betas(torch.tensor([0.1, 0.0]))
    with pytest.raises(ConfigError):
        Schedule.create("linear", 100).respaced([])


def test_one_step_schedule_is_finite():
    s = Schedule.create("linear", 1000, "1")
    assert s.num_timesteps == 1 and torch.isfinite(s.posterior_log_variance_clipped).all()


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("count", [3, 6, 11, 21])
def test_logsnr_respacing_is_even_in_log_snr(schedule, count):
    """logsnrN: T-1, then N-1 steps evenly spaced in lambda from max(LOG_SNR_MIN, lambda(T-1)) to lambda(0)."""
    ab = Schedule.create(schedule, 1000).alphas_cumprod
    lam = (0.5 * (ab.log() - (-ab).log1p())).tolist()
    steps = space_timesteps(1000, f"logsnr{count}", ab)
    assert len(steps) == count == count_timesteps(1000, f"logsnr{count}") and steps == sorted(set(steps))
    assert steps[0] == 0 and steps[-1] == 999
    assert space_timesteps(1000, "logsnr2", ab) == [0, 999] and space_timesteps(1000, "logsnr1", ab) == [999]
    below = [lam[t] for t in steps[::-1][1:]]  # from the noisiest step after T-1 down to t = 0
    assert below[0] == pytest.approx(max(LOG_SNR_MIN, lam[999]), abs=0.05)
    gap = (lam[0] - below[0]) / max(count - 2, 1)
    for a, b in zip(below, below[1:]):
        assert b - a == pytest.approx(gap, rel=0.25)
    respaced = Schedule.create(schedule, 1000, f"logsnr{count}")
    assert respaced.timestep_map.tolist() == steps


def test_logsnr_respacing_keeps_steps_distinct_on_short_chains():
    ab = Schedule.create("cosine", 50).alphas_cumprod
    assert space_timesteps(50, "logsnr50", ab) == list(range(50))
    steps = space_timesteps(50, "logsnr12", ab)
    assert len(set(steps)) == 12 and steps[0] == 0 and steps[-1] == 49


def test_logsnr_respacing_needs_the_schedule():
    with pytest.raises(ConfigError, match="noise schedule"):
        space_timesteps(1000, "logsnr10")
    with pytest.raises(ConfigError, match="100 steps"):
        space_timesteps(1000, "logsnr10", Schedule.create("cosine", 100).alphas_cumprod)
