"""Image folders: ImageNet-style class sub-folders or one flat folder, checked when indexed."""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from adm.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
# PIL modes that hold grey content only (1 channel once converted to "L"); every other mode is colour.
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


class CorruptImageWarning(UserWarning):
    """An image file that cannot be read was skipped (its path is in the message)."""


@dataclass
class FolderIndex:
    """What a scan found: image paths, their class indices, class names and the files skipped."""

    paths: list[Path]
    labels: list[int]
    class_names: list[str]  # empty for a flat (unlabelled) folder
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (path, reason)
    modes: list[str] = field(default_factory=list)  # PIL mode of each path, from its header

    @property
    def channels(self) -> int:
        """The data's own channels: 1 when every image is grey (GREY_MODES), else 3."""
        return 1 if self.modes and all(m in GREY_MODES for m in self.modes) else 3


def is_image_file(path: Path) -> bool:
    """A visible file with an image extension (png, jpg, jpeg, webp, bmp, gif; any case)."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def _images_under(folder: Path, recursive: bool) -> list[Path]:
    """Image files in a folder (and its visible sub-folders when recursive), sorted for a stable order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        found += [p for p in (Path(dirpath) / f for f in filenames) if is_image_file(p)]
    return sorted(found)


def describe_error(e: BaseException, path: Path | str) -> str:
    """Why PIL could not read `path`, without the path PIL repeats ('cannot identify image file')."""
    text = str(e)
    for shown in (repr(os.fspath(path)), repr(str(path)), os.fspath(path)):  # quoted first, then bare
        text = text.replace(f" {shown}", "").replace(shown, "")
    text = text.strip(" :")
    return text or type(e).__name__


def check_image_mode(path: Path) -> tuple[str | None, str]:
    """(why the file is unreadable or None, its PIL mode from the header): one cheap open, no decoding."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            image.verify()  # checks structure (PNG CRCs, ...) without decoding all pixels
        return None, mode
    except Exception as e:  # PIL raises many types: UnidentifiedImageError, SyntaxError, OSError, ...
        return describe_error(e, path), ""


def check_image(path: Path) -> str | None:
    """Open the header and verify the file cheaply; returns why it is unreadable, or None when fine."""
    return check_image_mode(path)[0]


def _shown(path: Path | str) -> str:
    """A path as the user would type it: relative to the working directory when it lies below it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)
    return str(path) if rel.startswith("..") else rel


def report_skipped(skipped: list[tuple[Path, str]], root: Path | str | None = None, limit: int = 3) -> None:
    """Warn about unreadable images in one line: how many, where, and the first few paths with reasons."""
    if not skipped:
        return
    n = len(skipped)
    where = f" in {_shown(root).rstrip(os.sep)}{os.sep}" if root is not None else ""
    shown = "; ".join(f"{_shown(p)}: {why}" for p, why in skipped[:limit])
    if n > limit:
        shown += f"; and {n - limit} more, all in dataset.skipped"
    warnings.warn(
        f"skipped {n} unreadable image{'s' if n != 1 else ''}{where} ({shown})",
        CorruptImageWarning,
        stacklevel=5,  # the caller of load_dataset or of dataset[i] (both four frames up)
    )


def scan_folder(root: Path, on_error: str = "skip") -> FolderIndex:
    """Index a folder: class sub-folders (class index = sorted names) or flat; unreadable files skipped or raised."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    per_class = {d.name: _images_under(d, recursive=True) for d in subdirs}
    if any(per_class.values()):
        # Every visible sub-folder is a class, empty ones included, so that indices always follow the
        # sorted names (dropping one would shift the labels of all classes after it).
        class_names = list(per_class)
        paths, labels = [], []
        for label, (name, found) in enumerate(per_class.items()):
            if not found:
                warnings.warn(f"{root / name}: class {label} ({name!r}) holds no images", stacklevel=3)
            paths += found
            labels += [label] * len(found)
        loose = _images_under(root, recursive=False)
        if loose:
            warnings.warn(
                f"{root}: {len(loose)} image(s) beside the class folders are ignored (e.g. {loose[0].name})",
                stacklevel=3,
            )
    else:
        class_names = []
        paths = _images_under(root, recursive=False)
        labels = [0] * len(paths)
    if not paths:
        raise DataError(f"{root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)} files)")
    index = FolderIndex(paths, labels, class_names)
    _drop_unreadable(index, on_error, root)
    if not index.paths:
        raise DataError(f"{root}: none of the {len(index.skipped)} image files can be read")
    return index


def _drop_unreadable(index: FolderIndex, on_error: str, root: Path | None = None) -> None:
    """Check every file (threads: it is I/O) and note its mode; remove the bad ones, or raise on the first."""
    workers = min(8, (os.cpu_count() or 1) * 2) if len(index.paths) > 64 else 1
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            checked = list(pool.map(check_image_mode, index.paths, chunksize=64))
    else:
        checked = [check_image_mode(p) for p in index.paths]
    problems = [why for why, _ in checked]
    keep = [i for i, why in enumerate(problems) if why is None]
    index.modes = [checked[i][1] for i in keep]
    if len(keep) == len(index.paths):
        return
    bad = [(index.paths[i], why) for i, why in enumerate(problems) if why is not None]
    if on_error == "raise":
        path, why = bad[0]
        raise DataError(f"{path}: unreadable image ({why})")
    index.skipped += bad
    index.paths = [index.paths[i] for i in keep]
    index.labels = [index.labels[i] for i in keep]
    report_skipped(bad, root)
