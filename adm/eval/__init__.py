"""The paper's evaluation: FID, sFID, Inception Score, improved precision/recall, reference statistics.

Metric math (`frechet_distance`, `inception_score`, `precision_recall`) follows openai/guided-diffusion's
evaluations/evaluator.py; features come from the FID Inception-v3 (TF 2015-12-05 weights) with the TF
graph's preprocessing redone exactly (`inception_preprocess`), or from `TinyFeatures` for fast tests.
"""
from adm.eval.evaluate import EvalResult, evaluate, make_reference, reference_stats
from adm.eval.features import (Features, InceptionFeatures, TinyFeatures, find_inception_weights,
                               load_feature_network)
from adm.eval.images import ImageSource, from_array, open_fashion_mnist, open_images
from adm.eval.metrics import (feature_statistics, frechet_distance, inception_score, manifold_radii,
                              pairwise_sq_distances, precision_recall)
from adm.eval.resize import inception_preprocess, tf_resize_bilinear
from adm.eval.stats import BatchStats, compute_stats

__all__ = [
    "frechet_distance", "inception_score", "precision_recall", "feature_statistics", "manifold_radii",
    "pairwise_sq_distances", "tf_resize_bilinear", "inception_preprocess", "Features", "InceptionFeatures",
    "TinyFeatures", "find_inception_weights", "load_feature_network", "ImageSource", "from_array",
    "open_images", "open_fashion_mnist", "BatchStats", "compute_stats", "EvalResult", "evaluate",
    "make_reference", "reference_stats",
]
