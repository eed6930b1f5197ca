"""The paper's table rows as recipes (`adm reproduce`): checkpoints, sampler, steps, scale, labels, number of
samples and reference batch of each row that OpenAI's released files can reproduce, with the numbers
guided-diffusion's README states for it; OpenAI's evaluation batches (reference and published samples) and
the Inception file with the 1008-way logits, by name, downloaded into the cache and verified.

This module is data plus the few functions that turn it into URLs and cached files. A number the README
does not state is absent from `paper` (never guessed): docs/reproduce.md lists what is left out and why.

Every URL is read when it is used, so a mirror (or a test's local server) can stand in for OpenAI's and
NVIDIA's hosts: set $ADM_RELEASE_URL (checkpoints), $ADM_EVAL_URL (evaluation batches) or
$ADM_INCEPTION_URL, or assign the module constants.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

from adm.errors import ConfigError, lookup
from adm.hub import presets
from adm.hub.download import cache_dir, download, url_filename

# OpenAI's evaluation batches (guided-diffusion, evaluations/README.md): EVAL_URL + <folder>/<file>.
EVAL_URL = presets.RELEASE_URL + "ref_batches/"
# NVIDIA's TorchScript port of the TF Inception (2015-12-05) with the 1008-way logits (StyleGAN2-ADA / StyleGAN3
# metrics): the same convolutions as fid-helper's default_1.pt plus `output` (softmax/logits), so IS can be had.
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
INCEPTION_NAMES = ("nvidia", "inception-2015-12-05.pt")  # what `--inception` accepts for it

# Reference batches: statistics (mu, sigma, mu_s, sigma_s) of the whole training set computed with the TF
# Inception, plus 10,000 images (arr_0) for precision/recall. Note the 512 file has no "_labeled".
REFERENCE_BATCHES = {
    "VIRTUAL_imagenet64_labeled.npz": "imagenet/64/",
    "VIRTUAL_imagenet128_labeled.npz": "imagenet/128/",
    "VIRTUAL_imagenet256_labeled.npz": "imagenet/256/",
    "VIRTUAL_imagenet512.npz": "imagenet/512/",
    "VIRTUAL_lsun_bedroom256.npz": "lsun/bedroom/",
    "VIRTUAL_lsun_cat256.npz": "lsun/cat/",
    "VIRTUAL_lsun_horse256.npz": "lsun/horse/",
}
# OpenAI's own 50,000-sample batches of the rows below (evaluating one checks the evaluator, not the sampler).
SAMPLE_BATCHES = {
    "admnet_imagenet64.npz": "imagenet/64/",
    "admnet_guided_imagenet128.npz": "imagenet/128/",
    "admnet_guided_25step_imagenet128.npz": "imagenet/128/",
    "admnet_guided_imagenet256.npz": "imagenet/256/",
    "admnet_guided_25step_imagenet256.npz": "imagenet/256/",
    "admnet_guided_upsampled_imagenet256.npz": "imagenet/256/",
    "admnet_guided_imagenet512.npz": "imagenet/512/",
    "admnet_guided_25step_imagenet512.npz": "imagenet/512/",
    "admnet_guided_upsampled_imagenet512.npz": "imagenet/512/",
    "admnet_dropout_lsun_bedroom.npz": "lsun/bedroom/",
    "admnet_dropout_lsun_cat.npz": "lsun/cat/",
    "admnet_dropout_lsun_horse.npz": "lsun/horse/",
}
# SHA-256 of these files where a public digest is known (none is published today): the others are recorded
# at their first download and checked on every later use (adm.hub.download).
KNOWN_SHA256: dict[str, str] = {}

PAPER_SAMPLES = 50_000
METRICS = ("fid", "sfid", "inception_score", "precision", "recall")
METRIC_NAMES = {"fid": "FID", "sfid": "sFID", "inception_score": "Inception Score", "precision": "Precision",
                "recall": "Recall"}

# Cost model (docs/reproduce.md). GFLOP of one forward pass of one image, counted by
# torch.utils.flop_counter.FlopCounterMode on the meta device (the 64x64 model's 219 is BENCHMARKS.md's figure).
GFLOP_PER_CALL = {
    "ADM_diffusion_64_conditioned": 219.4, "ADM_classifier_64": 38.1,
    "ADM_diffusion_128_conditioned": 613.9, "ADM_classifier_128": 42.0,
    "ADM_diffusion_256_conditioned": 2239.7, "ADM_diffusion_256_unconditioned": 2239.7, "ADM_classifier_256": 146.6,
    "ADM_diffusion_512_conditioned": 3964.7, "ADM_classifier_512": 225.4,
    "ADM_U_64_256": 1263.3, "ADM_U_128_512": 5009.6,
    "ADM_lsun_bedroom": 2239.7, "ADM_lsun_cat": 2239.7, "ADM_lsun_horse": 2239.7,
}
CLASSIFIER_GRADIENT_COST = 2.3  # a guidance step's classifier forward + backward to x, in forwards (BENCHMARKS.md)
# Assumed sustained throughput (NOT measured: BENCHMARKS.md has no GPU figures yet), as fractions of the H100 SXM
# dense peaks BENCHMARKS.md lists (989.4 TFLOP/s bf16/fp16, 66.9 fp32): 30% with autocast, 60% in strict fp32.
ASSUMED_TFLOPS = {"bf16/fp16": 300.0, "fp32": 40.0}


@dataclass(frozen=True)
class Recipe:
    """One row of the paper's tables: how to make its samples and what to compare them with."""

    name: str
    title: str                       # what the row is, as the README's tables name it
    model: str                       # diffusion preset (its released file)
    reference: str                   # reference batch (REFERENCE_BATCHES)
    classifier: str | None = None    # noisy classifier preset (ADM-G), None: unguided
    scale: float | None = None       # classifier scale
    sampler: str = "ddpm"
    steps: int = 250                 # respaced steps of the base model
    upsampler: str | None = None     # ADM-U preset (the cascade), None: none
    upsample_sampler: str = "ddpm"
    upsample_steps: int = 250
    labels: str = "random"           # uniformly random classes, one per image, drawn from its seed
    num: int = PAPER_SAMPLES
    paper: dict[str, float] = field(default_factory=dict)  # what the README states; absent: not stated
    source: str = ""                 # where `paper` (and the settings) come from
    published: str | None = None     # OpenAI's sample batch of this row (SAMPLE_BATCHES)
    published_metrics: dict[str, float] = field(default_factory=dict)  # official evaluator on `published`
    notes: tuple[str, ...] = ()

    def presets(self) -> list[tuple[str, str]]:
        """(role, preset) of every network this recipe runs."""
        roles = [("model", self.model), ("classifier", self.classifier), ("upsampler", self.upsampler)]
        return [(r, p) for r, p in roles if p]

    def sampling(self) -> str:
        """One line: sampler, steps, scale, cascade."""
        text = f"{self.sampler.upper()} {self.steps}"
        if self.classifier:
            text += f", scale {self.scale:g}"
        if self.upsampler:
            text += f", + {self.upsampler} {self.upsample_sampler.upper()} {self.upsample_steps}"
        return text


_README = "guided-diffusion README, Results"
_GUIDED = _README + " (pure guided diffusion); scale: its sampling command"
_CASCADE = _README + " (upsampling and guidance together)"
_LSUN = _README + " (unguided, LSUN); 1000 steps: its LSUN note"
_NO_PAPER = "the README states no figure for this row: the report shows the measured values alone"
_SCALE_ASSUMED = ("the README gives no classifier scale for 25-step DDIM at this size: the 250-step row's scale "
                  "is used (an assumption, docs/reproduce.md)")
_CASCADE_SCALE = ("the README does not restate the base model's scale for the cascade: the base row's scale "
                  "is used (an assumption, docs/reproduce.md)")

RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("imagenet64", "ImageNet 64x64, ADM-G", "ADM_diffusion_64_conditioned", "VIRTUAL_imagenet64_labeled.npz",
           "ADM_classifier_64", 1.0, paper={"fid": 2.07, "precision": 0.74, "recall": 0.63}, source=_GUIDED,
           published="admnet_imagenet64.npz",
           notes=("needs the dropout model: 64x64_diffusion.pt was trained with dropout 0.1",
                  "OpenAI's only published 64x64 sample batch is named admnet_imagenet64.npz (no 'guided')")),
    Recipe("imagenet128", "ImageNet 128x128, ADM-G", "ADM_diffusion_128_conditioned",
           "VIRTUAL_imagenet128_labeled.npz", "ADM_classifier_128", 0.5,
           paper={"fid": 2.97, "precision": 0.78, "recall": 0.59}, source=_GUIDED,
           published="admnet_guided_imagenet128.npz"),
    Recipe("imagenet256", "ImageNet 256x256, ADM-G", "ADM_diffusion_256_conditioned",
           "VIRTUAL_imagenet256_labeled.npz", "ADM_classifier_256", 1.0,
           paper={"fid": 4.59, "precision": 0.82, "recall": 0.52}, source=_GUIDED,
           published="admnet_guided_imagenet256.npz"),
    Recipe("imagenet512", "ImageNet 512x512, ADM-G", "ADM_diffusion_512_conditioned", "VIRTUAL_imagenet512.npz",
           "ADM_classifier_512", 4.0, paper={"fid": 7.72, "precision": 0.87, "recall": 0.42}, source=_GUIDED,
           published="admnet_guided_imagenet512.npz"),
    Recipe("imagenet256-uncond", "ImageNet 256x256, unconditional model + classifier (ADM-G)",
           "ADM_diffusion_256_unconditioned", "VIRTUAL_imagenet256_labeled.npz", "ADM_classifier_256", 10.0,
           source="guided-diffusion README, sampling command of the unconditional 256x256 model",
           notes=(_NO_PAPER,)),
    Recipe("imagenet256-cascade", "ImageNet 256x256, ADM-G + ADM-U (64 -> 256)", "ADM_diffusion_64_conditioned",
           "VIRTUAL_imagenet256_labeled.npz", "ADM_classifier_64", 1.0, upsampler="ADM_U_64_256",
           paper={"fid": 3.94, "precision": 0.83, "recall": 0.53}, source=_CASCADE,
           published="admnet_guided_upsampled_imagenet256.npz",
           published_metrics={"inception_score": 215.84, "fid": 3.9426, "sfid": 6.1404, "precision": 0.8265,
                              "recall": 0.5309},
           notes=(_CASCADE_SCALE,)),
    Recipe("imagenet512-cascade", "ImageNet 512x512, ADM-G + ADM-U (128 -> 512)", "ADM_diffusion_128_conditioned",
           "VIRTUAL_imagenet512.npz", "ADM_classifier_128", 0.5, upsampler="ADM_U_128_512",
           paper={"fid": 3.85, "precision": 0.84, "recall": 0.53}, source=_CASCADE,
           published="admnet_guided_upsampled_imagenet512.npz", notes=(_CASCADE_SCALE,)),
    Recipe("imagenet128-ddim25", "ImageNet 128x128, ADM-G, 25 DDIM steps", "ADM_diffusion_128_conditioned",
           "VIRTUAL_imagenet128_labeled.npz", "ADM_classifier_128", 1.0, sampler="ddim", steps=25,
           source="guided-diffusion README, 25-step DDIM command for 128x128 (--classifier_scale 1.0)",
           published="admnet_guided_25step_imagenet128.npz", notes=(_NO_PAPER,)),
    Recipe("imagenet256-ddim25", "ImageNet 256x256, ADM-G, 25 DDIM steps", "ADM_diffusion_256_conditioned",
           "VIRTUAL_imagenet256_labeled.npz", "ADM_classifier_256", 1.0, sampler="ddim", steps=25,
           source="guided-diffusion evaluations README (ADM-G, 25 step batch)",
           published="admnet_guided_25step_imagenet256.npz", notes=(_NO_PAPER, _SCALE_ASSUMED)),
    Recipe("imagenet512-ddim25", "ImageNet 512x512, ADM-G, 25 DDIM steps", "ADM_diffusion_512_conditioned",
           "VIRTUAL_imagenet512.npz", "ADM_classifier_512", 4.0, sampler="ddim", steps=25,
           source="guided-diffusion evaluations README (ADM-G, 25 step batch)",
           published="admnet_guided_25step_imagenet512.npz", notes=(_NO_PAPER, _SCALE_ASSUMED)),
    Recipe("lsun-bedroom", "LSUN bedroom 256x256, ADM (dropout)", "ADM_lsun_bedroom", "VIRTUAL_lsun_bedroom256.npz",
           steps=1000, paper={"fid": 1.90, "precision": 0.66, "recall": 0.51}, source=_LSUN,
           published="admnet_dropout_lsun_bedroom.npz"),
    Recipe("lsun-cat", "LSUN cat 256x256, ADM (dropout)", "ADM_lsun_cat", "VIRTUAL_lsun_cat256.npz",
           steps=1000, paper={"fid": 5.57, "precision": 0.63, "recall": 0.52}, source=_LSUN,
           published="admnet_dropout_lsun_cat.npz"),
    Recipe("lsun-horse", "LSUN horse 256x256, ADM (dropout)", "ADM_lsun_horse", "VIRTUAL_lsun_horse256.npz",
           steps=1000, paper={"fid": 2.57, "precision": 0.71, "recall": 0.55}, source=_LSUN,
           published="admnet_dropout_lsun_horse.npz",
           notes=("needs the dropout model lsun_horse.pt, not lsun_horse_nodropout.pt",)),
]}


def names() -> list[str]:
    return list(RECIPES)


def get(name: str) -> Recipe:
    """The recipe of this row; an unknown name raises ConfigError naming the closest row."""
    return lookup(RECIPES, name, "row", f"rows: {', '.join(RECIPES)}; see `adm reproduce --list`")


# -- files -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemoteFile:
    """A file a recipe needs: its name in the cache, where it comes from and its known digest (if any)."""

    role: str      # model, classifier, upsampler, reference, samples, inception
    name: str      # file name in the cache
    url: str
    sha256: str | None = None
    preset: str | None = None

    @property
    def path(self) -> Path:
        return cache_dir() / self.name

    def status(self) -> str:
        """'cached', 'partial (N bytes)' or 'not downloaded'."""
        if self.path.is_file():
            return "cached"
        part = self.path.with_name(self.name + ".part")
        if part.is_file():
            return f"partial ({part.stat().st_size:,} bytes: a run resumes it)"
        return "not downloaded"

    def size(self) -> int | None:
        """Bytes, where known (the cached file's)."""
        return self.path.stat().st_size if self.path.is_file() else None

    def recorded_sha256(self) -> str | None:
        """The digest it was verified against (its known one, else the one recorded at its download)."""
        if self.sha256:
            return self.sha256
        try:
            text = self.path.with_name(self.name + ".sha256").read_text().split()
        except OSError:
            return None
        return text[0] if text else None

    def fetch(self, progress: bool = True) -> Path:
        """The verified cached copy, downloaded (or resumed) first where needed."""
        return download(self.url, self.name, sha256=self.sha256, progress=progress)


def release_url() -> str:
    """Where the checkpoints come from: $ADM_RELEASE_URL, else presets.RELEASE_URL."""
    return os.environ.get("ADM_RELEASE_URL") or presets.RELEASE_URL


def eval_url() -> str:
    """Where the evaluation batches come from: $ADM_EVAL_URL, else EVAL_URL."""
    return os.environ.get("ADM_EVAL_URL") or EVAL_URL


def inception_url() -> str:
    return os.environ.get("ADM_INCEPTION_URL") or INCEPTION_URL


def _slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def preset_file(role: str, name: str) -> RemoteFile:
    """The released checkpoint of a preset."""
    p = presets.get(name)
    if p.file is None:
        raise ConfigError(f"OpenAI released no weights for {name}; the closest released preset is {p.closest!r}")
    return RemoteFile(role, p.file, _slash(release_url()) + p.file, p.sha256, name)


def batch_name(text: str) -> str | None:
    """The official batch that `text` names ('VIRTUAL_imagenet256_labeled.npz', with or without .npz), else None."""
    name = text if text.endswith(".npz") else text + ".npz"
    return name if name in REFERENCE_BATCHES or name in SAMPLE_BATCHES else None


def batch_file(name: str, role: str = "reference") -> RemoteFile:
    """An official evaluation batch (reference or published samples) by name."""
    found = batch_name(name)
    if found is None:
        every = [*REFERENCE_BATCHES, *SAMPLE_BATCHES]
        close = difflib.get_close_matches(name, every, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown evaluation batch {name!r}{hint}")
    folder = REFERENCE_BATCHES.get(found) or SAMPLE_BATCHES[found]
    return RemoteFile(role, found, _slash(eval_url()) + folder + found, KNOWN_SHA256.get(found))


def inception_file() -> RemoteFile:
    """NVIDIA's Inception TorchScript with the 1008-way logits."""
    name = INCEPTION_NAMES[1]
    return RemoteFile("inception", name, inception_url(), KNOWN_SHA256.get(name))


def resolve_batch(text: str, progress: bool = True) -> str:
    """`adm evaluate`'s REF / SAMPLES: an existing path as it is; else an official batch's name: its verified
    cached copy (downloaded first where needed); else `text` unchanged (the evaluator names what is wrong)."""
    if os.path.exists(text) or batch_name(text) is None:
        return text
    return str(batch_file(text).fetch(progress))


def resolve_inception(text: str | None, progress: bool = True) -> str | None:
    """`--inception`: 'nvidia' (or its file name, when no such local file exists) or an http(s) URL: the verified
    cached download; a path or None: unchanged."""
    if text is None:
        return None
    if text.lower() == INCEPTION_NAMES[0] or (text == INCEPTION_NAMES[1] and not os.path.exists(text)):
        return str(inception_file().fetch(progress))
    if text.startswith(("http://", "https://")):
        return str(download(text, url_filename(text), progress=progress))
    return text


def files(recipe: Recipe, *, published: bool = False, inception: str | None = None) -> list[RemoteFile]:
    """Everything a run of `recipe` downloads: checkpoints (none for `published`), the reference batch,
    OpenAI's sample batch (`published`), NVIDIA's Inception (`inception` = 'nvidia')."""
    out = [] if published else [preset_file(role, name) for role, name in recipe.presets()]
    out.append(batch_file(recipe.reference))
    if published:
        if recipe.published is None:
            raise ConfigError(f"OpenAI published no sample batch for the row {recipe.name}")
        out.append(batch_file(recipe.published, "samples"))
    if inception is not None and (inception.lower() == INCEPTION_NAMES[0]
                                  or (inception == INCEPTION_NAMES[1] and not os.path.exists(inception))):
        out.append(inception_file())
    elif inception is not None and inception.startswith(("http://", "https://")):
        out.append(RemoteFile("inception", url_filename(inception), inception))
    return out


# -- cost --------------------------------------------------------------------------------------------
def model_calls(preset: str, sampler: str, steps: int) -> int:
    """Network evaluations per image of `sampler` with `steps` respaced steps on this preset's diffusion."""
    from adm.sampling import get_sampler

    diffusion_steps = presets.get(preset).config.diffusion.steps
    s = get_sampler(sampler)
    return s.model_calls(diffusion_steps, s.respacing(steps, diffusion_steps))


def cost(recipe: Recipe, num: int | None = None) -> dict:
    """Model calls of a run of `num` images (default: the recipe's) and, where every network's FLOPs are in
    GFLOP_PER_CALL, the total TFLOP and GPU-hours at ASSUMED_TFLOPS (estimates)."""
    n = recipe.num if num is None else num
    base = model_calls(recipe.model, recipe.sampler, recipe.steps)
    out = {"images": n, "unet_calls_per_image": base, "classifier_gradients_per_image": base if recipe.classifier else 0,
           "upsampler_calls_per_image": 0}
    if recipe.upsampler:
        out["upsampler_calls_per_image"] = model_calls(recipe.upsampler, recipe.upsample_sampler, recipe.upsample_steps)
    out["unet_calls"] = n * base
    out["classifier_gradients"] = n * out["classifier_gradients_per_image"]
    out["upsampler_calls"] = n * out["upsampler_calls_per_image"]
    needed = [p for _, p in recipe.presets()]
    if all(p in GFLOP_PER_CALL for p in needed):
        gflop = base * GFLOP_PER_CALL[recipe.model]
        if recipe.classifier:
            gflop += base * CLASSIFIER_GRADIENT_COST * GFLOP_PER_CALL[recipe.classifier]
        if recipe.upsampler:
            gflop += out["upsampler_calls_per_image"] * GFLOP_PER_CALL[recipe.upsampler]
        out["tflop_per_image"] = gflop / 1e3
        out["pflop"] = n * gflop / 1e6
        out["gpu_hours_estimate"] = {k: n * gflop / 1e3 / v / 3600 for k, v in ASSUMED_TFLOPS.items()}
    return out
