"""Evaluate a sample batch against a reference batch (FID, sFID, IS, precision, recall); build references."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from adm.errors import DataError
from adm.eval.features import InceptionFeatures, TinyFeatures, load_feature_network
from adm.eval.images import ImageSource, format_shape, npz_keys, open_images, open_preprocessed
from adm.eval.metrics import K_NEIGHBOURS, frechet_distance, precision_recall
from adm.eval.stats import (PAPER_STATS, BatchStats, cache_path, compute_stats, load_cached, read_stats_file,
                            save_cache, write_npz)


@dataclass
class EvalResult:
    """The paper's metrics of a sample batch; a metric that cannot be computed is None (see notes)."""

    fid: float
    sfid: float
    inception_score: float | None
    precision: float | None
    recall: float | None
    num_ref: int
    num_samples: int
    features: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


def check_compatible(ref: tuple[int, int, int] | None, samples: tuple[int, int, int] | None,
                     allow_resize: bool = False, unread: bool = False) -> None:
    """Refuse REF and SAMPLES image shapes [H x W x C] that differ in size or in grey (C=1) vs colour (C=3)."""
    if allow_resize or ref is None or samples is None:
        return
    if unread and samples[2] == 3:  # not read yet: 3 channels may still hold grey content
        samples = (*samples[:2], ref[2])
    if ref != samples:
        raise DataError(f"REF images are {format_shape(ref)} but SAMPLES are {format_shape(samples)} (HxWxC; "
                        f"C=1: grey content): the metrics compare like with like; for a reference from training "
                        f"data, preprocess it as training does (adm make-ref DATA REF.npz --image-size "
                        f"{samples[0]} --channels {samples[2]}), or pass --resize to feed both to the network "
                        f"at its input size anyway")


def reference_stats(ref: str | os.PathLike | ImageSource, net: InceptionFeatures | TinyFeatures,
                    batch_size: int = 64, progress: bool = True, use_cache: bool = True,
                    allow_resize: bool = False) -> BatchStats:
    """Statistics of a reference: stored in the file, cached from an earlier run, or computed (then cached)."""
    stored = None
    if not isinstance(ref, ImageSource) and Path(ref).is_file():
        stored = read_stats_file(ref, net.name)
        keys = npz_keys(ref)
        if stored is not None and stored.pool is not None:
            return stored  # made by `adm make-ref` with this network: nothing to compute
        if "arr_0" not in keys:
            if stored is None:
                raise DataError(f"{ref}: not a reference batch: expected arr_0 (uint8 images) and/or the statistics "
                                f"{', '.join(PAPER_STATS)}; it holds {', '.join(keys) or 'nothing'}")
            stored.notes.append("precision/recall need the reference images (arr_0), which this file lacks")
            return stored
    source = ref if isinstance(ref, ImageSource) else open_images(ref, allow_mixed=allow_resize)
    path = cache_path(source, net.name)
    stats = load_cached(path, source, net.name) if use_cache else None
    if stats is None:
        stats = compute_stats(source, net, batch_size, progress)
        if use_cache:
            save_cache(path, source, stats)
    if stored is not None:  # the published batch's own mu/sigma replace ours; the features stay for P/R
        stored.pool, stored.num, stored.shape = stats.pool, stats.num, stats.shape
        stored.inception_score = stats.inception_score
        return stored
    return stats


def evaluate(ref: str | os.PathLike | ImageSource, samples: str | os.PathLike | ImageSource,
             features: str = "inception", device: str = "cpu", batch_size: int = 64,
             weights: str | os.PathLike | None = None, allow_resize: bool = False, use_cache: bool = True,
             progress: bool = True, num: int | None = None) -> EvalResult:
    """FID, sFID, IS, precision and recall of `samples` against `ref` (npz, image folder or ImageSource);
    num: only the first `num` samples (DataError when there are fewer)."""
    source = samples if isinstance(samples, ImageSource) else open_images(samples, allow_mixed=allow_resize)
    if num is not None:
        source = source.head(num)  # before the network loads: a wrong count fails at once
    net = load_feature_network(features, device, weights)
    ref_stats = reference_stats(ref, net, batch_size, progress, use_cache, allow_resize)
    check_compatible(ref_stats.shape, source.shape, allow_resize, unread=True)  # fail before the long part
    stats = compute_stats(source, net, batch_size, progress)
    check_compatible(ref_stats.shape, stats.shape, allow_resize)
    notes = list(ref_stats.notes)
    for name, s in (("reference", ref_stats), ("sample", stats)):
        if 0 < s.num <= len(s.mu):
            notes.append(f"only {s.num} {name} images for {len(s.mu)}-d features: FID is not meaningful (N <= D)")
    if not net.has_logits:
        notes.append("Inception Score unavailable: this Inception file has no 1008-way logits (pass a weight file "
                     "that has them, e.g. NVIDIA's inception-2015-12-05.pt: --inception nvidia downloads it)")
    precision = recall = None
    if ref_stats.pool is not None:
        import torch

        for name, n in (("reference", ref_stats.num), ("sample", stats.num)):
            if n < K_NEIGHBOURS + 1:
                raise DataError(f"precision/recall need at least {K_NEIGHBOURS + 1} {name} images "
                                f"(k={K_NEIGHBOURS} nearest neighbours); got {n}")
        feats = [torch.from_numpy(x).to(net.device) for x in (ref_stats.pool, stats.pool)]
        precision, recall = precision_recall(*feats)
    return EvalResult(
        fid=frechet_distance(stats.mu, stats.sigma, ref_stats.mu, ref_stats.sigma),
        sfid=frechet_distance(stats.mu_s, stats.sigma_s, ref_stats.mu_s, ref_stats.sigma_s),
        inception_score=stats.inception_score, precision=precision, recall=recall,
        num_ref=ref_stats.num, num_samples=stats.num, features=net.name, notes=notes)


def make_reference(source: str | os.PathLike | ImageSource, out: str | os.PathLike, features: str = "inception",
                   device: str = "cpu", batch_size: int = 64, weights: str | os.PathLike | None = None,
                   with_images: bool = True, allow_resize: bool = False, pad: bool = True,
                   num: int | None = None, progress: bool = True, image_size: int | None = None,
                   channels: int | None = None) -> BatchStats:
    """Write a reference .npz: statistics and features for `features`, plus arr_0 (3-channel uint8) by default.

    image_size (and channels: 1, 3 or None for the data's own) preprocess `source` exactly as training
    does (`adm.data.load_dataset`), so the reference matches a model trained on it; without them the
    images are taken as they are (Fashion-MNIST zero-padded to 32x32 unless pad=False).
    """
    if image_size is not None or channels is not None:
        if isinstance(source, ImageSource):
            raise DataError("image_size/channels preprocess a data source (folder, .npz, 'fashion-mnist'); "
                            "this is an ImageSource already")
        if image_size is None:
            raise DataError("--channels needs --image-size: both apply the training preprocessing "
                            "(give the model's image size)")
        if not pad:
            raise DataError("--no-pad does not go with --image-size: the training preprocessing pads "
                            "Fashion-MNIST at 32 and resizes it at other sizes")
        if channels not in (None, 1, 3):
            raise DataError(f"channels must be 1 (grey), 3 (RGB) or the data's own, got {channels!r}")
        source = open_preprocessed(source, image_size, channels)
    elif not isinstance(source, ImageSource):
        source = open_images(source, allow_mixed=allow_resize, pad=pad)
    if num is not None:
        source = source.head(num)
    net = load_feature_network(features, device, weights)
    stats = compute_stats(source, net, batch_size, progress)
    arrays = stats.arrays(f"adm_{net.name}")
    if net.name.startswith("inception"):  # the paper's names too, so the official evaluator can read the file
        arrays.update(zip(PAPER_STATS, (stats.mu, stats.sigma, stats.mu_s, stats.sigma_s)))
    images = None
    if with_images:
        if source.shape is None:
            raise DataError(f"{source.description}: images of mixed sizes cannot be stored as arr_0; pass --no-images")
        h, w, _ = source.shape  # the paper's format: 3 channels, grey copied
        rgb = (np.repeat(b, 3, axis=3) if b.shape[3] == 1 else b for b in source.batches(batch_size))
        images = ((source.num, h, w, 3), rgb)
    write_npz(out, arrays, images)
    return stats
