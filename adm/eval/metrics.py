"""The paper's sample-quality metrics on feature vectors: FID, sFID, Inception Score, precision/recall.

Each follows the math of the paper's evaluator (openai/guided-diffusion, evaluations/evaluator.py):
FID of Heusel et al. 2017, IS of Salimans et al. 2016 over splits of 5000, and the improved
precision/recall of Kynkaanniemi et al. 2019 with k = 3 and squared distances.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from adm.errors import DataError

K_NEIGHBOURS = 3  # the evaluator's nhood_sizes=(3,)
_BLOCK = 4096  # rows/columns per distance block: memory stays O(_BLOCK^2) whatever N is


def _check_finite(name: str, x: np.ndarray) -> None:
    if not np.all(np.isfinite(x)):
        raise DataError(f"{name} contains NaN or infinite values: the features are broken "
                        f"(check the feature network and the images)")


def feature_statistics(feats: np.ndarray | torch.Tensor, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D x D] (float64, as np.cov) of [N x D] features, in bounded memory."""
    feats = feats.detach().cpu().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats)
    if feats.ndim != 2 or len(feats) < 2:
        raise DataError(f"statistics need at least 2 feature vectors of shape [N x D], got shape {tuple(feats.shape)}")
    _check_finite("features", feats)
    n, d = feats.shape
    if n <= d:
        warnings.warn(f"{n} images for {d}-dimensional features: the covariance is singular (N <= D), "
                      f"so FID/sFID are not meaningful; use more images than {d}", stacklevel=2)
    shift = feats[:chunk].astype(np.float64).mean(0)  # centring first keeps the sums well conditioned
    s, ss = np.zeros(d), np.zeros((d, d))
    for i in range(0, n, chunk):
        x = feats[i:i + chunk].astype(np.float64) - shift
        s += x.sum(0)
        ss += x.T @ x
    mu = shift + s / n
    sigma = (ss - np.outer(s, s) / n) / (n - 1)
    return mu, (sigma + sigma.T) / 2


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD [D x D] matrix (negative rounding-error eigenvalues -> 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr(sqrtm(sigma1 @ sigma2)) for PSD [D x D] matrices, via the symmetric sqrt(s1) s2 sqrt(s1)."""
    # s1 s2 and sqrt(s1) s2 sqrt(s1) are similar, so they share eigenvalues; the latter is symmetric
    # PSD, so eigvalsh is stable even where s1 s2 is (near-)singular and sqrtm would need an eps offset.
    r = _sqrt_psd(sigma1)
    m = r @ sigma2 @ r
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance |mu1 - mu2|^2 + tr(s1 + s2 - 2 sqrt(s1 s2)) between Gaussians ([D], [D x D] each)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise DataError(f"statistics do not match: mean {mu1.shape} vs {mu2.shape}, covariance {sigma1.shape} vs "
                        f"{sigma2.shape} (were they computed with the same feature network?)")
    for name, x in (("mean", mu1), ("covariance", sigma1), ("mean", mu2), ("covariance", sigma2)):
        _check_finite(name, x)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2))


def inception_score(probs: np.ndarray | torch.Tensor, split_size: int = 5000) -> float:
    """Mean over splits of exp(E_x KL(p(y|x) || p(y))) for [N x K] class probabilities (0 log 0 = 0)."""
    probs = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    if probs.ndim != 2 or len(probs) == 0:
        raise DataError(f"inception_score needs [N x K] probabilities, got shape {tuple(probs.shape)}")
    _check_finite("class probabilities", probs)
    probs = probs.astype(np.float64)
    scores = []
    for i in range(0, len(probs), split_size):  # the last split may be shorter, as in the evaluator
        part = probs[i:i + split_size]
        marginal = part.mean(0, keepdims=True)
        ratio = np.where(part > 0, part / np.where(marginal > 0, marginal, 1), 1)
        kl = (part * np.log(ratio)).sum(1).mean()
        scores.append(math.exp(kl))
    return float(np.mean(scores))


def pairwise_sq_distances(u: torch.Tensor, v: torch.Tensor, half: bool = True) -> torch.Tensor:
    """Squared Euclidean distances [N x M] of [N x D] and [M x D], clamped at 0, as the evaluator's DistanceBlock."""
    # The evaluator computes |u|^2 - 2 u.v + |v|^2 in float16 and falls back to float32 only where
    # that overflows. We round to float16 at the same places (inputs, squares, norms, product, sums)
    # while accumulating in float32, as a GPU's float16 matmul does.
    u, v = u.float(), v.float()
    if half:
        h = lambda x: x.half().float()  # noqa: E731  round to the nearest float16
        u16, v16 = h(u), h(v)
        nu, nv = h(h(u16 * u16).sum(1)), h(h(v16 * v16).sum(1))
        d = h(h(nu[:, None] - h(2 * h(u16 @ v16.T))) + nv[None, :]).clamp_min(0)
        if torch.isfinite(d).all():
            return d
    nu, nv = (u * u).sum(1), (v * v).sum(1)
    return (nu[:, None] - 2 * (u @ v.T) + nv[None, :]).clamp_min(0)


def manifold_radii(feats: torch.Tensor, k: int = K_NEIGHBOURS, block: int = _BLOCK) -> torch.Tensor:
    """[N] squared distance from each of [N x D] features to its k-th nearest neighbour in the same set."""
    # The evaluator sorts each row including the point itself (distance 0) and takes index k.
    n = len(feats)
    radii = torch.empty(n, device=feats.device)
    for i in range(0, n, block):
        best = None  # running k+1 smallest distances of this row block, over column blocks
        for j in range(0, n, block):
            d = pairwise_sq_distances(feats[i:i + block], feats[j:j + block])
            d = d if best is None else torch.cat([best, d], 1)
            best = d.topk(min(k + 1, d.shape[1]), dim=1, largest=False).values
        radii[i:i + block] = best[:, k]
    return radii


def _covered(feats: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int = _BLOCK) -> torch.Tensor:
    """[N] bool: whether each of [N x D] features lies in some ball (centre [M x D], squared radius [M])."""
    out = torch.zeros(len(feats), dtype=torch.bool, device=feats.device)
    for i in range(0, len(feats), block):
        for j in range(0, len(centres), block):
            d = pairwise_sq_distances(feats[i:i + block], centres[j:j + block])
            out[i:i + block] |= (d <= radii[None, j:j + block]).any(1)
    return out


def precision_recall(real_feats: np.ndarray | torch.Tensor,
                     fake_feats: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """Improved precision (fake in real manifold) and recall (real in fake manifold) of [N x D], [M x D] features."""
    real, fake = (torch.as_tensor(x).float() for x in (real_feats, fake_feats))
    fake = fake.to(real.device)  # computed where the reference features live (GPU if given there)
    for name, x in (("reference", real), ("sample", fake)):
        if x.ndim != 2:
            raise DataError(f"precision/recall needs [N x D] {name} features, got shape {tuple(x.shape)}")
        if len(x) < K_NEIGHBOURS + 1:
            raise DataError(f"precision/recall needs at least {K_NEIGHBOURS + 1} {name} images "
                            f"(k={K_NEIGHBOURS} nearest neighbours), got {len(x)}")
        if not torch.isfinite(x).all():
            raise DataError(f"{name} features contain NaN or infinite values: the features are broken")
    if real.shape[1] != fake.shape[1]:
        raise DataError(f"feature sizes differ: reference {real.shape[1]}, samples {fake.shape[1]}")
    precision = _covered(fake, real, manifold_radii(real)).double().mean().item()
    recall = _covered(real, fake, manifold_radii(fake)).double().mean().item()
    return precision, recall
