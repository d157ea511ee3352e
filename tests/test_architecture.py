"""The package's shape: layers as folders, the import rules between them, dvc.yaml's code deps
covering everything each stage runs, and one layout module naming every declared output."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.core import layout
from tests.conftest import REPO

PACKAGE = REPO / "pipeline"
LAYERS = ("core", "data", "ml", "stages", "tools", "runtime")
# Which layers each layer may import (itself always): stages and tools sit on top, and nothing
# imports them; ml computes over arrays and models with core's params and paths.
ALLOWED = {
    "core": {"core"},
    "data": {"core", "data"},
    "ml": {"core", "ml"},
    "stages": {"core", "data", "ml"},
    "tools": {"core", "data", "ml", "runtime"},
    "runtime": {"core", "runtime"},
}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_path(name: str, package: Path = PACKAGE) -> Path | None:
    relative = Path(*name.split(".")[1:])
    for candidate in (package / relative / "__init__.py", package / f"{relative}.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(path: Path, package: Path = PACKAGE) -> set[str]:
    """Every pipeline module `path` imports, at the top or inside functions (lazy imports).
    `from pipeline.core import layout` counts as importing `pipeline.core.layout`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] == "pipeline" and module_path(n, package)}
    return found


def closure(start: set[str], package: Path = PACKAGE) -> set[str]:
    """The modules `start` import, transitively, with the packages that hold them (importing
    `pipeline.core.layout` runs `pipeline/__init__.py` and `pipeline/core/__init__.py`)."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        path = module_path(name, package)
        if path is not None:
            todo += imports_of(path, package)
    return seen


def layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else None


def violations(package: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        source = module_name(path, package)
        for target in sorted(imports_of(path, package)):
            own, other = layer(source), layer(target)
            if other in ("stages", "tools") and own != other:
                found.append(f"{source} imports {target}: nothing imports a stage or a tool")
            elif other in ("stages", "tools") and source != target:
                found.append(f"{source} imports {target}: stages and tools share through layers")
            elif own and other and other not in ALLOWED[own]:
                found.append(f"{source} imports {target}: {own} may not import {other}")
    return found


def test_the_package_is_layers_as_folders():
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted([*LAYERS, "templates"])
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py"]


def test_no_module_breaks_the_import_rules():
    assert violations() == []


def test_the_import_rules_catch_a_planted_violation(tmp_path: Path):
    """The same check on a copy of the package with one forbidden import added to ml/."""
    copy = tmp_path / "pipeline"
    subprocess.run(["cp", "-r", str(PACKAGE), str(copy)], check=True)
    planted = copy / "ml" / "models.py"
    planted.write_text(planted.read_text() + "\nfrom pipeline.stages.train import main\n")
    assert violations(copy) == [
        "pipeline.ml.models imports pipeline.stages.train: nothing imports a stage or a tool"
    ]


@pytest.mark.parametrize("layer_name", ["core", "data"])
def test_core_and_data_never_import_tensorflow(layer_name: str):
    modules = [module_name(p) for p in sorted((PACKAGE / layer_name).glob("*.py"))]
    code = (
        f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; "
        "print(sorted(k for k in ('tensorflow', 'tf_keras') if k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


# --- dvc.yaml ---------------------------------------------------------------------------------


def dvc_stages() -> dict[str, dict]:
    """dvc.yaml's stages with `foreach` expanded: `train@cnn` -> its cmd, deps and outputs."""
    raw = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    stages = {}
    for name, stage in raw.items():
        if "foreach" not in stage:
            stages[name] = stage
            continue
        for item in stage["foreach"]:
            text = yaml.safe_dump(stage["do"]).replace("${item}", item)
            stages[f"{name}@{item}"] = yaml.safe_load(text)
    return stages


def entries(stage: dict, *keys: str) -> set[str]:
    paths = set()
    for key in keys:
        for entry in stage.get(key, []):
            paths.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    return paths


def modules_of_command(cmd: str, package: Path = PACKAGE) -> set[str]:
    """What `python -m pipeline <stage> ...` imports: the entry point and the stage's module."""
    words = cmd.split()
    assert words[:3] == ["python", "-m", "pipeline"], cmd
    return closure({"pipeline.__main__", f"pipeline.stages.{words[3]}"}, package)


def uncovered(name: str, stage: dict, package: Path = PACKAGE) -> list[str]:
    deps = entries(stage, "deps")
    missing = []
    for module in sorted(modules_of_command(stage["cmd"], package)):
        path = module_path(module, package)
        if path is None:
            continue
        relative = path.relative_to(package.parent)
        if not any(relative == Path(d) or Path(d) in relative.parents for d in deps):
            missing.append(f"{name}: {relative}")
    return missing


def test_every_module_a_stage_runs_is_one_of_its_deps():
    assert [gap for name, stage in dvc_stages().items() for gap in uncovered(name, stage)] == []


def test_the_deps_check_catches_a_module_missing_from_dvc_yaml(tmp_path: Path):
    copy = tmp_path / "pipeline"
    subprocess.run(["cp", "-r", str(PACKAGE), str(copy)], check=True)
    (copy / "ml" / "planted.py").write_text("VALUE = 1\n")
    report = copy / "stages" / "report.py"
    report.write_text(report.read_text() + "\nfrom pipeline.ml.planted import VALUE\n")
    assert uncovered("report", dvc_stages()["report"], copy) == ["report: pipeline/ml/planted.py"]


def test_the_code_folders_stages_depend_on_hash_without_pythons_bytecode_caches():
    """Whichever interpreter imports the code writes __pycache__ into these folders: were DVC to
    hash it, a clone (which has none) or a tool run between stages would make every stage stale.
    Asked of DVC itself, which reads .dvcignore."""
    folders = sorted(
        dep
        for stage in dvc_stages().values()
        for dep in entries(stage, "deps")
        if dep.startswith("pipeline/") and (REPO / dep).is_dir()
    )
    assert folders, "no code folder among the deps"
    caches = [f"{folder}/__pycache__/module.cpython-311.pyc" for folder in folders]
    checked = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "check-ignore", *caches],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert sorted(checked.stdout.split()) == sorted(caches), checked.stderr[-2000:]


def test_the_report_template_is_a_dep_of_report():
    template = layout.REPORT_TEMPLATE.relative_to(REPO)
    assert str(template) in entries(dvc_stages()["report"], "deps")


def test_every_output_dvc_yaml_declares_is_named_by_the_layout_module():
    for name, stage in dvc_stages().items():
        stage_name, _, family = name.partition("@")
        declared = entries(stage, "outs", "metrics", "plots")
        named = {str(p) for p in layout.stage_outputs(stage_name, family or None)}
        assert declared == named, name


def test_every_top_level_plot_draws_from_a_layout_path():
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    sources = {path for plot in plots for spec in plot.values() for path in spec["y"]}
    assert sources == {str(p) for p in layout.plot_sources()}


def test_every_name_imported_from_the_package_exists():
    """Lazy imports run only on their path: check each `from pipeline.x import y` resolves."""
    import importlib

    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
                module = importlib.import_module(str(node.module))
                missing += [
                    f"{path.relative_to(REPO)}: {node.module}.{alias.name}"
                    for alias in node.names
                    if not hasattr(module, alias.name)
                    and module_path(f"{node.module}.{alias.name}") is None
                ]
    assert missing == []


def test_the_readme_layout_matches_the_package():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- layout: checked against the tree by tests/test_architecture.py -->")
    lines = block[1].split("```")[1].strip().splitlines()
    shown = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    actual = {
        f"pipeline/{folder.name}/": sorted(
            p.stem if p.suffix == ".py" else p.name
            for p in folder.iterdir()
            if p.name != "__init__.py" and p.name != "__pycache__"
        )
        for folder in PACKAGE.iterdir()
        if folder.is_dir() and folder.name != "__pycache__"
    }
    assert {folder: sorted(names) for folder, names in shown.items()} == actual


def test_end_to_end_copies_start_without_any_committed_stage_output(tmp_path: Path):
    """A stage that stopped writing an output must not pass on the committed copy of it."""
    from tests.e2e import copy_project, declared_outputs

    committed = [p for p in declared_outputs() if (REPO / p).exists()]
    assert layout.train_metrics("cnn") in committed  # there is something to leave out
    copy = copy_project(tmp_path / "project")
    assert [p for p in declared_outputs() if (copy / p).exists()] == []
    assert (copy / "dvc.yaml").is_file() and (copy / "params.yaml").is_file()
