"""Metric math (FID, IS, precision/recall) against derived answers and the evaluator's own formulas."""
import math
import warnings

import numpy as np
import pytest
import torch

from adm.errors import DataError
from adm.eval import metrics
from adm.eval.metrics import (feature_statistics, frechet_distance, inception_score, manifold_radii,
                              pairwise_sq_distances, precision_recall, trace_sqrt_product)

scipy_linalg = pytest.importorskip("scipy.linalg")


def evaluator_fid(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """The evaluator's FIDStatistics.frechet_distance: scipy sqrtm of the product, eps offset if singular."""
    covmean = scipy_linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy_linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def gaussian_stats(rng, n, d, scale=1.0, shift=0.0):
    x = rng.standard_normal((n, d)) @ (rng.standard_normal((d, d)) * scale / math.sqrt(d)) + shift
    return np.mean(x, 0), np.cov(x, rowvar=False)


# -- FID ------------------------------------------------------------------------------------------
def test_fid_identical_statistics_is_zero():
    mu, sigma = gaussian_stats(np.random.default_rng(0), 500, 32)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)


def test_fid_diagonal_closed_form():
    rng = np.random.default_rng(1)
    d = 16
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    v1, v2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)


def test_fid_shift_only_is_squared_mean_distance():
    mu, sigma = gaussian_stats(np.random.default_rng(2), 400, 24)
    delta = np.full(24, 0.5)
    assert frechet_distance(mu, sigma, mu + delta, sigma) == pytest.approx(24 * 0.25, rel=1e-6)


def test_fid_matches_evaluator_full_rank():
    rng = np.random.default_rng(3)
    a, b = gaussian_stats(rng, 2000, 64), gaussian_stats(rng, 2000, 64, scale=1.3, shift=0.2)
    assert frechet_distance(*a, *b) == pytest.approx(evaluator_fid(*a, *b), rel=1e-6)


def test_fid_matches_evaluator_when_singular():
    # N <= D: both covariances are singular, the regime where the evaluator may need its eps offset.
    rng = np.random.default_rng(4)
    a, b = gaussian_stats(rng, 20, 48), gaussian_stats(rng, 30, 48, shift=0.3)
    assert frechet_distance(*a, *b) == pytest.approx(evaluator_fid(*a, *b), rel=1e-4)


def test_trace_sqrt_product_against_eigenvalues_of_product():
    rng = np.random.default_rng(5)
    s1, s2 = gaussian_stats(rng, 10, 30)[1], gaussian_stats(rng, 300, 30)[1]  # s1 has rank 9
    eig = np.linalg.eigvals(s1 @ s2)
    expected = np.sqrt(np.clip(eig.real, 0, None)).sum()
    assert trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-6)


def test_fid_rejects_mismatched_and_nan_statistics():
    mu, sigma = np.zeros(4), np.eye(4)
    with pytest.raises(DataError, match="do not match"):
        frechet_distance(mu, sigma, np.zeros(5), np.eye(5))
    with pytest.raises(DataError, match="NaN"):
        frechet_distance(mu, sigma, np.full(4, np.nan), sigma)


def test_feature_statistics_match_numpy_and_warn_when_n_le_d():
    x = np.random.default_rng(6).standard_normal((101, 8)).astype(np.float32) * 3 + 50
    mu, sigma = feature_statistics(x, chunk=16)  # several chunks
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-12)
    with pytest.warns(UserWarning, match="not meaningful"):
        feature_statistics(x[:8])
    with pytest.raises(DataError, match="NaN"):
        feature_statistics(np.where(np.arange(8) == 3, np.nan, x[:20]))


# -- Inception Score ------------------------------------------------------------------------------
def evaluator_is(preds, split_size=5000):
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i:i + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def test_is_of_uniform_probabilities_is_one():
    assert inception_score(np.full((100, 1008), 1 / 1008)) == pytest.approx(1.0, abs=1e-12)


def test_is_of_confident_evenly_spread_predictions_is_number_of_classes():
    probs = np.eye(10)[np.arange(200) % 10]  # one-hot; 0 log 0 = 0
    assert inception_score(probs) == pytest.approx(10.0, rel=1e-12)


def test_is_is_mean_over_splits():
    probs = np.concatenate([np.eye(4)[np.arange(8) % 4], np.eye(4)[[0] * 8]])
    # split 1: 4 classes evenly -> 4; split 2: all class 0 -> 1
    assert inception_score(probs, split_size=8) == pytest.approx(2.5, rel=1e-12)


def test_is_matches_evaluator_formula():
    logits = np.random.default_rng(7).standard_normal((1234, 50)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert inception_score(probs, split_size=500) == pytest.approx(evaluator_is(probs, 500), rel=1e-10)
    assert inception_score(torch.from_numpy(probs)) == pytest.approx(evaluator_is(probs), rel=1e-10)


# -- precision / recall ---------------------------------------------------------------------------
def reference_pr(real, fake, k=3):
    """Brute force of the evaluator's ManifoldEstimator: squared distances, k-th NN incl. self, '<='."""
    def sq(u, v):
        return np.maximum((u * u).sum(1)[:, None] - 2 * u @ v.T + (v * v).sum(1)[None], 0)

    r_real = np.partition(sq(real, real), k, axis=1)[:, k]
    r_fake = np.partition(sq(fake, fake), k, axis=1)[:, k]
    precision = np.mean((sq(fake, real) <= r_real[None]).any(1))
    recall = np.mean((sq(real, fake) <= r_fake[None]).any(1))
    return precision, recall


def test_pr_identical_sets_are_one_and_far_sets_zero():
    x = np.random.default_rng(8).standard_normal((60, 32)).astype(np.float32)
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 100) == (0.0, 0.0)


def test_pr_hand_worked_line():
    # real at 0..4: squared radii (3rd neighbour) 9, 4, 4, 4, 9. fake -2.5 (6.25 <= 9 from 0), 6 (4 <= 9
    # from 4), 10 (36 > 9) and 2.5: precision 3/4. fake radii are >= 12.25, so every real point is covered.
    real = np.arange(5, dtype=np.float32)[:, None]
    fake = np.array([[-2.5], [6.0], [10.0], [2.5]], np.float32)
    np.testing.assert_array_equal(manifold_radii(torch.from_numpy(real)).numpy(), [9, 4, 4, 4, 9])
    assert precision_recall(real, fake) == (0.75, 1.0)


def test_pr_matches_brute_force_exactly_on_float16_exact_values():
    # Small integers: every float16 rounding of the evaluator's distance block is exact.
    rng = np.random.default_rng(9)
    real = rng.integers(0, 6, (70, 8)).astype(np.float32)
    fake = rng.integers(1, 7, (50, 8)).astype(np.float32)
    assert precision_recall(real, fake) == pytest.approx(reference_pr(real, fake), abs=0)


def test_pr_blocked_equals_unblocked(monkeypatch):
    rng = np.random.default_rng(10)
    real, fake = rng.standard_normal((53, 16)), rng.standard_normal((41, 16)) * 1.2
    whole = precision_recall(real, fake)
    monkeypatch.setattr(metrics, "_BLOCK", 7)  # many row and column blocks, ragged ends
    assert precision_recall(real, fake) == whole
    assert whole == pytest.approx(reference_pr(real, fake), abs=1 / 41)  # float16 rounding may move a point


def test_pairwise_distances_float16_and_fallback():
    u = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(pairwise_sq_distances(u, u).numpy(), [[0, 8], [8, 0]])
    big = u * 1000  # squared norms overflow float16: the evaluator falls back to float32
    d = pairwise_sq_distances(big, big)
    assert torch.isfinite(d).all() and d[0, 1].item() == pytest.approx(8e6, rel=1e-6)
    assert (pairwise_sq_distances(u, u + 1e-3) >= 0).all()  # clamped at zero


def test_pr_needs_four_images_and_finite_features():
    x = np.zeros((10, 4), np.float32)
    with pytest.raises(DataError, match="at least 4 sample images"):
        precision_recall(x, x[:3])
    with pytest.raises(DataError, match="NaN"):
        precision_recall(np.full((5, 4), np.nan), x)
    with pytest.raises(DataError, match="feature sizes differ"):
        precision_recall(x, np.zeros((10, 5)))


def test_no_warning_for_enough_images():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feature_statistics(np.random.default_rng(11).standard_normal((50, 4)))
