from pathlib import Path

import pytest
import yaml

from pipeline.core.cli import PipelineError
from pipeline.core.params import Params, flatten, load_params, parse_params
from tests.conftest import REPO


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def error_for(raw: dict) -> str:
    with pytest.raises(PipelineError) as info:
        parse_params(raw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_repository_params_are_valid_and_complete():
    params = load_params(REPO / "params.yaml")
    assert params.data.source == "digits"
    # Every key the schema knows is spelled out in the raw file, none left to a default.
    assert set(flatten(repo_params())) == set(flatten(params))


def test_the_schema_defaults_are_the_values_in_params_yaml():
    """Reading the schema, one sees the model that params.yaml trains: defaults equal the file."""
    defaults, written = flatten(Params()), flatten(repo_params())
    differing = {
        key: (defaults[key], written[key]) for key in defaults if defaults[key] != written[key]
    }
    assert differing == {}


def test_unknown_key_names_its_full_path():
    raw = repo_params()
    raw["train"]["cnn"]["dropuot"] = 0.1
    assert error_for(raw) == "params.yaml: train.cnn.dropuot: unknown key"


def test_unknown_section():
    assert "compresss: unknown key" in error_for({**repo_params(), "compresss": {}})


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (["train", "fnn", "optimizer", "learning_rate"], -0.1, "train.fnn.optimizer.learning_rate"),
        (["train", "common", "epochs"], "ten", "train.common.epochs"),
        (["train", "cnn", "dropout"], 1.0, "train.cnn.dropout"),
        (["train", "lstm", "optimizer", "name"], "adamw", "train.lstm.optimizer.name"),
        (["train", "fnn", "activation"], "relu6", "train.fnn.activation"),
        (["data", "test_fraction"], 1.5, "data.test_fraction"),
        (["seed"], -1, "seed"),
        (["reproducibility"], "exact", "reproducibility"),
    ],
)
def test_bad_values_name_the_key_and_the_value(path, value, expected):
    raw = repo_params()
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    message = error_for(raw)
    assert message.startswith(f"params.yaml: {expected}: ")
    assert repr(value) in message


def test_cross_field_rules():
    raw = repo_params()
    raw["train"]["common"]["label_smoothing"] = 0.1
    assert "label_smoothing needs loss: categorical_crossentropy" in error_for(raw)
    raw = repo_params()
    raw["data"]["source"] = "npz"
    assert "needs data.path" in error_for(raw)


def test_load_params_reports_missing_and_broken_files(tmp_path: Path):
    with pytest.raises(PipelineError, match="file not found"):
        load_params(tmp_path / "params.yaml")
    broken = tmp_path / "params.yaml"
    broken.write_text("train:\n  common: [\n")
    with pytest.raises(PipelineError, match=r"invalid YAML at line \d+"):
        load_params(broken)


def test_flatten_gives_dotted_keys():
    params = parse_params({"train": {"fnn": {"hidden_units": [8]}}})
    flat = flatten(params.train.fnn, "model")
    assert flat["model.hidden_units"] == [8]
    assert flat["model.optimizer.learning_rate"] == pytest.approx(1e-3)


def test_unreadable_params_file_is_one_line(tmp_path: Path):
    (tmp_path / "params.yaml").mkdir()
    with pytest.raises(PipelineError, match=r"params.yaml: cannot read \(IsADirectoryError\)"):
        load_params(tmp_path / "params.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(PipelineError, match="binary.yaml: cannot read"):
        load_params(binary)


def test_each_familys_augmentation_and_adversarial_training_are_what_the_search_chose():
    """params.yaml's defaults are the candidates benchmarks/augment.py chose from its measured
    seeds (reports/benchmarks/augment.json): a default changed by hand, without a new search,
    fails here."""
    import json

    from pipeline.core.params import AdversarialParams, AugmentParams

    search = json.loads((REPO / "reports/benchmarks/augment.json").read_text())
    params = load_params(REPO / "params.yaml")
    assert sorted(search["models"]) == ["cnn", "fnn", "lstm"]
    for name, result in search["models"].items():
        chosen = result["chosen_params"]
        assert chosen == result["candidates"][result["chosen"]]["params"]
        block = params.train.model(name)
        assert block.augment == AugmentParams(**chosen.get("augment", {})), name
        adversarial = AdversarialParams(**chosen.get("adversarial", {}))
        assert block.adversarial == adversarial, name


def test_each_familys_size_and_regularisation_are_what_the_capacity_search_chose():
    """params.yaml's layer widths, dropout and L2 are the candidates benchmarks/capacity.py chose
    from its measured seeds (reports/benchmarks/capacity.json), and the schema's defaults are the
    same."""
    import json

    from benchmarks.capacity import CANDIDATES, REJECTED, choose

    search = json.loads((REPO / "reports/benchmarks/capacity.json").read_text())
    written = load_params(REPO / "params.yaml").train
    assert sorted(search["models"]) == ["cnn", "fnn", "lstm"]
    for name, rejected in REJECTED.items():  # no misspelt family or candidate
        assert set(rejected) <= set(CANDIDATES[name]), name
    for name, result in search["models"].items():
        chosen = result["chosen_params"]
        assert result["rejected"] == REJECTED.get(name, {})
        # the rule, over what it measured and what it keeps
        assert result["chosen"] == choose(result["candidates"], REJECTED.get(name, {}))
        assert chosen == result["candidates"][result["chosen"]]["params"]
        assert written.model(name).model_dump(include=set(chosen)) == chosen, name
        assert Params().train.model(name).model_dump(include=set(chosen)) == chosen, name


def test_compress_pruning_defaults_are_what_the_pruning_search_chose():
    """params.yaml's pruning fine-tuning is the candidate benchmarks/pruning.py chose from its
    measured seeds (reports/benchmarks/pruning.json), and the schema's default is the same."""
    import json

    from pipeline.core.params import CompressParams

    search = json.loads((REPO / "reports/benchmarks/pruning.json").read_text())
    chosen = search["chosen_params"]
    assert chosen == search["candidates"][search["chosen"]]["params"]
    compress = load_params(REPO / "params.yaml").compress
    assert compress.model_dump(include=set(chosen)) == chosen
    assert CompressParams().model_dump(include=set(chosen)) == chosen
