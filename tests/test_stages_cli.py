"""Stages as a user runs them: one line on stderr and a non-zero exit for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.core.cli import PipelineError
from pipeline.core.params import DataParams
from pipeline.data.prepared import load_prepared, prepare, write_prepared
from pipeline.data.sources import load_digits
from tests.conftest import REPO


def stage(cwd: Path, module: str, *args: str, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", f"pipeline.stages.{module}", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def write_params(folder: Path, **changes) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in changes.items():
        params[section].update(values)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))


def test_corrupt_npz_stops_ingest_with_one_line(tmp_path: Path):
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 this is not really a zip")
    write_params(tmp_path, data={"source": "npz", "path": "broken.npz"})
    result = stage(tmp_path, "ingest")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "ingest: error: broken.npz: not a readable NPZ file (BadZipFile: File is not a zip file)"
    ]
    assert not (tmp_path / "data").exists()  # nothing half-written


def test_bad_param_stops_train_before_any_work(tmp_path: Path):
    write_params(tmp_path, train={"common": {"epochs": 0}})
    result = stage(tmp_path, "train", "--model", "cnn")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "train: error: params.yaml: train.common.epochs: "
        "Input should be greater than or equal to 1 (got 0)"
    ]
    assert not (tmp_path / "mlflow.db").exists()  # no run was even started


def test_debug_shows_the_traceback(tmp_path: Path):
    write_params(tmp_path, data={"source": "npz", "path": "missing.npz"})
    result = stage(tmp_path, "ingest", "--debug")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "missing.npz: file not found" in result.stderr


def test_train_refuses_data_that_was_not_validated(tmp_path: Path):
    write_params(tmp_path)
    assert stage(tmp_path, "ingest").returncode == 0
    result = stage(tmp_path, "train", "--model", "fnn")
    assert result.returncode == 1
    assert "reports/validation/results.json: no validation results" in result.stderr


def test_ingest_writes_a_manifest_that_matches_its_arrays(tmp_path: Path):
    raw = load_digits()
    np.savez(tmp_path / "d.npz", x=(raw.x * 255 / 16).astype(np.uint8), y=raw.y)
    prepared = prepare(DataParams(source="npz", path=str(tmp_path / "d.npz")), seed=1)
    write_prepared(prepared, tmp_path / "prepared")
    loaded = load_prepared(tmp_path / "prepared")
    manifest = loaded.manifest
    assert manifest["image_shape"] == [8, 8, 1] and manifest["pixel_max"] == 255.0
    assert sum(s["count"] for s in manifest["splits"].values()) == 1797
    assert manifest["splits"]["test"]["class_counts"]["0"] == 36
    for split in ("train", "val", "test"):
        x, _ = loaded[split]
        assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0
    # Tampering with the arrays is noticed through the content hash.
    with np.load(tmp_path / "prepared/test.npz") as archive:
        x, y = archive["x"], archive["y"]
    np.savez(tmp_path / "prepared/test.npz", x=x, y=np.roll(y, 1))
    with pytest.raises(PipelineError, match="do not match the manifest's content hash"):
        load_prepared(tmp_path / "prepared")


def test_corrupt_prepared_split_is_one_line(tmp_path: Path):
    raw = load_digits()
    prepared = prepare(DataParams(), seed=1)
    assert raw.x.shape[0] == 1797
    write_prepared(prepared, tmp_path / "prepared")
    data = (tmp_path / "prepared/val.npz").read_bytes()
    (tmp_path / "prepared/val.npz").write_bytes(data[: len(data) // 3])
    with pytest.raises(PipelineError, match="unreadable prepared data"):
        load_prepared(tmp_path / "prepared")


def test_atomic_directory_swap_recovers_after_a_crash_between_renames(tmp_path: Path):
    from pipeline.core.io import atomic_path

    target = tmp_path / "out"
    (tmp_path / ".out.old").mkdir()
    (tmp_path / ".out.old" / "model.keras").write_text("last good")
    with pytest.raises(RuntimeError), atomic_path(target) as staging:
        staging.mkdir()
        raise RuntimeError("crash while writing the new version")
    assert (target / "model.keras").read_text() == "last good"


def test_compress_without_a_trained_model_names_the_missing_file(tmp_path: Path):
    write_params(tmp_path)
    assert stage(tmp_path, "ingest").returncode == 0
    result = stage(tmp_path, "compress", "--model", "cnn")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "compress: error: models/cnn/model.keras: model file not found; run the stage that makes it"
    )
