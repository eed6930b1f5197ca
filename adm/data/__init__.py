"""Data: Fashion-MNIST, image folders and .npz arrays as datasets; the paper's .npz format, PNGs, grids.

`load_dataset(source, image_size)` gives items (x float32 [C, H, W] in [-1, 1], y int64); `to_uint8`,
`save_npz` / `load_npz`, `save_png`, `make_grid` / `save_grid` write and read sample batches.
"""
from adm.data.dataset import ArrayImageDataset, FolderImageDataset, ImageDataset, load_dataset
from adm.data.fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from adm.data.fashion_mnist import load_fashion_mnist
from adm.data.folder import IMAGE_EXTENSIONS, CorruptImageWarning
from adm.data.images import check_images, check_labels, load_npz, make_grid, save_grid, save_npz, save_png, to_uint8
from adm.data.preprocess import center_crop_resize

__all__ = [
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "ArrayImageDataset",
    "CorruptImageWarning",
    "FolderImageDataset",
    "ImageDataset",
    "center_crop_resize",
    "check_images",
    "check_labels",
    "load_dataset",
    "load_fashion_mnist",
    "load_npz",
    "make_grid",
    "save_grid",
    "save_npz",
    "save_png",
    "to_uint8",
]
