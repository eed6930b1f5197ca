"""Per-batch statistics (features, FID/sFID moments, IS), reference files and their feature cache."""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from adm.errors import DataError
from adm.eval.features import InceptionFeatures, TinyFeatures
from adm.eval.images import ImageSource, npz_keys
from adm.eval.metrics import feature_statistics, inception_score

PAPER_STATS = ("mu", "sigma", "mu_s", "sigma_s")  # the published reference batches' precomputed arrays
CACHE_VERSION = 1


@dataclass
class BatchStats:
    """What the metrics need from one image batch: pool features [N x D], FID/sFID moments, IS."""

    num: int
    network: str
    mu: np.ndarray  # [D]
    sigma: np.ndarray  # [D x D]
    mu_s: np.ndarray  # [S]
    sigma_s: np.ndarray  # [S x S]
    pool: np.ndarray | None = None  # [N x D] float32, for precision/recall; None for statistics-only files
    inception_score: float | None = None
    shape: tuple[int, int, int] | None = None  # [H x W x C], C = 1 for grey content; None: unknown or mixed
    notes: list[str] = field(default_factory=list)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The arrays to store under names prefix + '_mu', ... (the cache and make-ref layout)."""
        out = {"mu": self.mu, "sigma": self.sigma, "mu_s": self.mu_s, "sigma_s": self.sigma_s,
               "is": np.float64(np.nan if self.inception_score is None else self.inception_score),
               "num": np.int64(self.num), "shape": np.array(self.shape or (0, 0, 0), np.int64)}
        if self.pool is not None:
            out["pool"] = self.pool
        return {f"{prefix}_{k}": v for k, v in out.items()}

    @classmethod
    def from_arrays(cls, data, prefix: str, network: str) -> "BatchStats":
        """Read what `arrays(prefix)` stored, from a dict or an open NpzFile."""
        g = lambda k: data[f"{prefix}_{k}"]  # noqa: E731
        is_ = float(g("is"))
        shape = tuple(int(s) for s in g("shape"))
        pool = g("pool") if f"{prefix}_pool" in data else None
        return cls(int(g("num")), network, g("mu"), g("sigma"), g("mu_s"), g("sigma_s"), pool,
                   None if np.isnan(is_) else is_, shape if shape[0] else None)


def cache_prefix(network: str) -> str:
    """Array-name prefix of one feature network's cached statistics, e.g. 'adm_inception-a16e4d89c0ec'."""
    return f"adm_{network}"


def compute_stats(source: ImageSource, net: InceptionFeatures | TinyFeatures, batch_size: int = 64,
                  progress: bool = True) -> BatchStats:
    """Features of every image of `source` (in batches, with a progress bar) and their statistics."""
    pools, spatials, probs = [], [], []
    done, colour = 0, False
    with tqdm(total=source.num, desc=f"features {Path(source.description).name}", unit="img",
              disable=not progress, leave=False) as bar:
        for batch in source.batches(batch_size):
            colour = colour or (batch.shape[3] == 3 and not _is_grey(batch))
            f = net(torch.from_numpy(np.require(batch, np.uint8, ["C", "W"])))
            for name, x in (("pool", f.pool), ("spatial", f.spatial)):
                bad = (~torch.isfinite(x).all(1)).nonzero()
                if len(bad):
                    raise DataError(f"{source.description}: {name} features of image {done + int(bad[0])} contain NaN "
                                    f"or infinite values: the feature network is broken (check its weight file)")
            pools.append(f.pool.cpu().numpy())
            spatials.append(f.spatial.cpu().numpy())
            if f.probs is not None:
                probs.append(f.probs.cpu().numpy())
            done += len(batch)
            bar.update(len(batch))
    pool, spatial = np.concatenate(pools), np.concatenate(spatials)
    mu, sigma = feature_statistics(pool)
    mu_s, sigma_s = feature_statistics(spatial)
    is_ = inception_score(np.concatenate(probs)) if probs else None
    # Grey stored as 3 equal channels (the paper's .npz format) is grey: record the channels the content has.
    shape = None if source.shape is None else (*source.shape[:2], 3 if colour else 1)
    return BatchStats(len(pool), net.name, mu, sigma, mu_s, sigma_s, pool.astype(np.float32), is_, shape)


def _is_grey(batch: np.ndarray) -> bool:
    """Whether a uint8 [B x H x W x 3] batch has R = G = B everywhere."""
    return bool((batch[..., 0] == batch[..., 1]).all() and (batch[..., 0] == batch[..., 2]).all())


def read_stats_file(path: str | os.PathLike, network: str) -> BatchStats | None:
    """Statistics stored in an .npz for `network` (ours, or the paper's mu/sigma for Inception), else None."""
    keys = npz_keys(path)
    prefix = cache_prefix(network)
    with np.load(path) as data:
        if f"{prefix}_mu" in keys:
            return BatchStats.from_arrays(data, prefix, network)
        present = [k for k in PAPER_STATS if k in keys]
        if present and len(present) < len(PAPER_STATS):
            missing = ", ".join(k for k in PAPER_STATS if k not in keys)
            raise DataError(f"{path}: has precomputed statistics but lacks {missing} (a reference batch carries "
                            f"mu, sigma, mu_s and sigma_s together)")
        if present and network.startswith("inception"):
            stats = BatchStats(0, network, *(data[k] for k in PAPER_STATS))
            stats.notes.append("FID/sFID use the reference file's precomputed mu/sigma (the paper's TF statistics)")
            return stats
    return None


def cache_path(source: ImageSource, network: str) -> Path:
    """Where the features of `source` are cached: beside it when writable, else in ~/.cache/adm/eval."""
    import hashlib

    desc = Path(source.description)
    if desc.exists() and os.access(desc.resolve().parent, os.W_OK):
        return desc.resolve().parent / f"{desc.name}.{cache_prefix(network)}.npz"
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "adm" / "eval"
    return root / f"{hashlib.sha1(source.fingerprint.encode()).hexdigest()[:16]}.{cache_prefix(network)}.npz"


def load_cached(path: Path, source: ImageSource, network: str) -> BatchStats | None:
    """The cached statistics at `path` if they were computed from these very images by `network`."""
    try:
        with np.load(path) as data:
            meta = json.loads(str(data["adm_meta"]))
            if meta != {"version": CACHE_VERSION, "source": source.fingerprint, "network": network}:
                return None
            return BatchStats.from_arrays(data, cache_prefix(network), network)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray],
              images: tuple[tuple, Iterator[np.ndarray]] | None = None) -> None:
    """Write arrays (and, streamed, arr_0 = images of shape [N x H x W x C]) atomically to an .npz."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        if images is not None:
            shape, batches = images
            with zf.open("arr_0.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
                for b in batches:
                    f.write(np.ascontiguousarray(b, np.uint8).tobytes())
        for name, arr in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)
    os.replace(tmp, path)


def save_cache(path: Path, source: ImageSource, stats: BatchStats) -> bool:
    """Store `stats` for `source` at `path`; False (and no error) where that is not possible."""
    meta = json.dumps({"version": CACHE_VERSION, "source": source.fingerprint, "network": stats.network})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_npz(path, {"adm_meta": np.array(meta), **stats.arrays(cache_prefix(stats.network))})
        return True
    except OSError:
        return False
