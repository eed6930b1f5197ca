"""Beta schedules, respacing, and the frozen float64 tables of a (respaced) Gaussian diffusion."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import torch

from adm.errors import ConfigError

SCHEDULES = ("linear", "cosine")


def make_betas(schedule: str, steps: int) -> torch.Tensor:
    """The [T] float64 betas of a named schedule ("linear" scaled to T, or "cosine")."""
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ConfigError(f"the number of diffusion steps must be a positive integer, got {steps!r}")
    steps = int(steps)
    if schedule == "linear":
        # Ho et al.'s 1e-4 .. 0.02 for T=1000, scaled so that any T gives a similar process.
        scale = 1000 / steps
        return torch.linspace(scale * 0.0001, scale * 0.02, steps, dtype=torch.float64, device="cpu")
    if schedule == "cosine":
        return betas_for_alpha_bar(steps, lambda s: torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2)
    raise ConfigError(f"unknown noise schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def betas_for_alpha_bar(steps: int, alpha_bar, max_beta: float = 0.999) -> torch.Tensor:
    """Betas that discretise a continuous alpha_bar(s), s in [0, 1] (Nichol & Dhariwal 2021, eq. 17)."""
    s = torch.arange(steps + 1, dtype=torch.float64, device="cpu") / steps
    ab = alpha_bar(s)
    # Clipped at 0.999 to prevent the singularity at s = 1.
    return (1 - ab[1:] / ab[:-1]).clamp(max=max_beta)


def _parse_error(spec: str, why: str) -> ConfigError:
    return ConfigError(
        f"timestep respacing {spec!r}: {why} (expected '' for all steps, a step count such as '250', "
        "comma-separated counts per section such as '10,15,20', 'ddimN' such as 'ddim25', or 'logsnrN' "
        "such as 'logsnr11')"
    )


def space_timesteps(num_timesteps: int, spec: str | int | Sequence[int],
                    alphas_cumprod: torch.Tensor | None = None) -> list[int]:
    """The sorted timesteps of a T-step process kept by a respacing spec.

    "250" or "10,15,20": the chain is cut into equal sections (earlier sections one longer when T does
    not divide), and each section keeps that many evenly spaced steps (its first and last included).
    "ddimN": the fixed integer stride of the DDIM paper, range(0, T, stride) with exactly N steps.
    "logsnrN": N steps for few-step ODE solvers, evenly spaced in log-SNR (see log_snr_timesteps); it
    depends on the noise schedule, so it needs the process's `alphas_cumprod` ([T]).
    "" keeps every step.
    """
    if isinstance(spec, str) and spec.strip().startswith("logsnr"):
        count = _logsnr_count(num_timesteps, spec)
        if alphas_cumprod is None:
            raise ConfigError(f"timestep respacing {spec!r} depends on the noise schedule: pass its alphas_cumprod "
                              "(Schedule.create and Diffusion.from_config do)")
        if len(alphas_cumprod) != num_timesteps:
            raise ConfigError(f"alphas_cumprod has {len(alphas_cumprod)} steps, the process {num_timesteps}")
        return log_snr_timesteps(alphas_cumprod, count)
    if isinstance(spec, int) and not isinstance(spec, bool):
        counts = [spec]
    elif isinstance(spec, str):
        text = spec.strip()
        if text == "":
            return list(range(num_timesteps))
        if text.startswith("ddim"):
            return _ddim_steps(num_timesteps, spec, text[len("ddim"):])
        if not re.fullmatch(r"\d+(,\d+)*", text.replace(" ", "")):
            raise _parse_error(spec, "it does not parse")
        counts = [int(c) for c in text.replace(" ", "").split(",")]
    else:
        counts = [int(c) for c in spec]
        if not counts:
            raise _parse_error(str(spec), "no section counts")
    if sum(counts) > num_timesteps:
        raise _parse_error(str(spec), f"it asks for {sum(counts)} steps but the process has only {num_timesteps}")
    size_per, extra = divmod(num_timesteps, len(counts))
    if size_per == 0:
        raise _parse_error(str(spec), f"{len(counts)} sections do not fit in {num_timesteps} steps")
    steps: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count < 1:
            raise _parse_error(str(spec), f"section {i} keeps {count} steps; each section needs at least 1")
        if count > size:
            raise _parse_error(str(spec), f"section {i} has {size} steps and cannot keep {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        # round() of the running float sum, exactly as guided-diffusion accumulates it.
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(steps))


def _ddim_steps(num_timesteps: int, spec: str, digits: str) -> list[int]:
    if not digits.isdigit() or int(digits) < 1:
        raise _parse_error(spec, "ddim needs a positive step count after it")
    want = int(digits)
    if want > num_timesteps:
        raise _parse_error(spec, f"it asks for {want} steps but the process has only {num_timesteps}")
    for stride in range(1, num_timesteps + 1):
        if len(range(0, num_timesteps, stride)) == want:
            return list(range(0, num_timesteps, stride))
    raise _parse_error(
        spec, f"no integer stride gives exactly {want} of {num_timesteps} steps; use '{want}' for even sections"
    )


def count_timesteps(num_timesteps: int, spec: str | int | Sequence[int]) -> int:
    """How many steps a respacing spec keeps (checking the spec; no schedule needed)."""
    if isinstance(spec, str) and spec.strip().startswith("logsnr"):
        return _logsnr_count(num_timesteps, spec)
    return len(space_timesteps(num_timesteps, spec))


def _logsnr_count(num_timesteps: int, spec: str) -> int:
    digits = spec.strip()[len("logsnr"):]
    if not digits.isdigit() or int(digits) < 1:
        raise _parse_error(spec, "logsnr needs a positive step count after it")
    if int(digits) > num_timesteps:
        raise _parse_error(spec, f"it asks for {int(digits)} steps but the process has only {num_timesteps}")
    return int(digits)


def log_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """lambda_t = log(alpha_t / sigma_t) = 0.5 log(alpha_bar_t / (1 - alpha_bar_t)), float64, decreasing in t."""
    ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64, device="cpu")
    return 0.5 * (ab.log() - (-ab).log1p())


# The log-SNR below which x_t holds practically nothing of the image: sigma / alpha = 80, the largest
# noise level of Karras et al.'s EDM sampler for data in [-1, 1].
LOG_SNR_MIN = -math.log(80.0)


def log_snr_timesteps(alphas_cumprod: torch.Tensor, count: int) -> list[int]:
    """`count` distinct timesteps for a few-step ODE solver: the last one (T-1, where sampling starts)
    and count - 1 evenly spaced in lambda = log(alpha / sigma) from max(LOG_SNR_MIN, lambda(T-1)) down
    to lambda(0), each taken as the timestep of nearest lambda.

    Uniform in log-SNR is the step size DPM-Solver's error analysis asks for (its "logSNR" spacing).
    Starting the even spacing at LOG_SNR_MIN rather than at lambda(T-1) matters for the cosine schedule,
    whose clipped last beta puts lambda(T-1) at -9.9 (lambda(T-2) is -6.5): spaced over the whole range,
    a quarter of the steps land on the last few timesteps, where the image does not change.
    """
    lam = log_snr(alphas_cumprod)
    T = int(lam.shape[0])
    if not 1 <= count <= T:
        raise ConfigError(f"log-SNR spacing: {count} steps do not fit in a process of {T}")
    if count == 1:
        return [T - 1]
    hi, lo = float(lam[0]), max(LOG_SNR_MIN, float(lam[-1]))
    n = count - 1
    targets = torch.tensor([hi] if n == 1 else [lo + (hi - lo) * i / (n - 1) for i in range(n)], dtype=torch.float64)
    nearest = (lam[None, :] - targets[:, None]).abs().argmin(dim=1).tolist()
    steps = sorted(nearest + [T - 1])
    # Nearest timesteps can coincide where lambda moves fast: push them apart, keeping 0 .. T-1.
    for i in range(1, len(steps)):
        steps[i] = max(steps[i], steps[i - 1] + 1)
    steps[-1] = T - 1
    for i in range(len(steps) - 2, -1, -1):
        steps[i] = min(steps[i], steps[i + 1] - 1)
    return steps


@dataclass(frozen=True, eq=False)
class Schedule:
    """Float64 tables [N] of a diffusion with N (possibly respaced) steps; timestep_map[i] is step i's
    timestep in the original T-step chain that the model was trained on."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    alphas_cumprod_next: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    log_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor          # beta-tilde (Ho et al. eq. 7)
    posterior_log_variance_clipped: torch.Tensor  # log beta-tilde, with step 0 set to step 1 (beta-tilde_0 = 0)
    posterior_mean_coef1: torch.Tensor        # coefficient of x_0 in mu-tilde
    posterior_mean_coef2: torch.Tensor        # coefficient of x_t in mu-tilde
    timestep_map: torch.Tensor                # int64 [N]
    original_num_steps: int

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    @classmethod
    def from_betas(cls, betas: torch.Tensor, timestep_map: torch.Tensor | None = None,
                   original_num_steps: int | None = None) -> "Schedule":
        """All tables from a [N] vector of betas (Ho et al. 2020 section 2)."""
        b = torch.as_tensor(betas, dtype=torch.float64, device="cpu")
        if b.ndim != 1 or not bool(((b > 0) & (b <= 1)).all()):
            raise ConfigError("betas must be a 1-D vector with values in (0, 1]")
        n = b.shape[0]
        ac = torch.cumprod(1.0 - b, dim=0)
        ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
        ac_next = torch.cat([ac[1:], ac.new_zeros(1)])
        post_var = b * (1.0 - ac_prev) / (1.0 - ac)
        post_log = torch.log(torch.cat([post_var[1:2], post_var[1:]])) if n > 1 else torch.log(b)  # 1 step: no beta-tilde_1
        tmap = torch.arange(n, device="cpu") if timestep_map is None else torch.as_tensor(timestep_map, dtype=torch.int64, device="cpu")
        return cls(
            betas=b,
            alphas_cumprod=ac,
            alphas_cumprod_prev=ac_prev,
            alphas_cumprod_next=ac_next,
            sqrt_alphas_cumprod=ac.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1.0 - ac).sqrt(),
            log_one_minus_alphas_cumprod=torch.log(1.0 - ac),
            sqrt_recip_alphas_cumprod=(1.0 / ac).sqrt(),
            sqrt_recipm1_alphas_cumprod=(1.0 / ac - 1).sqrt(),
            posterior_variance=post_var,
            posterior_log_variance_clipped=post_log,
            posterior_mean_coef1=b * ac_prev.sqrt() / (1.0 - ac),
            posterior_mean_coef2=(1.0 - ac_prev) * (1.0 - b).sqrt() / (1.0 - ac),
            timestep_map=tmap,
            original_num_steps=int(original_num_steps or n),
        )

    @classmethod
    def create(cls, schedule: str, steps: int, respacing: str | Sequence[int] = "") -> "Schedule":
        """The tables of a named schedule with T=steps, respaced by a spec (see space_timesteps)."""
        base = cls.from_betas(make_betas(schedule, steps))
        return base.respaced(space_timesteps(base.num_timesteps, respacing, base.alphas_cumprod))

    def respaced(self, use_timesteps) -> "Schedule":
        """The process that keeps only `use_timesteps` of this one: betas recomputed so that every kept
        step has its original alpha_bar (guided-diffusion's SpacedDiffusion)."""
        keep = sorted({int(i) for i in use_timesteps})
        if not keep or keep[0] < 0 or keep[-1] >= self.num_timesteps:
            raise ConfigError(f"timesteps to keep must be a non-empty subset of 0..{self.num_timesteps - 1}")
        kept = self.alphas_cumprod[keep]
        prev = torch.cat([kept.new_ones(1), kept[:-1]])
        return Schedule.from_betas(1 - kept / prev, timestep_map=self.timestep_map[keep],
                                   original_num_steps=self.original_num_steps)

    def tables(self) -> dict[str, torch.Tensor]:
        """The tables by guided-diffusion's attribute names."""
        names = [f for f in self.__dataclass_fields__ if f != "original_num_steps"]
        return {n: getattr(self, n) for n in names}


def extract(table: torch.Tensor, t: torch.Tensor, ndim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """table[t] as [N, 1, ..., 1] (ndim dims) in dtype on t's device (float64 only where kept)."""
    if t.device.type == "mps":  # no float64 there: index on the CPU
        vals = table[t.cpu()].to(dtype).to(t.device)
    else:
        vals = table.to(t.device)[t].to(dtype)
    return vals.reshape(-1, *([1] * (ndim - 1)))
