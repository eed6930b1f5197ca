"""adm.data.load_dataset: image folders, .npz arrays, Fashion-MNIST, corrupt files, flips, errors."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from adm.data import CorruptImageWarning, load_dataset, save_npz, to_uint8
from adm.data import fashion_mnist
from adm.errors import ConfigError, DataError

COLOURS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "emu": (0, 0, 255)}


def _png(path, colour, size=(12, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


@pytest.fixture
def class_folder(tmp_path):
    """Three classes of solid-colour images, one nested, in mixed extensions and case."""
    root = tmp_path / "classes"
    _png(root / "dog" / "a.png", COLOURS["dog"])
    _png(root / "dog" / "deeper" / "b.JPG", COLOURS["dog"])
    _png(root / "cat" / "c.PNG", COLOURS["cat"])
    _png(root / "cat" / "d.bmp", COLOURS["cat"])
    _png(root / "emu" / "e.webp", COLOURS["emu"])
    _png(root / "emu" / "f.gif", COLOURS["emu"], mode="P")
    (root / "emu" / "notes.txt").write_text("not an image")
    return root


def _items(ds):
    return [ds[i] for i in range(len(ds))]


def test_class_folders_are_labelled_by_sorted_name(class_folder):
    ds = load_dataset(str(class_folder), 8)
    assert len(ds) == 6 and ds.num_classes == 3 and ds.class_names == ["cat", "dog", "emu"]
    assert ds.channels == 3 and ds.image_size == 8
    for x, y in _items(ds):
        assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64 and y.ndim == 0
        colour = to_uint8(x[None])[0, 4, 4]
        expected = np.array(COLOURS[ds.class_names[int(y)]])
        assert np.abs(colour.astype(int) - expected).max() <= 3  # jpeg/webp are lossy
    assert sorted(int(y) for _, y in _items(ds)) == [0, 0, 1, 1, 2, 2]


def test_an_empty_class_folder_keeps_the_indices_of_the_others(class_folder):
    (class_folder / "bee").mkdir()
    _png(class_folder / "loose.png", (9, 9, 9))
    with pytest.warns(UserWarning) as record:
        ds = load_dataset(str(class_folder), 8)
    messages = " ".join(str(w.message) for w in record)
    assert "class 0 ('bee') holds no images" in messages and "beside the class folders are ignored" in messages
    assert ds.class_names == ["bee", "cat", "dog", "emu"] and len(ds) == 6
    assert sorted(int(y) for _, y in _items(ds)) == [1, 1, 2, 2, 3, 3]


def test_class_cond_false_and_grey_conversion(class_folder):
    ds = load_dataset(str(class_folder), 4, class_cond=False, channels=1)
    assert ds.num_classes == 0 and ds.class_names == []
    x, y = ds[0]
    assert x.shape == (1, 4, 4) and int(y) == 0


def test_flat_folder_is_unlabelled(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png", (i * 100, 0, 0), size=(20, 20))
    ds = load_dataset(str(tmp_path), 16)
    assert len(ds) == 3 and ds.num_classes == 0 and ds.class_names == []
    assert all(int(y) == 0 for _, y in _items(ds))
    assert [int(to_uint8(x[None])[0, 8, 8, 0]) for x, _ in _items(ds)] == [0, 100, 200]  # sorted file order


def test_corrupt_file_is_skipped_with_its_path_or_refused(class_folder):
    bad = class_folder / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.warns(CorruptImageWarning, match="broken.png"):
        ds = load_dataset(str(class_folder), 8)
    assert len(ds) == 6 and [p for p, _ in ds.skipped] == [bad]
    assert all(p != bad for p in ds.paths)
    with pytest.raises(DataError, match=r"broken\.png: unreadable image"):
        load_dataset(str(class_folder), 8, on_error="raise")


def test_truncated_file_found_at_load_time_keeps_labels_honest(tmp_path):
    root = tmp_path / "data"
    truncated = root / "a" / "0.jpg"
    truncated.parent.mkdir(parents=True)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(truncated, format="JPEG")
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # the header is intact: passes the cheap index check
    _png(root / "b" / "1.png", (0, 255, 0))
    ds = load_dataset(str(root), 8)
    assert len(ds) == 2 and ds.skipped == []
    with pytest.warns(CorruptImageWarning, match="0.jpg"):
        x, y = ds[0]
    assert int(y) == 1 and to_uint8(x[None])[0, 4, 4, 1] > 250  # the next image, with its own label
    assert ds.skipped[-1][0] == truncated
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once, passed over quietly afterwards
        assert int(ds[0][1]) == 1
    strict = load_dataset(str(root), 8, on_error="raise")
    with pytest.raises(DataError, match="0.jpg: unreadable image"):
        strict[0]


@pytest.mark.parametrize("channels", [1, 3])
def test_npz_with_labels_round_trips_exactly(tmp_path, channels):
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, channels), dtype=np.uint8)
    path = save_npz(tmp_path / "batch.npz", images, labels=[2, 0, 5, 2])
    ds = load_dataset(str(path), 16)
    assert ds.channels == channels and ds.num_classes == 6 and ds.class_names[5] == "5"
    xs, ys = zip(*_items(ds))
    np.testing.assert_array_equal(to_uint8(torch.stack(xs)), images)
    assert [int(y) for y in ys] == [2, 0, 5, 2]
    other = load_dataset(str(path), 8, channels=4 - channels)  # resized and converted
    assert other[0][0].shape == (4 - channels, 8, 8)


def test_npz_without_labels_and_bad_labels(tmp_path):
    path = save_npz(tmp_path / "u.npz", np.zeros((3, 8, 8, 3), np.uint8))
    ds = load_dataset(str(path), 8)
    assert ds.num_classes == 0 and int(ds[2][1]) == 0
    bad = tmp_path / "bad.npz"
    np.savez(bad, np.zeros((2, 8, 8, 3), np.uint8), np.array([1, -3]))
    with pytest.raises(DataError, match="bad.npz: arr_1: class labels must be non-negative"):
        load_dataset(str(bad), 8)


def test_errors_name_the_path_or_the_argument(tmp_path):
    with pytest.raises(DataError, match="nowhere: no such file or folder"):
        load_dataset(str(tmp_path / "nowhere"), 32)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="empty: no images found"):
        load_dataset(str(tmp_path / "empty"), 32)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="file.txt: not an image folder or a .npz"):
        load_dataset(str(tmp_path / "file.txt"), 32)
    _png(tmp_path / "flat" / "a.png", (1, 2, 3))
    with pytest.raises(ConfigError, match="channels"):
        load_dataset(str(tmp_path / "flat"), 32, channels=2)
    with pytest.raises(ConfigError, match="on_error"):
        load_dataset(str(tmp_path / "flat"), 32, on_error="ignore")
    with pytest.raises(ConfigError, match="fashion-mnist only"):
        load_dataset(str(tmp_path / "flat"), 32, split="test")


def test_missing_fashion_mnist_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv(fashion_mnist.ENV_DIR, str(tmp_path))
    with pytest.raises(DataError, match="dataset-fashion-mnist.*apt-get install"):
        load_dataset("fashion-mnist", 32)


# -- the real Fashion-MNIST, when the Debian package is installed ---------------------------------
@pytest.fixture(scope="module")
def fmnist_test_split():
    try:
        return load_dataset("fashion-mnist", 32, split="test")
    except DataError as e:
        pytest.skip(f"Fashion-MNIST not installed ({e})")


def test_fashion_mnist_padded_to_32(fmnist_test_split):
    ds = fmnist_test_split
    assert len(ds) == 10000 and ds.channels == 1 and ds.num_classes == 10
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    x = torch.stack([ds[i][0] for i in range(64)])
    assert x.shape == (64, 1, 32, 32) and x.min() >= -1 and x.max() <= 1 and x.max() > 0.9
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (x[:, 0][:, border] == -1).all()  # padded with the background
    raw, labels = fashion_mnist.load_fashion_mnist("test")
    np.testing.assert_array_equal(to_uint8(x)[:, 2:30, 2:30, 0], raw[:64])
    assert [int(ds[i][1]) for i in range(64)] == labels[:64].tolist()
    assert set(np.unique(labels)) == set(range(10))


def test_fashion_mnist_other_sizes_splits_and_channels(fmnist_test_split):
    x, y = load_dataset("fashion-mnist", 64, split="test", channels=3)[3]
    assert x.shape == (3, 64, 64) and torch.equal(x[0], x[1]) and 0 <= int(y) < 10
    assert load_dataset("fashion-mnist", 28, split="test")[0][0].shape == (1, 28, 28)
    with pytest.raises(ConfigError, match="splits train, test"):
        load_dataset("fashion-mnist", 32, split="validation")
    assert len(load_dataset("fashion-mnist", 32)) == 60000
