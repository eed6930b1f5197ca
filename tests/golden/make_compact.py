"""Regenerates tests/golden/ from the project's full golden folder (../shared/golden, 45 MB).

    python tests/golden/make_compact.py [SHARED_GOLDEN_DIR]

Writes golden.pt.xz (every .pt entry the tests read, exactly; see compact.py for the encoding),
byte-for-byte copies of the two JSON files and digests.json (compact.content_digest of each full .pt file
without its DROP entries, SHA-256 of each JSON file), then decodes the archive again and checks it against
the source entry by entry. Only the entries in DROP are left out (no test reads them).

    python tests/golden/make_compact.py --digests [SHARED_GOLDEN_DIR]   # digests.json only
"""
import hashlib
import io
import json
import lzma
import math
import os
import shutil
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compact  # noqa: E402

PT_FILES = ["schedules.pt", "unet_forward_a.pt", "unet_forward_b.pt", "classifier.pt", "super_res.pt",
            "training_losses_a.pt", "training_losses_b.pt", "sampling.pt"]
JSON_FILES = ["official_state_dict_shapes.json", "official_params.json"]
# Entries no test reads (paths of keys inside each file).
DROP = {"schedules.pt": [["timestep_embedding"]], "super_res.pt": [["outputs", "upsampled_low_res"]]}
STATE_DICT_KEYS = ("state_dict", "state_dict_a", "state_dict_b", "classifier_state_dict")
BUDGET = 15 * 10**6


def find_shared() -> Path:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if args:
        return Path(args[0])
    env = os.environ.get("ADM_GOLDEN")
    repo = HERE.parent.parent
    for c in ([Path(env)] if env else []) + [repo.parent / "shared" / "golden", repo / "shared" / "golden"]:
        if (c / "README.md").exists():
            return c
    sys.exit("full golden folder not found: pass its path (../shared/golden beside the checkout)")


def drop(obj, paths):
    for path in paths:
        d = obj
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]
    return obj


class Encoder:
    def __init__(self):
        self.tensors, self.meta, self.index, self.models = [], [], {}, {}
        self.model_by_digest = {}

    def tensor(self, t: torch.Tensor) -> int:
        t = t.detach().contiguous()
        h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode() + t.reshape(-1).view(torch.uint8).numpy().tobytes())
        h = h.hexdigest()
        if h not in self.index:
            self.index[h] = len(self.tensors)
            self.tensors.append(compact.shuffle(t))
            self.meta.append((str(t.dtype).removeprefix("torch."), list(t.shape)))
        return self.index[h]

    def weights(self, sd, name: str) -> str:
        digest = compact.state_dict_digest(sd)
        if digest not in self.model_by_digest:
            self.model_by_digest[digest] = name
            self.models[name] = self.recipe(sd, name, digest)
        return self.model_by_digest[digest]

    def recipe(self, sd, name, digest):
        """Which tensors PyTorch's default initialisation gives (kaiming uniform: rebuilt) and which were
        drawn otherwise (stored): rebuild the uniform ones from the seed and store what differs."""
        first_key, first = next(iter(sd.items()))
        seed = next((s for s in range(10000) if torch.equal(compact._uniform(
            torch.Generator().manual_seed(s), tuple(first.shape),
            math.sqrt(3.0) * torch.nn.init.calculate_gain("leaky_relu", math.sqrt(5)) / math.sqrt(first[0].numel())
        ).half(), first)), None)
        if seed is None:
            raise SystemExit(f"{name}: no seed gives {first_key} by default initialisation")
        params, weight_fan = [], {}
        for key, v in sd.items():
            module, leaf = key.rsplit(".", 1)
            shape = list(v.shape)
            if leaf == "positional_embedding" or (leaf == "weight" and v.dim() >= 2 and "label_emb" in key):
                how, arg = "normal", v.numel()
            elif leaf == "weight" and v.dim() >= 2:
                how, arg = "kaiming", v[0].numel()
                weight_fan[module] = arg
            elif leaf == "bias" and module in weight_fan:
                how, arg = "bias", weight_fan[module]
            else:
                how, arg = "none", 0
            params.append([key, shape, how, arg, None])
        spec = {"name": name, "seed": seed, "params": params, "sha256": digest}
        # First pass with nothing stored: which rebuilt values are final?
        rebuilt = self.rebuild_first_phase(spec)
        for p in params:
            key = p[0]
            if key not in rebuilt or not torch.equal(rebuilt[key], sd[key]):
                p[4] = self.tensor(sd[key])
        return spec

    @staticmethod
    def rebuild_first_phase(spec):
        g = torch.Generator().manual_seed(spec["seed"])
        gain = torch.nn.init.calculate_gain("leaky_relu", math.sqrt(5))
        out = {}
        for key, shape, how, arg, _ in spec["params"]:
            if how == "kaiming":
                out[key] = compact._uniform(g, tuple(shape), math.sqrt(3.0) * (gain / math.sqrt(arg))).half()
            elif how == "bias":
                out[key] = compact._uniform(g, tuple(shape), 1 / math.sqrt(arg) if arg > 0 else 0).half()
            elif how == "normal":
                compact._skip(g, arg + (16 if arg % 16 else 0))
        return out

    def encode(self, node, file: str, top: dict, key=None):
        if isinstance(node, dict):
            for k in node:
                if isinstance(k, str) and k.startswith("$"):
                    raise SystemExit(f"{file}: key {k!r} would read as an archive tag")
            if key in STATE_DICT_KEYS:
                return {"$weights": self.weights(node, f"{file.removesuffix('.pt')}:{key}")}
            vals = list(node.values())
            if len(vals) > 1 and all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in vals) \
                    and len({v.dtype for v in vals}) == 1:
                return {"$scalars": [list(node), self.tensor(torch.stack(vals))]}
            if file == "sampling.pt" and "x_t" in node and "samples" in node:
                return self.sampling_case(node, file, top)
            return {k: self.encode(v, file, top, k) for k, v in node.items()}
        if isinstance(node, list):
            return [self.encode(v, file, top) for v in node]
        if isinstance(node, tuple):
            return tuple(self.encode(v, file, top) for v in node)
        if isinstance(node, torch.Tensor):
            return {"$t": self.tensor(node)}
        return node

    def sampling_case(self, case, file, top):
        """Step k+1's x_t is step k's sample and the loop's sample is the last step's: stored once."""
        out = {}
        samples = self.tensor(case["samples"])
        for k, v in case.items():
            if k == "x_t" and torch.equal(v, torch.cat([top["noise"][None], case["samples"][:-1]])):
                out[k] = {"$x_t": [self.tensor(top["noise"]), samples]}
            elif k == "sample" and torch.equal(v, case["samples"][-1]):
                out[k] = {"$last": samples}
            else:
                out[k] = self.encode(v, file, top, k)
        return out


def same(a, b, where=""):
    """Exact equality, recursively: tensors by dtype, shape and value (NaN-free data)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (where, list(a), list(b))
        for k in a:
            same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}/{i}")
    else:
        assert type(a) is type(b) and a == b, (where, a, b)


def write_digests(shared: Path) -> dict:
    """digests.json: what the full folder holds, for the checks of a clone that lacks it."""
    digests = {name: compact.content_digest(drop(torch.load(shared / name, weights_only=True), DROP.get(name, [])))
               for name in PT_FILES}
    digests.update({name: hashlib.sha256((shared / name).read_bytes()).hexdigest() for name in JSON_FILES})
    (HERE / "digests.json").write_text(json.dumps(digests, indent=1) + "\n")
    return digests


def main():
    shared = find_shared()
    torch.set_num_threads(1)
    write_digests(shared)
    if "--digests" in sys.argv:
        return
    enc, files, meta = Encoder(), {}, None
    for name in PT_FILES:
        d = drop(torch.load(shared / name, weights_only=True), DROP.get(name, []))
        meta = meta or d.get("meta")
        files[name] = enc.encode(d, name, d)
    archive = {"format": compact.FORMAT, "source": {"folder": "../shared/golden", **(meta or {})},
               "dropped": DROP, "files": files, "models": enc.models,
               "tensors": enc.tensors, "tensor_meta": enc.meta}
    buf = io.BytesIO()
    torch.save(archive, buf)
    out = HERE / compact.ARCHIVE.name
    out.write_bytes(lzma.compress(buf.getvalue(), preset=9 | lzma.PRESET_EXTREME))
    for name in JSON_FILES:
        shutil.copyfile(shared / name, HERE / name)

    # Read it back: every kept entry equals the source.
    golden = compact.Golden(out)
    for name in PT_FILES:
        same(golden.load(name), drop(torch.load(shared / name, weights_only=True), DROP.get(name, [])), name)
    for name in JSON_FILES:
        assert (HERE / name).read_bytes() == (shared / name).read_bytes()
        json.loads((HERE / name).read_text())

    stored = sum(m[4] is not None for s in enc.models.values() for m in s["params"])
    total_params = sum(len(s["params"]) for s in enc.models.values())
    print(f"{len(enc.tensors)} distinct tensors; weights: {len(enc.models)} models, {stored}/{total_params} "
          f"tensors stored, the rest rebuilt from seeds {[s['seed'] for s in enc.models.values()]}")
    sizes = {p.name: p.stat().st_size for p in sorted(HERE.iterdir()) if p.is_file()}
    for n, s in sizes.items():
        print(f"  {n:40s} {s / 1e6:8.3f} MB")
    total = sum(sizes.values())
    print(f"  {'total':40s} {total / 1e6:8.3f} MB (budget {BUDGET / 1e6:.0f} MB)")
    if total > BUDGET:
        sys.exit("over budget")


if __name__ == "__main__":
    main()
