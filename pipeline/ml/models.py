"""Model architectures, built from params. Each is a short function over tf_keras layers.

Every classifier takes images H×W×C (C 1 or 3) in [0, 1] and returns class probabilities
(softmax), so the later stages (compress, evaluate, serving) treat all families alike.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tf_keras as keras

from pipeline.core.params import (
    CNNParams,
    FNNParams,
    GanParams,
    LayerParams,
    LSTMParams,
    OptimizerParams,
    TrainParams,
)


def _regularizer(p: LayerParams) -> keras.regularizers.Regularizer | None:
    return keras.regularizers.L2(p.l2) if p.l2 else None


def dense_block(x: keras.KerasTensor, units: int, p: LayerParams, name: str) -> keras.KerasTensor:
    """Dense -> [batch norm] -> activation -> [dropout]."""
    x = keras.layers.Dense(
        units,
        kernel_initializer=p.initializer,
        kernel_regularizer=_regularizer(p),
        use_bias=not p.batch_norm,  # batch norm's own shift makes a bias redundant
        name=f"{name}_dense",
    )(x)
    if p.batch_norm:
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    x = keras.layers.Activation(p.activation, name=f"{name}_act")(x)
    if p.dropout:
        x = keras.layers.Dropout(p.dropout, name=f"{name}_dropout")(x)
    return x


def conv_block(x: keras.KerasTensor, filters: int, p: CNNParams, name: str) -> keras.KerasTensor:
    """Conv -> [batch norm] -> activation -> 2×2 max-pool (while the map is at least 4×4)."""
    x = keras.layers.Conv2D(
        filters,
        p.kernel_size,
        padding="same",
        kernel_initializer=p.initializer,
        kernel_regularizer=_regularizer(p),
        use_bias=not p.batch_norm,
        name=f"{name}_conv",
    )(x)
    if p.batch_norm:
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    x = keras.layers.Activation(p.activation, name=f"{name}_act")(x)
    if x.shape[1] >= 4 and x.shape[2] >= 4:
        x = keras.layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    return x


def _classifier_head(x: keras.KerasTensor, num_classes: int) -> keras.KerasTensor:
    # float32 even under mixed precision: a float16 softmax loses the small probabilities.
    return keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="probabilities"
    )(x)


def build_fnn(p: FNNParams, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Flatten(name="flatten")(inputs)
    for i, units in enumerate(p.hidden_units):
        x = dense_block(x, units, p, f"hidden{i}")
    return keras.Model(inputs, _classifier_head(x, num_classes), name="fnn")


def build_cnn(p: CNNParams, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for i, filters in enumerate(p.filters):
        x = conv_block(x, filters, p, f"conv{i}")
    # The last conv block's output is the feature map Grad-CAM explains.
    x = keras.layers.Flatten(name="flatten")(x)
    if p.dropout:
        x = keras.layers.Dropout(p.dropout, name="features_dropout")(x)
    for i, units in enumerate(p.dense_units):
        x = dense_block(x, units, p, f"head{i}")
    return keras.Model(inputs, _classifier_head(x, num_classes), name="cnn")


def build_lstm(p: LSTMParams, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    height, width, channels = input_shape
    inputs = keras.Input(input_shape, name="image")
    # A sequence of image rows: each row a step of W·C features.
    x = keras.layers.Reshape((height, width * channels), name="rows")(inputs)
    for i, units in enumerate(p.units):
        last = i == len(p.units) - 1
        lstm = keras.layers.LSTM(
            units,
            return_sequences=not last,
            unroll=p.unroll,
            kernel_initializer=p.initializer,
            kernel_regularizer=_regularizer(p),
            name=f"lstm{i}",
        )
        x = keras.layers.Bidirectional(lstm, name=f"bilstm{i}")(x) if p.bidirectional else lstm(x)
        if p.dropout:
            x = keras.layers.Dropout(p.dropout, name=f"lstm{i}_dropout")(x)
    for i, units in enumerate(p.dense_units):
        x = dense_block(x, units, p, f"head{i}")
    return keras.Model(inputs, _classifier_head(x, num_classes), name="lstm")


BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "fnn": build_fnn,
    "cnn": build_cnn,
    "lstm": build_lstm,
}


def build_classifier(
    name: str, train: TrainParams, input_shape: tuple[int, ...], num_classes: int
) -> keras.Model:
    return BUILDERS[name](train.model(name), input_shape, num_classes)


def build_optimizer(p: OptimizerParams) -> keras.optimizers.Optimizer:
    if p.name == "sgd":
        return keras.optimizers.SGD(learning_rate=p.learning_rate, momentum=p.momentum)
    if p.name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=p.learning_rate, momentum=p.momentum)
    return keras.optimizers.Adam(learning_rate=p.learning_rate)


def build_generator(p: GanParams, image_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Conditional DCGAN generator: (latent vector, label) -> image in [0, 1].

    The label's learned embedding is concatenated to the latent vector; each transposed
    convolution doubles the map, from a seed map of ceil(side / 2**upsamplings), and the last
    map is cropped (centred) to the image size when the doubling overshoots it.
    """
    height, width, channels = image_shape
    factor = 2 ** len(p.generator_widths)
    seed_h, seed_w = -(-height // factor), -(-width // factor)
    latent = keras.Input((p.latent_dim,), name="latent")
    label = keras.Input((), dtype="int32", name="label")
    embedded = keras.layers.Flatten(name="label_flat")(
        keras.layers.Embedding(num_classes, p.latent_dim, name="label_embedding")(label)
    )
    x = keras.layers.Concatenate(name="conditioned")([latent, embedded])
    start = (seed_h, seed_w, p.generator_widths[0])
    x = keras.layers.Dense(int(np.prod(start)), use_bias=False, name="project")(x)
    x = keras.layers.BatchNormalization(name="project_bn")(x)
    x = keras.layers.LeakyReLU(0.2, name="project_act")(x)
    x = keras.layers.Reshape(start, name="seed_map")(x)
    for i, filters in enumerate(p.generator_widths[1:]):
        x = keras.layers.Conv2DTranspose(
            filters, 4, strides=2, padding="same", use_bias=False, name=f"up{i}"
        )(x)
        x = keras.layers.BatchNormalization(name=f"up{i}_bn")(x)
        x = keras.layers.LeakyReLU(0.2, name=f"up{i}_act")(x)
    image = keras.layers.Conv2DTranspose(
        channels, 4, strides=2, padding="same", activation="sigmoid", name="image"
    )(x)
    extra_h, extra_w = seed_h * factor - height, seed_w * factor - width
    if extra_h or extra_w:
        crop = ((extra_h // 2, extra_h - extra_h // 2), (extra_w // 2, extra_w - extra_w // 2))
        image = keras.layers.Cropping2D(crop, name="crop")(image)
    return keras.Model([latent, label], image, name="generator")


def build_discriminator(
    p: GanParams, image_shape: tuple[int, ...], num_classes: int
) -> keras.Model:
    """Conditional discriminator: (image, label) -> real/fake logit.

    The label enters as an extra image channel (a learned H×W map per class)."""
    height, width, _ = image_shape
    image = keras.Input(image_shape, name="image")
    label = keras.Input((), dtype="int32", name="label")
    label_map = keras.layers.Embedding(num_classes, height * width, name="label_embedding")(label)
    label_map = keras.layers.Reshape((height, width, 1), name="label_map")(label_map)
    x = keras.layers.Concatenate(name="conditioned")([image, label_map])
    for i, filters in enumerate(p.discriminator_widths):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", name=f"down{i}")(x)
        x = keras.layers.LeakyReLU(0.2, name=f"down{i}_act")(x)
        if p.discriminator_dropout:
            x = keras.layers.Dropout(p.discriminator_dropout, name=f"down{i}_dropout")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    logit = keras.layers.Dense(1, name="logit")(x)
    return keras.Model([image, label], logit, name="discriminator")
