"""Checkpoint downloads against a local HTTP server that can break connections and ignore Range."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from pathlib import Path

import pytest

from adm import hub
from adm.errors import CheckpointError
from helpers import ServerState, http_server

BODY = os.urandom(300_000)
DIGEST = hashlib.sha256(BODY).hexdigest()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No proxies for 127.0.0.1, and a cache that lives in the test's own directory."""
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setenv("ADM_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def server():
    with http_server(ServerState(files={"/ckpt.pt": BODY})) as srv:
        yield srv


def _url(srv, path: str = "/ckpt.pt") -> str:
    return f"http://127.0.0.1:{srv.server_port}{path}"


def _get(srv, **kwargs) -> Path:
    return hub.download(_url(srv), progress=False, timeout=5, **kwargs)


def test_fresh_download(server, tmp_path):
    path = hub.download(_url(server), sha256=DIGEST, timeout=5)  # with the progress bar
    assert path == tmp_path / "cache" / "ckpt.pt"
    assert path.read_bytes() == BODY
    assert not path.with_name("ckpt.pt.part").exists()
    assert server.state.served == [len(BODY)]


def test_cached_second_call_makes_no_request(server):
    first = _get(server, sha256=DIGEST)
    assert _get(server, sha256=DIGEST) == first
    assert _get(server) == first
    assert len(server.state.ranges) == 1


def test_resume_fetches_only_the_remainder(server, tmp_path):
    server.state.cut_next = 100_000
    with pytest.raises(CheckpointError) as err:
        _get(server, sha256=DIGEST)
    msg = str(err.value)
    final = tmp_path / "cache" / "ckpt.pt"
    part = final.with_name("ckpt.pt.part")
    assert "\n" not in msg and _url(server) in msg and str(final) in msg
    assert "re-running resumes" in msg and str(part) in msg
    assert not final.exists()  # atomic: nothing at the final name after an interrupted download
    assert part.stat().st_size == 100_000
    path = _get(server, sha256=DIGEST)
    assert path.read_bytes() == BODY
    assert server.state.ranges[-1] == "bytes=100000-"
    assert server.state.served == [100_000, len(BODY) - 100_000]


def test_server_that_ignores_range_restarts_from_zero(server):
    server.state.cut_next, server.state.ignore_range = 50_000, True
    with pytest.raises(CheckpointError):
        _get(server)
    assert _get(server, sha256=DIGEST).read_bytes() == BODY
    assert server.state.served == [50_000, len(BODY)]


def test_416_finishes_a_complete_part_and_restarts_an_overlong_one(server, tmp_path):
    part = tmp_path / "cache" / "ckpt.pt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(BODY)  # an earlier run died between the last byte and the rename
    assert _get(server, sha256=DIGEST).read_bytes() == BODY
    assert server.state.served == [0]
    part = tmp_path / "cache" / "other.pt.part"
    part.write_bytes(os.urandom(len(BODY) + 10))  # stale partial file, longer than the real one
    assert _get(server, filename="other.pt", sha256=DIGEST).read_bytes() == BODY
    assert server.state.served == [0, 0, len(BODY)]


def test_checksum_mismatch_deletes_part(server, tmp_path):
    wrong = "0" * 64
    with pytest.raises(CheckpointError) as err:
        _get(server, sha256=wrong)
    assert wrong in str(err.value) and DIGEST in str(err.value)
    assert list((tmp_path / "cache").glob("ckpt.pt*")) == [tmp_path / "cache" / "ckpt.pt.lock"]


def test_a_cached_file_that_fails_its_known_digest_is_moved_aside_never_loaded(server, tmp_path):
    final = tmp_path / "cache" / "ckpt.pt"
    final.parent.mkdir(parents=True)
    final.write_bytes(b"garbage")
    with pytest.raises(CheckpointError) as err:
        _get(server, sha256=DIGEST)
    msg = str(err.value)
    assert str(final) in msg and "moved" in msg and "\n" not in msg
    assert not final.exists() and final.with_name("ckpt.pt.corrupt").read_bytes() == b"garbage"
    assert _get(server, sha256=DIGEST).read_bytes() == BODY  # the next run downloads it again
    assert len(server.state.ranges) == 1


def test_without_a_known_digest_the_first_download_records_one(server, tmp_path):
    path = _get(server)
    assert path.with_name("ckpt.pt.sha256").read_text().split()[0] == DIGEST
    assert _get(server) == path and len(server.state.ranges) == 1  # unchanged: used from the cache
    path.write_bytes(BODY[:-1] + bytes([BODY[-1] ^ 1]))  # one flipped bit after the download
    with pytest.raises(CheckpointError, match="recorded when it was downloaded"):
        _get(server)
    assert not path.exists() and path.with_name("ckpt.pt.corrupt").is_file()
    assert _get(server).read_bytes() == BODY and len(server.state.ranges) == 2


def test_a_file_placed_in_the_cache_by_hand_is_recorded_then_checked(server, tmp_path):
    final = tmp_path / "cache" / "ckpt.pt"
    final.parent.mkdir(parents=True)
    final.write_bytes(BODY)
    assert _get(server) == final and server.state.ranges == []  # no download: recorded as it is
    assert final.with_name("ckpt.pt.sha256").read_text().split()[0] == DIGEST


def test_http_404_is_a_clear_error(server, tmp_path):
    with pytest.raises(CheckpointError) as err:
        hub.download(_url(server, "/missing.pt"), progress=False, timeout=5)
    msg = str(err.value)
    assert "404" in msg and _url(server, "/missing.pt") in msg and str(tmp_path / "cache" / "missing.pt") in msg
    assert "\n" not in msg
    assert not (tmp_path / "cache" / "missing.pt").exists()


def test_unreachable_and_slow_servers_are_clear_errors(server):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CheckpointError, match="could not download"):
        hub.download(f"http://127.0.0.1:{port}/ckpt.pt", progress=False, timeout=5)
    server.state.delay = 0.5
    with pytest.raises(CheckpointError, match="timed out"):
        hub.download(_url(server), progress=False, timeout=0.1)


def test_cache_dir_follows_environment(server, monkeypatch, tmp_path):
    monkeypatch.setenv("ADM_CACHE", str(tmp_path / "mine"))
    assert hub.cache_dir() == tmp_path / "mine"
    assert _get(server) == tmp_path / "mine" / "ckpt.pt"
    assert _get(server, cache=tmp_path / "explicit") == tmp_path / "explicit" / "ckpt.pt"
    monkeypatch.delenv("ADM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "adm"


def test_file_url_and_local_path_are_used_in_place(tmp_path):
    src = tmp_path / "weights.pt"
    src.write_bytes(BODY)
    assert hub.download(src.as_uri(), sha256=DIGEST) == src
    assert hub.download(str(src), sha256=DIGEST.upper()) == src
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        hub.download(str(src), sha256="0" * 64)
    assert src.exists()  # a user's own file is never deleted
    with pytest.raises(CheckpointError, match="not found"):
        hub.download((tmp_path / "nope.pt").as_uri())
    assert not (tmp_path / "cache").exists()


def test_the_published_digest_of_a_release_is_checked():
    from adm.hub import presets

    p = presets.get("ADM_diffusion_256_unconditioned")
    assert p.sha256 == "983e3de6f95c88c81b2ca7ebb2c217933be1973b1ff058776b970f901584613a"
    assert presets.get("ADM_diffusion_64_conditioned").sha256 is None  # recorded at its first download


def test_preset_weights_download_is_verified(server, tmp_path, monkeypatch):
    from adm.hub import presets

    monkeypatch.setattr(presets, "RELEASE_URL", _url(server, "/"))
    monkeypatch.setitem(presets.KNOWN_SHA256, "ckpt.pt", DIGEST)
    monkeypatch.setitem(presets.PRESETS, "tiny", presets.Preset("tiny", presets.DEMO_MODEL, "ckpt.pt"))
    assert hub.preset_weights("tiny") == tmp_path / "cache" / "ckpt.pt"
    monkeypatch.setitem(presets.KNOWN_SHA256, "ckpt.pt", "0" * 64)
    with pytest.raises(CheckpointError, match="ckpt.pt: the cached file does not match its known digest"):
        hub.preset_weights("tiny")


@pytest.mark.skipif(os.name != "posix", reason="downloads are serialized with POSIX flock")
def test_concurrent_callers_share_one_transfer(server):
    server.state.delay = 0.2
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(_get(server, sha256=DIGEST))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and results[0].read_bytes() == BODY
    assert len(server.state.ranges) == 1


def test_sha256_file(tmp_path):
    (tmp_path / "abc").write_bytes(b"abc")
    assert hub.sha256_file(tmp_path / "abc") == hashlib.sha256(b"abc").hexdigest()


def test_a_shipped_preset_loads_with_its_training_record():
    """`adm train --init-from ADM_demo_fashion_mnist` counts the images the shipped weights had seen: the
    preset's load carries its config.json's "extra" (it was {} before, so a continued run started at 0)."""
    import json

    from adm.cli.train import images_seen
    from adm.hub.load import preset_weights

    loaded = hub.load("ADM_demo_fashion_mnist", ("ADM",))
    path = preset_weights("ADM_demo_fashion_mnist").parent / "config.json"
    record = json.loads(path.read_text())["extra"]
    assert record["images_seen"] > 0 and images_seen(loaded.extra) == record["images_seen"]
    assert loaded.step == record["step"] and loaded.class_names == record["class_names"]
    # Weights given in place of the shipped ones are not credited with the shipped record.
    assert hub.load("ADM_demo_fashion_mnist", ("ADM",), checkpoint=path.parent / "model.safetensors").extra == {}
