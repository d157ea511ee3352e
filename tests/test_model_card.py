"""Model cards from hand-made stage outputs: each sentence states the numbers it was given."""

from __future__ import annotations

from typing import Any

from pipeline.core.model_card import CardSources, card_markdown, model_card, speed_section
from pipeline.core.outputs import Check, CompressReport, EvaluateReport, TrainMetrics
from pipeline.core.params import parse_params


def evaluated(accuracy: float = 0.9, classes: int = 3) -> EvaluateReport:
    per_class = [
        {
            "class": c,
            "name": f"class-{c}",
            "precision": 0.9,
            "recall": 0.9,
            "f1": 0.9,
            "support": 10,
        }
        for c in range(classes)
    ]
    per_class[1] = {**per_class[1], "precision": 0.5, "recall": 0.6, "f1": 0.55}  # the weakest
    bins = [
        {"lower": 0.0, "upper": 0.5, "count": 0, "confidence": None, "accuracy": None},
        {"lower": 0.5, "upper": 0.75, "count": 2, "confidence": 0.6, "accuracy": 0.0},
        {"lower": 0.75, "upper": 1.0, "count": 28, "confidence": 0.95, "accuracy": 0.75},
    ]
    curves = {"0": accuracy, "0.1": 0.4}
    return EvaluateReport.model_validate(
        {
            "model": "cnn",
            "model_bytes": 1000,
            "test_images": 30,
            "sweep_images": 30,
            "clean": {
                "accuracy": accuracy,
                "macro_f1": 0.8,
                "ece": 0.123,
                "per_class": per_class,
                "confusion_matrix": [[10] * classes] * classes,
                "reliability": bins,
            },
            "adversarial": {
                "fgsm": curves,
                "pgd": {"0": accuracy, "0.1": 0.25},
                "robust_epsilon": 0.1,
                "robust_accuracy": 0.25,
                "pgd_steps": 10,
            },
            "corruptions": {
                "shift": {"1": 0.5, "2": 0.2},
                "rotation": {"10": 0.8, "20": 0.6},
                "occlusion": {"0.1": 0.85, "0.4": 0.3},
            },
            "variants": {},
            "explanations": {
                "methods": ["saliency"],
                "grid_images": [0],
                "ig_completeness_error": {
                    "max": 0.01,
                    "mean": 0.01,
                    "grid_images": [0.01],
                    "steps_max": 64,
                    "steps_mean": 64.0,
                },
                "faithfulness": {
                    "images": 5,
                    "deleted_fraction": [0.0, 1.0],
                    "deletion_auc": {"saliency": 0.3},
                    "deletion_auc_random": 0.5,
                    "beats_random": {"saliency": True},
                    "most_faithful": "saliency",
                    "mean_curves": {"saliency": [1.0, 0.1]},
                },
            },
            "targets": {"ig_completeness_error_max": Check.at_most(0.01, 0.05)},
        }
    )


def variant(accuracy: float, gzip: int, supported: bool = True) -> dict[str, Any]:
    if not supported:
        return {"supported": False, "description": "d", "reason": "RuntimeError: no"}
    return {
        "description": "d",
        "accuracy": accuracy,
        "source_keras_accuracy": 0.9,
        "sparsity": 0.0,
        "size_bytes": gzip * 2,
        "size_gzip_bytes": gzip,
        "dtypes": {"input": ["int8"]},
    }


def compressed(variants: dict[str, Any]) -> CompressReport:
    return CompressReport.model_validate(
        {
            "keras_float": {
                "accuracy": 0.9,
                "sparsity": 0.0,
                "size_bytes": 100_000,
                "size_gzip_bytes": 90_000,
            },
            "variants": variants,
            "targets": {"int8_loss_points_vs_float_tflite": Check.at_most(2.0, 0.5, "int8")},
        }
    )


def sources(report: CompressReport, classes: int = 3, success: bool = True) -> CardSources:
    counts = {str(c): 10 + c for c in range(classes)}
    manifest = {
        "source": "folder",
        "content_hash": "c" * 64,
        "image_shape": [25, 25, 3],
        "num_classes": classes,
        "class_names": [f"class-{c}" for c in range(classes)],
        "splits": {
            s: {"count": sum(counts.values()), "class_counts": counts}
            for s in ("train", "val", "test")
        },
    }
    validation = {
        "success": success,
        "suite": "suite.json",
        "rows": {"train": 5, "val": 2, "test": 3},
        "splits": {"train": [1, 2], "val": [1], "test": [1]},
    }
    train = TrainMetrics(
        train_accuracy=1.0,
        train_loss=0.1,
        val_accuracy=0.9,
        val_loss=0.2,
        test_accuracy=0.9,
        test_loss=0.3,
        epochs_trained=12,
        best_epoch=9,
        parameters=12345,
        replicas=1,
        global_batch_size=32,
    )
    params = parse_params(
        {"card": {"owner": "vision team", "limitations": ["Not for medical use."]}}
    )
    return CardSources(
        family="cnn",
        params=params,
        manifest=manifest,
        validation=validation,
        train=train,
        evaluated=evaluated(classes=classes),
        compressed=report,
        model_digest="d" * 64,
        dvc_inputs_digest="e" * 32,
    )


THREE_VARIANTS = {
    "int8": variant(0.895, 20_000),  # within one point: the smallest of those
    "pruned_int8": variant(0.85, 8_000),  # smaller, 5 points worse
    "float32": variant(0.9, 80_000),
    "qat_int8": variant(0.0, 0, supported=False),
}


def test_every_section_states_the_numbers_it_was_given():
    report = compressed(THREE_VARIANTS)
    text = card_markdown(model_card(sources(report)))
    for expected in (
        "# Model card: cnn on folder",
        "- Owner: vision team.",
        "33 training, 33 validation and 33 test images, 25×25 colour, in 3 classes.",
        "Validation (suite.json): passed, 4 expectations over 10 rows.",
        "| class-2 | 12 | 12 | 12 |",
        "Test accuracy 0.9000 and macro F1 0.8000 on 30 test images",
        "The weakest class is `class-1`: precision 0.500, recall 0.600, F1 0.550",
        "12,345 parameters, 12 epochs (best: epoch 9).",
        "Expected calibration error 0.1230 over 3 confidence bins.",
        # 28 × 0.20 outweighs 2 × 0.60: the crowded bin adds most to the error.
        "the 28 predictions made with confidence 0.75–1.00 are right 75.0% of the time",
        "accuracy drops to 0.250; under FGSM at the same ε to 0.400.",
        "A 2-pixel shift (right and down) drops accuracy to 0.200.",
        "Erasing 40% of the image drops accuracy to 0.300.",
        "A rotation by 20° drops accuracy to 0.600.",
        "The worst corruption measured is a 2-pixel shift (right and down) (0.200)",
        "For size, among the TFLite variants within 1 accuracy point of the Keras model (0.9000): "
        "`int8` (19.5 KiB gzipped",
        "For speed: latency is measured, so it differs from machine to machine",
        "Not available for this model: qat_int8.",
        "a 1-pixel shift (right and down) already drops accuracy from 0.900 to 0.500.",
        "Targets not met: int8_loss_points_vs_float_tflite.",
        "- Not for medical use.",
        "The git commit of the code is the lineage run's `git_commit` tag.",
        f"Model file sha256 `{'d' * 64}`",
    ):
        assert expected in text, expected
    assert "ms" not in text.split() and "latency median" not in text  # a card holds no speed


def test_the_speed_choice_is_the_fastest_measured_variant_within_one_point():
    report = compressed(THREE_VARIANTS)
    # pruned_int8 is the fastest, but 5 points worse; int8 was not measured here.
    section = speed_section(report, {"pruned_int8": 0.005, "float32": 0.015, "qat_int8": 0.001})
    assert section.startswith("## Speed, as measured on the machine that ran compress\n")
    assert "by the median single-image latency: `float32` (0.0150 ms, accuracy 0.9000)." in section
    assert "| float32 | 0.0150 |" in section and "pruned_int8" not in section
    assert speed_section(report, {"pruned_int8": 0.005}) == ""  # nothing deployable measured


def test_without_a_variant_close_enough_the_card_says_deploy_keras():
    report = compressed({"int8": variant(0.5, 20_000)})
    text = card_markdown(model_card(sources(report)))
    assert "No variant qualifies among the TFLite variants within 1 accuracy point" in text
    assert "deploy the Keras model." in text


def test_a_long_class_list_is_cut_and_says_how_many_more():
    text = card_markdown(model_card(sources(compressed({}), classes=25)))
    assert "| class-19 |" in text and "| class-20 |" not in text
    assert "| … 5 more |  |  |  |" in text


def test_a_shift_that_costs_nothing_is_not_called_a_limitation():
    report = compressed({})
    card_sources = sources(report)
    shift_free = card_sources.evaluated.model_copy(
        update={"corruptions": {"shift": {"1": 0.895, "2": 0.89}}}
    )
    free = CardSources(**{**card_sources.__dict__, "evaluated": shift_free})
    assert "Not invariant to position" not in card_markdown(model_card(free))
    assert "Not invariant to position" in card_markdown(model_card(card_sources))


def test_a_failed_validation_is_said_plainly():
    text = card_markdown(model_card(sources(compressed({}), success=False)))
    assert "Validation (suite.json): FAILED, 4 expectations over 10 rows." in text
