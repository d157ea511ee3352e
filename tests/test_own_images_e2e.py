"""`dvc repro` on a user's own folder of colour photos: three named classes of 25×25 RGB files
in mixed formats and sizes, through every stage, then `predict` on new files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.e2e import (
    TINY_BASELINE,
    TINY_COMPRESS,
    TINY_EVALUATE,
    TINY_GAN,
    TINY_PLAIN_TRAIN,
    commit,
    copy_project,
    declared_outputs,
    run,
    update_params,
)
from tests.test_pipeline_e2e import file_digest, mlflow_client, read

pytestmark = pytest.mark.slow
CLASSES = ("crimson", "forest", "ocean")  # sorted, as the folder source orders them
PER_CLASS = 40
SIDE = 25


def photo(label: int, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A noisy colour image whose class is its dominant channel: red, green or blue."""
    pixels = rng.integers(0, 120, (*size, 3))
    pixels[..., label] += 100 + rng.integers(0, 36)
    return pixels.clip(0, 255).astype(np.uint8)


def write_photos(root: Path) -> None:
    """Class folders as a camera and a scraper leave them: PNG, JPEG and WebP files, a fifth
    at another size, a note file, a hidden file."""
    rng = np.random.default_rng(7)
    for label, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            size = (SIDE, SIDE) if i % 5 else (31, 29)
            suffix = ("png", "jpg", "webp", "png")[i % 4]
            Image.fromarray(photo(label, rng, size)).save(folder / f"IMG_{i:04d}.{suffix}")
        (folder / "notes.txt").write_text("shot on a phone")
        (folder / ".DS_Store").write_bytes(b"\x00\x01")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = copy_project(tmp_path_factory.mktemp("own-images"))
    write_photos(root / "photos")
    update_params(
        root,
        {
            "mlflow": {"experiment": "photos"},
            "data": {"source": "folder", "path": "photos", "image_size": [SIDE, SIDE]},
            "validate": {"min_rows_per_split": 10},
            "train": TINY_PLAIN_TRAIN,
            "baseline": TINY_BASELINE,
            "gan": {**TINY_GAN, "eval_per_class": 10},
            "compress": TINY_COMPRESS,
            "evaluate": {**TINY_EVALUATE, "faithfulness_images": 12},
        },
    )
    commit(root, "own photos, tiny params")
    result = run(root, "dvc", "repro")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root


def test_every_stage_runs_on_colour_photos_with_named_classes(project: Path):
    missing = [str(path) for path in declared_outputs() if not (project / path).exists()]
    assert missing == []
    manifest = read(project / "data/prepared/manifest.json")
    assert manifest["image_shape"] == [SIDE, SIDE, 3]
    assert manifest["class_names"] == list(CLASSES) and manifest["num_classes"] == 3
    assert manifest["files"] == {"images": 3 * PER_CLASS, "non_image_files": 3, "skipped": 0}
    assert read(project / "reports/validation/results.json")["success"] is True
    for name in ("fnn", "cnn", "lstm"):
        inputs = read(project / f"models/{name}/inputs.json")
        assert inputs["class_names"] == list(CLASSES) and inputs["image_shape"] == [SIDE, SIDE, 3]
        report = read(project / f"reports/evaluate/{name}.json")
        assert [c["name"] for c in report["clean"]["per_class"]] == list(CLASSES)
        compressed = read(project / f"reports/compress/{name}.json")["variants"]
        assert compressed["int8"]["supported"] is True, (name, compressed["int8"])
    # The colour separates the classes: the tiny run's epochs learn it (chance is 1/3).
    assert read(project / "reports/evaluate/cnn.json")["clean"]["accuracy"] >= 0.9


def test_the_gan_draws_colour_samples_at_the_photos_size(project: Path):
    grids = sorted((project / "models/gan/samples").glob("epoch_*.png"))
    with Image.open(grids[-1]) as written:
        grid = np.asarray(written.convert("RGB")).astype(int)
    assert (grid[..., 0] != grid[..., 1]).any()  # not a grey image saved as RGB
    generated = project / "generated.npz"
    command = ["python", "-m", "pipeline", "generate", "--label", "2", "--count", "4"]
    made = run(project, *command, "--out", str(generated))
    assert made.returncode == 0, made.stderr[-2000:]
    with np.load(generated) as made_images:
        assert made_images["x"].shape == (4, SIDE, SIDE, 3)


def test_class_names_reach_the_report_and_mlflow(project: Path):
    page = (project / "reports/index.html").read_text()
    for name in CLASSES:
        assert f"<tr><td>{name}</td>" in page  # each model's per-class table
    assert "3: crimson, forest, ocean" in page
    client = mlflow_client(project)
    experiment = client.get_experiment_by_name("photos")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.dvc_stage LIKE 'train@%'")
    assert len(runs) == 3
    for lineage in runs:
        assert json.loads(lineage.data.tags["class_names"]) == list(CLASSES)
        assert lineage.data.tags["num_classes"] == "3"
        logged = Path(client.download_artifacts(lineage.info.run_id, "inputs.json"))
        assert json.loads(logged.read_text())["class_names"] == list(CLASSES)


def write_test_split(project: Path, folder: Path) -> np.ndarray:
    """The prepared test split back out as PNG files (exact: its pixels are bytes / 255)."""
    with np.load(project / "data/prepared/test.npz") as split:
        x, y = split["x"], split["y"]
    folder.mkdir()
    for i, image in enumerate(x):
        pixels = np.rint(image * 255).astype(np.uint8)
        assert np.array_equal(pixels.astype(np.float32) / np.float32(255), image)
        Image.fromarray(pixels).save(folder / f"test_{i:04d}.png")
    return y


def predictions(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("model, variant", [("cnn", None), ("lstm", None), ("fnn", "int8")])
def test_predict_on_the_test_split_as_files_reproduces_evaluate(
    project: Path, tmp_path: Path, model: str, variant: str | None
):
    labels = write_test_split(project, tmp_path / "test_files")
    out = tmp_path / "predictions.csv"
    command = ["python", "-m", "pipeline", "predict", str(tmp_path / "test_files")]
    command += ["--model", model, "--out", str(out)] + (["--tflite", variant] if variant else [])
    done = run(project, *command)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = predictions(out)
    assert list(rows[0]) == ["file", "predicted", *(f"p_{name}" for name in CLASSES)]
    names = [f"test_{i:04d}.png" for i in range(len(labels))]
    assert [Path(row["file"]).name for row in rows] == names
    predicted = [CLASSES.index(row["predicted"]) for row in rows]
    for row in rows:
        assert sum(float(row[f"p_{name}"]) for name in CLASSES) == pytest.approx(1, abs=0.02)
    evaluated = read(project / f"reports/evaluate/{model}.json")
    expected = evaluated["variants"][variant] if variant else evaluated["clean"]
    assert np.mean(np.array(predicted) == labels) == expected["accuracy"]


def test_bad_photos_stop_ingest_in_one_line_and_keep_the_last_good_data(project: Path):
    prepared = {path: file_digest(path) for path in (project / "data/prepared").iterdir()}
    models = {path: file_digest(path) for path in (project / "models/cnn").iterdir()}
    broken = project / "photos" / "ocean" / "IMG_9999.jpg"
    broken.write_bytes((project / "photos/ocean/IMG_0001.jpg").read_bytes()[:300])
    try:
        # Forced: DVC tracks data.path as a param, not the files under it.
        result = run(project, "dvc", "repro", "--force", "--single-item", "ingest")
    finally:
        broken.unlink()
    assert result.returncode != 0
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("ingest: error:")]
    assert len(errors) == 1, output[-3000:]
    assert errors[0].startswith("ingest: error: photos/ocean/IMG_9999.jpg: unreadable image (")
    assert "Traceback" not in output
    assert {path: file_digest(path) for path in prepared} == prepared
    assert {path: file_digest(path) for path in models} == models
