"""The networks compute the official functions: golden forward outputs, strict loads, parameter counts."""
import json

import pytest
import torch

from adm import hub
from adm.hub import build_preset, presets
from adm.compat import create_classifier, create_model_and_diffusion, parse_flags
from adm.compat.script_util import classifier_config_from_flags, sr_config_from_flags, unet_config_from_flags
from adm.nn import ADM, ADM_U, ADM_classifier


@pytest.mark.parametrize("name", ["unet_forward_a.pt", "unet_forward_b.pt"])
def test_unet_forward_matches_official(load_golden, name):
    d = load_golden(name)
    model = ADM(unet_config_from_flags(d["flags"]))
    model.load_state_dict(d["state_dict"], strict=True)
    model.eval()
    i = d["inputs"]
    with torch.no_grad():
        out = model(i["x"], i["t"], i["y"])
        out_f = model(i["x"], i["t_float"], i["y"])
    assert (out - d["outputs"]["out"]).abs().max() <= 1e-4
    assert (out_f - d["outputs"]["out_t_float"]).abs().max() <= 1e-4


def test_classifier_logits_and_guidance_gradient(load_golden):
    d = load_golden("classifier.pt")
    clf = ADM_classifier(classifier_config_from_flags(d["flags"]))
    clf.load_state_dict(d["state_dict"], strict=True)
    clf.eval()
    i = d["inputs"]
    x = i["x"].clone().requires_grad_(True)
    logits = clf(x, i["t"])
    assert (logits - d["outputs"]["logits"]).abs().max() <= 1e-4
    log_p = torch.log_softmax(logits, dim=-1)[torch.arange(len(i["y"])), i["y"]].sum()
    (grad,) = torch.autograd.grad(log_p, x)
    ref = d["outputs"]["grad_log_p_y"]
    assert (grad - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())


def test_super_res_forward_matches_official(load_golden):
    d = load_golden("super_res.pt")
    model = ADM_U(sr_config_from_flags(d["flags"]))
    model.load_state_dict(d["state_dict"], strict=True)
    model.eval()
    i = d["inputs"]
    with torch.no_grad():
        out = model(i["x"], i["t"], low_res=i["low_res"], y=i["y"])
    assert (out - d["outputs"]["out"]).abs().max() <= 1e-4


def test_compat_factories_build_the_golden_models(load_golden):
    d = load_golden("unet_forward_a.pt")
    model, _ = create_model_and_diffusion(**d["flags"])
    model.load_state_dict(d["state_dict"], strict=True)
    c = load_golden("classifier.pt")
    create_classifier(**c["flags"]).load_state_dict(c["state_dict"], strict=True)


def _official(golden_dir):
    shapes = json.loads((golden_dir / "official_state_dict_shapes.json").read_text())
    params = {p["name"]: p for p in json.loads((golden_dir / "official_params.json").read_text())}
    return shapes, params


def test_every_released_checkpoint_loads_strictly(golden_dir):
    """Built on the meta device from the official flags: keys and shapes equal, counts equal."""
    shapes, params = _official(golden_dir)
    assert len(shapes) == 14
    for name, entry in shapes.items():
        info = params[name]
        flags = dict(info["flags"])
        kind = {"unet": "ADM", "classifier": "ADM_classifier", "sr": "ADM_U"}[info["kind"]]
        cls = {"ADM": ADM, "ADM_classifier": ADM_classifier, "ADM_U": ADM_U}[kind]
        from adm.compat.script_util import config_from_flags

        with torch.device("meta"):
            model = cls(config_from_flags(flags, kind=kind))
        sd = {k: torch.empty(s, device="meta") for k, s in entry}
        model.load_state_dict(sd, strict=True, assign=True)
        assert sum(p.numel() for p in model.parameters()) == info["params"], name
        assert len(model.state_dict()) == info["state_dict_keys"], name


def test_presets_recognise_every_released_checkpoint(golden_dir):
    shapes, params = _official(golden_dir)
    expected = {
        "64x64_diffusion": "ADM_diffusion_64_conditioned",
        "128x128_diffusion": "ADM_diffusion_128_conditioned",
        "256x256_diffusion": "ADM_diffusion_256_conditioned",
        "256x256_diffusion_uncond": "ADM_diffusion_256_unconditioned",
        "512x512_diffusion": "ADM_diffusion_512_conditioned",
        "64x64_classifier": "ADM_classifier_64",
        "128x128_classifier": "ADM_classifier_128",
        "256x256_classifier": "ADM_classifier_256",
        "512x512_classifier": "ADM_classifier_512",
        "64_256_upsampler": "ADM_U_64_256",
        "128_512_upsampler": "ADM_U_128_512",
    }
    for name, preset in expected.items():
        sd = {k: torch.empty(s, device="meta") for k, s in shapes[name]}
        assert hub.identify(sd) == preset
        assert presets.get(preset).file == name + ".pt"
    # The LSUN models share the 256x256 unconditional architecture.
    sd = {k: torch.empty(s, device="meta") for k, s in shapes["lsun_horse_nodropout"]}
    assert hub.preset_shapes("ADM_lsun_horse_nodropout") == {k: tuple(v.shape) for k, v in sd.items()}


def test_preset_flags_equal_the_released_flags(golden_dir):
    """Each preset's typed config equals what adm.compat makes of the official flags in the golden files."""
    from adm.compat.script_util import config_from_flags

    _, params = _official(golden_dir)
    pairs = {
        "64x64_diffusion": "ADM_diffusion_64_conditioned",
        "256x256_diffusion_uncond": "ADM_diffusion_256_unconditioned",
        "512x512_diffusion": "ADM_diffusion_512_conditioned",
        "64x64_classifier": "ADM_classifier_64",
        "128_512_upsampler": "ADM_U_128_512",
        "lsun_bedroom_cat_horse": "ADM_lsun_cat",
        "lsun_horse_nodropout": "ADM_lsun_horse_nodropout",
    }
    for official, preset in pairs.items():
        p = presets.get(preset)
        assert p.config == config_from_flags(params[official]["flags"], kind=p.kind), preset
