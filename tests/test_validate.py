"""The Great Expectations suite, run for real (GX Core, ephemeral context) on planted faults."""

import json

import numpy as np

from pipeline.core.params import ValidateParams
from pipeline.data.prepared import Prepared, build_manifest
from pipeline.data.validation import image_table, load_suite_json, summary_html, validate
from pipeline.data.validation_results import failures
from tests.conftest import REPO


def modified(prepared: Prepared, split: str, x=None, y=None) -> Prepared:
    splits = dict(prepared.splits)
    old_x, old_y = splits[split]
    splits[split] = (old_x if x is None else x, old_y if y is None else y)
    return Prepared(splits=splits, manifest=build_manifest(splits, source="test", num_classes=10))


def failed_phrases(prepared: Prepared, **params) -> list[str]:
    return failures(validate(prepared, ValidateParams(**params))["splits"])


def test_stored_suite_is_the_repository_json():
    suite = load_suite_json()
    assert suite == json.loads((REPO / "expectations/prepared_images.json").read_text())
    types = {e["type"] for e in suite["expectations"]}
    assert {
        "expect_column_values_to_be_in_set",
        "expect_column_kl_divergence_to_be_less_than",
        "expect_column_distinct_values_to_equal_set",
        "expect_table_row_count_to_be_between",
    } <= types


def test_image_table_has_one_row_per_image():
    x = np.zeros((3, 4, 4, 1), np.float32)
    x[1, 0, 0, 0] = np.nan
    x[2, 0, 0, 0] = np.inf
    table = image_table(x, np.array([0, 1, 2]), "val")
    assert list(table["nan_count"]) == [0, 1, 0]
    assert list(table["inf_count"]) == [0, 0, 1]
    assert set(table["shape"]) == {"4x4x1"}
    assert set(table["split"]) == {"val"}


def test_good_data_passes_every_expectation(digits_prepared):
    results = validate(digits_prepared, ValidateParams())
    assert results["success"], failures(results["splits"])
    assert set(results["splits"]) == {"train", "val", "test"}
    assert all(
        len(items) == len(load_suite_json()["expectations"]) for items in results["splits"].values()
    )


def test_labels_outside_the_class_set_fail_by_name(digits_prepared):
    _x, y = digits_prepared["test"]
    y = y.copy()
    y[:3] = 10
    failed = failed_phrases(modified(digits_prepared, "test", y=y))
    assert any(
        p.startswith("split 'test': expect_column_values_to_be_in_set(label): 3 unexpected")
        for p in failed
    ), failed


def test_nan_and_out_of_range_pixels_fail(digits_prepared):
    x, _ = digits_prepared["train"]
    x = x.copy()
    x[0, 0, 0, 0] = np.nan
    x[1, 0, 0, 0] = 3.0
    failed = " | ".join(failed_phrases(modified(digits_prepared, "train", x=x)))
    assert "split 'train': expect_column_values_to_be_in_set(nan_count): 1 unexpected" in failed
    assert "split 'train': expect_column_values_to_be_between(pixel_max): 1 unexpected" in failed


def test_missing_class_and_drift_fail(digits_prepared):
    x, y = digits_prepared["val"]
    keep = y != 4
    failed = " | ".join(failed_phrases(modified(digits_prepared, "val", x=x[keep], y=y[keep])))
    assert "split 'val': expect_column_distinct_values_to_equal_set(label): missing [4]" in failed
    assert "split 'val': expect_column_kl_divergence_to_be_less_than(label)" in failed


def test_class_proportion_drift_alone_fails_with_threshold(digits_prepared):
    x, y = digits_prepared["test"]
    # Keep every class, but only a third of classes 0-4: heavy drift toward 5-9.
    keep = (y >= 5) | (np.arange(len(y)) % 3 == 0)
    drifted = modified(digits_prepared, "test", x=x[keep], y=y[keep])
    failed = failed_phrases(drifted)
    assert failed and all("kl_divergence" in p for p in failed), failed
    assert failed_phrases(drifted, max_class_drift=5.0) == []


def test_row_count_bounds(digits_prepared):
    rows = len(digits_prepared["train"][1])
    failed = failed_phrases(digits_prepared, max_rows_per_split=rows - 1)
    assert failed == [f"split 'train': expect_table_row_count_to_be_between: observed {rows}"]


def test_summary_page_is_self_contained_and_escaped(digits_prepared):
    results = validate(digits_prepared, ValidateParams())
    results["splits"]["train"][0]["column"] = "<script>alert(1)</script>"
    page = summary_html(results)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "http://" not in page and "https://" not in page


def test_stray_labels_in_train_are_reported_not_crashed_on(digits_prepared):
    _x, y = digits_prepared["train"]
    y = y.copy()
    y[::40] = 11
    failed = " | ".join(failed_phrases(modified(digits_prepared, "train", y=y)))
    assert "split 'train': expect_column_values_to_be_in_set(label)" in failed
    assert "split 'val': expect_column_kl_divergence_to_be_less_than(label)" in failed


def test_empty_split_fails_row_count_without_crashing(digits_prepared):
    x, y = digits_prepared["test"]
    failed = " | ".join(failed_phrases(modified(digits_prepared, "test", x=x[:0], y=y[:0])))
    assert "split 'test': expect_table_row_count_to_be_between: observed 0" in failed


def test_images_shared_between_train_and_test_fail_as_leakage(digits_prepared):
    x_train, y_train = digits_prepared["train"]
    x_test, y_test = digits_prepared["test"]
    x_test, y_test = x_test.copy(), y_test.copy()
    x_test[:5], y_test[:5] = x_train[:5], y_train[:5]  # five training images also in test
    failed = failed_phrases(modified(digits_prepared, "test", x=x_test, y=y_test))
    leaks = [p for p in failed if "(in_other_splits)" in p]
    # Both sides of each pair are flagged: five rows in train and five in test.
    assert sorted(p.split(":")[0] for p in leaks) == ["split 'test'", "split 'train'"], failed
    assert all("5 unexpected" in p for p in leaks), leaks


def test_a_fault_in_one_colour_channel_alone_fails(digits_prepared):
    """Colour data: the per-image statistics span every channel, so a NaN or an out-of-range
    value in the blue channel only is caught as surely as in a grey image."""
    colour = {
        name: (np.repeat(x, 3, axis=-1), y) for name, (x, y) in digits_prepared.splits.items()
    }
    rgb = Prepared(splits=colour, manifest=build_manifest(colour, source="test", num_classes=10))
    assert failed_phrases(rgb) == []
    x, _ = colour["val"]
    x = x.copy()
    x[0, 3, 3, 2] = np.nan
    x[1, 5, 5, 2] = 1.5
    x[2, 0, 0, 1] = -0.5
    failed = " | ".join(failed_phrases(modified(rgb, "val", x=x)))
    assert "split 'val': expect_column_values_to_be_in_set(nan_count): 1 unexpected" in failed
    assert "split 'val': expect_column_values_to_be_between(pixel_max): 1 unexpected" in failed
    assert "split 'val': expect_column_values_to_be_between(pixel_min): 1 unexpected" in failed
    grey = image_table(digits_prepared["val"][0], digits_prepared["val"][1], "val")
    assert set(grey["shape"]) == {"8x8x1"}
    assert set(image_table(x, digits_prepared["val"][1], "val")["shape"]) == {"8x8x3"}
