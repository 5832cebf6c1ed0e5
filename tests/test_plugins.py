"""Extending kdbench without forking it: entry-point plugins (kdbench/plugins.py), --recipes directories and
--set recipe overrides (kdbench/recipe/overrides.py)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from kdbench import methods, models, plugins
from kdbench.cli import app
from kdbench.errors import KdbenchError
from kdbench.methods import registry as method_registry
from kdbench.models import registry as model_registry
from kdbench.plan import plan
from kdbench.recipe import RECIPES_ENV, load_recipe, recipe_files
from typer.testing import CliRunner

from venvs import clean_env, fresh_venv, pip_install

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = Path(__file__).resolve().parent / "plugin_example"

PLUGIN_METHOD = """
from pydantic import Field
from kdbench.methods import Distiller, MethodParams, register

class Params(MethodParams):
    weight: float = Field(default=1.0, ge=0)

@register
class Mine(Distiller):
    name = "{name}"
    title = "Mine"
    paper = "a lab's own method"
    Params = Params
"""

RECIPE = """
name: {name}
paper: "a lab's table"
table: "Table L"
title: "its own method"
source: "tests/test_plugins.py"
protocol: {{name: lab, follows: "kdbench defaults"}}
dataset: {{name: cifar100}}
training: {{epochs: 240, batch_size: 64, lr: 0.05, milestones: [150, 180, 210]}}
trials: 2
teachers: {{r20: {{model: resnet20, label: ResNet-20}}}}
columns: [{{id: r20_r8, teacher: r20, student: resnet8, label: ResNet-8}}]
rows:
  - {{label: Mine, method: {method}, params: {{ce_weight: 0.5}}, paper: {{r20_r8: 70.0}}}}
  - {{label: KD, method: kd, paper: {{r20_r8: 70.0}}}}
"""


@pytest.fixture
def fresh_registries(monkeypatch):
    """Copies of the method and model registries and a plugin loader that has loaded nothing yet."""
    for registry in (method_registry.METHODS, model_registry.MODELS):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        monkeypatch.setattr(registry, "_plugins_loaded", False)


def fake_entry_points(
    monkeypatch, tmp_path, points: dict[str, list[tuple[str, str, str]]]
) -> list[str]:
    """Make ``importlib.metadata.entry_points(group=...)`` return ``points[group]``: (name, value, module source)
    triples whose modules are written under ``tmp_path``. Returns the groups asked for, in order."""
    monkeypatch.syspath_prepend(str(tmp_path))
    asked: list[str] = []
    for triples in points.values():
        for _, value, source in triples:
            module = value.partition(":")[0]
            path = tmp_path.joinpath(*module.split(".")).with_suffix(".py")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source))
            monkeypatch.delitem(sys.modules, module, raising=False)

    def entry_points(*, group: str):
        asked.append(group)
        return [
            importlib.metadata.EntryPoint(name, value, group)
            for name, value, _ in points.get(group, [])
        ]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    return asked


def test_method_entry_point_loads_lazily_once_and_is_accepted_by_recipes(
    fresh_registries, monkeypatch, tmp_path
):
    asked = fake_entry_points(
        monkeypatch,
        tmp_path,
        {plugins.METHODS: [("mine", "lab_mine", PLUGIN_METHOD.format(name="lab-mine"))]},
    )
    assert "lab_mine" not in sys.modules and asked == []  # importing kdbench loaded no plugin
    assert "lab-mine" in methods.names() and methods.get("lab-mine").__module__ == "lab_mine"
    methods.names(), methods.get("kd")
    assert asked == [plugins.METHODS]  # once per process
    path = tmp_path / "lab.yaml"
    path.write_text(RECIPE.format(name="lab-table", method="lab-mine"))
    table = plan(
        load_recipe(path), "full"
    )  # the recipe check and the planner read the same registry
    cell = next(c for c in table.cells if c.row == "Mine")
    params = table.specs[cell.run_ids[0]].method_params
    assert (
        cell.status == "planned" and params["ce_weight"] == 0.5 and params["weight"] == 1.0
    )  # its own parameter


def test_model_entry_point_may_be_a_callable(fresh_registries, monkeypatch, tmp_path):
    source = """
    from kdbench.models import create, register

    def install():
        @register("lab/resnet8", zoo="plugin", family="resnet", paper_label="Lab ResNet-8")
        def lab_resnet8(*, num_classes):
            return create("resnet8", num_classes=num_classes)
    """
    fake_entry_points(
        monkeypatch, tmp_path, {plugins.MODELS: [("lab", "lab_models:install", source)]}
    )
    assert "lab/resnet8" in models.names() and models.info("lab/resnet8").zoo == "plugin"
    assert models.create("lab/resnet8", num_classes=10).classifier.out_features == 10


def test_a_plugin_that_fails_to_import_is_one_error_naming_it(
    fresh_registries, monkeypatch, tmp_path
):
    fake_entry_points(
        monkeypatch,
        tmp_path,
        {plugins.METHODS: [("broken", "lab_broken", "import no_such_module_xyz\n")]},
    )
    with pytest.raises(plugins.PluginError) as caught:
        methods.get("kd")
    message = str(caught.value)
    assert (
        "entry point kdbench.methods: broken = lab_broken" in message
        and "no_such_module_xyz" in message
    )


def test_a_plugin_taking_a_builtin_name_is_an_error(fresh_registries, monkeypatch, tmp_path):
    fake_entry_points(
        monkeypatch,
        tmp_path,
        {plugins.METHODS: [("kd", "lab_kd", PLUGIN_METHOD.format(name="kd"))]},
    )
    with pytest.raises(
        plugins.PluginError,
        match=r"kdbench.methods: kd = lab_kd.*'kd' is already registered by kdbench.methods.kd",
    ):
        methods.names()
    assert methods.get("kd").__module__ == "kdbench.methods.kd"  # the built-in is kept


def test_recipe_entry_point_and_recipe_directories(fresh_registries, monkeypatch, tmp_path):
    fake_entry_points(monkeypatch, tmp_path, {plugins.RECIPES: [("lab", "lab_recipes", "")]})
    (tmp_path / "lab_recipes.py").unlink()
    package = tmp_path / "lab_recipes"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "t.yaml").write_text(RECIPE.format(name="lab-plugin-table", method="kd"))
    elsewhere = tmp_path / "mine"
    elsewhere.mkdir()
    (elsewhere / "t.yaml").write_text(RECIPE.format(name="lab-dir-table", method="kd"))
    monkeypatch.setenv(RECIPES_ENV, str(elsewhere))
    files = recipe_files()
    assert (
        files["lab-plugin-table"] == package / "t.yaml"
        and files["lab-dir-table"] == elsewhere / "t.yaml"
    )
    assert "simkd-table1" in files and load_recipe("lab-dir-table").name == "lab-dir-table"
    (elsewhere / "t.yaml").write_text(RECIPE.format(name="simkd-table1", method="kd"))
    with pytest.raises(
        KdbenchError,
        match=r"'simkd-table1' is declared by two files: .*table1.yaml and .*mine/t.yaml",
    ):
        recipe_files()
    monkeypatch.setenv(RECIPES_ENV, str(tmp_path / "absent"))
    with pytest.raises(KdbenchError, match="is not a directory"):
        recipe_files()


def test_global_recipes_option_finds_recipes_by_name(monkeypatch, tmp_path):
    monkeypatch.setenv(RECIPES_ENV, "")  # restored after the test: the option writes the variable
    (tmp_path / "t.yaml").write_text(RECIPE.format(name="lab-cli-table", method="kd"))
    result = CliRunner().invoke(
        app,
        ["--recipes", str(tmp_path), "show", "lab-cli-table", "--profile", "smoke"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "lab-cli-table" in result.output and os.environ[RECIPES_ENV] == str(tmp_path.resolve())


# --------------------------------------------------------------------------- --set


def test_set_overrides_fields_and_list_items_by_index_id_and_label():
    base_recipe = load_recipe("simkd-table1")
    recipe = load_recipe(
        "simkd-table1",
        [
            "training.epochs=120",
            "trials=2",
            "training.milestones=[60, 90]",
            "rows.KD.params.kd_temperature=2",
            "columns.res32x4_vgg8.label=VGG-8*",
            "rows.0.note=first",
        ],
    )
    assert (recipe.training.epochs, recipe.trials, recipe.training.milestones) == (120, 2, (60, 90))
    kd = next(r for r in recipe.rows if r.label == "KD")
    assert kd.params["kd_temperature"] == 2 and recipe.column("res32x4_vgg8").label == "VGG-8*"
    assert recipe.rows[0].note == "first" and base_recipe.training.epochs == 240
    # The overridden recipe is what is planned: its runs are other runs.
    assert not set(plan(recipe, "full").specs) & {
        k for k, s in plan(base_recipe, "full").specs.items() if s.method == "kd"
    }


@pytest.mark.parametrize(
    "argument, message",
    [
        (
            "training.epochz=3",
            r"--set training.epochz=3: unknown key 'training.epochz'. Did you mean 'epochs'\?",
        ),
        (
            "training.epochs=-1",
            r"--set training.epochs=-1: key 'training.epochs': Input should be greater than 0",
        ),
        (
            "rows.KD.method=kdd",
            r"--set rows.KD.method=kdd: key 'rows.1.method': unknown method 'kdd'",
        ),
        ("rows.KDD.note=x", r"no item of rows has id or label 'KDD'. Did you mean 'KD'\?"),
        ("rows.99.note=x", r"rows has 11 items; index 99 is out of range"),
        ("trials.x=1", r"trials is a value \(4\), not a mapping"),
        ("training.epochs", r"expected PATH=VALUE"),
        ("training.epochs=[1", r"the value is not valid YAML"),
    ],
)
def test_set_errors_name_the_argument(argument, message):
    with pytest.raises(KdbenchError, match=message):
        load_recipe("simkd-table1", [argument])


def test_set_on_the_command_line_changes_the_plan():
    runner = CliRunner()
    plain = runner.invoke(
        app, ["show", "simkd-table1", "--profile", "smoke"], env={"COLUMNS": "250"}
    )
    changed = runner.invoke(
        app,
        ["show", "simkd-table1", "--profile", "smoke", "--set", "rows.KD.params.kd_temperature=2"],
        env={"COLUMNS": "250"},
    )
    assert plain.exit_code == changed.exit_code == 0, changed.output
    kd_runs = set(re.findall(r"\bkd-[\w.-]+-s0-[0-9a-f]{12}\b", plain.output))
    changed_kd_runs = set(re.findall(r"\bkd-[\w.-]+-s0-[0-9a-f]{12}\b", changed.output))
    assert len(kd_runs) == len(changed_kd_runs) == 7 and not kd_runs & changed_kd_runs
    bad = runner.invoke(
        app, ["show", "simkd-table1", "--set", "training.epochz=3"], env={"COLUMNS": "250"}
    )
    assert bad.exit_code == 2 and "--set training.epochz=3: unknown key" in bad.output


# --------------------------------------------------------------------------- an installed plugin package


def _venv(tmp_path: Path) -> Path:
    """A fresh virtual environment (tests/venvs.py) with kdbench installed from this checkout and the example
    plugin from tests/plugin_example."""
    venv = fresh_venv(tmp_path / "venv")
    # kdbench editable (this checkout's code); the plugin from a copy, so that building leaves no build/ or
    # egg-info folder in the checkout.
    pip_install(venv, "--editable", str(ROOT))
    plugin = tmp_path / "plugin-src"
    shutil.copytree(
        EXAMPLE, plugin, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    )
    pip_install(venv, str(plugin))
    return venv


@pytest.mark.e2e
def test_installed_plugin_package_end_to_end(tmp_path):
    venv = _venv(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    def kdbench(*args: str) -> str:
        proc = subprocess.run(
            [str(venv / "bin" / "kdbench"), *args],
            cwd=outside,
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=900,
        )
        assert proc.returncode == 0, (
            f"kdbench {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
        return proc.stdout

    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import kdbench; print(kdbench.__file__)"],
        cwd=outside,
        capture_output=True,
        text=True,
        env=clean_env(),
        check=True,
    ).stdout
    assert where.startswith(str(ROOT / "kdbench"))  # this checkout's code, installed into the venv
    assert "logit-l2" in kdbench("methods")
    assert "plugin-recipe" in kdbench("list")
    shown = kdbench("show", "plugin-recipe", "--profile", "smoke")
    assert "TinyNet" in shown and "logit-l2-plugin" in shown
    results = outside / "results"
    done = kdbench(
        "reproduce",
        "plugin-recipe",
        "--profile",
        "smoke",
        "--methods",
        "Logit L2",
        "--results",
        str(results),
        "--set",
        "rows.1.params.weight=0.5",
    )
    assert "2 of 2 runs done" in done
    spec = json.loads(next(results.glob("runs/logit-l2-*/spec.json")).read_text())
    assert spec["model"] == "plugin/tinynet" and spec["method_params"]["weight"] == 0.5
    record = json.loads(next(results.glob("tables/plugin-recipe--smoke.json")).read_text())
    assert record["recipe"]["rows"][1]["params"] == {
        "weight": 0.5
    }  # the table record stores the overridden recipe
