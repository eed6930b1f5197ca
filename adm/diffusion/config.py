"""The diffusion settings a model was trained with (guided-diffusion's diffusion flags)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class DiffusionConfig:
    steps: int = 1000                  # T, the length of the training chain
    noise_schedule: str = "linear"     # "linear" (scaled to T) or "cosine" (Nichol & Dhariwal 2021)
    learn_sigma: bool = False          # model outputs 2*C channels: eps and the variance interpolation v
    sigma_small: bool = False          # fixed variance: posterior beta-tilde (True) or beta (False)
    use_kl: bool = False               # train on the variational bound alone (rescaled_kl)
    predict_xstart: bool = False       # model predicts x_0 instead of eps
    rescale_timesteps: bool = False    # feed the model t * 1000 / T
    rescale_learned_sigmas: bool = False  # rescaled_mse (hybrid loss) instead of mse when learn_sigma
    timestep_respacing: str = ""       # "" (all steps), "250", "10,15,20" or "ddim25"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiffusionConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **changes) -> "DiffusionConfig":
        return replace(self, **changes)
