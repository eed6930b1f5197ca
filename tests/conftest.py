import os
from pathlib import Path

import pytest
import torch

# One thread: the golden models are tiny and the CI machine has 2 cores (threads cost more than they give).
torch.set_num_threads(1)

_HERE = Path(__file__).resolve().parent


def _find_golden() -> Path | None:
    env = os.environ.get("ADM_GOLDEN")
    candidates = [Path(env)] if env else []
    candidates += [p / "shared" / "golden" for p in [_HERE.parent.parent, _HERE.parent]]
    for c in candidates:
        if (c / "README.md").exists():
            return c
    return None


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    d = _find_golden()
    if d is None:
        pytest.skip("golden reference data not found: expected ../shared/golden beside the checkout (or $ADM_GOLDEN)")
    return d


@pytest.fixture(scope="session")
def load_golden(golden_dir):
    cache = {}

    def load(name: str):
        if name not in cache:
            cache[name] = torch.load(golden_dir / name, weights_only=True)
        return cache[name]

    return load
