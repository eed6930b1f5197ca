"""Reads the compact golden archive (golden.pt.xz) back into the shared golden files' exact contents.

The archive is an LZMA-compressed `torch.save` file, loaded with `weights_only=True`. It holds every
tensor the tests read exactly, once each (identical tensors are stored once), byte-shuffled so that
LZMA can pack the exponent bytes. A dict with one key starting with "$" stands for:

- ``{"$t": i}``: tensor ``i`` of the archive;
- ``{"$x_t": [noise, samples]}``: a sampling trajectory's inputs, ``cat([noise[None], samples[:-1]])``
  (step k+1 starts from step k's sample; step 0 from the recorded x_T);
- ``{"$last": samples}``: a loop's final sample, ``samples[-1]``;
- ``{"$scalars": [keys, i]}``: a dict of 0-d tensors, stored as one vector;
- ``{"$weights": name}``: a model's float16 state_dict. The golden weights were drawn by
  ``torch.manual_seed(seed)`` + PyTorch's default initialisation (then the zero-initialised layers and the
  norms were redrawn from ``manual_seed(seed + 1)``). The redrawn tensors and the normal draws are stored;
  the kaiming-uniform ones are recomputed here from the generator's integer stream
  (``torch.randint(0, 2**24)`` consumes it exactly as ``uniform_`` does) with the uniform transform done
  exactly in float64, so the result does not depend on the CPU (or on FMA contraction). A SHA-256 of every
  state_dict is stored and checked: a mismatch raises instead of testing against wrong weights.

`make_compact.py` writes the archive from ../shared/golden and checks that `load` gives it back exactly.
"""
import hashlib
import io
import lzma
import math
from pathlib import Path

import torch

ARCHIVE = Path(__file__).resolve().parent / "golden.pt.xz"
FORMAT = 1


def shuffle(t: torch.Tensor) -> torch.Tensor:
    """A tensor's bytes grouped by position in the element (all first bytes, then all second bytes, ...)."""
    b = t.contiguous().reshape(-1).view(torch.uint8)
    return b.reshape(-1, t.element_size()).T.contiguous().reshape(-1)


def unshuffle(b: torch.Tensor, dtype: str, shape) -> torch.Tensor:
    dt = getattr(torch, dtype)
    size = torch.empty((), dtype=dt).element_size()
    return b.reshape(size, -1).T.contiguous().reshape(-1).view(dt).reshape(shape).clone()


def state_dict_digest(sd) -> str:
    h = hashlib.sha256()
    for k, v in sd.items():
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def content_digest(obj) -> str:
    """SHA-256 of a golden file's contents (nested dicts / lists / tuples of tensors and plain values):
    structure, keys, dtypes, shapes and every byte. digests.json records it for each full golden file
    (its DROP entries removed), so that a clone without the full folder still checks the archive."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().contiguous()
        h.update(f"T|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D|{len(obj)}|".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}|{len(obj)}|".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(f"V|{type(obj).__name__}|{obj!r}|".encode())


def _uniform(g: torch.Generator, shape, bound: float) -> torch.Tensor:
    """`torch.empty(shape).uniform_(-bound, bound, generator=g)` as PyTorch's x86 builds compute it
    (float32 `x * (to - from) + from` contracted to one FMA), done exactly in float64 then rounded once."""
    n = math.prod(shape)
    lo = torch.tensor(-bound, dtype=torch.float32)
    hi = torch.tensor(bound, dtype=torch.float32)
    span = (hi - lo).double()  # exact: hi - lo = 2 hi
    x = torch.randint(0, 2**24, (n,), generator=g, dtype=torch.int64).double() * 2.0**-24
    return (x * span + lo.double()).float().reshape(shape)  # 24x24-bit product + sum: exact in float64


def _skip(g: torch.Generator, draws: int) -> None:
    if draws:
        torch.randint(0, 2**24, (draws,), generator=g)


def rebuild_weights(spec, tensors) -> dict:
    """A golden float16 state_dict from its recipe: `spec["params"]` lists, in the original construction
    order, [key, shape, how, arg, stored]: how is "kaiming" (a Linear/Conv weight; arg = fan_in),
    "bias" (its bias; arg = the weight's fan_in), "normal" (an N(0,1) draw of arg elements: nn.Embedding,
    an attention pool's positional embedding) or "none" (a norm's ones/zeros: no draw); stored is the
    archive index of the final value, or None where the first-phase value itself is final."""
    g = torch.Generator().manual_seed(spec["seed"])
    gain = torch.nn.init.calculate_gain("leaky_relu", math.sqrt(5))  # nn.Linear / nn.Conv reset_parameters
    out = {}
    for key, shape, how, arg, stored in spec["params"]:
        shape = tuple(shape)
        value = None
        if how == "kaiming":
            value = _uniform(g, shape, math.sqrt(3.0) * (gain / math.sqrt(arg)))
        elif how == "bias":
            value = _uniform(g, shape, 1 / math.sqrt(arg) if arg > 0 else 0)
        elif how == "normal":  # normal_ on >= 16 float32 elements: one uniform per element, 16 more if n % 16
            if arg < 16:
                raise NotImplementedError("normal draws of fewer than 16 elements")
            _skip(g, arg + (16 if arg % 16 else 0))
        elif how != "none":
            raise ValueError(how)
        if stored is not None:
            out[key] = tensors[stored]
        elif value is None:
            raise ValueError(f"{key}: nothing to rebuild it from")
        else:
            out[key] = value.half()
    digest = state_dict_digest(out)
    if digest != spec["sha256"]:
        raise RuntimeError(
            f"golden weights {spec['name']!r} rebuilt with a different SHA-256 ({digest[:12]} != {spec['sha256'][:12]}):"
            " this torch's random stream differs from the one the golden data was made with; point $ADM_GOLDEN"
            " at the full golden folder (../shared/golden) to test against the stored weights")
    return out


def read_archive(path: Path = ARCHIVE) -> dict:
    with lzma.open(path, "rb") as f:
        raw = f.read()
    archive = torch.load(io.BytesIO(raw), weights_only=True)
    if archive.get("format") != FORMAT:
        raise RuntimeError(f"{path}: unknown golden archive format {archive.get('format')!r}")
    return archive


class Golden:
    """The archive, decoded file by file on demand: `Golden().load("sampling.pt")`."""

    def __init__(self, path: Path = ARCHIVE):
        self.archive = read_archive(path)
        self._tensors = [unshuffle(b, dt, shape) for b, (dt, shape) in
                         zip(self.archive["tensors"], self.archive["tensor_meta"])]
        self._weights = {}

    def names(self):
        return list(self.archive["files"])

    def weights(self, name: str) -> dict:
        if name not in self._weights:
            self._weights[name] = rebuild_weights(self.archive["models"][name], self._tensors)
        return {k: v.clone() for k, v in self._weights[name].items()}

    def tensor(self, i: int) -> torch.Tensor:
        return self._tensors[i].clone()

    def _decode(self, node):
        if isinstance(node, dict):
            if len(node) == 1:
                (tag, arg), = node.items()
                if tag == "$t":
                    return self.tensor(arg)
                if tag == "$weights":
                    return self.weights(arg)
                if tag == "$x_t":
                    noise, samples = self._tensors[arg[0]], self._tensors[arg[1]]
                    return torch.cat([noise[None], samples[:-1]])
                if tag == "$last":
                    return self._tensors[arg][-1].clone()
                if tag == "$scalars":
                    keys, i = arg
                    vec = self._tensors[i]
                    return {k: vec[j].clone() for j, k in enumerate(keys)}
            return {k: self._decode(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self._decode(v) for v in node]
        if isinstance(node, tuple):
            return tuple(self._decode(v) for v in node)
        return node

    def load(self, name: str):
        return self._decode(self.archive["files"][name])
