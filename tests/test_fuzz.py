"""Fuzzing the file loaders: random or mutated bytes either load into sane arrays or raise the
loader's own PipelineError, one line naming the file. Never another exception, a hang or an
allocation sized by an untrusted header.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import json
import os
import signal
import struct
import tempfile
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import numpy as np
import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as npst

from pipeline.core.cli import PipelineError
from pipeline.core.params import DataParams, Params, load_params
from pipeline.data import images
from pipeline.data.prepared import Prepared, build_manifest, load_prepared, write_prepared
from pipeline.data.sources import RawData, load_source, npz_bytes, read_idx
from tests.conftest import REPO

T = TypeVar("T")
# numpy warns while parsing some corrupt .npy headers ('a' dtypes, Python 2 headers): noise here.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:numpy"),
    pytest.mark.filterwarnings("ignore:Reading `.npy` or `.npz` file required:UserWarning"),
]

# ~100 ms is a slow load of these few-KB files; a second means something loops. No example
# database: it would write .hypothesis/ into the repository. In CI (CI set, as .ci/run runs) the
# examples are derandomized, drawn from each test's source alone, so a failure there reproduces
# anywhere; elsewhere each run explores new ones and prints the blob that replays a failure.
FUZZ = settings(
    max_examples=200,
    deadline=1000,
    database=None,
    derandomize=os.environ.get("CI", "") not in ("", "0", "false"),
    print_blob=True,
)
HANG_S = 10.0  # the deadline only fires once an example returns; this stops a real hang
MAX_PEAK = 64 * 2**20  # bytes: the inputs are a few KB, so more is an allocation from a header


class LoaderHang(Exception):
    """Not an OSError (TimeoutError is one): a loader must not turn it into PipelineError."""


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """Fail a call that runs past HANG_S or whose traced allocations peak above MAX_PEAK
    (numpy reports its array buffers to tracemalloc, untouched pages included)."""

    def expire(_signum: int, _frame: FrameType | None) -> None:
        raise LoaderHang(f"no result after {HANG_S} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, HANG_S)
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield
    except LoaderHang:  # re-raised shallow: pytest cannot print some deep signal tracebacks
        raise AssertionError(f"no result after {HANG_S} s") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        peak = tracemalloc.get_traced_memory()[1]
        if not tracing:
            tracemalloc.stop()
        # Checked here too when the loader raised: refusing after the allocation is too late.
        assert peak <= MAX_PEAK, f"peak allocation {peak} bytes"


def attempt(load: Callable[[], T], named: Path) -> T | None:
    """The loaded value, or None after the loader's own one-line error naming `named`."""
    try:
        with guarded():
            return load()
    except PipelineError as error:
        message = str(error)
        assert len(message.splitlines()) == 1, f"not one line: {message!r}"
        assert str(named) in message, f"does not name {named}: {message!r}"
        return None


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per example: pytest's tmp_path is shared by all of a test's examples."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as folder:
        yield Path(folder)


# --- byte mutations -----------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """One of `seeds` after 1-4 bit flips, truncations, insertions, deletions or overwrites,
    placed mostly near either end: headers and zip directories live there."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        size = len(data)
        near = st.integers(0, min(size, 200)) | st.integers(max(0, size - 200), size)
        at = draw(near | st.integers(0, size))
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite"]))
        if kind == "flip" and at < size:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "overwrite":
            patch = draw(st.sampled_from([b"\x00" * 4, b"\xff" * 4, b"\x7f\xff\xff\xff"]))
            data[at : at + len(patch)] = patch
    return bytes(data)


random_bytes = st.binary(max_size=2048)


# --- NPZ ----------------------------------------------------------------------------------

rng = np.random.default_rng(0)
X8 = rng.integers(0, 256, size=(6, 4, 4), dtype=np.uint8)
Y = np.arange(6) % 3


def compressed_npz(x: np.ndarray, y: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=x, y=y)
    return buffer.getvalue()


NPZ_SEEDS = [
    npz_bytes(X8, Y),
    npz_bytes((X8 / 255).astype(np.float32)[..., None], Y.astype(np.float64)),
    compressed_npz(X8, Y),
]


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


NPY_SEEDS = [npy_bytes(X8), npy_bytes(Y), npy_bytes(X8.T)]  # .T: a Fortran-order header


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    """A well-formed zip (right CRCs) whatever the members hold: reaches the .npy parsing."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def npy_with_header(header: str, data: bytes) -> bytes:
    """A version 1.0 .npy file with this header text (a Python dict literal) and data."""
    text = header.encode("latin-1", "replace")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data


npz_members = st.dictionaries(
    st.sampled_from(["x.npy", "y.npy", "x", "z.npy"]),
    mutated(NPY_SEEDS) | st.sampled_from(NPY_SEEDS) | random_bytes,
    max_size=3,
)
# .npy headers are Python literals that numpy parses with ast, then tokenize, then np.dtype.
DESCRS = ["'|u1'", "'<f4'", "'>i2'", "'<m8'", "'|O'", "'<U2'", "'|V0'", "'|b1'", "('|u1',)"]
DESCRS += ["()", "('|u1', (2,))", "('|u1', (1099511627776,))", "[('a', '|u1')]", "[('a',)]"]
DESCRS += ["[(1, 2)]", "{}", "'"]
descrs = st.sampled_from(DESCRS) | st.text(max_size=8).map(repr)
dims = st.integers(-2, 8) | st.sampled_from([2**31, 2**40, 2**62, 2**64])
npy_headers = st.builds(
    "{{'descr': {}, 'fortran_order': {}, 'shape': {}, }}".format,
    descrs,
    st.sampled_from(["False", "True", "0"]),
    st.lists(dims, max_size=4).map(tuple).map(str) | st.sampled_from(["(", "[3]", "3"]),
) | st.text(max_size=80)


def check_raw(raw: RawData) -> None:
    assert raw.x.ndim == 4 and raw.x.shape[-1] in (1, 3)
    assert raw.x.dtype.kind in "uif", raw.x.dtype
    assert raw.y.shape == (len(raw.x),) and raw.y.dtype == np.int64
    assert raw.pixel_max in (1.0, 255.0)


def load_npz_bytes(data: bytes) -> None:
    with scratch() as folder:
        path = folder / "data.npz"
        path.write_bytes(data)
        raw = attempt(lambda: load_source(DataParams(source="npz", path=str(path))), path)
        if raw is not None:
            check_raw(raw)


@FUZZ
@given(random_bytes)
def test_npz_random_bytes(data: bytes) -> None:
    load_npz_bytes(data)


@FUZZ
@given(mutated(NPZ_SEEDS))
def test_npz_mutated(data: bytes) -> None:
    load_npz_bytes(data)


@FUZZ
@given(npz_members, st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
def test_npz_members_mutated(members: dict[str, bytes], method: int) -> None:
    load_npz_bytes(zip_of(members, method))


@FUZZ
@given(npy_headers, st.binary(max_size=64))
def test_npz_npy_headers(header: str, data: bytes) -> None:
    load_npz_bytes(zip_of({"x.npy": npy_with_header(header, data), "y.npy": npy_bytes(Y)}))


@st.composite
def image_arrays(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of any dtype, in shapes that mostly pass (or nearly pass) the checks."""
    n = draw(st.integers(0, 4))
    x_shape = draw(st.sampled_from([(n, 2, 2), (n, 2, 2, 1), (n, 2, 2, 3), (n, 4), ()]))
    y_shape = draw(st.sampled_from([(n,), (n,), (n, 1), (n + 1,)]))
    x = draw(npst.arrays(npst.scalar_dtypes(), x_shape))
    y = draw(npst.arrays(npst.scalar_dtypes() | npst.integer_dtypes(sizes=64), y_shape))
    fortran = draw(st.booleans())  # saved with fortran_order: True in the .npy header
    return np.asfortranarray(x) if fortran else x, y


@FUZZ
@given(image_arrays())
@example(arrays=(np.zeros((2, 2, 2), "m8[s]"), np.arange(2)))  # timedelta64 taken as pixels
@example(arrays=(np.zeros((2, 2, 2), "u1"), np.array([0, 2**64 - 1], "u8")))  # label became -1
@example(arrays=(np.zeros((2, 2, 2), "u1"), np.array([0, 1e300])))  # label became -2**63
def test_npz_any_arrays(arrays: tuple[np.ndarray, np.ndarray]) -> None:
    """Sound files of any dtype and shape: loaded only as images and their integer labels."""
    x, y = arrays
    with scratch() as folder:
        path = folder / "data.npz"
        np.savez(path, x=x, y=y)
        # The colour each array already has: no conversion, so the pixels must come back.
        colour = "rgb" if x.ndim == 4 and x.shape[-1] == 3 else "grayscale"
        data = DataParams(source="npz", path=str(path), color=colour)
        raw = attempt(lambda: load_source(data), path)
        if raw is not None:
            check_raw(raw)
            np.testing.assert_array_equal(raw.x.reshape(x.shape), x)
            np.testing.assert_array_equal(raw.y, y)  # no label changed on the way to int64
            grey = DataParams(source="npz", path=str(path), color="grayscale")
            converted = attempt(lambda: load_source(grey), path)
            assert converted is not None and converted.x.shape == (*raw.x.shape[:3], 1)


# --- IDX ----------------------------------------------------------------------------------

IDX_CODES = {np.dtype("u1"): 0x08, np.dtype(">i2"): 0x0B, np.dtype(">f4"): 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file: zero bytes, a type code, the rank, big-endian dimensions, the data."""
    dtype = np.dtype(array.dtype).newbyteorder(">") if array.itemsize > 1 else array.dtype
    header = struct.pack(">BBBB", 0, 0, IDX_CODES[dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=dtype).tobytes()


IDX_SEEDS = [
    idx_bytes(X8),
    idx_bytes(Y.astype(np.uint8)),
    idx_bytes(X8.astype(">i2")),
    idx_bytes((X8 / 255).astype(">f4")),
]
GZ_SEEDS = [gzip.compress(seed) for seed in IDX_SEEDS]


def check_idx(array: np.ndarray) -> None:
    assert array.dtype.kind in "uif" and array.dtype.isnative, array.dtype
    assert array.ndim >= 1 and array.flags.writeable


def read_idx_bytes(data: bytes, name: str = "a-images-idx3-ubyte") -> None:
    with scratch() as folder:
        path = folder / name
        path.write_bytes(data)
        array = attempt(lambda: read_idx(path), path)
        if array is not None:
            check_idx(array)


@FUZZ
@given(random_bytes, st.booleans())
def test_idx_random_bytes(data: bytes, gz: bool) -> None:
    # Random bytes rarely start with the gzip magic: prefix it to reach the decompressor.
    read_idx_bytes(b"\x1f\x8b" + data if gz else data)


@FUZZ
@given(mutated(IDX_SEEDS), st.booleans())
def test_idx_mutated(data: bytes, gz: bool) -> None:
    # Mutated then gzipped: a sound gzip stream around a corrupt IDX file.
    read_idx_bytes(gzip.compress(data) if gz else data, "a-images-idx3-ubyte" + ".gz" * gz)


@FUZZ
@given(mutated(GZ_SEEDS))
def test_idx_gzip_stream_mutated(data: bytes) -> None:
    read_idx_bytes(data, "a-images-idx3-ubyte.gz")


# --- image files (the folder source's decoders) --------------------------------------------


def image_seed(suffix: str, mode: str) -> bytes:
    """A small image in one of the folder source's formats, as its file bytes."""
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format={"jpg": "JPEG", "tif": "TIFF"}.get(suffix, suffix.upper()))
    return buffer.getvalue()


IMAGE_SEEDS = {
    f"{mode}.{suffix}": image_seed(suffix, mode)
    for suffix, modes in {
        "png": ("RGB", "RGBA", "L", "P", "I;16"),
        "jpg": ("RGB", "L", "CMYK"),
        "bmp": ("RGB", "P"),
        "gif": ("P",),
        "tif": ("RGB", "CMYK", "I;16"),
        "webp": ("RGB", "RGBA"),
    }.items()
    for mode in modes
}


def decode_image_bytes(data: bytes, name: str) -> None:
    with scratch() as folder:
        path = folder / name
        path.write_bytes(data)
        for channels in (1, 3):
            pixels = attempt(functools.partial(images.to_array, path, channels), path)
            if pixels is not None:
                assert pixels.dtype == np.uint8 and pixels.ndim == 3
                assert pixels.shape[-1] == channels


@FUZZ
@given(st.sampled_from(sorted(IMAGE_SEEDS)), st.data())
def test_image_files_mutated(name: str, data: st.DataObject) -> None:
    suffix = name.rsplit(".", 1)[1]
    decode_image_bytes(data.draw(mutated([IMAGE_SEEDS[name]])), f"image.{suffix}")


@FUZZ
@given(random_bytes, st.sampled_from(sorted(images.IMAGE_SUFFIXES)))
def test_image_files_random_bytes(data: bytes, suffix: str) -> None:
    decode_image_bytes(data, f"image{suffix}")


@st.composite
def idx_headers(draw: st.DrawFn) -> bytes:
    """A well-formed IDX header whose dimensions claim anything up to 2**32 - 1 each."""
    code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]))
    big = st.sampled_from([2**16, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1)
    dims = draw(st.lists(big | st.integers(0, 8), min_size=1, max_size=4))
    header = struct.pack(">BBBB", 0, 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    return header + draw(st.binary(max_size=64))


MNIST_HEADER = struct.pack(">BBBB3I", 0, 0, 0x08, 3, 2**31, 28, 28)


@FUZZ
@given(idx_headers(), st.booleans())
@example(data=MNIST_HEADER + bytes(784), gz=False)  # 2**31 images of 28×28 claimed, one there
@example(data=MNIST_HEADER + bytes(784), gz=True)
# 65536**4 = 2**64, which np.prod(int64) wrapped to 0: the size check passed, reshape raised.
@example(data=struct.pack(">BBBB4I", 0, 0, 0x08, 4, *[2**16] * 4), gz=False)
# Empty, yet numpy cannot shape (2**32 - 1, 2**32 - 1, 0): reshape raised ValueError.
@example(data=struct.pack(">BBBB3I", 0, 0, 0x08, 3, 2**32 - 1, 2**32 - 1, 0), gz=False)
def test_idx_header_claims(data: bytes, gz: bool) -> None:
    read_idx_bytes(gzip.compress(data) if gz else data)


@FUZZ
@given(
    mutated(IDX_SEEDS[:1]) | st.sampled_from(IDX_SEEDS[:1]),
    mutated(IDX_SEEDS[1:2]) | st.sampled_from(IDX_SEEDS[1:2]),
    st.booleans(),
)
def test_idx_folder(images: bytes, labels: bytes, gz: bool) -> None:
    with scratch() as folder:
        suffix = ".gz" if gz else ""
        for name, data in (("images-idx3", images), ("labels-idx1", labels)):
            (folder / f"train-{name}-ubyte{suffix}").write_bytes(
                gzip.compress(data) if gz else data
            )
        raw = attempt(lambda: load_source(DataParams(source="idx", path=str(folder))), folder)
        if raw is not None:
            check_raw(raw)


# --- params.yaml --------------------------------------------------------------------------

PARAMS_SEED = (REPO / "params.yaml").read_bytes()

yaml_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["digits", "npz", "adam", "relu", "cnn", 0.1, 1, -1])
)
yaml_keys = st.sampled_from(["seed", "data", "train", "source", "path", "epochs", "common"])
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(yaml_keys | st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


def load_params_bytes(data: bytes) -> None:
    with scratch() as folder:
        path = folder / "params.yaml"
        path.write_bytes(data)
        params = attempt(lambda: load_params(path), path)
        assert params is None or isinstance(params, Params)


@FUZZ
@given(random_bytes)
def test_params_random_bytes(data: bytes) -> None:
    load_params_bytes(data)


@FUZZ
@given(mutated([PARAMS_SEED]))
def test_params_mutated(data: bytes) -> None:
    load_params_bytes(data)


@FUZZ
@given(st.dictionaries(yaml_keys | st.text(max_size=12), yaml_values, max_size=5))
@example(document={"\x1e": None})  # a control character in a key broke the message in two
@example(document={"data": {"source": "npz\nnpz"}})
def test_params_documents(document: dict[str, Any]) -> None:
    """Well-formed YAML of any shape: the schema, not the parser, must refuse it."""
    load_params_bytes(yaml.safe_dump(document, allow_unicode=True).encode())


# --- data/prepared ------------------------------------------------------------------------


def small_prepared() -> Prepared:
    splits = {
        name: ((X8[..., None] / 255).astype(np.float32)[i : i + 2], Y[i : i + 2].astype(np.int64))
        for i, name in zip((0, 2, 4), ("train", "val", "test"), strict=True)
    }
    return Prepared(splits=splits, manifest=build_manifest(splits, source="fuzz"))


PREPARED = small_prepared()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@FUZZ
@given(
    st.sampled_from(["manifest.json", "train.npz", "val.npz", "test.npz"]),
    st.data(),
)
def test_prepared_with_one_file_corrupted(name: str, data: st.DataObject) -> None:
    with scratch() as root:
        folder = root / "prepared"
        write_prepared(PREPARED, folder)
        seed = (folder / name).read_bytes()
        if name == "manifest.json":
            content = data.draw(
                mutated([seed]) | random_bytes | json_values.map(lambda v: json.dumps(v).encode())
            )
        else:
            content = data.draw(mutated([seed]) | random_bytes)
        (folder / name).write_bytes(content)
        loaded = attempt(lambda: load_prepared(folder), folder)
        if loaded is not None:  # only an unchanged payload can match the content hash
            for split, (x, y) in PREPARED.splits.items():
                np.testing.assert_array_equal(loaded[split][0], x)
                np.testing.assert_array_equal(loaded[split][1], y)


# --- regressions: inputs that broke the loaders -------------------------------------------


def gzip_bomb(header: bytes, zeros: int) -> bytes:
    """`header` then `zeros` zero bytes, gzipped without ever holding them all in memory."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    chunk = bytes(2**20)
    parts = [packer.compress(header)]
    parts += [packer.compress(chunk) for _ in range(zeros // len(chunk))]
    return b"".join([*parts, packer.flush()])


@pytest.mark.parametrize("claim", [5, 2**31])
def test_gzip_bomb_is_refused_without_inflating_it(claim: int) -> None:
    """256 MB of zeros behind a header that promises `claim` images of 28×28."""
    header = struct.pack(">BBBB3I", 0, 0, 0x08, 3, claim, 28, 28)
    read_idx_bytes(gzip_bomb(header, 256 * 2**20), "bomb-images-idx3-ubyte.gz")


def npz_with_x(x_npy: bytes, method: int = zipfile.ZIP_STORED) -> bytes:
    return zip_of({"x.npy": x_npy, "y.npy": npy_bytes(Y)}, method)


def first_stream_byte(npz: bytes, value: int) -> bytes:
    """The first member's compressed data starting with `value` (0xff: a reserved deflate
    block type, which zlib refuses)."""
    name_length, extra_length = struct.unpack("<HH", npz[26:30])
    start = 30 + name_length + extra_length
    return npz[:start] + bytes([value]) + npz[start + 1 :]


def central_directory_patch(npz: bytes, offset: int, patch: bytes) -> bytes:
    """`patch` written `offset` bytes into the zip's first central directory entry."""
    start = npz.index(b"PK\x01\x02") + offset
    return npz[:start] + patch + npz[start + len(patch) :]


TERABYTE_HEADER = "{'descr': '|u1', 'fortran_order': False, 'shape': (1048576, 1048576), }"
NPZ_REGRESSIONS = {
    # zlib.error escaped: it is no OSError.
    "corrupt deflate stream": first_stream_byte(
        npz_with_x(npy_bytes(X8), zipfile.ZIP_DEFLATED), 0xFF
    ),
    # zipfile raised NotImplementedError for "zip file version 25.5".
    "zip version 25.5 needed": central_directory_patch(npz_with_x(npy_bytes(X8)), 6, b"\xff"),
    # np.load handed back the member's raw bytes: AttributeError on .ndim.
    "x.npy without the .npy magic": npz_with_x(b"not an array"),
    # numpy's header parser: TokenError and IndexError escaped.
    "unterminated header": npz_with_x(npy_with_header("{'descr': '|u1', ", b"")),
    "one-element descr tuple": npz_with_x(
        npy_with_header("{'descr': ('|u1',), 'fortran_order': False, 'shape': (2,), }", b"ab")
    ),
    # np.load allocated the claimed 2**40 bytes before finding 16 there.
    "header claiming a terabyte": npz_with_x(npy_with_header(TERABYTE_HEADER, bytes(16))),
}


@pytest.mark.parametrize("data", NPZ_REGRESSIONS.values(), ids=NPZ_REGRESSIONS.keys())
def test_npz_regressions(data: bytes) -> None:
    with scratch() as folder:
        path = folder / "data.npz"
        path.write_bytes(data)
        assert attempt(lambda: load_source(DataParams(source="npz", path=str(path))), path) is None


def laughs(levels: int) -> str:
    """YAML aliases nesting nine lists per level: 9**levels elements once expanded."""
    lines = ["l0: &l0 [0, 0, 0, 0, 0, 0, 0, 0, 0]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nevaluate: {{shifts: [*l{levels - 1}]}}\n"


PARAMS_REGRESSIONS = {
    # Printing the bad value expanded 9**10 aliased elements: a hang, then gigabytes.
    "billion laughs": laughs(10),
    # PyYAML recurses: RecursionError (600 levels; deeper is slow under tracemalloc).
    "nested 600 deep": "seed: " + "[" * 600 + "]" * 600,
    # PyYAML's constructors raised ValueError, not YAMLError.
    "5000-digit integer": "seed: " + "9" * 5000,
    "impossible date": "seed: 2024-13-45",
}


@pytest.mark.parametrize("text", PARAMS_REGRESSIONS.values(), ids=PARAMS_REGRESSIONS.keys())
def test_params_regressions(text: str) -> None:
    with scratch() as folder:
        path = folder / "params.yaml"
        path.write_text(text)
        assert attempt(lambda: load_params(path), path) is None


PREPARED_REGRESSIONS = [
    # `manifest.get` on None or a list: AttributeError; 100,000 brackets: RecursionError.
    pytest.param("manifest.json", b"null", id="manifest null"),
    pytest.param("manifest.json", b"[]", id="manifest a list"),
    pytest.param("manifest.json", b"[" * 100_000, id="manifest nested 100000 deep"),
    # np.load returned an ndarray, which is no context manager: TypeError.
    pytest.param("train.npz", npy_bytes(X8), id="train.npz an .npy file"),
]


@pytest.mark.parametrize(("name", "content"), PREPARED_REGRESSIONS)
def test_prepared_regressions(name: str, content: bytes) -> None:
    with scratch() as root:
        folder = root / "prepared"
        write_prepared(PREPARED, folder)
        (folder / name).write_bytes(content)
        assert attempt(lambda: load_prepared(folder), folder / name) is None


@pytest.mark.parametrize(("ci", "derandomized"), [("true", True), ("", False)])
def test_ci_draws_the_same_examples_every_run(ci: str, derandomized: bool):
    import subprocess
    import sys

    from tests.conftest import REPO

    code = "from tests.test_fuzz import FUZZ; print(FUZZ.derandomize)"
    env = {**os.environ, "CI": ci}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert out.stdout.strip() == str(derandomized), out.stderr[-2000:]
