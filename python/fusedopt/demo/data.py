"""Fashion-MNIST from its idx files, checked by sha256.

The idx format (LeCun's, used by MNIST and Fashion-MNIST) is a 4-byte magic number -- two zero
bytes, a type code, the number of dimensions -- then each dimension as a big-endian uint32, then the
data in C order, big-endian. Files may be gzip-compressed (``name.gz``, as Zalando publishes them
and Debian's ``dataset-fashion-mnist`` installs them) or plain.

Note [Verified unless the caller says otherwise]
    :func:`load_fashion_mnist` reads the four files of the release and compares the sha256 of each
    *decompressed* file with the published one, so a truncated download or a different data set is
    never trained on as if it were Fashion-MNIST. Other data in the same format (the tests' small
    generated files, MNIST itself) is accepted only with ``verify=False`` (``--no-verify`` on the
    command line), and every result made from it says so: :attr:`Dataset.verified` is False, the
    demo prints "unverified" beside the data and writes ``"verified": false`` into its JSON.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_DIR",
    "ENV_VAR",
    "FILES",
    "DataError",
    "Dataset",
    "load_fashion_mnist",
    "read_idx",
    "resolve_dir",
    "write_idx",
]

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")  # where Debian's package installs it
ENV_VAR = "FASHION_MNIST_DIR"

# split -> (file name without ".gz", sha256 of the decompressed file), from the Fashion-MNIST release.
FILES = {
    "train_images": ("train-images-idx3-ubyte",
                     "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train_labels": ("train-labels-idx1-ubyte",
                     "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "test_images": ("t10k-images-idx3-ubyte",
                    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "test_labels": ("t10k-labels-idx1-ubyte",
                    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

INSTALL_HINT = (
    "Install the data with your package manager, e.g. on Debian or Ubuntu:\n"
    "    sudo apt-get install dataset-fashion-mnist\n"
    f"which puts the files in {DEFAULT_DIR}. Or download the four *-ubyte.gz files\n"
    "of the Fashion-MNIST release (github.com/zalandoresearch/fashion-mnist) into a folder\n"
    f"and pass it with --data DIR or ${ENV_VAR}."
)

# idx type code -> element type (big-endian where it matters)
_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dt.newbyteorder("="): code for code, dt in _IDX_TYPES.items()}


class DataError(Exception):
    """Missing, unreadable or corrupt data; the message says what is wrong and how to fix it."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Images flattened to rows of float32 in [0, 1], labels as int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    directory: Path
    verified: bool
    image_shape: tuple

    @property
    def n_classes(self):
        return int(max(self.y_train.max(initial=0), self.y_test.max(initial=0))) + 1


def _read_bytes(path):
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path} is not a valid gzip file ({e}): the file is corrupt") from None
    return raw


def _parse_idx(raw, name):
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{name} is not an idx file (bad magic number {raw[:4].hex() or 'none'})")
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name} is truncated: {len(raw)} bytes, shorter than its own header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(
            f"{name} is {what}: {len(raw)} bytes, expected {expected} for shape {shape}: "
            "the file is corrupt"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path):
    """The array stored in an idx file (gzip-compressed if the name ends in ``.gz``).

    Raises:
        DataError: the file cannot be read, is not gzip although named ``.gz``, has a bad magic
            number, or its size does not match its header.
    """
    return _parse_idx(_read_bytes(path), str(path))


def write_idx(path, array):
    """Write ``array`` (uint8, int8, int16, int32, float32 or float64) as an idx file, gzip-compressed
    if ``path`` ends in ``.gz``. The inverse of :func:`read_idx`; the tests make data with it."""
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise TypeError(f"write_idx: dtype {array.dtype} has no idx type code")
    if array.ndim > 255:
        raise ValueError(f"write_idx: {array.ndim} dimensions, the idx format allows 255")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    raw = header + np.ascontiguousarray(array, _IDX_TYPES[code]).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(raw, mtime=0) if path.suffix == ".gz" else raw)
    return path


def resolve_dir(data_dir=None):
    """``(folder, how it was chosen)``: ``data_dir``, else ``$FASHION_MNIST_DIR``, else
    :data:`DEFAULT_DIR`."""
    if data_dir is not None:
        return Path(data_dir), "--data"
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]), f"${ENV_VAR}"
    return DEFAULT_DIR, "the default location"


def _find(directory, stem):
    """``stem`` or ``stem.gz`` in ``directory`` (the plain file first), or None."""
    for name in (stem, stem + ".gz"):
        path = directory / name
        if path.is_file():
            return path
    return None


def load_fashion_mnist(data_dir=None, *, verify=True):
    """Load the training and test sets from the four idx files in ``data_dir`` (see
    :func:`resolve_dir`), each as ``name`` or ``name.gz``.

    Args:
        data_dir: the folder; ``None`` for ``$FASHION_MNIST_DIR`` or :data:`DEFAULT_DIR`.
        verify: compare each decompressed file's sha256 with the Fashion-MNIST release (default).
            ``False`` accepts any idx data of the same layout -- uint8 images ``(n, h, w)`` and
            uint8 labels ``(n,)`` -- and marks the result unverified (Note [Verified unless the
            caller says otherwise]).

    Raises:
        DataError: a file is missing, unreadable, corrupt, of the wrong layout, or (with
            ``verify``) not the published one; the message says how to install the data.
    """
    directory, how = resolve_dir(data_dir)
    if not directory.is_dir():
        raise DataError(f"Fashion-MNIST not found: {directory} ({how}) is not a folder.\n{INSTALL_HINT}")
    paths = {key: _find(directory, stem) for key, (stem, _) in FILES.items()}
    missing = [FILES[key][0] for key, path in paths.items() if path is None]
    if missing:
        raise DataError(
            f"Fashion-MNIST not found in {directory} ({how}): missing "
            + ", ".join(f"{m}[.gz]" for m in missing) + f".\n{INSTALL_HINT}"
        )
    arrays = {}
    for key, path in paths.items():
        raw = _read_bytes(path)
        if verify:
            digest = hashlib.sha256(raw).hexdigest()
            if digest != FILES[key][1]:
                raise DataError(
                    f"{path}: the sha256 of its decompressed contents is {digest},\n"
                    f"expected {FILES[key][1]} (the Fashion-MNIST release): the file is corrupt "
                    "or not Fashion-MNIST.\nReinstall it (sudo apt-get install --reinstall "
                    "dataset-fashion-mnist, or download it again), or pass --no-verify "
                    "(verify=False) to train on other idx data deliberately."
                )
        arrays[key] = _parse_idx(raw, str(path))
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        ipath, lpath = paths[f"{split}_images"], paths[f"{split}_labels"]
        if images.dtype != np.uint8 or images.ndim != 3 or 0 in images.shape:
            raise DataError(f"{ipath}: expected uint8 images (n, h, w), got {images.dtype} {images.shape}")
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise DataError(f"{lpath}: expected uint8 labels (n,), got {labels.dtype} {labels.shape}")
        if len(labels) != len(images):
            raise DataError(f"{lpath} has {len(labels)} labels for the {len(images)} images of {ipath}")
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DataError(
            f"training images are {arrays['train_images'].shape[1:]}, test images "
            f"{arrays['test_images'].shape[1:]}: the four files are not one data set"
        )

    def rows(images):
        # float32 in [0, 1]: the scale the He initialisation and the learning rates assume.
        out = images.reshape(len(images), -1).astype(np.float32)
        out *= np.float32(1.0 / 255.0)
        return out

    return Dataset(
        x_train=rows(arrays["train_images"]),
        y_train=arrays["train_labels"].astype(np.int64),
        x_test=rows(arrays["test_images"]),
        y_test=arrays["test_labels"].astype(np.int64),
        directory=directory,
        verified=bool(verify),
        image_shape=tuple(arrays["train_images"].shape[1:]),
    )
