"""The golden data carried by the repository (tests/golden) is an exact copy of the full golden folder:
checked against digests of the full files (digests.json) in every clone, and against the files themselves
where the full folder is beside the checkout."""
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import full_golden_folder

GOLDEN = Path(__file__).resolve().parent / "golden"
BUDGET = 15 * 10**6
PT_FILES = ["schedules.pt", "unet_forward_a.pt", "unet_forward_b.pt", "classifier.pt", "super_res.pt",
            "training_losses_a.pt", "training_losses_b.pt", "sampling.pt"]
JSON_FILES = ["official_state_dict_shapes.json", "official_params.json"]


def test_compact_golden_is_in_the_repository_and_small():
    for name in ["README.md", "compact.py", "make_compact.py", "golden.pt.xz", "digests.json", *JSON_FILES]:
        assert (GOLDEN / name).is_file(), name
    files = [p for p in GOLDEN.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    total = sum(p.stat().st_size for p in files)
    assert total < BUDGET, f"tests/golden holds {total / 1e6:.2f} MB"


def test_archive_holds_every_golden_file(golden_archive):
    assert golden_archive.names() == PT_FILES
    assert set(golden_archive.archive["dropped"]) <= set(PT_FILES)


def _digests() -> dict:
    return json.loads((GOLDEN / "digests.json").read_text())


def _content_digest(obj) -> str:
    spec = importlib.util.spec_from_file_location("adm_tests_golden_compact", GOLDEN / "compact.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.content_digest(obj)


def _assert_same(a, b, where):
    if isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor), where
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        assert torch.equal(a, b), where
    elif isinstance(b, dict):
        assert isinstance(a, dict) and list(a) == list(b), (where, list(a), list(b))
        for k in b:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(b, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}/{i}")
    else:
        assert type(a) is type(b) and a == b, (where, a, b)


@pytest.mark.parametrize("name", PT_FILES)
def test_compact_copy_equals_the_full_golden_file(golden_archive, name):
    """In every clone: the decoded archive has the digest make_compact.py recorded from the full file (its
    unread entries left out). Where the full folder is here too: entry by entry, exactly (dtype, shape,
    every bit), and the recorded digest is that folder's (not stale)."""
    decoded = golden_archive.load(name)
    assert _content_digest(decoded) == _digests()[name]
    full_dir = full_golden_folder()
    if full_dir is None:
        return
    full = torch.load(full_dir / name, weights_only=True)
    for path in golden_archive.archive["dropped"].get(name, []):
        d = full
        for k in path[:-1]:
            d = d[k]
        assert path[-1] in d, (name, path)  # the drop list names real entries
        del d[path[-1]]
    _assert_same(decoded, full, name)
    assert _content_digest(full) == _digests()[name]


@pytest.mark.parametrize("name", JSON_FILES)
def test_json_copies_equal_the_full_golden_files(name):
    assert hashlib.sha256((GOLDEN / name).read_bytes()).hexdigest() == _digests()[name]
    full_dir = full_golden_folder()
    if full_dir is not None:
        assert (GOLDEN / name).read_bytes() == (full_dir / name).read_bytes()
