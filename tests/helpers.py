"""Shared by several test files (tests/ is on sys.path under pytest's default import mode)."""
import torch


def randomized(module, seed):
    """Freshly initialised ADMs output zeros (zero-initialised last layers): give every weight noise."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()
