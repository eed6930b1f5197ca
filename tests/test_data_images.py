"""adm.data.images and preprocessing: uint8 conversion, .npz round trips and errors, grids, crop/resize."""
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from adm.data import center_crop_resize, load_npz, make_grid, save_grid, save_npz, save_png, to_uint8
from adm.data.preprocess import to_tensor
from adm.errors import DataError


# -- to_uint8 and the [-1, 1] levels --------------------------------------------------------------
def test_to_uint8_truncates_like_guided_diffusion_and_moves_channels_last():
    x = torch.tensor([-2.0, -1.0, 0.0, 254.9 / 127.5 - 1, 1.0, 3.0]).view(1, 1, 1, 6)
    out = to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (1, 1, 6, 1)
    assert out.ravel().tolist() == [0, 0, 127, 254, 255, 255]  # 127.5 -> 127: truncation, not rounding
    x = torch.rand(2, 3, 4, 5) * 2 - 1
    assert to_uint8(x).shape == (2, 4, 5, 3)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        to_uint8(torch.zeros(3, 4, 5))


def test_every_uint8_level_survives_tensor_and_back():
    u = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    x = to_tensor(u)
    assert x.dtype == torch.float32 and x.shape == (1, 16, 16)
    assert torch.allclose(x.double(), torch.from_numpy(u).permute(2, 0, 1).double() / 127.5 - 1, atol=1e-7)
    assert x.min() == -1 and x.max() == 1
    np.testing.assert_array_equal(to_uint8(x[None])[0], u)


# -- .npz -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("with_labels", [False, True])
def test_npz_round_trip(tmp_path, channels, with_labels):
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 6, channels), dtype=np.uint8)
    labels = np.array([0, 3, 1, 1, 2]) if with_labels else None
    path = save_npz(tmp_path / "sub" / "samples.npz", images, labels)
    assert path.name == "samples.npz" and [p.name for p in path.parent.iterdir()] == ["samples.npz"]  # no temp
    got, got_labels = load_npz(path)
    np.testing.assert_array_equal(got, images)
    if with_labels:
        assert got_labels.dtype == np.int64 and got_labels.tolist() == labels.tolist()
    else:
        assert got_labels is None
    with np.load(path) as raw:  # the paper's layout, readable by the official evaluator
        assert raw["arr_0"].dtype == np.uint8 and ("arr_1" in raw.files) == with_labels


def test_save_npz_refuses_bad_input_and_leaves_nothing(tmp_path):
    with pytest.raises(DataError, match="uint8"):
        save_npz(tmp_path / "a.npz", np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(DataError, match="C = 1 or 3"):
        save_npz(tmp_path / "a.npz", np.zeros((2, 4, 4, 2), np.uint8))
    with pytest.raises(DataError, match="non-negative"):
        save_npz(tmp_path / "a.npz", np.zeros((2, 4, 4, 3), np.uint8), labels=[0, -1])
    with pytest.raises(DataError, match=r"shape \[2\]"):
        save_npz(tmp_path / "a.npz", np.zeros((2, 4, 4, 3), np.uint8), labels=[0, 1, 2])
    assert list(tmp_path.iterdir()) == []


def test_load_npz_errors_name_the_file_and_the_problem(tmp_path):
    missing = tmp_path / "missing.npz"
    with pytest.raises(DataError, match="missing.npz: no such file"):
        load_npz(missing)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(DataError, match="text.npz: not an .npz"):
        load_npz(text)
    other = tmp_path / "other.npz"
    np.savez(other, images=np.zeros((1, 2, 2, 3), np.uint8))
    with pytest.raises(DataError, match="no arr_0.*images"):
        load_npz(other)
    floats = tmp_path / "floats.npz"
    np.savez(floats, np.zeros((1, 2, 2, 3), np.float32))
    with pytest.raises(DataError, match="floats.npz: arr_0: expected dtype uint8"):
        load_npz(floats)
    nchw = tmp_path / "nchw.npz"
    np.savez(nchw, np.zeros((1, 3, 8, 8), np.uint8))
    with pytest.raises(DataError, match=r"\[N, H, W, C\]"):
        load_npz(nchw)
    grey = tmp_path / "grey.npz"
    np.savez(grey, np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(DataError, match=r"arr\[\.\.\., None\]"):
        load_npz(grey)
    bad_labels = tmp_path / "labels.npz"
    np.savez(bad_labels, np.zeros((2, 2, 2, 1), np.uint8), np.array([0.5, 1.0]))
    with pytest.raises(DataError, match="arr_1: expected integer"):
        load_npz(bad_labels)
    assert zipfile.is_zipfile(bad_labels)


# -- PNGs and grids -------------------------------------------------------------------------------
def test_save_png_grey_and_rgb(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    grey = rgb[:, :, :1].copy()
    with Image.open(save_png(tmp_path / "rgb.png", rgb)) as im:
        assert im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), rgb)
    with Image.open(save_png(tmp_path / "grey.png", grey)) as im:
        assert im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), grey[:, :, 0])


def test_make_grid_layout():
    images = np.stack([np.full((4, 3, 1), 10 * (i + 1), np.uint8) for i in range(5)])
    grid = make_grid(images, nrow=3, pad=2)
    assert grid.shape == (2 * (4 + 2) + 2, 3 * (3 + 2) + 2, 1)
    assert grid[2, 2, 0] == 10 and grid[2 + 6, 2 + 5, 0] == 50  # image 4 = row 1, column 1
    assert grid[0].max() == 0 and grid[8, 12, 0] == 0  # padding and the unused last cell
    assert make_grid(np.zeros((2, 4, 4, 3), np.uint8), nrow=8).shape == (4 + 4, 2 * 6 + 2, 3)  # fewer images than nrow: one short row


@pytest.mark.parametrize("channels", [1, 3])
def test_save_grid_with_labels(tmp_path, channels):
    images = np.full((6, 16, 16, channels), 255, np.uint8)
    plain = save_grid(tmp_path / "plain.png", images, nrow=3)
    labelled = save_grid(
        tmp_path / "labelled.png", images, nrow=3, row_labels=["scale 1", "scale 10"], col_labels=["a", "b", "c"]
    )
    with Image.open(plain) as a, Image.open(labelled) as b:
        assert a.mode == b.mode == ("L" if channels == 1 else "RGB")
        assert a.size == (3 * 18 + 2, 2 * 18 + 2)
        assert b.width > a.width and b.height > a.height  # room for the text on the left and on top
        top = np.asarray(b)[: b.height - a.height]
        assert top.min() < 128  # dark text was drawn above the grid
    with pytest.raises(ValueError, match="3 row labels for 2 rows"):
        save_grid(tmp_path / "x.png", images, nrow=3, row_labels=["a", "b", "c"])


# -- crop and resize (guided-diffusion's center_crop_arr) -----------------------------------------
def test_center_crop_keeps_the_middle_of_wide_and_tall_images():
    wide = np.zeros((32, 96), np.uint8)
    wide[:, 32:64] = 200
    out = center_crop_resize(Image.fromarray(wide), 32)  # short side already 32: a pure crop
    assert out.shape == (32, 32, 1) and (out == 200).all()
    tall = np.zeros((96, 32, 3), np.uint8)
    tall[32:64] = (10, 20, 30)
    out = center_crop_resize(Image.fromarray(tall), 32)
    assert out.shape == (32, 32, 3) and (out == (10, 20, 30)).all()


def test_box_halving_then_bicubic():
    small = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    big = np.kron(small, np.ones((4, 4, 1), np.uint8))  # 64x64 of 4x4 blocks
    np.testing.assert_array_equal(center_crop_resize(Image.fromarray(big), 16), small)  # two exact box halvings
    # 48 < 2 * 32: no halving, one bicubic resize of the whole image.
    img = Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    expected = np.asarray(img.resize((32, 32), resample=Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(center_crop_resize(img, 32), expected)
    # 100x50 -> halved once to 50x25 -> bicubic to 32x16 -> 16x16 from the middle.
    out = center_crop_resize(Image.new("RGB", (100, 50), (0, 128, 255)), 16)
    assert out.shape == (16, 16, 3) and (out == (0, 128, 255)).all()
