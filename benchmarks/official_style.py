"""An emulation of openai/guided-diffusion's forward pass (commit 22e0df8) on adm's modules.

What it is: while `official_style()` is active, the classes of `adm.nn` run the official algorithms,
re-implemented here operation for operation from the original `unet.py` / `nn.py`:

- `GroupNorm32`: `GroupNorm(x.float()).type(x.dtype)` (a float32 round trip whatever the input);
- `QKVAttention` / `QKVAttentionLegacy`: q and k each scaled by C^-1/4, `einsum` for q k^T (the
  full [N*H, L, L] matrix is formed), softmax in float32 then cast back, `einsum` with v;
  1x1 `Conv1d` projections on channel-major [N, C, L] activations;
- `ResBlock`: AdaGN as `norm(h) * (1 + scale) + shift` (three passes over h);
- `UNetModel.forward`: `torch.cat([h, skip])` before each decoder block;
- `AttentionPool2d`: attention over all L+1 tokens, then token 0 is read out;
- gradient checkpointing: the original `CheckpointFunction` (an autograd.Function that runs the
  block without grad, saves its inputs, and re-runs it in backward with `torch.autograd.grad`).

It uses the same parameters and the same PyTorch, so "adm vs official-style" ratios measured in one
process isolate the implementation. What it is not: the original repository itself (its
mixed-precision trainer, its MPI code and its sampler loop are not emulated; the samplers here are
adm's for both). The golden tests in `benchmarks/test_benchmarks.py` check that the emulation
reproduces the official numbers.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from adm.nn import ADM, ADM_classifier
from adm.nn.layers import AttentionBlock, AttentionPool2d, EmbedSequential, GroupNorm32, ResBlock, timestep_embedding


class _CheckpointFunction(torch.autograd.Function):
    """guided-diffusion's `CheckpointFunction`: recompute the block in backward."""

    @staticmethod
    def forward(ctx, run_function, length, *args):
        ctx.run_function = run_function
        ctx.input_tensors = list(args[:length])
        ctx.input_params = list(args[length:])
        with torch.no_grad():
            output_tensors = ctx.run_function(*ctx.input_tensors)
        return output_tensors

    @staticmethod
    def backward(ctx, *output_grads):
        ctx.input_tensors = [x.detach().requires_grad_(True) for x in ctx.input_tensors]
        with torch.enable_grad():
            shallow_copies = [x.view_as(x) for x in ctx.input_tensors]
            output_tensors = ctx.run_function(*shallow_copies)
        input_grads = torch.autograd.grad(
            output_tensors, ctx.input_tensors + ctx.input_params, output_grads, allow_unused=True
        )
        del ctx.input_tensors, ctx.input_params, output_tensors
        return (None, None) + input_grads


def _checkpoint(func, inputs, params, flag):
    if flag:
        args = tuple(inputs) + tuple(params)
        return _CheckpointFunction.apply(func, len(inputs), *args)
    return func(*inputs)


def _group_norm(self, x):
    return nn.GroupNorm.forward(self, x.float()).type(x.dtype)


def _resblock_forward(self, x, emb):
    return _checkpoint(self._official_forward, (x, emb), self.parameters(), self.use_checkpoint)


def _resblock_body(self, x, emb):
    if self.updown:
        in_rest, in_conv = self.in_layers[:-1], self.in_layers[-1]
        h = in_rest(x)
        h = self.h_upd(h)
        x = self.x_upd(x)
        h = in_conv(h)
    else:
        h = self.in_layers(x)
    emb_out = self.emb_layers(emb).type(h.dtype)
    while len(emb_out.shape) < len(h.shape):
        emb_out = emb_out[..., None]
    if self.use_scale_shift_norm:
        out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
        scale, shift = torch.chunk(emb_out, 2, dim=1)
        h = out_norm(h) * (1 + scale) + shift
        h = out_rest(h)
    else:
        h = h + emb_out
        h = self.out_layers(h)
    out = self.skip_connection(x) + h
    return out * (1 / math.sqrt(2)) if self.rescale else out  # adm's Table 1 option; off in releases


def _qkv_attention_new_order(qkv, n_heads):
    bs, width, length = qkv.shape
    ch = width // (3 * n_heads)
    q, k, v = qkv.chunk(3, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum(
        "bct,bcs->bts", (q * scale).view(bs * n_heads, ch, length), (k * scale).view(bs * n_heads, ch, length)
    )
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    a = torch.einsum("bts,bcs->bct", weight, v.reshape(bs * n_heads, ch, length))
    return a.reshape(bs, -1, length)


def _qkv_attention_legacy(qkv, n_heads):
    bs, width, length = qkv.shape
    ch = width // (3 * n_heads)
    q, k, v = qkv.reshape(bs * n_heads, ch * 3, length).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    a = torch.einsum("bts,bcs->bct", weight, v)
    return a.reshape(bs, -1, length)


def _attention_forward(self, x):
    return _checkpoint(self._official_forward, (x,), self.parameters(), self.use_checkpoint)


def _attention_body(self, x):
    b, c, *spatial = x.shape
    x = x.reshape(b, c, -1)
    qkv = self.qkv(self.norm(x))
    h = (_qkv_attention_legacy if self.legacy else _qkv_attention_new_order)(qkv, self.num_heads)
    h = self.proj_out(h)
    return (x + h).reshape(b, c, *spatial)


def _attention_pool(self, x):
    b, c, *_ = x.shape
    x = x.reshape(b, c, -1)
    x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
    x = x + self.positional_embedding[None, :, :].to(x.dtype)
    x = self.qkv_proj(x)
    x = _qkv_attention_new_order(x, self.num_heads)
    x = self.c_proj(x)
    return x[:, :, 0]


def _embed_sequential(self, x, emb):
    for layer in self:
        x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
    return x


def _unet_forward(self, x, timesteps, y=None):
    assert (y is not None) == bool(self.config.num_classes)
    hs = []
    emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels))
    if self.config.num_classes:
        emb = emb + self.label_emb(y)
    h = x.type(self.dtype)
    for module in self.input_blocks:
        h = module(h, emb)
        hs.append(h)
    h = self.middle_block(h, emb)
    for module in self.output_blocks:
        h = torch.cat([h, hs.pop()], dim=1)
        h = module(h, emb)
    h = h.type(x.dtype)
    return self.out(h)


def _classifier_forward(self, x, timesteps):
    emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels))
    spatial = self.config.pool.startswith("spatial")
    results = []
    h = x.type(self.dtype)
    for module in self.input_blocks:
        h = module(h, emb)
        if spatial:
            results.append(h.type(x.dtype).mean(dim=(2, 3)))
    h = self.middle_block(h, emb)
    if spatial:
        results.append(h.type(x.dtype).mean(dim=(2, 3)))
        return self.out(torch.cat(results, dim=-1))
    return self.out(h.type(x.dtype))


_PATCHES = [
    (GroupNorm32, "forward", _group_norm),
    (ResBlock, "forward", _resblock_forward),
    (ResBlock, "_official_forward", _resblock_body),
    (AttentionBlock, "forward", _attention_forward),
    (AttentionBlock, "_official_forward", _attention_body),
    (AttentionPool2d, "forward", _attention_pool),
    (EmbedSequential, "forward", _embed_sequential),
    (ADM, "forward", _unet_forward),
    (ADM_classifier, "forward", _classifier_forward),
]


@contextlib.contextmanager
def official_style():
    """Within this block every adm network computes its forward pass the official way (see above)."""
    saved = [(cls, name, cls.__dict__.get(name)) for cls, name, _ in _PATCHES]
    try:
        for cls, name, fn in _PATCHES:
            setattr(cls, name, fn)
        yield
    finally:
        for cls, name, old in saved:
            if old is None:
                delattr(cls, name)
            else:
                setattr(cls, name, old)
