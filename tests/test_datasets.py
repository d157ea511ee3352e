import gzip
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.cli import PipelineError
from pipeline.core.params import DataParams
from pipeline.data.sources import (
    load_digits,
    load_idx,
    load_npz,
    load_source,
    read_idx,
    scale_pixels,
    stratified_split,
)
from tests.conftest import synthetic_images, write_idx


def test_digits_are_the_real_embedded_dataset():
    raw = load_digits()
    assert raw.x.shape == (1797, 8, 8, 1)
    assert raw.pixel_max == 16.0
    assert raw.x.max() == 16.0 and raw.x.min() == 0.0
    assert sorted(np.unique(raw.y)) == list(range(10))


def test_scale_pixels_maps_onto_unit_interval():
    x = np.array([[0, 128, 255]], dtype=np.uint8)
    scaled = scale_pixels(x, 255.0)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, [[0.0, 128 / 255, 1.0]], rtol=1e-6)


def test_npz_round_trip_uint8_and_float(tmp_path: Path):
    x, y = synthetic_images()
    np.savez(tmp_path / "u8.npz", x=x, y=y)
    raw = load_npz(tmp_path / "u8.npz")
    assert raw.x.shape == (*x.shape, 1) and raw.pixel_max == 255.0
    np.testing.assert_array_equal(raw.y, y)
    np.savez(tmp_path / "f.npz", x=(x / 255.0).astype(np.float32)[..., None], y=y)
    assert load_npz(tmp_path / "f.npz").pixel_max == 1.0


@pytest.mark.parametrize("cut", [0.3, 0.9])
def test_truncated_npz_is_a_one_line_error_naming_the_file(tmp_path: Path, cut: float):
    x, y = synthetic_images()
    good = tmp_path / "good.npz"
    np.savez(good, x=x, y=y)
    data = good.read_bytes()
    bad = tmp_path / "bad.npz"
    bad.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(PipelineError, match=r"bad\.npz: not a readable NPZ file") as info:
        load_npz(bad)
    assert "\n" not in str(info.value)


def test_npz_with_missing_array_or_wrong_shape(tmp_path: Path):
    x, y = synthetic_images()
    np.savez(tmp_path / "nolabels.npz", x=x)
    with pytest.raises(PipelineError, match=r"missing array\(s\) \['y'\]"):
        load_npz(tmp_path / "nolabels.npz")
    np.savez(tmp_path / "flat.npz", x=x.reshape(len(x), -1), y=y)
    with pytest.raises(PipelineError, match="images must be N×H×W, N×H×W×1 or N×H×W×3"):
        load_npz(tmp_path / "flat.npz")
    np.savez(tmp_path / "two_channels.npz", x=np.repeat(x[..., None], 2, axis=-1), y=y)
    with pytest.raises(PipelineError, match=r"got shape \(\d+, 8, 8, 2\)"):
        load_npz(tmp_path / "two_channels.npz")
    np.savez(tmp_path / "short.npz", x=x, y=y[:-1])
    with pytest.raises(PipelineError, match="one entry per image"):
        load_npz(tmp_path / "short.npz")


def test_npz_object_arrays_are_never_unpickled(tmp_path: Path):
    x, _ = synthetic_images()
    labels = np.empty(len(x), dtype=object)
    labels[:] = [str(i) for i in range(len(x))]
    np.savez(tmp_path / "pickled.npz", x=x, y=labels)
    with pytest.raises(PipelineError, match="pickled.npz: not a readable NPZ file"):
        load_npz(tmp_path / "pickled.npz")


def test_not_a_zip_file(tmp_path: Path):
    path = tmp_path / "text.npz"
    path.write_text("hello")
    with pytest.raises(PipelineError, match="text.npz"):
        load_npz(path)
    assert not zipfile.is_zipfile(path)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path: Path, compress: bool):
    x, y = synthetic_images()
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", x[:60], compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", y[:60], compress)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", x[60:], compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", y[60:], compress)
    raw = load_idx(tmp_path)
    assert raw.x.shape == (len(x), 8, 8, 1) and raw.x.dtype == np.uint8
    assert raw.pixel_max == 255.0
    # Sorted by name: t10k before train.
    np.testing.assert_array_equal(raw.y, np.concatenate([y[60:], y[:60]]))
    np.testing.assert_array_equal(raw.x[..., 0], np.concatenate([x[60:], x[:60]]))
    assert load_source(DataParams(source="idx", path=str(tmp_path))).x.shape == raw.x.shape


def test_idx_truncated_and_corrupt(tmp_path: Path):
    x, _ = synthetic_images()
    path = write_idx(tmp_path / "a-images-idx3-ubyte", x)
    data = path.read_bytes()
    path.write_bytes(data[:-7])
    with pytest.raises(PipelineError, match="a-images-idx3-ubyte: IDX header promises"):
        read_idx(path)
    path.write_bytes(b"\x01\x02" + data[2:])
    with pytest.raises(PipelineError, match="bad magic number"):
        read_idx(path)
    path.write_bytes(data[:6])
    with pytest.raises(PipelineError, match="truncated IDX header"):
        read_idx(path)
    gz = tmp_path / "b-images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(data)[:-20])
    with pytest.raises(PipelineError, match="b-images-idx3-ubyte.gz: not a readable gzip file"):
        read_idx(gz)


def test_idx_folder_needs_matching_labels(tmp_path: Path):
    x, _ = synthetic_images()
    write_idx(tmp_path / "train-images-idx3-ubyte", x)
    with pytest.raises(PipelineError, match="no matching labels file train-labels-idx1-ubyte"):
        load_idx(tmp_path)
    with pytest.raises(PipelineError, match="missing: not a folder of IDX files"):
        load_idx(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="empty: no '\\*-images-idx3-ubyte"):
        load_idx(tmp_path / "empty")


def test_fashion_mnist_loads_through_keras_from_its_cache(tmp_path: Path, monkeypatch):
    """The real Keras loader, fed by files in its cache (no network needed or used)."""
    monkeypatch.setenv("HOME", str(tmp_path))  # tf_keras caches under ~/.keras
    cache = tmp_path / ".keras" / "datasets" / "fashion-mnist"
    cache.mkdir(parents=True)
    x, y = synthetic_images(n_per_class=4, size=28)
    for prefix, sl in (("train", slice(0, 30)), ("t10k", slice(30, None))):
        write_idx(cache / f"{prefix}-labels-idx1-ubyte.gz", y[sl], compress=True)
        write_idx(cache / f"{prefix}-images-idx3-ubyte.gz", x[sl], compress=True)
    raw = load_source(DataParams(source="fashion_mnist"))
    assert raw.x.shape == (len(x), 28, 28, 1) and raw.pixel_max == 255.0
    np.testing.assert_array_equal(raw.y, y)


def test_keras_source_offline_is_a_clear_error(monkeypatch):
    """Offline, Keras's download fails; the stage says what to do instead of a traceback."""
    import tf_keras.src.datasets.mnist as keras_mnist

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://example.invalid/mnist.npz: None -- offline")

    monkeypatch.setattr(keras_mnist, "get_file", offline)
    with pytest.raises(
        PipelineError, match="data.source=mnist: could not download it through Keras"
    ):
        load_source(DataParams(source="mnist"))


def test_stratified_split_is_disjoint_proportional_and_seeded():
    _x, y = synthetic_images(n_per_class=20)
    ids = np.arange(len(y)).reshape(-1, 1, 1, 1) * np.ones((1, 1, 1, 1))
    splits = stratified_split(ids, y, 0.1, 0.2, seed=7)
    sizes = {name: len(s[1]) for name, s in splits.items()}
    assert sizes == {"train": 140, "val": 20, "test": 40}
    seen = np.concatenate([s[0].ravel() for s in splits.values()])
    assert sorted(seen) == list(range(len(y)))  # every image exactly once
    for _, labels in splits.values():
        counts = np.bincount(labels, minlength=10)
        assert counts.max() - counts.min() <= 1  # stratified
    again = stratified_split(ids, y, 0.1, 0.2, seed=7)
    other = stratified_split(ids, y, 0.1, 0.2, seed=8)
    np.testing.assert_array_equal(splits["test"][0], again["test"][0])
    assert not np.array_equal(splits["test"][0], other["test"][0])


def test_split_refuses_classes_too_small_to_stratify():
    x, y = synthetic_images(n_per_class=10)
    with pytest.raises(PipelineError, match=r"class\(es\) \[9\] have fewer than 3 images"):
        stratified_split(x[:-8], y[:-8], 0.1, 0.2, seed=0)


def test_more_corrupt_inputs_are_one_line_errors_naming_the_file(tmp_path: Path):
    x, _y = synthetic_images()
    # A gzip whose header is fine but whose deflate stream is garbage.
    good = gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 200)
    broken = good[:10] + bytes(b ^ 0x5A for b in good[10:-8]) + good[-8:]
    (tmp_path / "z-images-idx3-ubyte.gz").write_bytes(broken)
    with pytest.raises(PipelineError, match="z-images-idx3-ubyte.gz: not a readable gzip file"):
        read_idx(tmp_path / "z-images-idx3-ubyte.gz")
    np.save(tmp_path / "plain.npy", x)
    with pytest.raises(PipelineError, match="plain.npy: not an NPZ archive"):
        load_npz(tmp_path / "plain.npy")


def test_idx_folder_with_the_same_file_gzipped_and_not_is_refused(tmp_path: Path):
    x, y = synthetic_images()
    write_idx(tmp_path / "train-images-idx3-ubyte", x)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", x, compress=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte", y)
    (tmp_path / "train-images-idx3-ubyte.md5").write_text("ignored sidecar\n")
    with pytest.raises(PipelineError, match="present both gzipped and not"):
        load_idx(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    assert load_idx(tmp_path).x.shape == (len(x), 8, 8, 1)  # the sidecar is not read
