"""Compression on small real models (digits), through the real LiteRT interpreter."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pytest

from pipeline.core.outputs import CompressReport
from pipeline.core.params import CompressParams, CompressTargets, TrainCommon, parse_params
from pipeline.ml.compression import (
    fine_tune_epochs,
    make_variants,
    prune,
    quantization_aware,
    to_tflite,
    weight_sparsity,
)
from pipeline.ml.compression_report import markdown_table, measure, speed_checks, target_checks
from pipeline.ml.inference import TFLiteModel, tensor_dtypes
from pipeline.ml.models import build_classifier
from pipeline.ml.training import compile_classifier, fit_classifier, make_deterministic
from tests.conftest import PLAIN, PLAIN_LSTM

COMMON = TrainCommon(epochs=3, batch_size=64, early_stopping_patience=3)


def trained(name: str, digits_prepared, **block):
    params = parse_params({"train": {name: block}})
    make_deterministic(0)
    model = build_classifier(name, params.train, (8, 8, 1), 10)
    compile_classifier(model, params.train.model(name).optimizer, COMMON)
    fit_classifier(model, digits_prepared["train"], digits_prepared["val"], COMMON, 10, verbose=0)
    return model


@pytest.fixture(scope="module")
def small_cnn(request):
    digits = request.getfixturevalue("digits_prepared")
    return trained("cnn", digits, **PLAIN, filters=[8, 16], dense_units=[32]), digits


@pytest.fixture(scope="module")
def digits_prepared():
    from pipeline.data.sources import load_digits, scale_pixels
    from tests.conftest import make_prepared

    raw = load_digits()
    return make_prepared(scale_pixels(raw.x, raw.pixel_max), raw.y, seed=42)


@pytest.mark.parametrize("target", [0.5, 0.8])
def test_pruned_sparsity_is_within_one_percent_of_target(small_cnn, target):
    model, digits = small_cnn
    p = CompressParams(target_sparsity=target, prune_epochs=2, prune_frequency=5)
    pruned = prune(model, digits["train"], p, COMMON, 10)
    assert abs(weight_sparsity(pruned) - target) <= 0.01
    assert weight_sparsity(model) < 0.01  # the original is untouched (tfmot prunes in place)


def test_step_budgets_cap_fine_tuning_epochs_so_cost_stops_growing_with_the_data():
    p, common = CompressParams(), TrainCommon()  # the defaults: batches of 32
    budgets: list[tuple[Literal["prune", "qat"], int, int]] = [
        ("prune", p.prune_epochs, p.prune_max_steps),
        ("qat", p.qat_epochs, p.qat_max_steps),
    ]
    # The digits' train split (40 batches an epoch) and mnist_5k's (110) fit whole; the
    # 42,000 train images of a 60,000-image set (1,313 batches) get 3 and 1 epochs.
    assert [fine_tune_epochs(*b, 1257, common) for b in budgets] == [30, 10]
    assert [fine_tune_epochs(*b, 3500, common) for b in budgets] == [30, 10]
    assert [fine_tune_epochs(*b, 42_000, common) for b in budgets] == [3, 1]
    assert fine_tune_epochs("qat", 10, 2000, 10**7, common) == 1  # at least one epoch


def test_a_pruning_schedule_cut_short_by_its_budget_still_reaches_the_target(small_cnn, capsys):
    model, digits = small_cnn
    per_epoch = -(-len(digits["train"][1]) // COMMON.batch_size)
    # Room for two of six epochs: the schedule must span the two, or sparsity falls short.
    p = CompressParams(prune_epochs=6, prune_max_steps=2 * per_epoch + 1, prune_frequency=5)
    pruned = prune(model, digits["train"], p, COMMON, 10)
    assert f"compress: prune: 2 epochs of 6: prune_max_steps {2 * per_epoch + 1} reached" in (
        capsys.readouterr().out
    )
    assert abs(weight_sparsity(pruned) - p.target_sparsity) <= 0.01


def test_int8_model_tensors_really_are_int8(small_cnn):
    model, digits = small_cnn
    content = to_tflite(model, "int8", digits["train"][0][:50])
    dtypes = tensor_dtypes(content)
    assert dtypes["input"] == ["int8"] and dtypes["output"] == ["int8"]
    assert "int8" in dtypes["weights"] and "float32" not in dtypes["weights"]
    assert tensor_dtypes(to_tflite(model, "none"))["weights"] == ["float32"]


def test_interpreter_accuracy_matches_keras_for_the_same_model(small_cnn):
    model, digits = small_cnn
    x, y = digits["test"]
    keras_probs = model.predict(x, verbose=0)
    tflite_probs = TFLiteModel(to_tflite(model, "none")).predict(x, batch=64)
    np.testing.assert_allclose(tflite_probs, keras_probs, atol=1e-4)
    assert np.mean(tflite_probs.argmax(1) == y) == np.mean(keras_probs.argmax(1) == y)
    # int8 through the interpreter (quantized I/O handled) stays close to float.
    int8 = TFLiteModel(to_tflite(model, "int8", digits["train"][0][:200])).predict(x)
    assert abs(np.mean(int8.argmax(1) == y) - np.mean(keras_probs.argmax(1) == y)) < 0.03


def test_unsupported_architecture_is_reported_not_fatal(digits_prepared, tmp_path):
    lstm = trained("lstm", digits_prepared, **PLAIN_LSTM, units=[32], dense_units=[])
    p = CompressParams(
        prune_epochs=1, prune_frequency=5, qat_epochs=1, representative_samples=20, latency_runs=10
    )
    variants = make_variants(lstm, digits_prepared["train"], p, COMMON, 10, seed=0)
    by_name = {v.name: v for v in variants}
    assert by_name["qat_int8"].unsupported and "not supported" in by_name["qat_int8"].unsupported
    assert by_name["float32"].tflite and by_name["int8"].tflite and by_name["pruned_int8"].tflite
    lstm.save(tmp_path / "model.keras")
    report, speed = measure(
        variants, lstm, tmp_path / "model.keras", digits_prepared["test"], 10, 16
    )
    assert "qat_int8" not in speed["variants"] and speed["variants"]["int8"]["latency_ms_median"]
    assert report["variants"]["qat_int8"] == {
        "supported": False,
        "description": by_name["qat_int8"].description,
        "reason": by_name["qat_int8"].unsupported,
    }
    variants_report = report["variants"]
    assert (
        variants_report["float32"]["accuracy"]
        == variants_report["float32"]["source_keras_accuracy"]
    )
    assert abs(variants_report["int8"]["accuracy"] - variants_report["float32"]["accuracy"]) < 0.1
    targets = target_checks(report, p.target_sparsity, CompressTargets())
    assert "qat_int8_loss_points_vs_float_tflite" not in targets
    typed = CompressReport.model_validate({**report, "targets": targets})
    assert "| qat_int8 | unsupported: RuntimeError: " in markdown_table("lstm", typed)


def test_batch_norm_folding_keeps_the_function_and_the_zeros(digits_prepared):
    from pipeline.ml.compression import fold_batch_norm, has_batch_norm

    block = {**PLAIN, "filters": [8, 16], "dense_units": [32], "batch_norm": True}
    model = trained("cnn", digits_prepared, **block)
    pruned = prune(
        model,
        digits_prepared["train"],
        CompressParams(target_sparsity=0.5, prune_epochs=1, prune_frequency=5),
        COMMON,
        10,
    )
    plain_params = parse_params({"train": {"cnn": {**block, "batch_norm": False}}}).train
    folded = fold_batch_norm(pruned, build_classifier("cnn", plain_params, (8, 8, 1), 10))
    assert has_batch_norm(pruned) and not has_batch_norm(folded)
    x = digits_prepared["test"][0]
    np.testing.assert_allclose(
        folded.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-5
    )
    assert abs(weight_sparsity(folded) - weight_sparsity(pruned)) < 1e-6


def quantized_kernels(model) -> set[str]:
    """Names of the wrapped layers whose kernel QAT fake-quantizes (it gets a trained range)."""
    return {
        layer.name
        for layer in model.layers
        if any(w.name.endswith("kernel_min:0") for w in layer.weights)
    }


def test_qat_fake_quantizes_the_kernel_of_every_layer_before_a_relu(small_cnn):
    model, digits = small_cnn
    qat = quantization_aware(model, digits["train"], CompressParams(qat_epochs=1), COMMON, 10)
    kernels = [layer.name for layer in model.layers if layer.name.endswith(("_conv", "_dense"))]
    assert len(kernels) == 3  # two conv blocks and a dense block, each followed by a ReLU
    assert quantized_kernels(qat) >= {f"quant_{name}" for name in [*kernels, "probabilities"]}


def test_pruning_preserving_qat_keeps_every_pruned_zero_through_to_the_int8_file(small_cnn):
    model, digits = small_cnn
    p = CompressParams(target_sparsity=0.8, prune_epochs=2, prune_frequency=5, qat_epochs=2)
    pruned = prune(model, digits["train"], p, COMMON, 10)
    qat = quantization_aware(pruned, digits["train"], p, COMMON, 10, preserve_sparsity=True)
    for layer in pruned.layers:
        if layer.name.endswith(("_conv", "_dense")) or layer.name == "probabilities":
            zeros = layer.get_weights()[0] == 0
            assert zeros.mean() > 0.5, layer.name
            wrapper = qat.get_layer(f"quant_{layer.name}")
            (kernel,) = [w.numpy() for w in wrapper.weights if w.name == f"{layer.name}/kernel:0"]
            assert (kernel[zeros] == 0).all(), f"{layer.name}: pruned zeros moved in QAT"
    # The wrappers' kernel ranges are not kernels: the measured sparsity is the pruned one.
    assert weight_sparsity(qat) == pytest.approx(weight_sparsity(pruned), abs=1e-3)
    flatbuffer = to_tflite(qat, "int8", digits["train"][0][:50])
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    weights = [  # each matmul's and convolution's second input is its kernel
        interpreter.get_tensor(op["inputs"][1])
        for op in interpreter._get_ops_details()
        if op["op_name"] in ("FULLY_CONNECTED", "CONV_2D")
    ]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    assert len(weights) == 4 and zeros >= 0.79


def test_target_checks_flag_what_is_not_met():
    def variant(accuracy, sparsity=0.0, gzip=50_000):
        return {
            "supported": True,
            "accuracy": accuracy,
            "sparsity": sparsity,
            "size_gzip_bytes": gzip,
        }

    report = {
        "keras_float": {"accuracy": 0.99, "size_gzip_bytes": 200_000},
        "variants": {
            "float32": variant(0.99),
            "int8": variant(0.98),
            "pruned": variant(0.985, 0.8),
            "pruned_int8": variant(0.988, 0.8, 20_000),
            "pruned_qat_int8": variant(0.99, 0.07, 34_000),
            "qat_int8": {"supported": False, "reason": "x"},
        },
    }
    checks = target_checks(report, 0.8, CompressTargets())
    assert {k: c.met for k, c in checks.items()} == {
        "pruning_loss_points": True,  # 0.5 points
        "int8_loss_points_vs_float_tflite": False,  # 1.0 point > 0.5
        "pruned_int8_loss_points_vs_float_tflite": True,
        "pruned_qat_int8_loss_points_vs_float_tflite": True,
        "pruned_qat_int8_sparsity": False,  # 0.07, not 0.8
        "gzip_ratio_keras_to_pruned_int8": True,  # 10x
    }
    assert checks["int8_loss_points_vs_float_tflite"].value == pytest.approx(1.0)
    assert checks["int8_loss_points_vs_float_tflite"].variant == "int8"


def test_the_speed_target_is_checked_apart_from_what_every_machine_computes_alike():
    def speed(int8_ms: float) -> dict:
        return {
            "keras_float": {"keras_tf_function": {"latency_ms_median": 1.0}},
            "variants": {"int8": {"latency_ms_median": int8_ms}},
        }

    fast, slow = (
        speed_checks(speed(ms), CompressTargets())["latency_ratio_tf_function_to_int8"]
        for ms in (0.05, 0.5)
    )
    assert (fast.met, fast.value, fast.variant) == (True, pytest.approx(20.0), "int8")
    assert (slow.met, slow.value) == (False, pytest.approx(2.0))
    assert speed_checks({**speed(0.05), "variants": {}}, CompressTargets()) == {}  # no int8


def test_coincident_variants_share_one_label():
    from pipeline.ml.figures import coincident

    points = [
        {"variant": "float32", "size_gzip_kib": 193.5, "accuracy": 0.99},
        {"variant": "keras_float", "size_gzip_kib": 199.0, "accuracy": 0.99},
        {"variant": "int8", "size_gzip_kib": 53.7, "accuracy": 0.99},
        {"variant": "pruned", "size_gzip_kib": 60.0, "accuracy": 0.98},
    ]
    assert list(coincident(points).values()) == [["int8"], ["pruned"], ["float32", "keras_float"]]


def fixed_batch_tflite() -> bytes:
    """A model that converts but cannot run at any batch but 1: it reshapes to a fixed [1, 64]."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 1], tf.float32)])
    def flat(x):
        return tf.nn.softmax(tf.reshape(x, [1, 64])[:, :10])

    converter = tf.lite.TFLiteConverter.from_concrete_functions([flat.get_concrete_function()])
    return converter.convert()


def test_a_variant_that_fails_at_run_time_is_reported_with_its_reason(small_cnn, tmp_path):
    from pipeline.ml.compression import Variant

    model, digits = small_cnn
    model.save(tmp_path / "model.keras")
    broken = Variant("float32", "converted, not runnable", fixed_batch_tflite(), model)
    fine = Variant("int8", "int8", to_tflite(model, "int8", digits["train"][0][:50]), model)
    report, speed = measure([broken, fine], model, tmp_path / "model.keras", digits["test"], 5, 16)
    assert list(speed["variants"]) == ["int8"]  # measured for speed only where it ran
    failed = report["variants"]["float32"]
    assert failed["supported"] is False
    assert failed["reason"].startswith("fails at run time in LiteRT: RuntimeError: ")
    assert "\n" not in failed["reason"]
    assert report["variants"]["int8"]["supported"] is True  # the other variant still measured
    typed = CompressReport.model_validate({**report, "targets": {}})
    assert list(typed.supported) == ["int8"]


class XnnpackRefuses(TFLiteModel):
    """LiteRT as it behaved on a graph XNNPACK could not prepare: the delegate's error, raised
    where LiteRT raises it (building the interpreter, or its first invoke)."""

    def __init__(self, content: bytes, at: str) -> None:
        super().__init__(content, kernels="xnnpack")
        self.at = at

    def _build(self, batch):
        if self.kernels == "xnnpack" and self.at == "build":
            raise RuntimeError("failed to create XNNPACK runtime")
        return super()._build(batch)

    def _invoke(self, x):
        if self.kernels == "xnnpack" and self.at == "invoke":
            raise RuntimeError("Node number 407 (TfLiteXNNPackDelegate) failed to prepare. XNNPACK")
        return super()._invoke(x)


@pytest.mark.parametrize("at", ["build", "invoke"])
def test_when_xnnpack_refuses_a_graph_litert_runs_it_on_builtin_kernels(small_cnn, at):
    model, digits = small_cnn
    content = to_tflite(model, "int8", digits["train"][0][:50])
    x = digits["test"][0]
    reference = TFLiteModel(content, kernels="xnnpack")
    expected = reference.predict(x)
    assert reference.kernels == "xnnpack"
    refused = XnnpackRefuses(content, at)
    np.testing.assert_allclose(refused.predict(x), expected, atol=0.02)  # int8 kernels may round
    assert refused.kernels == "builtin"


def test_other_litert_errors_are_not_taken_for_xnnpack_ones(small_cnn):
    model, _ = small_cnn

    class Broken(TFLiteModel):
        def _invoke(self, x):
            raise RuntimeError("tensor 3 is not allocated")

    broken = Broken(to_tflite(model, "none"), kernels="xnnpack")
    with pytest.raises(RuntimeError, match="not allocated"):
        broken.predict(np.zeros((4, 8, 8, 1), np.float32))
    assert broken.kernels == "xnnpack"
