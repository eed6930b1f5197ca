"""Behaviour of the networks beyond the golden numbers: options, errors, save/load, precision."""
import shlex
import math

import pytest
import torch

import adm
from adm import hub
from adm.hub import build_preset, presets
from adm.errors import AdmError, CheckpointError, ConfigError
from adm.nn import ADM, ADM_U, ADM_classifier, ADMConfig, ADMUConfig, ClassifierConfig
from adm.nn.layers import AttentionBlock, ResBlock, qkv_attention


def tiny(**kw) -> ADMConfig:
    base = dict(image_size=16, model_channels=32, num_res_blocks=1, attention_resolutions=(8,), channel_mult=(1, 2),
                num_head_channels=16)
    base.update(kw)
    return ADMConfig(**base)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def test_qkv_layouts_are_permutations_of_each_other():
    """The legacy and new layouts compute the same attention once the projection rows are permuted."""
    n, heads, ch, length = 2, 3, 4, 5
    qkv = torch.randn(n, 3 * heads * ch, length)
    new = qkv.reshape(n, 3, heads, ch, length)
    legacy = new.permute(0, 2, 1, 3, 4).reshape(n, 3 * heads * ch, length)
    a = qkv_attention(qkv, heads, legacy=False)
    b = qkv_attention(legacy, heads, legacy=True)
    assert torch.allclose(a, b, atol=1e-6)
    # And both equal a plain softmax(q k^T / sqrt(c)) v.
    q, k, v = new.unbind(1)
    w = torch.softmax(torch.einsum("nhcs,nhct->nhst", q, k) / math.sqrt(ch), dim=-1)
    ref = torch.einsum("nhst,nhct->nhcs", w, v).reshape(n, heads * ch, length)
    assert torch.allclose(a, ref, atol=1e-5)


def test_output_channels_follow_learn_sigma_and_classes():
    sigma = adm.diffusion.config.DiffusionConfig(learn_sigma=True)
    m = ADM(tiny(diffusion=sigma, num_classes=5)).eval()
    out = m(torch.randn(2, 3, 16, 16), torch.tensor([0, 999]), torch.tensor([0, 4]))
    assert out.shape == (2, 6, 16, 16)
    assert ADM(tiny(in_channels=1)).eval()(torch.randn(1, 1, 16, 16), torch.tensor([3])).shape == (1, 1, 16, 16)


@pytest.mark.parametrize("pool", ["adaptive", "attention", "spatial", "spatial_v2"])
def test_classifier_pools(pool):
    clf = randomize(ADM_classifier(ClassifierConfig(image_size=16, model_channels=32, num_res_blocks=1,
                                                      attention_resolutions=(8,), channel_mult=(1, 2), num_classes=7,
                                                      num_head_channels=16, pool=pool))).eval()
    logits = clf(torch.randn(3, 3, 16, 16), torch.tensor([1, 2, 3]))
    assert logits.shape == (3, 7) and torch.isfinite(logits).all()


def test_bad_inputs_give_one_clear_error():
    m = ADM(tiny(num_classes=4)).eval()
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), torch.tensor([0, 3])
    with pytest.raises(ConfigError, match="3 input channels"):
        m(torch.randn(2, 1, 16, 16), t, y)
    with pytest.raises(ConfigError, match="16x16"):
        m(torch.randn(2, 3, 32, 32), t, y)
    with pytest.raises(ConfigError, match="class-conditional"):
        m(x, t)
    with pytest.raises(ConfigError, match="out of range"):
        m(x, t, torch.tensor([0, 4]))
    with pytest.raises(ConfigError, match="unconditional"):
        ADM(tiny())(x, t, y)
    with pytest.raises(ConfigError, match="low_res"):
        ADM_U(ADMUConfig(**{**tiny().to_dict(), "small_size": 8}))(x, t)
    with pytest.raises(ConfigError, match="multiple of 32"):
        ADM(tiny(model_channels=40))
    with pytest.raises(ConfigError, match="did you mean"):
        presets.get("ADM_diffusion_256_conditional")
    with pytest.raises(CheckpointError, match="closest released preset is 'ADM_diffusion_64_conditioned'"):
        build_preset("ADM_diffusion_64_unconditioned", pretrained=True)


def test_null_class_accepts_the_null_label():
    m = ADM(tiny(num_classes=4, null_class=True)).eval()
    assert m.null_label == 4
    m(torch.randn(1, 3, 16, 16), torch.tensor([5]), torch.tensor([4]))


def test_rescaled_residuals_divide_the_block_sum_by_sqrt2():
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 64)
    plain = randomize(ResBlock(32, 64, 0.0, out_channels=64))
    scaled = ResBlock(32, 64, 0.0, out_channels=64, rescale=True)
    scaled.load_state_dict(plain.state_dict())
    assert torch.allclose(scaled(x, emb), plain(x, emb) / math.sqrt(2), atol=1e-6)
    ADM(tiny(rescale_residuals=True))  # builds


def test_gradient_checkpointing_covers_attention_and_keeps_gradients():
    cfg = tiny(num_classes=3)
    a = randomize(ADM(cfg))
    b = ADM(cfg.replace(use_checkpoint=True))
    b.load_state_dict(a.state_dict())
    assert all(m.use_checkpoint for m in b.modules() if isinstance(m, (ResBlock, AttentionBlock)))
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([10, 500]), torch.tensor([0, 2])
    a(x, t, y).square().mean().backward()
    b(x, t, y).square().mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5, rtol=1e-4), name


def test_save_pretrained_round_trip(tmp_path):
    m = randomize(ADM(tiny(num_classes=3, null_class=True)))
    m.save_pretrained(tmp_path / "m")
    back = ADM.from_pretrained(tmp_path / "m")
    assert back.config == m.config
    for k, v in m.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])
    with pytest.raises(ConfigError, match="is a ADM; expected ADM_classifier"):
        ADM_classifier.from_pretrained(tmp_path / "m")
    # float16 export loads back into float32 weights
    m.save_pretrained(tmp_path / "h", dtype=torch.float16)
    h = ADM.from_pretrained(tmp_path / "h")
    assert h.time_embed[0].weight.dtype == torch.float32
    assert torch.allclose(h.time_embed[0].weight, m.time_embed[0].weight, atol=1e-3)


def test_official_pt_loading_and_refusals(tmp_path, load_golden):
    d = load_golden("unet_forward_b.pt")
    path = tmp_path / "model.pt"
    torch.save(d["state_dict"], path)
    from adm.compat.script_util import unet_config_from_flags

    m = ADM.from_pretrained(path, config=d["flags"])
    assert m.config == unet_config_from_flags(d["flags"])
    # Truncated file
    blob = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="not a readable"):
        ADM.from_pretrained(tmp_path / "cut.pt", config=d["flags"])
    # A pickle that would run code is refused
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        ADM.from_pretrained(tmp_path / "evil.pt", config=d["flags"])
    # Mismatching checkpoint: the error names the keys
    flags = dict(d["flags"], num_channels=64)
    with pytest.raises(CheckpointError, match="shape|missing"):
        ADM.from_pretrained(path, config=flags)
    with pytest.raises(CheckpointError, match="match no known preset"):
        ADM.from_pretrained(path)


def test_mismatch_names_the_preset_that_fits(golden_dir):
    import json

    shapes = json.loads((golden_dir / "official_state_dict_shapes.json").read_text())
    sd = {k: torch.empty(s, device="meta") for k, s in shapes["64x64_classifier"]}
    with torch.device("meta"):
        model = build_preset("ADM_classifier_128")
    with pytest.raises(CheckpointError, match="fits the preset 'ADM_classifier_64'"):
        hub.load_weights(model, sd, "checkpoint")


def test_pretrained_download_from_a_local_server(tmp_path, monkeypatch, load_golden):
    """pretrained=True goes through the download cache; served here from 127.0.0.1."""
    import http.server
    import threading

    d = load_golden("classifier.pt")
    from adm.compat.script_util import classifier_config_from_flags

    (tmp_path / "srv").mkdir()
    torch.save(d["state_dict"], tmp_path / "srv" / "tiny_classifier.pt")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "srv"), **k)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = classifier_config_from_flags(d["flags"])
        preset = presets.Preset("tiny", cfg, "tiny_classifier.pt")
        monkeypatch.setitem(presets.PRESETS, "tiny", preset)
        monkeypatch.setattr(presets, "RELEASE_URL", f"http://127.0.0.1:{server.server_port}/")
        monkeypatch.setenv("ADM_CACHE", str(tmp_path / "cache"))
        clf = build_preset("tiny", pretrained=True)
        assert (tmp_path / "cache" / "tiny_classifier.pt").is_file()
        assert torch.equal(clf.state_dict()["out.2.c_proj.weight"], d["state_dict"]["out.2.c_proj.weight"])
    finally:
        server.shutdown()


def test_autocast_bf16_stays_close_to_fp32():
    m = randomize(ADM(tiny(num_classes=3)), seed=1).eval()
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([10, 900]), torch.tensor([1, 2])
    with torch.no_grad():
        ref = m(x, t, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(x, t, y)
    assert low.dtype == torch.bfloat16
    rel = (low.float() - ref).norm() / ref.norm()
    assert rel < 0.05


def test_convert_to_fp16_casts_the_body_convolutions_only():
    m = ADM(tiny())
    m.convert_to_fp16()
    assert m.input_blocks[0][0].weight.dtype == torch.float16
    assert m.time_embed[0].weight.dtype == torch.float32 and m.out[2].weight.dtype == torch.float32
    m.convert_to_fp32()
    assert m.input_blocks[0][0].weight.dtype == torch.float32


def test_convert_checkpoint_recognises_and_round_trips(tmp_path, load_golden):
    d = load_golden("super_res.pt")
    torch.save(d["state_dict"], tmp_path / "sr.pt")
    with pytest.raises(CheckpointError, match="match no known preset"):
        adm.convert_checkpoint(tmp_path / "sr.pt", tmp_path / "out")
    flags = " ".join(f"--{k} {shlex.quote(str(v))}" for k, v in d["flags"].items())
    out, what = adm.convert_checkpoint(tmp_path / "sr.pt", tmp_path / "out", preset=flags)
    assert what == "custom ADM_U"
    m = ADM_U.from_pretrained(out).eval()
    i = d["inputs"]
    with torch.no_grad():
        o = m(i["x"], i["t"], low_res=i["low_res"], y=i["y"])
    assert (o - d["outputs"]["out"]).abs().max() <= 1e-4


def test_compat_factory_builds_on_the_meta_device():
    """Shape inspection of a full-size model allocates nothing; the schedule stays on the CPU."""
    from adm.compat import create_model_and_diffusion, model_and_diffusion_defaults

    with torch.device("meta"):
        model, diffusion = create_model_and_diffusion(**{**model_and_diffusion_defaults(), "image_size": 64})
    assert model.input_blocks[0][0].weight.is_meta and diffusion.num_timesteps == 1000


def test_short_attention_under_low_precision_training_equals_the_fused_kernel():
    """CPU bf16 with gradients at <= SHORT_ATTENTION tokens takes the explicit path: the same values and
    gradients as scaled_dot_product_attention (to bf16 precision), the fused kernel everywhere else."""
    import torch.nn.functional as F

    from adm.nn import layers

    g = torch.Generator().manual_seed(0)
    for length in (16, layers.SHORT_ATTENTION, 2 * layers.SHORT_ATTENTION):
        qkv = torch.randn(3, length, 2 * 3 * 32, generator=g)
        grad = torch.randn(3, length, 2 * 32, generator=g)
        ref_in = qkv.clone().requires_grad_()
        n, heads, ch = 3, 2, 32
        q, k, v = ref_in.view(n, length, heads, 3, ch).unbind(3)
        ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        ref = ref.transpose(1, 2).reshape(n, length, heads * ch)
        ref.backward(grad)
        low = qkv.bfloat16().requires_grad_()
        out = layers.token_attention(low, heads, legacy=True)
        out.backward(grad.bfloat16())
        torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
        torch.testing.assert_close(low.grad.float(), ref_in.grad, atol=5e-2, rtol=5e-2)
        # float32 and no-grad calls take the fused kernel: exactly its output.
        with torch.no_grad():
            assert torch.equal(layers.token_attention(qkv, heads, legacy=True), ref.detach())
    q, k, v = torch.randn(3, 2, 4, 50, 16, generator=g).unbind(0)  # float32: the same function
    torch.testing.assert_close(layers._explicit_attention(q, k, v), F.scaled_dot_product_attention(q, k, v),
                               atol=1e-5, rtol=1e-5)
    # bf16: the softmax in the input dtype is a float32 softmax rounded once, bit for bit.
    q, k, v = (t.bfloat16() for t in torch.randn(3, 2, 4, 256, 32, generator=g).mul(3).unbind(0))
    weights = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    assert torch.equal(layers._explicit_attention(q, k, v),
                       weights.softmax(-1, dtype=torch.float32).to(torch.bfloat16) @ v)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_adagn_in_low_precision_keeps_its_precision(dtype):
    """AdaGN on the CPU in bf16 / fp16 (multiply, then add in place) stays within the dtype's rounding of the
    float32 result, and its gradients flow to x, scale and shift."""
    from adm.nn.layers import GroupNorm32

    g = torch.Generator().manual_seed(3)
    norm = GroupNorm32(64)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(64, generator=g) + 0.5)
        norm.bias.copy_(torch.randn(64, generator=g))
    x = torch.randn(4, 64, 8, 8, generator=g) * 3 + 1
    scale, shift = torch.randn(2, 4, 64, 1, 1, generator=g).unbind(0)
    x, scale, shift = (t.to(dtype).float() for t in (x, scale, shift))  # the same inputs in both precisions
    ref = norm.modulate(x, scale, shift)
    args = [t.to(dtype).requires_grad_() for t in (x, scale, shift)]
    out = norm.modulate(*args)
    assert out.dtype == dtype
    # three roundings (the norm's output, the product, the sum), each at most eps / 2 of its value, none
    # of which exceeds the largest |output| by much: within 2 eps of the largest output
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err <= 2 * torch.finfo(dtype).eps, err
    out.float().square().sum().backward()
    ref_args = [t.clone().requires_grad_() for t in (x, scale, shift)]
    norm.modulate(*ref_args).square().sum().backward()
    for a, r in zip(args, ref_args):
        assert torch.allclose(a.grad.float(), r.grad, rtol=0.05, atol=0.05 * r.grad.abs().max().item())
