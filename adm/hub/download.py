"""Official checkpoint downloads: a per-user cache, resumable transfers, verified files, atomic renames.

Verification: a file whose SHA-256 is known is checked against it before first use. Any other file has
its digest recorded at its first download (FILE.sha256 beside it) and is checked against that record on
every later use; the record also holds the file's size and modification time, so an unchanged file is
not rehashed, while any write to it is. A file that fails its check is moved aside (FILE.corrupt) and
never loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from adm.errors import CheckpointError

_CHUNK = 1 << 20  # 1 MiB reads: few system calls, and the progress bar still moves smoothly
_HEADERS = {"User-Agent": "adm (python urllib)", "Accept-Encoding": "identity"}


def cache_dir() -> Path:
    """Where downloads go: $ADM_CACHE, else $XDG_CACHE_HOME/adm, else the platform's user cache."""
    if env := os.environ.get("ADM_CACHE"):
        return Path(env).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "adm"
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        return (Path(local) if local else Path.home() / "AppData" / "Local") / "adm"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "adm"
    return Path.home() / ".cache" / "adm"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    url: str,                       # http(s):// or file:// URL, or a plain local path
    filename: str | None = None,    # name in the cache; defaults to the URL's last path segment
    *,
    cache: Path | None = None,      # cache directory; defaults to cache_dir()
    sha256: str | None = None,      # expected hex digest, checked before the file is used
    progress: bool = True,          # show a tqdm bar on stderr
    timeout: float = 60,            # seconds without data before the connection counts as lost
) -> Path:
    """Return the cached copy of `url`, downloading it first (resuming a partial `.part`) if needed."""
    expected = sha256.lower() if sha256 else None
    local = _local_path(url)
    if local is not None:
        return _check_local(local, expected)
    dest = Path(cache if cache is not None else cache_dir()).expanduser() / (filename or url_filename(url))
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest.with_name(dest.name + ".lock")):  # one process downloads, the others wait for it
        if dest.exists():
            _verify_cached(dest, expected)
            return dest
        _fetch(url, part, dest, progress=progress, timeout=timeout)
        actual = sha256_file(part)
        if expected is not None and actual != expected:
            part.unlink()
            raise CheckpointError(
                f"checksum mismatch for {url}: expected sha256 {expected}, got {actual}; "
                f"the corrupt download was deleted, re-run to fetch it again or place a good copy at {dest}"
            )
        os.replace(part, dest)  # atomic: the final name only ever holds a complete, verified file
        _write_stamp(dest, actual)  # the digest every later use is checked against
    return dest


def _verify_cached(path: Path, expected: str | None) -> None:
    """Check a cached file against its known digest, else the one recorded at its download; on a
    mismatch move it aside and raise CheckpointError naming it."""
    recorded = _recorded_digest(path)
    want = expected or recorded
    if want is None:  # cached before digests were recorded (or placed by hand): record it now
        _write_stamp(path, sha256_file(path))
        return
    if recorded == want and _stamp_current(path, want):
        return  # verified before, unchanged since (same digest record, size and modification time)
    actual = sha256_file(path)
    if actual != want:
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        path.with_name(path.name + ".sha256").unlink(missing_ok=True)
        source = "its known digest" if expected else "the digest recorded when it was downloaded"
        raise CheckpointError(
            f"{path}: the cached file does not match {source} (sha256 {want}, got {actual}); it was moved "
            f"to {aside} and not loaded; re-run to download it again"
        )
    _write_stamp(path, actual)


def _fetch(url: str, part: Path, dest: Path, *, progress: bool, timeout: float) -> None:
    """Stream `url` into `part`, continuing from its current size with an HTTP Range request."""
    try:
        for _ in range(2):  # a second pass only after throwing away an unusable partial file
            start = part.stat().st_size if part.exists() else 0
            try:
                response = _open(url, start, timeout)
            except urllib.error.HTTPError as e:
                if e.code != 416 or not start:
                    raise
                _, total = _content_range(e.headers.get("Content-Range"))
                e.close()
                if total == start:
                    return  # already complete: an earlier run stopped between the last byte and the rename
                part.unlink()  # longer than the file on the server: start over
                continue
            with response:
                if start and response.status != 206:
                    start = 0  # the server ignored Range and sends the whole file: start over
                total = _total_size(response, start)
                if start and _content_range(response.headers.get("Content-Range"))[0] != start:
                    part.unlink()  # resumed at another offset than asked for: start over
                    continue
                _stream(response, part, start, total, progress=progress, desc=dest.name)
            return
        raise ConnectionError("the server would not resume the partial download")
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        raise _network_error(url, part, dest, e) from e


def _open(url: str, start: int, timeout: float) -> http.client.HTTPResponse:
    """Send a GET for `url`, asking for the bytes from `start` on when `start` > 0."""
    request = urllib.request.Request(url, headers=_HEADERS)
    if start:
        request.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(request, timeout=timeout)


def _stream(response, part: Path, start: int, total: int | None, *, progress: bool, desc: str) -> None:
    """Write the response body into `part` at byte `start`, then check the size against `total`."""
    bar = tqdm(total=total, initial=start, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
               disable=not progress)
    with open(part, "r+b" if start else "wb") as f, bar:
        f.seek(start)
        f.truncate()
        while chunk := response.read(_CHUNK):
            f.write(chunk)
            bar.update(len(chunk))
        size = f.tell()
    if total is not None and size != total:
        raise ConnectionError(f"connection closed after {size} of {total} bytes")


def _total_size(response, start: int) -> int | None:
    """Full file size announced by a 200 (Content-Length) or 206 (Content-Range) response."""
    if response.status == 206:
        _, total = _content_range(response.headers.get("Content-Range"))
        if total is not None:
            return total
    length = response.headers.get("Content-Length")
    return start + int(length) if length and length.isdigit() else None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a Content-Range header like 'bytes 5-9/10' or 'bytes */10'."""
    if not value:
        return None, None
    span, _, size = value.strip().removeprefix("bytes").strip().partition("/")
    first = span.split("-")[0].strip()
    return (int(first) if first.isdigit() else None), (int(size) if size.strip().isdigit() else None)


def _network_error(url: str, part: Path, dest: Path, error: BaseException) -> CheckpointError:
    """A one-line error for a failed transfer that says how to resume or where to put the file by hand."""
    if isinstance(error, urllib.error.HTTPError):
        reason = f"HTTP {error.code} {error.reason}"
    else:
        reason = str(getattr(error, "reason", None) or error) or type(error).__name__
    kept = part.stat().st_size if part.exists() else 0
    retry = (f"the partial download ({kept} bytes) was kept at {part} and re-running resumes it"
             if kept else "re-run to try again")
    message = f"could not download {url} ({reason}); {retry}, or download it yourself and place it at {dest}"
    return CheckpointError(" ".join(message.split()))


def _local_path(url: str) -> Path | None:
    """The file that a file:// URL or a plain path names; None for a network URL."""
    if "://" not in url:
        return Path(url).expanduser()
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "file":
        return None
    host = "" if parsed.netloc in ("", "localhost") else "//" + parsed.netloc
    return Path(urllib.request.url2pathname(host + parsed.path))


def _check_local(path: Path, expected: str | None) -> Path:
    """A local file used in place: it must exist and match the digest when one is given."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if expected is not None and (actual := sha256_file(path)) != expected:
        raise CheckpointError(f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}")
    return path


def url_filename(url: str) -> str:
    """The last path segment of a URL, which names the file in the cache."""
    name = urllib.parse.unquote(urllib.parse.urlparse(url).path).rsplit("/", 1)[-1]
    if not name:
        raise CheckpointError(f"cannot tell a file name from {url}; pass filename=")
    return name


def _recorded_digest(path: Path) -> str | None:
    """The digest recorded for a cached file (None without a record)."""
    try:
        text = path.with_name(path.name + ".sha256").read_text().split()
    except OSError:
        return None
    return text[0] if text else None


def _stamp_current(path: Path, digest: str) -> bool:
    """Whether the record says `digest` for exactly this size and modification time."""
    with contextlib.suppress(OSError):
        return path.with_name(path.name + ".sha256").read_text() == _stamp(path, digest)
    return False


def _stamp(path: Path, digest: str) -> str:
    """The digest a file was verified to have, tied to its size and modification time."""
    st = path.stat()
    return f"{digest} {st.st_size} {st.st_mtime_ns}\n"


def _write_stamp(path: Path, digest: str) -> None:
    """Record that `path` was verified (best effort: a read-only cache just rehashes next time)."""
    with contextlib.suppress(OSError):
        path.with_name(path.name + ".sha256").write_text(_stamp(path, digest))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` across processes (POSIX flock; released if the holder dies)."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent downloads of one file are not serialized
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
