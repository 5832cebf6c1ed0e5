"""The guides cannot rot: their example method runs, and every command and option they show exists.

``docs/method-authoring.md`` holds a complete method file and its test as code blocks (each
starting with a ``# <path>`` comment line). They are executed here: the method file as a temporary
module registered in a copy of the method registry, then the test file's functions, then a
recipe row that uses the method is planned. Every ``kdbench <command> … --option`` in the guides'
code (fenced blocks and inline code spans) is checked against the Typer app.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from kdbench.cli import app
from kdbench.methods.registry import METHODS
from kdbench.plan import plan
from kdbench.recipe import RECIPES_DIR, Recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]
GUIDES = [
    ROOT / "docs" / name
    for name in (
        "user-guide.md",
        "recipe-authoring.md",
        "method-authoring.md",
        "protocol-choices.md",
    )
]
DOCS = [ROOT / "README.md", *GUIDES]
METHOD_GUIDE = ROOT / "docs" / "method-authoring.md"
RECIPE_GUIDE = ROOT / "docs" / "recipe-authoring.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
COMMAND = re.compile(r"(?<![\w/.\[-])kdbench((?:\s+[a-z][a-z-]*)+)(.*)")
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def _code_blocks(path: Path) -> dict[str, str]:
    """The fenced code blocks whose first line is ``# <path>`` (a .py or .yaml file), by that path."""
    blocks = {}
    for _, body in FENCE.findall(path.read_text(encoding="utf-8")):
        first, _, rest = body.partition("\n")
        if first.startswith("# ") and first.endswith((".py", ".yaml")):
            blocks[first[2:].strip()] = rest
    return blocks


def _command_lines(path: Path) -> list[str]:
    """Code the page shows: the lines of its shell/unlabelled fenced blocks and its inline code spans."""
    text = path.read_text(encoding="utf-8")
    lines = [
        line.split(" #")[0]
        for lang, body in FENCE.findall(text)
        if lang in ("", "bash", "sh", "console")
        for line in body.splitlines()
    ]
    prose = FENCE.sub("", text)
    return lines + INLINE.findall(prose)


def _invocations(path: Path) -> list[tuple[list[str], list[str]]]:
    """(command words, options) of every ``kdbench <command>`` the page shows."""
    found = []
    for line in _command_lines(path):
        for match in COMMAND.finditer(line):
            words, rest = match.group(1).split(), match.group(2)
            found.append((words, OPTION.findall(rest)))
    return found


def _resolve(words: list[str]) -> tuple[Any, list[str]]:
    """The (sub)command the leading words name, and the words that name it (the rest are arguments)."""
    command = typer.main.get_command(app)  # a group: has .commands; a command: has .params
    used: list[str] = []
    for word in words:
        if not hasattr(command, "commands"):
            break
        sub = command.commands.get(word)
        if sub is None:
            raise AssertionError(
                f"`kdbench {' '.join([*used, word])}` is not a command; "
                f"commands here: {', '.join(sorted(command.commands))}"
            )
        command, used = sub, [*used, word]
    return command, used


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_every_command_and_option_shown_exists(page):
    invocations = _invocations(page)
    if page in GUIDES:
        assert invocations, f"{page.name} shows no kdbench command"
    for words, options in invocations:
        command, used = _resolve(words)
        assert used, f"{page.name}: `kdbench {' '.join(words)}` names no command"
        known = {
            opt for param in command.params for opt in [*param.opts, *param.secondary_opts]
        } | {"--help"}
        unknown = [o for o in options if o not in known]
        assert not unknown, (
            f"{page.name}: `kdbench {' '.join(used)}` has no option {', '.join(unknown)}"
        )


def test_guides_are_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for guide in GUIDES:
        assert f"docs/{guide.name}" in readme, guide.name


@pytest.fixture
def example_method(monkeypatch):
    """The guide's method file, imported as ``kdbench.methods.embed_mse`` into a copy of the registry."""
    source = _code_blocks(METHOD_GUIDE)["kdbench/methods/embed_mse.py"]
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))
    module = types.ModuleType("kdbench.methods.embed_mse")
    module.__file__ = str(METHOD_GUIDE)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(source, f"{METHOD_GUIDE}:embed_mse.py", "exec"), module.__dict__)
    return module


def test_method_guide_example_runs_with_its_golden_value_test(example_method):
    assert METHODS.get("embed-mse").__module__ == "kdbench.methods.embed_mse"
    namespace: dict = {}
    exec(
        compile(
            _code_blocks(METHOD_GUIDE)["tests/test_embed_mse.py"], f"{METHOD_GUIDE}:test", "exec"
        ),
        namespace,
    )
    tests = [fn for name, fn in namespace.items() if name.startswith("test_")]
    assert len(tests) == 2
    for test in tests:
        test()


def test_method_guide_example_plans_in_a_recipe_row(example_method):
    recipe = load_recipe("simkd-table1")
    data = recipe.model_dump(exclude_none=True)
    data["rows"] = [
        {
            "label": "EmbedMSE",
            "method": "embed-mse",
            "params": {"weight": 10.0},
            "paper": {"res32x4_res8x4": "75.00 ± 0.20"},
        }
    ]
    table = plan(Recipe.model_validate(data), "smoke")
    cell = next(c for c in table.cells if c.column == "res32x4_res8x4")
    assert cell.status == "planned"
    spec = table.specs[cell.run_ids[0]]
    # The recipe's preset (simkd) picks the method's simkd variant; the row's params override the defaults.
    assert spec.method_params == {
        "ce_weight": 1.0,
        "kd_weight": 1.0,
        "kd_temperature": 4.0,
        "weight": 10.0,
    }


def test_method_guide_row_loads_from_a_recipe_file(example_method, tmp_path):
    """The guide's last step through the file route (load_recipe's name check, then the planner): a registered
    method needs no other list (it used to be refused as not in a hand-kept catalogue)."""
    row = next(
        body
        for lang, body in FENCE.findall(METHOD_GUIDE.read_text(encoding="utf-8"))
        if lang == "yaml" and body.lstrip().startswith("- label: EmbedMSE")
    )
    data = yaml.safe_load((RECIPES_DIR / "simkd" / "table1.yaml").read_text(encoding="utf-8"))
    data["rows"] = yaml.safe_load(row)
    path = tmp_path / "embed.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    cell = next(c for c in plan(load_recipe(path), "smoke").cells if c.column == "res32x4_res8x4")
    assert cell.status == "planned" and cell.method == "embed-mse"


@pytest.mark.parametrize(
    "example", ["kdbench/recipes/mine/minimal.yaml", "kdbench/recipes/mine/full.yaml"]
)
def test_recipe_guide_examples_load_and_plan(example, tmp_path):
    path = tmp_path / Path(example).name
    path.write_text(_code_blocks(RECIPE_GUIDE)[example], encoding="utf-8")
    recipe = load_recipe(path)
    for profile in ("full", "smoke"):
        table = plan(recipe, profile)
        wanted = {
            (row.label, c.id) for row in recipe.rows for c in recipe.columns if row.has_column(c.id)
        }
        assert {(c.row, c.column) for c in table.cells if c.status == "planned"} == wanted
    if example.endswith("minimal.yaml"):  # the guide says: one teacher run and 3 trials of 2 rows
        assert len(plan(recipe, "full").specs) == 7


PER_RECIPE = "<!-- per-recipe table: tests/test_docs.py::test_the_per_recipe_table_says_what_each_recipe_uses -->"


def per_recipe_table() -> str:
    """Each shipped recipe's teacher source, its authors' precision, the epoch its cells read, its preset and its rows'
    variants, as the table docs/protocol-choices.md shows."""
    from kdbench.recipe import recipe_files

    lines = [
        "| recipe | teachers | authors' precision | metric | preset | row variants |",
        "|---|---|---|---|---|---|",
    ]
    for name in sorted(recipe_files()):
        r = load_recipe(name)
        variants = (
            "; ".join(sorted({f"{row.label}: {row.variant}" for row in r.rows if row.variant}))
            or "—"
        )
        metrics = sorted(
            {
                r.metric,
                *(row.metric for row in r.rows if row.metric),
                *(c.metric for c in r.columns if c.metric),
            }
        )
        lines.append(
            f"| {name} | {r.teacher_source} | {r.protocol.precision} | {', '.join(metrics)} | "
            f"{r.protocol.preset or '—'} | {variants} |"
        )
    return "\n".join(lines) + "\n"


def test_the_per_recipe_table_says_what_each_recipe_uses():
    text = (ROOT / "docs" / "protocol-choices.md").read_text()
    assert PER_RECIPE in text, "docs/protocol-choices.md lost its per-recipe table"
    after = text.split(PER_RECIPE, 1)[1].lstrip("\n")
    table = after[: after.index("\n\n") + 1] if "\n\n" in after else after
    assert table == per_recipe_table(), (
        "regenerate the table with tests/test_docs.py's per_recipe_table()"
    )
