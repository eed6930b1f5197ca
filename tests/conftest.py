import functools
import importlib.util
import os
from pathlib import Path

import pytest
import torch

# One thread: the golden models are tiny and the CI machine has 2 cores (threads cost more than they give).
torch.set_num_threads(1)

_HERE = Path(__file__).resolve().parent
# The golden numbers the tests need, in the repository (tests/golden/README.md): a compact, exact copy of
# the project's full golden folder, so that a fresh clone runs every golden test.
COMPACT_GOLDEN = _HERE / "golden"


def _override() -> Path | None:
    """$ADM_GOLDEN, when it names a golden folder: tests then read that folder's files instead."""
    env = os.environ.get("ADM_GOLDEN")
    if env and (Path(env) / "README.md").exists():
        return Path(env)
    return None


def find_shared_golden() -> Path | None:
    """The full golden folder (45 MB), ../shared/golden beside the checkout, where there is one."""
    for c in [p / "shared" / "golden" for p in [_HERE.parent.parent, _HERE.parent]]:
        if (c / "README.md").exists():
            return c
    return None


@functools.cache
def compact_golden():
    """The compact archive, decoded (tests/golden/compact.py; tests/golden is not a package)."""
    spec = importlib.util.spec_from_file_location("adm_tests_golden_compact", COMPACT_GOLDEN / "compact.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Golden()


def _find_golden() -> Path | None:
    for c in [_override(), COMPACT_GOLDEN, find_shared_golden()]:
        if c is not None and (c / "README.md").exists():
            return c
    return None


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    d = _find_golden()
    if d is None:
        pytest.skip("golden reference data not found: expected tests/golden, ../shared/golden or $ADM_GOLDEN")
    return d


@pytest.fixture(scope="session")
def load_golden(golden_dir):
    """load("sampling.pt"): that golden file's contents, from $ADM_GOLDEN's folder where it is set, else
    from the compact archive in tests/golden, else (a file the archive lacks) from ../shared/golden."""
    cache = {}

    def load(name: str):
        if name not in cache:
            if golden_dir != COMPACT_GOLDEN:
                cache[name] = torch.load(golden_dir / name, weights_only=True)
            elif (COMPACT_GOLDEN / "golden.pt.xz").exists() and name in compact_golden().names():
                cache[name] = compact_golden().load(name)
            elif (shared := find_shared_golden()) is not None and (shared / name).exists():
                cache[name] = torch.load(shared / name, weights_only=True)
            else:
                pytest.skip(f"golden file {name} is in neither tests/golden nor ../shared/golden")
        return cache[name]

    return load


def full_golden_folder() -> Path | None:
    """The full golden folder ($ADM_GOLDEN or ../shared/golden) that tests/golden was made from, if here."""
    return _override() or find_shared_golden()


@pytest.fixture(scope="session")
def golden_archive():
    """tests/golden's archive, decoded (tests/golden/compact.py's Golden)."""
    return compact_golden()
