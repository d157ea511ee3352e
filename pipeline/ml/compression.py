"""Model compression with tensorflow-model-optimization, and conversion to TFLite.

Pure functions: a float tf_keras classifier and arrays in, compressed models and numbers out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras import (
    quantize_aware_activation,
)
from tensorflow_model_optimization.python.core.quantization.keras import (
    utils as quantize_utils,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_layout_transform as default_layout,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_transforms as default_transforms,
)
from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import (
    model_transformer,
)

from pipeline.core.cli import first_line
from pipeline.core.params import CompressParams, OptimizerParams, TrainCommon
from pipeline.ml.training import (
    compile_classifier,
    encode_labels,
    epochs_within,
    make_deterministic,
)

Quantization = Literal["none", "dynamic", "int8"]
# Layers whose kernels pruning acts on (and whose sparsity is measured).
PRUNABLE = (keras.layers.Dense, keras.layers.Conv2D, keras.layers.LSTM)


@dataclass
class Variant:
    """One compressed form of a model: a TFLite flatbuffer, or the reason it could not be made."""

    name: str
    description: str
    tflite: bytes | None = None
    source: keras.Model | None = None  # the Keras model it was converted from
    unsupported: str | None = None


def clone(model: keras.Model) -> keras.Model:
    """A copy with the same weights: tfmot's wrappers reuse a model's layers in place."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def to_tflite(
    model: keras.Model, quantization: Quantization, representative: np.ndarray | None = None
) -> bytes:
    """Convert with TFLite: float, dynamic-range (int8 weights), or full int8 with int8 I/O."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "int8":
        if representative is not None:
            converter.representative_dataset = lambda: ([x[None]] for x in representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def fine_tune_epochs(
    kind: Literal["prune", "qat"], epochs: int, max_steps: int, images: int, common: TrainCommon
) -> int:
    """`epochs` of fine-tuning, or as many as the step budget allows on `images` images."""
    allowed = epochs_within(epochs, max_steps, steps_per_epoch(images, common))
    if allowed < epochs:
        print(
            f"compress: {kind}: {allowed} epochs of {epochs}: {kind}_max_steps {max_steps} reached"
        )
    return allowed


def steps_per_epoch(images: int, common: TrainCommon) -> int:
    return int(np.ceil(images / common.batch_size))


def _fine_tune(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    epochs: int,
    learning_rate: float,
    common: TrainCommon,
    num_classes: int,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> None:
    """A fixed number of epochs, no early stopping: a pruning schedule must run to its end."""
    compile_classifier(model, OptimizerParams(name="adam", learning_rate=learning_rate), common)
    model.fit(
        train[0],
        encode_labels(train[1], common, num_classes),
        epochs=epochs,
        batch_size=common.batch_size,
        shuffle=True,
        callbacks=callbacks or [],
        verbose=0,
    )


def prune(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    p: CompressParams,
    common: TrainCommon,
    num_classes: int,
) -> keras.Model:
    """Magnitude pruning to p.target_sparsity along a polynomial schedule, then strip_pruning."""
    epochs = fine_tune_epochs("prune", p.prune_epochs, p.prune_max_steps, len(train[0]), common)
    steps = steps_per_epoch(len(train[0]), common) * epochs
    # The schedule only reaches its final sparsity when its span is a multiple of the frequency.
    end_step = max(
        p.prune_frequency,
        int(steps * p.prune_ramp_fraction) // p.prune_frequency * p.prune_frequency,
    )
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=p.target_sparsity,
        begin_step=0,
        end_step=end_step,
        frequency=p.prune_frequency,
    )
    pruned = tfmot.sparsity.keras.prune_low_magnitude(clone(model), pruning_schedule=schedule)
    _fine_tune(
        pruned,
        train,
        epochs,
        p.prune_learning_rate,
        common,
        num_classes,
        [tfmot.sparsity.keras.UpdatePruningStep()],
    )
    return tfmot.sparsity.keras.strip_pruning(pruned)


def quantization_aware(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    p: CompressParams,
    common: TrainCommon,
    num_classes: int,
    preserve_sparsity: bool = False,
) -> keras.Model:
    """QAT fine-tuning; with preserve_sparsity, tfmot's pruning-preserving scheme keeps the
    pruned zeros through quantization (collaborative optimization)."""
    quantize = tfmot.quantization.keras
    scheme = PrunePreserveScheme() if preserve_sparsity else Default8BitScheme()
    qat = quantize.quantize_apply(quantize.quantize_annotate_model(clone(model)), scheme)
    epochs = fine_tune_epochs("qat", p.qat_epochs, p.qat_max_steps, len(train[0]), common)
    _fine_tune(qat, train, epochs, p.qat_learning_rate, common, num_classes)
    return qat


class _WeightsQuantizedBeforeReLU:
    """tfmot 0.8 keeps fake-quant out from between a Dense or Conv2D and the ReLU layer after
    it by giving the layer a no-op quantize config, which also drops its weight quantizer: QAT
    then trained those kernels in float (and, pruning-preserving, without their sparsity mask:
    0.05 of the CNN's and 0.08 of the FNN's pruned zeros survived). Here the layer's own
    activation becomes a no-op instead, as tfmot does for Dense + BatchNorm, so its weights
    keep the scheme's quantizer and only its output goes unquantized."""

    def replacement(self, match_layer: Any) -> Any:
        layer = match_layer.input_layers[0]
        if layer.layer["class_name"] == "Add" or layer.metadata.get("quantize_config"):
            return super().replacement(match_layer)  # type: ignore[misc]
        layer.layer["config"]["activation"] = quantize_utils.serialize_activation(
            quantize_aware_activation.NoOpActivation(), use_legacy_format=True
        )
        return match_layer


class _ReLULayer(_WeightsQuantizedBeforeReLU, default_transforms.LayerReLUQuantize):
    pass


class _ReLUActivation(_WeightsQuantizedBeforeReLU, default_transforms.LayerReluActivationQuantize):
    pass


class _LayoutTransform(default_layout.Default8BitQuantizeLayoutTransform):
    """tfmot's default 8-bit layout (its own list, in its order) with the two ReLU transforms
    above in place of its own."""

    def apply(self, model: keras.Model, layer_quantize_map: dict[str, Any]) -> Any:
        t = default_transforms
        transforms = [
            t.InputLayerQuantize(),
            t.SeparableConv1DQuantize(),
            t.SeparableConvQuantize(),
            t.Conv2DReshapeBatchNormReLUQuantize(),
            t.Conv2DReshapeBatchNormActivationQuantize(),
            t.Conv2DBatchNormReLUQuantize(),
            t.Conv2DBatchNormActivationQuantize(),
            t.Conv2DReshapeBatchNormQuantize(),
            t.Conv2DBatchNormQuantize(),
            t.ConcatTransform6Inputs(),
            t.ConcatTransform5Inputs(),
            t.ConcatTransform4Inputs(),
            t.ConcatTransform3Inputs(),
            t.ConcatTransform(),
            t.DenseBatchNormQuantize(),
            t.DenseBatchNormReLUQuantize(),
            t.DenseBatchNormActivationQuantize(),
            _ReLULayer(),
            _ReLUActivation(),
        ]
        return model_transformer.ModelTransformer(
            model, transforms, set(layer_quantize_map), layer_quantize_map
        ).transform()


class Default8BitScheme(tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme):
    def get_layout_transformer(self) -> _LayoutTransform:
        return _LayoutTransform()


class PrunePreserveScheme(tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme):
    def get_layout_transformer(self) -> _LayoutTransform:
        return _LayoutTransform()


def fold_batch_norm(model: keras.Model, plain: keras.Model) -> keras.Model:
    """`plain` (the same architecture built without batch norm, with biases) given the weights
    of `model` with each batch norm folded into the layer before it: kernel * gamma/sigma,
    bias = beta - mean * gamma/sigma. Same function at inference; zeros stay zeros."""
    names = {layer.name for layer in model.layers}
    for layer in plain.layers:
        if not layer.weights:
            continue
        source = model.get_layer(layer.name)
        norm_name = f"{layer.name.rsplit('_', 1)[0]}_bn"  # e.g. conv0_conv -> conv0_bn
        if norm_name not in names:
            layer.set_weights(source.get_weights())
            continue
        norm = model.get_layer(norm_name)
        gamma, beta, mean, variance = norm.get_weights()
        scale = gamma / np.sqrt(variance + norm.epsilon)
        layer.set_weights([source.get_weights()[0] * scale, beta - mean * scale])
    return plain


def has_batch_norm(model: keras.Model) -> bool:
    return any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


def weight_sparsity(model: keras.Model) -> float:
    """Share of exact zeros among the kernels of Dense, Conv2D and LSTM layers."""
    zeros = total = 0
    for layer in _leaf_layers(model):
        inner = getattr(layer, "layer", layer)  # QAT wraps layers
        if not isinstance(inner, PRUNABLE):
            continue
        for weight in layer.weights:
            # kernel, recurrent_kernel; not a QAT wrapper's kernel_min or kernel_max
            if weight.name.split("/")[-1].split(":")[0].endswith("kernel"):
                values = weight.numpy()
                zeros += int((values == 0).sum())
                total += values.size
    return zeros / total if total else 0.0


def _leaf_layers(model: keras.Model) -> list[keras.layers.Layer]:
    leaves = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Bidirectional):
            leaves += [layer.forward_layer, layer.backward_layer]
        elif isinstance(layer, keras.Model):
            leaves += _leaf_layers(layer)
        else:
            leaves.append(layer)
    return leaves


def attempt(name: str, description: str, make: Callable[[], tuple[bytes, keras.Model]]) -> Variant:
    """Build a variant; an architecture tfmot or the converter does not support is recorded
    with the library's own reason instead of failing the stage."""
    try:
        tflite, source = make()
    except Exception as error:  # tfmot/TFLite raise many types for "unsupported"
        return Variant(name, description, unsupported=first_line(error))
    return Variant(name, description, tflite=tflite, source=source)


def make_variants(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    p: CompressParams,
    common: TrainCommon,
    num_classes: int,
    seed: int,
    build_plain: Callable[[], keras.Model] | None = None,
) -> list[Variant]:
    """Every compressed form of `model`; unsupported ones carry their reason.

    `build_plain` builds the same architecture without batch norm: both QAT variants start
    from the batch-norm-folded model (pruned or not), because with unfolded batch norm QAT
    fake-quantizes kernels the converter then folds and requantizes (CNN on digits: 0.992 in
    Keras, 0.950 in TFLite; folded first: 0.986 in both)."""
    rng = np.random.default_rng(seed)
    representative = train[0][
        rng.choice(len(train[0]), min(p.representative_samples, len(train[0])), replace=False)
    ]
    make_deterministic(seed)
    variants = [
        attempt(
            "float32", "float32 TFLite (the reference)", lambda: (to_tflite(model, "none"), model)
        ),
        attempt(
            "dynamic_range",
            "post-training dynamic-range quantization (int8 weights)",
            lambda: (to_tflite(model, "dynamic"), model),
        ),
        attempt(
            "int8",
            "post-training full-integer quantization, int8 in/out",
            lambda: (to_tflite(model, "int8", representative), model),
        ),
    ]
    pruning_error = ""
    try:
        pruned: keras.Model | None = prune(model, train, p, common, num_classes)
    except Exception as error:  # an architecture tfmot cannot prune: its variants say why
        pruned, pruning_error = None, first_line(error)

    def on_pruned(
        make: Callable[[keras.Model], tuple[bytes, keras.Model]],
    ) -> Callable[[], tuple[bytes, keras.Model]]:
        def run() -> tuple[bytes, keras.Model]:
            if pruned is None:
                raise RuntimeError(f"pruning failed: {pruning_error}")
            return make(pruned)

        return run

    def fold(m: keras.Model) -> keras.Model:
        if build_plain is None or not has_batch_norm(m):
            return m
        return fold_batch_norm(m, build_plain())

    variants += [
        attempt(
            "pruned",
            f"pruned to {p.target_sparsity:.0%} sparsity, float TFLite",
            on_pruned(lambda m: (to_tflite(m, "none"), m)),
        ),
        attempt(
            "pruned_int8",
            "pruned, then full-integer int8 (smallest deployable)",
            on_pruned(lambda m: (to_tflite(m, "int8", representative), m)),
        ),
    ]
    make_deterministic(seed)
    variants.append(
        attempt(
            "qat_int8",
            "quantization-aware training, int8 TFLite; batch norm folded first where present",
            lambda: _qat(fold(model), train, p, common, num_classes, representative, False),
        )
    )
    make_deterministic(seed)
    variants.append(
        attempt(
            "pruned_qat_int8",
            "pruning-preserving QAT (collaborative optimization), int8 TFLite; batch norm folded "
            "first where present",
            on_pruned(lambda m: _qat(fold(m), train, p, common, num_classes, representative, True)),
        )
    )
    return variants


def _qat(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    p: CompressParams,
    common: TrainCommon,
    num_classes: int,
    representative: np.ndarray,
    preserve_sparsity: bool,
) -> tuple[bytes, keras.Model]:
    qat = quantization_aware(model, train, p, common, num_classes, preserve_sparsity)
    return to_tflite(qat, "int8", representative), qat
