import numpy as np
import pytest
import tf_keras as keras

from pipeline.core.params import OptimizerParams, TrainParams, parse_params
from pipeline.ml.models import build_classifier, build_optimizer


def train_params(**blocks) -> TrainParams:
    return parse_params({"train": blocks}).train


@pytest.mark.parametrize("name", ["fnn", "cnn", "lstm"])
@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1)])
def test_every_family_maps_images_to_class_probabilities(name, shape):
    model = build_classifier(name, train_params(), shape, 10)
    assert model.input_shape == (None, *shape)
    out = model(np.random.default_rng(0).random((4, *shape), dtype=np.float32)).numpy()
    assert out.shape == (4, 10)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_fnn_layers_follow_params():
    model = build_classifier(
        "fnn",
        train_params(
            fnn={
                "hidden_units": [16, 8, 4],
                "activation": "gelu",
                "dropout": 0.3,
                "batch_norm": True,
                "l2": 0.01,
                "initializer": "glorot_normal",
            }
        ),
        (8, 8, 1),
        3,
    )
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [16, 8, 4, 3]
    assert all(
        isinstance(layer.kernel_initializer, keras.initializers.GlorotNormal)
        for layer in dense[:-1]
    )
    assert all(layer.kernel_regularizer is not None for layer in dense[:-1])
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) == 3
    assert sum(isinstance(layer, keras.layers.Dropout) for layer in model.layers) == 3
    acts = [layer for layer in model.layers if isinstance(layer, keras.layers.Activation)]
    assert {layer.activation.__name__ for layer in acts} == {"gelu"}


def test_plain_fnn_has_no_optional_layers():
    model = build_classifier(
        "fnn",
        train_params(fnn={"hidden_units": [8], "dropout": 0.0, "batch_norm": False}),
        (8, 8, 1),
        10,
    )
    kinds = {type(layer) for layer in model.layers}
    assert keras.layers.BatchNormalization not in kinds and keras.layers.Dropout not in kinds


def test_cnn_filters_and_pooling():
    model = build_classifier("cnn", train_params(cnn={"filters": [4, 8, 16]}), (28, 28, 1), 10)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [4, 8, 16]
    # 28 -> 14 -> 7 -> 3: pooled while the map is at least 4×4.
    assert model.get_layer("conv2_pool").output_shape == (None, 3, 3, 16)


def test_lstm_reads_rows_as_a_sequence():
    model = build_classifier(
        "lstm", train_params(lstm={"units": [6, 5], "bidirectional": True}), (8, 8, 1), 10
    )
    assert model.get_layer("rows").output_shape == (None, 8, 8)
    assert model.get_layer("bilstm0").output_shape == (None, 8, 12)  # sequence, both directions
    assert model.get_layer("bilstm1").output_shape == (None, 10)


@pytest.mark.parametrize(
    ("params", "kind"),
    [
        ({"name": "sgd", "learning_rate": 0.05}, keras.optimizers.SGD),
        ({"name": "sgd", "learning_rate": 0.05, "momentum": 0.9}, keras.optimizers.SGD),
        ({"name": "adam", "learning_rate": 0.002}, keras.optimizers.Adam),
        ({"name": "rmsprop", "learning_rate": 0.01, "momentum": 0.5}, keras.optimizers.RMSprop),
    ],
)
def test_optimizers_from_params(params, kind):
    optimizer = build_optimizer(OptimizerParams(**params))
    assert isinstance(optimizer, kind)
    assert float(optimizer.learning_rate) == pytest.approx(params["learning_rate"])
    if "momentum" in params:
        assert float(optimizer.momentum) == pytest.approx(params["momentum"])


def test_load_keras_round_trip_and_one_line_errors(tmp_path):
    from pipeline.core.cli import PipelineError
    from pipeline.ml.artifacts import load_keras

    model = build_classifier("fnn", train_params(fnn={"hidden_units": [4]}), (8, 8, 1), 10)
    model.save(tmp_path / "model.keras")
    x = np.zeros((2, 8, 8, 1), np.float32)
    np.testing.assert_allclose(load_keras(tmp_path / "model.keras")(x), model(x), atol=1e-6)
    with pytest.raises(PipelineError, match="missing.keras: model file not found"):
        load_keras(tmp_path / "missing.keras")
    data = (tmp_path / "model.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineError, match="cut.keras: cannot load the model"):
        load_keras(tmp_path / "cut.keras")


def test_saved_keras_files_are_byte_identical_for_the_same_weights(tmp_path):
    """Keras stamps the save time into the archive; save_keras leaves it out, so a rerun gives
    the same bytes (and the same gzip size in the compress report)."""
    import time

    from pipeline.ml.artifacts import load_keras, save_keras

    params = parse_params({"train": {"fnn": {"hidden_units": [8]}}})
    model = build_classifier("fnn", params.train, (8, 8, 1), 10)
    save_keras(model, tmp_path / "a.keras")
    time.sleep(1.1)  # a second later: Keras's own save would differ in its timestamps
    save_keras(model, tmp_path / "b.keras")
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    loaded = load_keras(tmp_path / "a.keras")
    for saved, original in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, original)


def test_the_same_lstm_built_twice_saves_to_the_same_bytes(tmp_path):
    """Keras numbers the objects an LSTM's layers share by their memory addresses: two copies
    of one model (as two processes, or two warm-server children, build it) saved differently."""
    import zipfile

    from pipeline.ml.artifacts import load_keras, save_keras

    params = parse_params({"train": {"lstm": {"units": [8], "dense_units": []}}})
    first = build_classifier("lstm", params.train, (8, 8, 1), 10)
    second = build_classifier("lstm", params.train, (8, 8, 1), 10)
    second.set_weights(first.get_weights())
    save_keras(first, tmp_path / "a.keras")
    save_keras(second, tmp_path / "b.keras")
    with zipfile.ZipFile(tmp_path / "a.keras") as archive:
        assert '"shared_object_id": 1' in archive.read("config.json").decode()
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    loaded = load_keras(tmp_path / "b.keras")
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), first.predict(x, verbose=0))
