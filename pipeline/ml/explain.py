"""Attribution methods and their faithfulness, for a tf_keras classifier with softmax output.

Every method returns one H×W map per image (channels summed) for the requested classes.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras


def _class_gradients(model: keras.Model, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
    images = tf.convert_to_tensor(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(images)
        picked = tf.gather(model(images, training=False), classes, axis=1, batch_dims=1)
    return tape.gradient(picked, images).numpy()


def vanilla_gradients(model: keras.Model, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """|d p(class) / d pixel| (Simonyan et al. 2014)."""
    return np.abs(_class_gradients(model, x, classes)).sum(axis=-1)


def smoothgrad(
    model: keras.Model,
    x: np.ndarray,
    classes: np.ndarray,
    samples: int = 25,
    sigma: float = 0.15,
    seed: int = 0,
) -> np.ndarray:
    """Mean absolute gradient over noisy copies of the input (Smilkov et al. 2017)."""
    rng = np.random.default_rng(seed)
    total = np.zeros(x.shape[:3], np.float64)
    for _ in range(samples):
        noisy = x + rng.normal(0.0, sigma, x.shape).astype(np.float32)
        total += np.abs(_class_gradients(model, noisy, classes)).sum(axis=-1)
    return (total / samples).astype(np.float32)


def integrated_gradients(
    model: keras.Model,
    x: np.ndarray,
    classes: np.ndarray,
    baseline: np.ndarray | None = None,
    steps: int = 64,
    bound: float | None = None,
    max_steps: int = 4096,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integrated Gradients (Sundararajan et al. 2017), trapezoid rule along the straight path
    from `baseline` (black by default). With `bound`, the steps of each image whose completeness
    error exceeds it are doubled (the new points are the old intervals' midpoints, so no gradient
    is computed twice) until it holds or `max_steps` is reached. Returns (per-pixel attributions
    with sign, the completeness error |sum(attr) - (f(x) - f(baseline))| / |f(x) - f(baseline)|
    per image, the steps each image took)."""
    baseline = np.zeros_like(x) if baseline is None else baseline

    def gradients(alphas: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        start, path = baseline[chosen], x[chosen] - baseline[chosen]
        return np.stack(
            [_class_gradients(model, start + a * path, classes[chosen]) for a in alphas]
        )

    def score(images: np.ndarray) -> np.ndarray:
        return model(images, training=False).numpy()[np.arange(len(images)), classes]

    everyone = np.arange(len(x))
    grads = gradients(np.linspace(0.0, 1.0, steps + 1, dtype=np.float32), everyone)
    average = (grads[:-1] + grads[1:]).mean(axis=0) / 2.0  # the trapezoid rule's mean gradient
    delta = score(x) - score(baseline)
    used = np.full(len(x), steps)

    def completeness(chosen: np.ndarray) -> np.ndarray:
        total = ((x[chosen] - baseline[chosen]) * average[chosen]).reshape(len(chosen), -1)
        return np.abs(total.sum(axis=1) - delta[chosen]) / np.maximum(np.abs(delta[chosen]), 1e-12)

    error = completeness(everyone)
    while bound is not None and steps < max_steps:
        # The images still above the bound have all taken `steps` so far.
        todo = np.flatnonzero(error > bound)
        if not todo.size:
            break
        midpoints = ((np.arange(steps) + 0.5) / steps).astype(np.float32)
        average[todo] = average[todo] / 2.0 + gradients(midpoints, todo).sum(axis=0) / (2 * steps)
        steps *= 2
        used[todo] = steps
        error[todo] = completeness(todo)
    attributions = ((x - baseline) * average).sum(axis=-1)
    return attributions, error, used


def grad_cam(model: keras.Model, x: np.ndarray, classes: np.ndarray, layer: str) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) on a convolutional layer's output, ReLU'd and upsampled
    bilinearly to the input's H×W.

    As in the paper, the gradient is of the class score before the softmax: the probability's
    gradient vanishes on confident predictions and mixes in the other classes' scores."""
    head = model.layers[-1]  # Dense with softmax: every classifier here ends in one
    inner = keras.Model(model.input, [model.get_layer(layer).output, head.input])
    with tf.GradientTape() as tape:
        maps, features = inner(tf.convert_to_tensor(x, tf.float32), training=False)
        logits = tf.matmul(features, head.kernel) + head.bias
        picked = tf.gather(logits, classes, axis=1, batch_dims=1)
    grads = tape.gradient(picked, maps)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1, keepdims=True))
    return tf.image.resize(cam, x.shape[1:3], method="bilinear").numpy()[..., 0]


def occlusion(model: keras.Model, x: np.ndarray, classes: np.ndarray, patch: int = 2) -> np.ndarray:
    """Drop in the class probability when a patch×patch square is set to 0, per position
    (Zeiler & Fergus 2014); each pixel gets the mean drop of the patches covering it."""
    n, height, width = x.shape[:3]
    base = model(x, training=False).numpy()[np.arange(n), classes]
    heat = np.zeros((n, height, width), np.float64)
    cover = np.zeros((height, width), np.float64)
    for top in range(height - patch + 1):
        for left in range(width - patch + 1):
            hidden = x.copy()
            hidden[:, top : top + patch, left : left + patch] = 0.0
            drop = base - model(hidden, training=False).numpy()[np.arange(n), classes]
            heat[:, top : top + patch, left : left + patch] += drop[:, None, None]
            cover[top : top + patch, left : left + patch] += 1
    return (heat / cover).astype(np.float32)


def deletion_curve(
    model: keras.Model,
    x: np.ndarray,
    classes: np.ndarray,
    attributions: np.ndarray,
    steps: int = 16,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Delete pixels (set to 0) in order of decreasing attribution and track the true-class
    probability (Petsiuk et al. 2018). Returns (curve: images × steps+1, area under it per image,
    trapezoid over the deleted fraction). Lower area = more faithful.

    Tied attributions (a ReLU'd Grad-CAM's zeros, say) are deleted in a random order, not
    top-left first: on centred digits that would favour or penalise a method by accident."""
    n, height, width = x.shape[:3]
    tiebreak = np.random.default_rng(seed).random((n, height * width))
    order = np.lexsort((tiebreak, -attributions.reshape(n, -1)), axis=-1)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    curve = np.zeros((n, steps + 1), np.float64)
    flat = x.reshape(n, height * width, -1).copy()
    for s, fraction in enumerate(fractions):
        k = round(fraction * height * width)
        deleted = flat.copy()
        np.put_along_axis(deleted, order[:, :k, None], 0.0, axis=1)
        probabilities = model(deleted.reshape(x.shape), training=False).numpy()
        curve[:, s] = probabilities[np.arange(n), classes]
    area = ((curve[:, :-1] + curve[:, 1:]) / 2.0).sum(axis=1) / steps
    return curve, area


def grad_cam_layer(model: keras.Model) -> str | None:
    """The layer Grad-CAM explains: the last convolution's output after its batch norm and
    activation (before pooling); None for a model without convolutions."""
    layers = model.layers
    convs = [i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.Conv2D)]
    if not convs:
        return None
    index = convs[-1]
    while index + 1 < len(layers) and isinstance(
        layers[index + 1], (keras.layers.BatchNormalization, keras.layers.Activation)
    ):
        index += 1
    return layers[index].name
