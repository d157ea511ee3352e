"""Shared fixtures. Importing `pipeline` first fixes the environment before TensorFlow loads."""

from __future__ import annotations

import gzip
import os
import struct
import tempfile
from collections.abc import Generator
from pathlib import Path

import numpy as np
import pytest

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS and telemetry switches)
from pipeline.data.prepared import Prepared, build_manifest
from pipeline.data.sources import stratified_split

REPO = Path(__file__).resolve().parents[1]


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """An IDX file in the real MNIST format (big-endian header, unsigned bytes)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


# Small models for the tests, spelled out: no dropout or batch norm, no augmentation and no
# adversarial examples unless a test asks, and the LSTM's head as plain as the others'
# (params.yaml's defaults are sized and chosen for the real stages).
PLAIN = {
    "dropout": 0.0,
    "batch_norm": False,
    "augment": {"translation": 0.0, "rotation": 0.0},
    "adversarial": {"method": "none"},
}
PLAIN_LSTM = {
    **PLAIN,
    "activation": "relu",
    "initializer": "he_normal",
    "optimizer": {"name": "adam", "learning_rate": 0.001},
}


def synthetic_images(n_per_class: int = 12, classes: int = 10, size: int = 8, seed: int = 0):
    """Small uint8 images whose class is readable from them (a bright column per class)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    x = rng.integers(0, 40, size=(len(y), size, size), dtype=np.uint8)
    x[np.arange(len(y)), :, y % size] = 255
    return x, y


def make_prepared(x: np.ndarray, y: np.ndarray, num_classes: int = 10, seed: int = 0) -> Prepared:
    splits = stratified_split(x, y, 0.2, 0.2, seed)
    manifest = build_manifest(splits, source="test", num_classes=num_classes)
    return Prepared(splits=splits, manifest=manifest)


@pytest.fixture
def digits_prepared() -> Prepared:
    from pipeline.data.sources import load_digits, scale_pixels

    raw = load_digits()
    return make_prepared(scale_pixels(raw.x, raw.pixel_max), raw.y, seed=42)


_SERVERS_BEFORE = pytest.StashKey[set]()  # warm servers running before the session


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Each phase's report on the test item (`rep_setup`, `rep_call`, `rep_teardown`), for the
    fixtures that keep a test's results only once it has passed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def pytest_configure() -> None:
    """Under pytest-xdist, each worker gets a temporary folder of its own (TMPDIR, which its
    subprocesses inherit): its warm servers, which a test may count or stop, are then its own."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        return
    folder = Path(tempfile.gettempdir()) / f"pipeline-tests-{os.getuid()}-{worker}"
    folder.mkdir(exist_ok=True)
    if folder.is_symlink() or folder.lstat().st_uid != os.getuid():
        raise pytest.UsageError(f"{folder} is not a folder of this user")
    # Traversable by others, as /tmp is: the PostgreSQL test hands a folder in it to `postgres`.
    folder.chmod(0o755)
    os.environ["TMPDIR"] = str(folder)
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again


def pytest_sessionstart(session: pytest.Session) -> None:
    from pipeline.runtime import server

    session.config.stash[_SERVERS_BEFORE] = {s["pid"] for s in server.servers()}


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the warm servers the tests' projects started, rather than let each idle out."""
    from pipeline.runtime import server

    before = session.config.stash.get(_SERVERS_BEFORE, set())
    server.stop([s for s in server.servers() if s["pid"] not in before])


def sign_agreement(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> float:
    """Share of the pixels either attack moved that both moved the same way (clipping at 0 and 1
    leaves some unmoved)."""
    da, db = np.sign(a - x), np.sign(b - x)
    moved = (da != 0) | (db != 0)
    return float(np.mean(da[moved] == db[moved]))
