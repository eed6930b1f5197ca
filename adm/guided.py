"""ADM-G: a diffusion model, a noisy classifier and a guidance scale in one object (paper section 4);
`upsample` samples ADM-U given low-resolution images (paper section 5)."""
from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch
from torch import nn

from adm.diffusion.config import DiffusionConfig
from adm.diffusion.process import Diffusion
from adm.data.images import to_uint8 as data_to_uint8
from adm.errors import ConfigError
from adm.runtime import CompiledWithFallback, cast_weights_once, channels_last as channels_last_layout, prefers_channels_last
from adm.sampling import SAMPLERS, get_sampler
from adm.sampling.guidance import (
    Interval,
    TimestepSigma,
    autoguidance,
    check_interval,
    classifier_free_guidance,
    classifier_guidance,
    limit_to_interval,
)
from adm.sampling.model import Callback, CondFn, ModelFn
from adm.sampling.seeds import SeededNoise, initial_noise

def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] floats in [-1, 1] -> [N, H, W, C] uint8 as the paper's .npz batches store them
    (adm.data.to_uint8, as a CPU tensor)."""
    return torch.from_numpy(data_to_uint8(images))


def _seeds(seed: int | Sequence[int], n: int) -> list[int]:
    """Image i gets seed + i (or seed[i]), so that it is the same whatever the batching."""
    if isinstance(seed, int):
        return [seed + i for i in range(n)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ConfigError(f"{len(seeds)} seeds given for {n} images")
    return seeds


def random_labels(seeds: list[int], num_classes: int) -> torch.Tensor:
    """One label per image, drawn from a generator of its own seed (a stream apart from its noise)."""
    salt = 0x5DEECE66D
    return torch.tensor([int(torch.randint(num_classes, (1,), generator=torch.Generator().manual_seed(s + salt)))
                         for s in seeds], dtype=torch.long)


def _as_labels(labels, n: int | None) -> torch.Tensor:
    y = torch.as_tensor(labels).long().reshape(-1)
    if n is not None and n != len(y):
        raise ConfigError(f"n={n} does not match the {len(y)} labels given")
    return y


def _check_range(y: torch.Tensor, num_classes: int, what: str) -> None:
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
        raise ConfigError(f"label {bad} does not exist for {what} with {num_classes} classes (0..{num_classes - 1})")


def generate(
    model: ModelFn,                              # model(x, t, **model_kwargs)
    diffusion_config: DiffusionConfig,           # the settings the model was trained with
    shape: Sequence[int],                        # [N, C, H, W]
    *,
    sampler: str = "ddpm",                       # one of adm.sampling.SAMPLERS
    steps: int | str | None = None,              # model calls, or a schedule spec (Sampler.respacing)
    seed: int | Sequence[int] = 0,               # image i uses seed + i
    model_kwargs: dict | None = None,            # per-image tensors ([N, ...]) are cut into batches
    cond_fn_for: Callable[[slice], CondFn | None] | None = None,  # guidance for a batch of images
    eta: float = 0.0,                            # DDIM only
    churn: float | None = None,                  # EDM's S_churn (heun, edm, euler; None: the sampler's default)
    batch_size: int | None = None,               # images per model call (default: all)
    clip_denoised: bool = True,
    progress: bool = False,
    callback: Callback | None = None,
    device=None,
) -> torch.Tensor:
    """[N, C, H, W] samples clamped to [-1, 1] (guidance can push the last step slightly past the
    range) from any sampler, with per-image seeded noise. `callback` runs once per model call."""
    sample_fn = get_sampler(sampler)
    spec = sample_fn.respacing(steps, diffusion_config.steps)
    extra = sample_fn.options(spec, eta=eta, churn=churn)
    diffusion = sample_fn.process(diffusion_config, spec)
    n = int(shape[0])
    seeds = _seeds(seed, n)
    batch_size = n if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    out = []
    for lo in range(0, n, batch_size):
        part = slice(lo, min(n, lo + batch_size))
        noise = SeededNoise(seeds[part])
        x_T = initial_noise(noise, (part.stop - part.start, *shape[1:]), device)
        kwargs = {k: v[part] if torch.is_tensor(v) and v.shape[:1] == (n,) else v
                  for k, v in (model_kwargs or {}).items()}
        out.append(sample_fn(model, diffusion, x_T, noise=noise, model_kwargs=kwargs, clip_denoised=clip_denoised,
                             cond_fn=cond_fn_for(part) if cond_fn_for else None, callback=callback,
                             progress=progress, **extra))
    return torch.cat(out).clamp(-1, 1)


def _device(module: nn.Module, device):
    if device is not None:
        return torch.device(device)
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def check_guide_model(model: nn.Module, guide: nn.Module, what: str = "the guide model") -> None:
    """ConfigError (one line) unless `guide` can guide `model` by autoguidance: an ADM of the same family,
    taking the same images and labels on the same diffusion (schedule, steps, what the output means)."""
    m, g = model.config, getattr(guide, "config", None)
    if getattr(g, "kind", None) != getattr(m, "kind", "ADM"):
        raise ConfigError(f"{what} is {getattr(g, 'kind', type(guide).__name__)}, not an {getattr(m, 'kind', 'ADM')} "
                          "like the model (autoguidance needs a weaker model of the same family)")
    if (g.image_size, g.in_channels) != (m.image_size, m.in_channels):
        raise ConfigError(f"{what} takes {g.image_size}x{g.image_size}x{g.in_channels} images but the model makes "
                          f"{m.image_size}x{m.image_size}x{m.in_channels}")
    if g.num_classes != m.num_classes:
        def classes(n: int) -> str:
            return f"has {n} classes" if n else "is unconditional"

        raise ConfigError(f"{what} {classes(g.num_classes)} but the model {classes(m.num_classes)}")
    keys = ("steps", "noise_schedule", "predict_xstart", "rescale_timesteps")
    diff = [k for k in keys if getattr(g.diffusion, k) != getattr(m.diffusion, k)]
    if diff:
        k = diff[0]
        raise ConfigError(f"{what} was trained on another diffusion ({k} {getattr(g.diffusion, k)!r}, the model's "
                          f"{getattr(m.diffusion, k)!r})")


class ADM_G(nn.Module):
    """Guided sampling (paper section 4): a diffusion model with a noisy classifier and a scale s
    (classifier guidance, Algorithms 1 and 2), or, with classifier=None, a model trained with label
    dropout (classifier-free guidance, eps_uncond + s (eps_cond - eps_uncond)), or, with a guide model,
    autoguidance (Karras et al. 2024: D_bad + s (D_good - D_bad), the guide a weaker ADM of the same family).

    Unconditional models can be guided by a classifier (the paper's Table 4). Scale 0 is unguided
    sampling for classifier guidance; scale 1 is unguided for classifier-free guidance and autoguidance.
    Every guidance composes with every sampler (adm.sampling.SAMPLERS) and with a guidance interval.
    """

    to_uint8 = staticmethod(to_uint8)

    def __init__(self, diffusion_model: nn.Module, classifier: nn.Module | None = None, scale: float = 1.0,
                 compile: bool | str | Callable = False, guide_model: nn.Module | None = None):
        """compile: torch.compile the model and classifier for sampling (True: the default backend, or a
        torch.compile backend such as "aot_eager"); if the compiler fails they run eagerly after a warning.
        guide_model: autoguidance's weaker model (the scale is its weight w); not with a classifier."""
        super().__init__()
        self.model = diffusion_model
        self.classifier = classifier
        self.guide_model = guide_model
        self.scale = self._check_scale(scale)
        self.compile = compile
        self._compiled: dict[int, CompiledWithFallback] = {}
        model_classes = self.model.config.num_classes
        if guide_model is not None:
            self._check_guide(guide_model)
        if classifier is not None:
            clf_classes = classifier.config.num_classes
            if model_classes and clf_classes != model_classes:
                raise ConfigError(
                    f"the classifier has {clf_classes} classes but the diffusion model {model_classes}"
                )
        elif guide_model is None and self.scale != 1.0 and self.null_label is None:
            raise ConfigError(
                "classifier-free guidance (no classifier, scale != 1) needs a model trained with label "
                "dropout (a config with null_class=True); pass a classifier for classifier guidance"
            )

    def _check_guide(self, guide: nn.Module) -> None:
        if self.classifier is not None:
            raise ConfigError("autoguidance (a guide model) and classifier guidance do not combine: "
                              "drop the classifier or the guide model")
        check_guide_model(self.model, guide)

    @staticmethod
    def _check_scale(scale: float) -> float:
        scale = float(scale)
        if not scale >= 0:
            raise ConfigError(f"the guidance scale must be >= 0, got {scale}")
        return scale

    def _maybe_compiled(self, module: nn.Module):
        """`module`, or its compiled wrapper (made once per module) when compile is on."""
        if not self.compile:
            return module
        wrapped = self._compiled.get(id(module))
        if wrapped is None or wrapped.module is not module:
            kwargs = {} if self.compile is True else {"backend": self.compile}
            wrapped = self._compiled[id(module)] = CompiledWithFallback(module, **kwargs)
        return wrapped

    @property
    def null_label(self) -> int | None:
        return getattr(self.model, "null_label", None)

    @property
    def num_classes(self) -> int:
        """Classes the labels index: the classifier's, else the model's (0: unconditional)."""
        if self.classifier is not None:
            return self.classifier.config.num_classes
        return self.model.config.num_classes

    def sample(
        self,
        labels: torch.Tensor | Sequence[int] | None = None,  # [N] class labels, or None for random / none
        n: int | None = None,                     # number of images when no labels are given
        *,
        steps: int | str | None = None,           # model calls (every sampler), or a schedule spec
        sampler: str = "ddpm",                    # a name of adm.sampling.SAMPLERS
        scale: float | None = None,               # overrides the object's guidance scale
        seed: int | Sequence[int] = 0,            # image i uses seed + i, whatever the batch size
        eta: float = 0.0,                         # DDIM's eta
        churn: float | None = None,               # EDM's S_churn: heun, euler (default 0), edm (default 40/256 a step)
        guidance_interval: Interval | None = None,  # (sigma_lo, sigma_hi): guide only there (None: everywhere)
        guide_model: nn.Module | None = None,     # autoguidance's weaker model (overrides the object's)
        batch_size: int | None = None,
        clip_denoised: bool = True,
        progress: bool = False,                   # tqdm bar over the steps
        callback: Callback | None = None,         # once per model call: {"i", "t", "x", "pred_xstart", ...}
        device=None,
        channels_last: bool | None = None,        # the networks' layout while sampling (None: the faster one)
    ) -> torch.Tensor:
        """[N, C, H, W] images in [-1, 1] (ADM_G.to_uint8 gives the paper's NHWC uint8).

        sampler and steps (an int N counts model calls for every sampler; a classifier-free or autoguided
        call, a doubled or paired UNet batch, counts once; the registry's rule, Sampler.respacing):
          "ddpm"          N steps evenly spaced (default 250)
          "ddim"          N steps, DDIM's stride where one gives N (default 25); eta as given
          "dpmpp2m"       N calls on N + 1 steps spaced in log-SNR (default 20)
          "euler"         N steps of EDM's Karras schedule (rho 7) from min(80, sigma_max) to the model's
                          sigma_min, then 0: N calls (default 25)
          "heun"          EDM's Heun on the Karras schedule: (N + 1) // 2 steps, the most with at most N calls
                          (K steps cost 2K - 1: the step to sigma = 0 is one Euler call), so N odd is N calls
                          and N even N - 1 (default 35: 18 steps)
          "edm"           heun with EDM's churn for ImageNet-64 with ADM: S_tmin 0.05, S_tmax 50,
                          S_noise 1.003, S_churn 40 at EDM's 256 steps scaled to K steps (40 K / 256, so
                          gamma = 40/256 at every step in [S_tmin, S_tmax]); churn= sets S_churn as EDM
                          defines it (gamma = min(S_churn / K, sqrt(2) - 1)); default 511 calls (256 steps:
                          EDM's exact setting)
          "euler_a"       Euler ancestral (eta 1) on the Karras schedule: N calls (default 25)
          "dpmpp2m_sigma" DPM-Solver++(2M) in the sigma frame on the Karras schedule: N calls (default 20)
        A string is a spec: a respacing ("250", "ddim25", "10,15,20", "logsnr11") for every sampler (for the
        sigma-frame ones: the sigmas of those steps, at the discrete samplers' exact timesteps: euler on
        "ddim25" is ddim on "ddim25"), or "karrasK" (K levels of the Karras schedule) for the sigma ones.

        Guidance: a classifier (scale s), classifier-free (no classifier, scale w != 1; a model with a null
        label) or autoguidance (guide_model, scale w), with any sampler. guidance_interval (lo, hi): guide
        only at noise levels sigma = sqrt((1 - abar) / abar) in [lo, hi] (closed; hi may be inf), in the
        sigma frame at the sampler's sigmas, in the discrete one at the timesteps of those sigmas; outside it
        the step is unguided (no classifier gradient, the conditional model, the good model).

        channels_last: run the networks channels-last within the call (their layout is restored after;
        results equal to float rounding). None picks it where it is faster (adm.runtime.prefers_channels_last:
        bf16 / fp16 autocast on CUDA, or on the CPU for networks of >= 128 base channels).
        """
        scale = self.scale if scale is None else self._check_scale(scale)
        interval = check_interval(guidance_interval)
        guide = self.guide_model if guide_model is None else guide_model
        if guide_model is not None:
            self._check_guide(guide_model)
        cfg = self.model.config
        num_classes = self.num_classes
        if labels is None:
            if n is None:
                raise ConfigError("give labels or a number of images n")
            y = random_labels(_seeds(seed, n), num_classes) if num_classes else None
        else:
            if not num_classes:
                raise ConfigError("labels were given for an unconditional model without a classifier")
            y = _as_labels(labels, n)
            _check_range(y, num_classes, "the classifier" if self.classifier is not None else "the model")
        count = n if y is None else len(y)
        device = _device(self.model, device)
        if y is not None:
            y = y.to(device)

        # sigma of the timesteps the model receives, on the unrespaced process (any sampler, any respacing)
        sigma_of = TimestepSigma(Diffusion.from_config(cfg.diffusion, "")) if interval is not None else None
        model_fn: ModelFn = self._maybe_compiled(self.model)
        cond_fn_for = None
        networks = [self.model]  # what the sampling runs (their layout for the call)
        if guide is not None:
            if scale != 1.0:
                model_fn = autoguidance(model_fn, self._maybe_compiled(guide), scale, interval, sigma_of)
                networks.append(guide)
        elif self.classifier is not None and scale > 0:
            classifier = self._maybe_compiled(self.classifier)
            networks.append(self.classifier)

            def cond_fn_for(part: slice) -> CondFn:
                return limit_to_interval(classifier_guidance(classifier, scale, labels=y[part]), interval, sigma_of)
        elif self.classifier is None and scale != 1.0:
            if self.null_label is None:
                raise ConfigError("classifier-free guidance needs a model trained with label dropout (null_class)")
            model_fn = classifier_free_guidance(model_fn, scale, self.null_label, interval, sigma_of)
        model_kwargs = {"y": y} if cfg.num_classes else {}
        with _sampling_networks(networks, device, channels_last):
            return generate(model_fn, cfg.diffusion, (count, cfg.in_channels, cfg.image_size, cfg.image_size),
                            sampler=sampler, steps=steps, seed=seed, model_kwargs=model_kwargs,
                            cond_fn_for=cond_fn_for, eta=eta, churn=churn, batch_size=batch_size,
                            clip_denoised=clip_denoised, progress=progress, callback=callback, device=device)


@contextlib.contextmanager
def _sampling_networks(networks: list[nn.Module], device: torch.device, channels_last: bool | None):
    """The networks as a sampling call runs them: channels-last where chosen (None: where it was measured
    faster), and under bf16 / fp16 autocast each weight cast once for the call (restored after)."""
    layout = prefers_channels_last(networks, device) if channels_last is None else bool(channels_last)
    with channels_last_layout(networks, layout), cast_weights_once(networks, device):
        yield


def _low_res_float(low_res: torch.Tensor) -> torch.Tensor:
    """Float [N, C, h, w] in [-1, 1]; uint8 input is taken as the paper's NHWC .npz layout."""
    if low_res.dtype == torch.uint8:
        return low_res.permute(0, 3, 1, 2).float() / 127.5 - 1
    return low_res.float()


def upsample(
    sr_model: nn.Module,                          # ADM_U: model(x_t, t, low_res=..., y=None)
    low_res: torch.Tensor,                        # [N, C, h, w] in [-1, 1], or uint8 [N, h, w, C]
    labels: torch.Tensor | Sequence[int] | None = None,  # [N] for class-conditional upsamplers
    *,
    steps: int | str | None = None,
    sampler: str = "ddpm",
    seed: int | Sequence[int] = 0,
    eta: float = 0.0,
    churn: float | None = None,
    batch_size: int | None = None,
    clip_denoised: bool = True,
    progress: bool = False,
    callback: Callback | None = None,
    device=None,
    channels_last: bool | None = None,            # as ADM_G.sample
) -> torch.Tensor:
    """[N, C, H, W] upsampled images in [-1, 1], H = the model's image_size."""
    cfg = sr_model.config
    device = _device(sr_model, device)
    low = _low_res_float(low_res).to(device)
    kwargs: dict = {"low_res": low}
    if cfg.num_classes:
        if labels is None:
            raise ConfigError(f"this upsampler is class-conditional ({cfg.num_classes} classes): pass labels")
        y = _as_labels(labels, low.shape[0])
        _check_range(y, cfg.num_classes, "the upsampler")
        kwargs["y"] = y.to(device)
    elif labels is not None:
        raise ConfigError("labels were given for an unconditional upsampler")
    shape = (low.shape[0], cfg.in_channels, cfg.image_size, cfg.image_size)
    with _sampling_networks([sr_model], device, channels_last):
        return generate(sr_model, cfg.diffusion, shape, sampler=sampler, steps=steps, seed=seed, model_kwargs=kwargs,
                        eta=eta, churn=churn, batch_size=batch_size, clip_denoised=clip_denoised, progress=progress,
                        callback=callback, device=device)


__all__ = ["ADM_G", "SAMPLERS", "check_guide_model", "generate", "random_labels", "to_uint8", "upsample"]
