"""File helpers: atomic writes (a crash never leaves a half-written output) and hashing."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.cli import PipelineError


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces `target` (file or directory).

    The temporary path lives in the same directory so the final rename is atomic for files. A
    directory is swapped with two renames (old aside, new in); should a crash fall between them,
    the previous version is still at `.<name>.old` and is put back on the next call. On failure
    the temporary path is removed and `target` is left as it was.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise unwritable(target, error) from None
    old = target.with_name(f".{target.name}.old")
    if old.is_dir() and not target.exists():
        old.rename(target)  # a crash fell between the two renames of an earlier swap
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.rmdir()  # the caller decides whether it becomes a file or a directory
    try:
        try:
            yield tmp
        except OSError as error:  # disk full, file too large, folder gone: name the output
            raise unwritable(target, error) from None
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def unwritable(target: Path, error: OSError) -> PipelineError:
    """One line naming the output that could not be written, and why; the old one is kept."""
    blocker = next((p for p in (target.parent, *target.parents) if p.is_file()), None)
    reason = f"{blocker} is a file, not a folder" if blocker else (error.strerror or str(error))
    return PipelineError(f"{target}: cannot write ({reason}); any previous version is kept")


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A CSV file's text: the header, then one line per row (cells as given, `\n` endings)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def history_csv(history: dict[str, list[float]]) -> str:
    """A Keras history (or any per-epoch series) as CSV: `epoch`, then the series by name."""
    keys = sorted(history)
    rows = zip(*(history[k] for k in keys), strict=True)
    return csv_text(
        ["epoch", *keys],
        ([epoch, *(f"{v:.6g}" for v in values)] for epoch, values in enumerate(rows, start=1)),
    )


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes; one line naming it when it is missing."""
    try:
        with open(path, "rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; run the stage that trains this model") from None


def hash_arrays(*arrays: np.ndarray) -> str:
    """SHA-256 over dtype, shape and bytes of each array, in order."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
