"""Image files through Pillow: decoding, the documented conversions, and the class-folder layout.

One function, `to_array`, turns an image file into the pixels ingest stores, so that `predict`
prepares new files exactly as ingest prepared the training data:
- 16-bit and 32-bit integer greys (modes I;16*, I) are scaled to 8 bits (value / 257, rounded,
  clipped to 0..65535 first); float greys (mode F) are taken as 0..255 and clipped;
- palette images take their palette's colours (and its transparency, if any);
- CMYK is converted to RGB with Pillow's conversion;
- alpha (RGBA, LA, PA, transparent palettes) is composited over black: a transparent pixel
  reads as 0, the background value of digit-style data;
- grayscale from colour is Pillow's ITU-R 601-2 luma (L = 0.299 R + 0.587 G + 0.114 B);
- resizing (`data.image_size`) uses Pillow's bilinear filter, which also antialiases when
  shrinking (Keras's `image_dataset_from_directory` default is bilinear too);
- a GIF or multi-page TIFF gives its first frame.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from pipeline.core.cli import PipelineError, first_line

if TYPE_CHECKING:
    from PIL import Image

Color = Literal["auto", "grayscale", "rgb"]
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
# Pillow's own guard against decompression bombs warns past this many pixels and refuses past
# twice it; both are refusals here. 2**27 pixels is 11,585² (an uncompressed 384 MB RGB image).
MAX_PIXELS = 2**27


@dataclass(frozen=True)
class ImageFolder:
    """A class-folder dataset's file list: what `scan_folder` found."""

    class_names: tuple[str, ...]
    files: tuple[tuple[Path, int], ...]  # (image file, class index), sorted within each class
    non_image_files: int


def scan_folder(folder: Path) -> ImageFolder:
    """The class folders under `folder` (sorted by name, as code points) and their image files,
    searched recursively; hidden files and folders are ignored, other files (beside the class
    folders too) counted. Symbolic links are followed; a link back into a folder being walked,
    or to a file already found, is refused (the same image twice could sit in two splits)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PipelineError(f"{folder}: not a folder (data.source folder needs class folders)")
    entries = [entry for entry in folder.iterdir() if not _hidden(entry.name)]
    classes = sorted(entry.name for entry in entries if entry.is_dir())
    if len(classes) < 2:
        raise PipelineError(
            f"{folder}: needs at least two class folders (one per class), found {classes}"
        )
    files: list[tuple[Path, int]] = []
    non_images = sum(1 for entry in entries if not entry.is_dir())
    seen: dict[str, Path] = {}
    for index, name in enumerate(classes):
        found = 0
        for path in walk(folder / name):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                non_images += 1
                continue
            real = os.path.realpath(path)
            if real in seen:
                raise PipelineError(f"{path}: the same file as {seen[real]} (a symbolic link)")
            seen[real] = path
            files.append((path, index))
            found += 1
        if not found:
            raise PipelineError(f"{folder / name}: class folder holds no image files")
    return ImageFolder(class_names=tuple(classes), files=tuple(files), non_image_files=non_images)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def walk(top: Path) -> Iterator[Path]:
    """Every non-hidden file below `top`, in sorted order, following symbolic links."""
    ancestors: list[str] = []

    def visit(folder: Path) -> Iterator[Path]:
        real = os.path.realpath(folder)
        if real in ancestors:
            raise PipelineError(f"{folder}: symbolic-link loop (it leads back to {real})")
        ancestors.append(real)
        try:
            entries = sorted(folder.iterdir(), key=lambda entry: entry.name)
        except OSError as error:
            raise PipelineError(f"{folder}: cannot list ({first_line(error)})") from None
        for entry in entries:
            if _hidden(entry.name):
                continue
            if entry.is_dir():
                yield from visit(entry)
            elif entry.is_file() or entry.is_symlink():  # a broken link fails on decoding
                yield entry
        ancestors.pop()

    yield from visit(top)


def decode(path: Path) -> Image.Image:
    """An image file's first frame, fully decoded and turned upright as its EXIF orientation
    says (a phone's portrait photo is stored sideways). Raises PipelineError naming the file if
    it is not an image, is truncated or corrupt, or would decode to more than MAX_PIXELS."""
    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own guard, at this pipeline's bound
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.seek(0)
                image.load()
                return ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PipelineError(
            f"{path}: image too large to decode safely (over {MAX_PIXELS} pixels)"
        ) from None
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found") from None
    except Image.UnidentifiedImageError:
        raise PipelineError(f"{path}: not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        # Pillow's decoders raise these for truncated and corrupt data.
        raise PipelineError(f"{path}: unreadable image ({first_line(error)})") from None


def file_pixels(path: Path, size: Sequence[int] | None = None) -> tuple[np.ndarray, int, int]:
    """`rgb_pixels` of an image file, with the file's own height and width: a file Pillow
    decodes but cannot convert is a PipelineError naming it, as an undecodable one is."""
    image = decode(path)
    try:
        return rgb_pixels(image, size), image.height, image.width
    except (ValueError, OSError) as error:
        raise PipelineError(
            f"{path}: cannot convert its {image.mode} pixels ({first_line(error)})"
        ) from None


def _eight_bit(image: Image.Image) -> Image.Image:
    """High-bit-depth greys as 8-bit L."""
    from PIL import Image

    if image.mode.startswith("I"):
        values = np.asarray(image, dtype=np.float64)
        scaled = np.rint(np.clip(values, 0, 65535) / 257.0)
        return Image.fromarray(scaled.astype(np.uint8))
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.rint(np.clip(values, 0, 255)).astype(np.uint8))
    return image


def rgb_pixels(image: Image.Image, size: Sequence[int] | None = None) -> np.ndarray:
    """uint8 H×W×3: the image in RGB, any transparency composited over black, resized to
    `size` ([H, W]) if given. Every image passes through here, grey ones too (their three
    channels stay equal)."""
    from PIL import Image

    image = _eight_bit(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    image = image.convert("RGB")
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def has_colour(rgb: np.ndarray) -> bool:
    """Whether RGB pixels hold colour: a colour file of grey pixels is grey."""
    return bool(np.any(rgb[..., 0] != rgb[..., 1]) or np.any(rgb[..., 1] != rgb[..., 2]))


def with_channels(rgb: np.ndarray, channels: int) -> np.ndarray:
    """uint8 H×W×channels from `rgb_pixels`' output: as it is, or Pillow's luma for 1."""
    if channels == 3:
        return rgb
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.uint8)[..., None]


def resize_array(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """One H×W×C array image resized to `size` ([H, W]) with the bilinear filter `rgb_pixels`
    uses: uint8 through Pillow's 8-bit modes, other dtypes channel by channel in float mode."""
    from PIL import Image

    box, bilinear = (size[1], size[0]), Image.Resampling.BILINEAR
    if image.dtype == np.uint8:
        plane = image[..., 0] if image.shape[-1] == 1 else image
        resized = np.asarray(Image.fromarray(plane).resize(box, bilinear))
        return resized.reshape(size[0], size[1], image.shape[-1])
    planes = [
        np.asarray(Image.fromarray(image[..., c].astype(np.float32)).resize(box, bilinear))
        for c in range(image.shape[-1])
    ]
    return np.stack(planes, axis=-1).astype(image.dtype)


def to_array(path: Path, channels: int, size: Sequence[int] | None = None) -> np.ndarray:
    """The stored pixels of one image file, uint8 H×W×channels: what ingest stores for a file,
    and what `predict` feeds a model for one."""
    return with_channels(file_pixels(path, size)[0], channels)


def channels_for(color: Color, any_colour: bool) -> Literal[1, 3]:
    """1 or 3: as configured, or for `auto` RGB when any image has colour."""
    if color == "grayscale":
        return 1
    if color == "rgb":
        return 3
    return 3 if any_colour else 1
