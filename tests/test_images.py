"""The folder source and the image conversions: files the tests write with Pillow, read back."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import GifImagePlugin, Image

from pipeline.core.cli import PipelineError
from pipeline.core.params import DataParams
from pipeline.data import images
from pipeline.data.prepared import prepare
from pipeline.data.sources import load_npz, load_source

FORMATS = ("png", "jpg", "bmp", "gif", "tiff", "webp")
LOSSLESS = ("png", "bmp", "tiff")


def colour_image(seed: int, size: tuple[int, int] = (25, 25)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def write_folder(
    root: Path, classes: dict[str, list[np.ndarray]], suffix: str = "png"
) -> dict[str, list[Path]]:
    """Class folders of image files, one per array, named 000.png, 001.png, ..."""
    written: dict[str, list[Path]] = {}
    for name, arrays in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        written[name] = []
        for i, array in enumerate(arrays):
            path = root / name / f"{i:03d}.{suffix}"
            Image.fromarray(array.squeeze()).save(path)
            written[name].append(path)
    return written


def folder(path: Path, **data: object) -> DataParams:
    return DataParams(source="folder", path=str(path), **data)


def test_every_format_loads_and_lossless_ones_keep_their_pixels(tmp_path: Path):
    arrays = {suffix: colour_image(i) for i, suffix in enumerate(FORMATS)}
    for suffix, array in arrays.items():
        write_folder(tmp_path, {"a": [array], "b": [array]}, suffix)
    raw = load_source(folder(tmp_path))
    assert raw.x.shape == (12, 25, 25, 3) and raw.x.dtype == np.uint8
    assert raw.class_names == ("a", "b")
    files = sorted(f"{path.parent.name}/{path.name}" for path in (tmp_path / "a").iterdir())
    order = [name.split(".")[1] for name in files]  # sorted by file name within a class
    for i, suffix in enumerate(order):
        if suffix in LOSSLESS:
            np.testing.assert_array_equal(raw.x[i], arrays[suffix])
        elif suffix in ("jpg", "webp"):  # lossy: close, not equal
            error = np.abs(raw.x[i].astype(int) - arrays[suffix]).mean()
            assert 0 < error < 60, (suffix, error)


def test_class_names_are_the_sorted_folder_names_and_hidden_files_are_ignored(tmp_path: Path):
    write_folder(tmp_path, {name: [colour_image(0)] * 3 for name in ("zebra", "Ant", "moth")})
    (tmp_path / ".thumbnails").mkdir()
    Image.fromarray(colour_image(1)).save(tmp_path / ".thumbnails" / "x.png")
    Image.fromarray(colour_image(1)).save(tmp_path / "moth" / ".hidden.png")
    (tmp_path / "moth" / "README.txt").write_text("not an image")
    (tmp_path / "moth" / "deeper").mkdir()
    Image.fromarray(colour_image(2)).save(tmp_path / "moth" / "deeper" / "nested.png")
    raw = load_source(folder(tmp_path))
    assert raw.class_names == ("Ant", "moth", "zebra")  # sorted by code point
    assert np.bincount(raw.y).tolist() == [3, 4, 3]  # the nested image counts, the hidden not
    assert raw.files == {"images": 10, "non_image_files": 1, "skipped": 0}


def test_auto_colour_is_grey_for_grey_pixels_in_rgb_files(tmp_path: Path):
    grey = np.repeat(colour_image(0)[..., :1], 3, axis=-1)  # an RGB file, R = G = B
    write_folder(tmp_path / "grey", {"a": [grey] * 3, "b": [grey] * 3})
    assert load_source(folder(tmp_path / "grey")).x.shape[-1] == 1
    write_folder(tmp_path / "mixed", {"a": [grey] * 3, "b": [colour_image(1)] * 3})
    mixed = load_source(folder(tmp_path / "mixed"))
    assert mixed.x.shape[-1] == 3  # one colour image makes the whole set RGB
    np.testing.assert_array_equal(mixed.x[0], grey)


def test_grayscale_is_pillows_luma_and_rgb_repeats_a_grey_channel(tmp_path: Path):
    colour = colour_image(3)
    write_folder(tmp_path, {"a": [colour] * 3, "b": [colour] * 3})
    grey = load_source(folder(tmp_path, color="grayscale")).x[0]
    r, g, b = (colour[..., i].astype(float) for i in range(3))
    np.testing.assert_allclose(grey[..., 0], 0.299 * r + 0.587 * g + 0.114 * b, atol=1)
    write_folder(tmp_path / "l", {"a": [grey] * 3, "b": [grey] * 3})
    rgb = load_source(folder(tmp_path / "l", color="rgb")).x[0]
    assert rgb.shape == (25, 25, 3) and (rgb == grey).all()


def test_sixteen_bit_greys_are_scaled_to_eight_bits(tmp_path: Path):
    deep = np.array([[0, 257, 65535, 32896]] * 8, dtype=np.uint16).repeat(2, axis=1)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(deep).save(tmp_path / name / "deep.png")
    with Image.open(tmp_path / "a" / "deep.png") as written:
        assert written.mode.startswith("I")
    raw = load_source(folder(tmp_path))
    assert raw.x[0, 0, ::2, 0].tolist() == [0, 1, 255, 128]


def test_alpha_is_composited_over_black_and_palettes_keep_their_colours(tmp_path: Path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:, :4] = (200, 100, 50, 255)  # opaque left half
    rgba[:, 4:] = (250, 250, 250, 0)  # transparent right half, white underneath
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a" / "alpha.png")
    palette = Image.fromarray(rgba[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.save(tmp_path / "b" / "palette.png")
    see_through = palette.copy()
    see_through.info["transparency"] = see_through.getpixel((7, 0))  # the white entry
    see_through.save(
        tmp_path / "b" / "transparent_palette.png", transparency=see_through.info["transparency"]
    )
    raw = load_source(folder(tmp_path, color="rgb"))
    alpha, from_palette, transparent = raw.x
    assert alpha[0, 0].tolist() == [200, 100, 50] and alpha[0, 7].tolist() == [0, 0, 0]
    assert from_palette[0, 0].tolist() == [200, 100, 50]
    assert from_palette[0, 7].tolist() == [250, 250, 250]
    assert transparent[0, 0].tolist() == [200, 100, 50]  # opaque palette entry
    assert transparent[0, 7].tolist() == [0, 0, 0]  # the transparent entry, over black


def test_cmyk_images_are_converted_to_rgb(tmp_path: Path):
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # full magenta and yellow: red
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        cmyk.save(tmp_path / name / "print.tiff")
    raw = load_source(folder(tmp_path))
    assert raw.x.shape[-1] == 3 and raw.x[0, 0, 0].tolist() == [255, 0, 0]


def test_a_gif_gives_its_first_frame(tmp_path: Path):
    frames = [Image.new("L", (8, 8), value) for value in (30, 220)]
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        frames[0].save(tmp_path / name / "anim.gif", save_all=True, append_images=frames[1:])
    with Image.open(tmp_path / "a" / "anim.gif") as written:
        assert isinstance(written, GifImagePlugin.GifImageFile)
        assert written.n_frames == 2
    assert (load_source(folder(tmp_path)).x == 30).all()


def test_image_size_resizes_mixed_sizes_and_without_it_two_files_are_named(tmp_path: Path):
    write_folder(tmp_path, {"a": [colour_image(0, (25, 25))] * 3, "b": [colour_image(1, (40, 30))]})
    raw = load_source(folder(tmp_path, image_size=(16, 20)))
    assert raw.x.shape == (4, 16, 20, 3)
    expected = Image.fromarray(colour_image(1, (40, 30))).resize(
        (20, 16), Image.Resampling.BILINEAR
    )
    np.testing.assert_array_equal(raw.x[3], np.asarray(expected))
    with pytest.raises(PipelineError) as info:
        load_source(folder(tmp_path))
    message = str(info.value)
    assert "(H×W)" in message
    assert "a/000.png is 25×25" in message and "b/000.png is 40×30" in message
    assert "data.image_size" in message and "\n" not in message


def test_colour_npz_loads_in_both_dtypes_and_converts_like_files(tmp_path: Path):
    x = np.stack([colour_image(i, (9, 9)) for i in range(6)])
    y = np.array([0, 1] * 3)
    np.savez(tmp_path / "u8.npz", x=x, y=y)
    np.savez(tmp_path / "f.npz", x=x.astype(np.float32) / 255, y=y)
    assert load_npz(tmp_path / "u8.npz").x.shape == (6, 9, 9, 3)
    assert load_npz(tmp_path / "f.npz").pixel_max == 1.0
    npz = load_source(DataParams(source="npz", path=str(tmp_path / "u8.npz"), color="grayscale"))
    write_folder(tmp_path / "files", {"a": list(x[::2]), "b": list(x[1::2])})
    files = load_source(folder(tmp_path / "files", color="grayscale"))
    np.testing.assert_array_equal(npz.x[::2], files.x[:3])  # the same luma either way
    # Resized and made grey: arrays and files in the same order, so the same pixels.
    both = {"color": "grayscale", "image_size": (13, 11)}
    npz_small = load_source(DataParams(source="npz", path=str(tmp_path / "u8.npz"), **both))
    files_small = load_source(folder(tmp_path / "files", **both))
    np.testing.assert_array_equal(npz_small.x[::2], files_small.x[:3])
    resized = load_source(
        DataParams(source="npz", path=str(tmp_path / "f.npz"), image_size=(12, 12))
    )
    assert resized.x.shape == (6, 12, 12, 3) and resized.x.dtype == np.float32


def test_mnist_5k_is_real_mnist_at_28_by_28(tmp_path: Path):
    raw = load_source(DataParams(source="mnist_5k"))
    assert raw.x.shape == (5000, 28, 28, 1) and raw.x.dtype == np.uint8
    assert np.bincount(raw.y).tolist() == [500] * 10
    assert raw.pixel_max == 255.0 and raw.x.max() == 255
    assert raw.class_names == tuple("0123456789")
    # Real handwriting: a black border and ~19% lit pixels, as MNIST's digits have.
    assert raw.x[:, 0, :].max() == 0
    assert 0.1 < (raw.x > 127).mean() < 0.3


def test_classes_come_from_the_data_and_a_given_count_is_checked(tmp_path: Path):
    write_folder(
        tmp_path, {"cat": [colour_image(i) for i in range(10)], "dog": [colour_image(9)] * 10}
    )
    prepared = prepare(folder(tmp_path), seed=0)
    assert prepared.num_classes == 2 and prepared.class_names == ("cat", "dog")
    with pytest.raises(PipelineError, match=r"data.num_classes is 10, but the data has 2 classes"):
        prepare(folder(tmp_path, num_classes=10), seed=0)
    x, y = np.zeros((30, 8, 8), np.uint8), np.array([0, 1, 2] * 10)
    np.savez(tmp_path / "three.npz", x=x, y=y)
    arrays = DataParams(source="npz", path=str(tmp_path / "three.npz"))
    assert prepare(arrays, seed=0).class_names == ("0", "1", "2")  # the highest label + 1
    named = arrays.model_copy(update={"class_names": ("a", "b", "c")})
    assert prepare(named, seed=0).class_names == ("a", "b", "c")
    # More classes than labels: validation then reports the classes with no images.
    assert prepare(arrays.model_copy(update={"num_classes": 4}), seed=0).num_classes == 4
    with pytest.raises(
        PipelineError, match=r"num_classes is 4, but the data has 3 classes \(a, b, c\)"
    ):
        prepare(named.model_copy(update={"num_classes": 4}), seed=0)


def write_png(path: Path, width: int, height: int, rows: bytes) -> None:
    """A grayscale PNG built chunk by chunk, so its header can claim any size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def two_classes(tmp_path: Path) -> Path:
    write_folder(tmp_path, {"a": [colour_image(0)] * 3, "b": [colour_image(1)] * 3})
    return tmp_path


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("one class", r"needs at least two class folders .*\['a'\]"),
        ("empty class", r"b: class folder holds no image files"),
        ("not an image", r"b/fake\.png: not an image Pillow can read"),
        ("truncated jpeg", r"b/cut\.jpg: unreadable image \(OSError: image file is truncated"),
        ("link loop", r"symbolic-link loop"),
        ("bomb", r"b/bomb\.png: image too large to decode safely"),
    ],
)
def test_bad_folders_fail_in_one_line_naming_the_cause(tmp_path: Path, damage: str, expected: str):
    root = two_classes(tmp_path / "data")
    b = root / "b"
    if damage == "one class":
        for path in b.iterdir():
            path.unlink()
        b.rmdir()
    elif damage == "empty class":
        for path in b.iterdir():
            path.unlink()
    elif damage == "not an image":
        (b / "fake.png").write_text("hello, I am text")
    elif damage == "truncated jpeg":
        Image.fromarray(colour_image(5, (64, 64))).save(b / "cut.jpg", quality=95)
        (b / "cut.jpg").write_bytes((b / "cut.jpg").read_bytes()[:-400])
    elif damage == "link loop":
        os.symlink(b, b / "again")
    else:  # a 40,000² claim in a few hundred bytes
        write_png(b / "bomb.png", 40_000, 40_000, b"\x00" * 100)
    with pytest.raises(PipelineError, match=expected) as info:
        load_source(folder(root))
    assert "\n" not in str(info.value)


def test_skip_unreadable_counts_what_it_skips(tmp_path: Path):
    root = two_classes(tmp_path)
    (root / "b" / "fake.jpg").write_bytes(b"\xff\xd8\xff garbage")
    raw = load_source(folder(root, skip_unreadable=True))
    assert raw.files == {"images": 6, "non_image_files": 0, "skipped": 1}
    for path in (root / "b").iterdir():
        path.unlink()
    (root / "b" / "fake.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(PipelineError, match=r"no readable images in class folder\(s\) \['b'\]"):
        load_source(folder(root, skip_unreadable=True))


def test_to_array_is_what_ingest_stores_for_a_file(tmp_path: Path):
    root = two_classes(tmp_path)
    raw = load_source(folder(root, image_size=(10, 14), color="grayscale"))
    one = images.to_array(root / "b" / "000.png", 1, (10, 14))
    np.testing.assert_array_equal(one, raw.x[3])


def test_a_phone_photo_is_turned_upright_by_its_exif_orientation(tmp_path: Path):
    landscape = colour_image(4, (20, 30))  # stored 20 high, 30 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; display rotated 90° clockwise
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(landscape).save(tmp_path / name / "IMG.png", exif=exif)
    raw = load_source(folder(tmp_path))
    assert raw.x.shape[1:] == (30, 20, 3)  # shown upright: 30 high, 20 wide
    np.testing.assert_array_equal(raw.x[0], np.rot90(landscape, k=-1))


def test_links_to_a_file_already_found_are_refused_and_stray_files_counted(tmp_path: Path):
    root = two_classes(tmp_path / "data")
    (root / "LICENSE.txt").write_text("beside the class folders")
    assert load_source(folder(root)).files["non_image_files"] == 1
    os.symlink(root / "a" / "000.png", root / "b" / "same.png")
    with pytest.raises(PipelineError, match=r"b/same\.png: the same file as .*a/000\.png"):
        load_source(folder(root))


def test_labels_name_the_classes_only_without_gaps(tmp_path: Path):
    x = np.zeros((30, 8, 8), np.uint8)
    np.savez(tmp_path / "gap.npz", x=x, y=np.array([0, 1, 3] * 10))  # no label 2
    arrays = DataParams(source="npz", path=str(tmp_path / "gap.npz"))
    with pytest.raises(
        PipelineError, match="labels go up to 3, but none is 2; set data.num_classes"
    ):
        prepare(arrays, seed=0)
    np.savez(tmp_path / "huge.npz", x=x, y=np.array([0, 1, 1500] * 10))
    with pytest.raises(PipelineError, match="1501 classes, more than the 1000"):
        prepare(DataParams(source="npz", path=str(tmp_path / "huge.npz")), seed=0)
    write_folder(
        tmp_path / "f",
        {name: [colour_image(i) for i in range(10)] for name in ("cat", "predicted")},
    )
    with pytest.raises(PipelineError, match="a class is named 'predicted'"):
        prepare(folder(tmp_path / "f"), seed=0)
