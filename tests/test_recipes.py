"""Recipe loading and validation: the shipped recipe, and malformed recipes that must fail clearly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from kdbench.errors import KdbenchError, UnknownNameError
from kdbench.recipe import load_recipe, recipe_files

SEED_001 = Path(__file__).resolve().parents[2] / "shared" / "seeds" / "001_09eb4c08cc0da21a.txt"


def test_simkd_table1_is_complete():
    r = load_recipe("simkd-table1")
    assert r.name == "simkd-table1" and r.trials == 4 and r.dataset.name == "cifar100"
    assert [row.label for row in r.rows] == [
        "Student",
        "KD",
        "FitNet",
        "AT",
        "SP",
        "VID",
        "CRD",
        "SRRL",
        "SemCKD",
        "SimKD",
        "Teacher",
    ]
    assert len(r.columns) == 7
    for row in r.rows:
        assert set(row.paper) == {c.id for c in r.columns}, row.label
        if row.label != "Teacher":
            assert all(v.std is not None for v in row.paper.values()), row.label
    assert r.training.nesterov is False and r.training.milestones == (150, 180, 210)
    assert r.protocol.follows.startswith("released code")


@pytest.mark.skipif(not SEED_001.is_file(), reason="seed text not beside the repo")
def test_simkd_table1_numbers_match_the_seed_text():
    """Every published number in the recipe appears, in order, in Table 1 of the seed."""
    lines = SEED_001.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Student\tWRN-40-1"))
    seed_rows = {}
    for line in lines[start : start + 11]:
        label, *cells = line.split("\t")
        numbers = [re.findall(r"\d+\.\d+", re.sub(r"<[^>]+>", "", c)) for c in cells]
        seed_rows[re.sub(r"\s*\[\d+\]", "", label)] = [tuple(map(float, n)) for n in numbers]
    r = load_recipe("simkd-table1")
    for row in r.rows:
        ours = [
            (row.paper[c.id].mean,)
            + ((row.paper[c.id].std,) if row.paper[c.id].std is not None else ())
            for c in r.columns
        ]
        assert ours == seed_rows[row.label], row.label


def test_shipped_recipes_are_found_by_name():
    assert "simkd-table1" in recipe_files()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def _valid_data() -> dict:
    return yaml.safe_load(Path(recipe_files()["simkd-table1"]).read_text())


def _dump(tmp_path: Path, data: dict) -> Path:
    return _write(tmp_path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = _write(tmp_path, "name: x\ntraining: [unclosed\n")
    with pytest.raises(KdbenchError, match=rf"{re.escape(str(path))}:\d+: malformed YAML"):
        load_recipe(path)


def test_unknown_key_names_key_line_and_nearest(tmp_path):
    data = _valid_data()
    data["training"]["epoch"] = data["training"].pop("epochs")
    path = _dump(tmp_path, data)
    with pytest.raises(KdbenchError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert "unknown key 'training.epoch'" in msg and "Did you mean 'epochs'?" in msg
    assert re.search(rf"{re.escape(str(path))}:\d+", msg)
    assert "missing required key 'training.epochs'" in msg


def test_unknown_key_inside_list_item(tmp_path):
    data = _valid_data()
    data["rows"][1]["parms"] = {}
    with pytest.raises(KdbenchError, match=r"unknown key 'rows.1.parms'. Did you mean 'params'\?"):
        load_recipe(_dump(tmp_path, data))


def test_wrong_type_is_reported_with_the_value(tmp_path):
    data = _valid_data()
    data["trials"] = "four"
    with pytest.raises(KdbenchError, match=r"key 'trials': .*'four'"):
        load_recipe(_dump(tmp_path, data))


def test_bad_published_value(tmp_path):
    data = _valid_data()
    data["rows"][0]["paper"]["res32x4_res8x4"] = "73.09 +/ 0.30"
    with pytest.raises(KdbenchError, match=r"rows.0.paper.res32x4_res8x4.*mean ± std"):
        load_recipe(_dump(tmp_path, data))


def test_column_with_unknown_teacher(tmp_path):
    data = _valid_data()
    data["columns"][0]["teacher"] = "res23x4"
    with pytest.raises(
        KdbenchError, match=r"columns\[0\].teacher 'res23x4'.*Did you mean 'res32x4'"
    ):
        load_recipe(_dump(tmp_path, data))


def test_published_number_for_unknown_column(tmp_path):
    data = _valid_data()
    data["rows"][0]["paper"]["res32x4_res8x5"] = 1.0
    with pytest.raises(KdbenchError, match=r"not a column id. Did you mean 'res32x4_res8x4'"):
        load_recipe(_dump(tmp_path, data))


def test_not_a_mapping(tmp_path):
    with pytest.raises(KdbenchError, match="a recipe is a YAML mapping"):
        load_recipe(_write(tmp_path, "- just\n- a list\n"))


def test_yaml_tags_cannot_construct_objects(tmp_path):
    path = _write(tmp_path, "name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(KdbenchError, match="malformed YAML"):
        load_recipe(path)


def test_unknown_recipe_name_suggests():
    with pytest.raises(UnknownNameError, match="Did you mean 'simkd-table1'"):
        load_recipe("simkd-tabel1")


@pytest.mark.e2e
def test_list_shows_every_seed_table_with_its_status():
    from kdbench.recipe import table_catalog

    entries = {e.name: e for e in table_catalog()}
    for name in ("simkd-table7", "dist-table6", "dist-table7"):
        assert entries[name].status == "not supported" and entries[name].reason
    assert not set(entries) & set(recipe_files())  # a table with a recipe is listed from its recipe
    seed_tables = {f"simkd-table{i}" for i in range(1, 8)} | {
        f"simkd-tables{i}" for i in range(2, 11)
    }
    seed_tables |= {f"dist-table{i}" for i in range(2, 11)} | {
        "mlkd-appendix-table1",
        "mlkd-appendix-table2",
    }
    seed_tables |= {f"ipwd-appendix-table{i}" for i in range(1, 5)}
    assert seed_tables <= set(entries) | set(recipe_files()), (
        seed_tables - set(entries) - set(recipe_files())
    )
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "kdbench", "list"],
        capture_output=True,
        text=True,
        env={"COLUMNS": "250", "PATH": "/usr/bin:/bin"},
    ).stdout
    assert "simkd-table1" in out and "runnable" in out and "data-free" in out and "detection" in out


def test_every_table_teacher_is_a_run_of_a_shared_teacher_recipe():
    """The shared teacher recipes (kdbench/recipes/teachers/) plan exactly the teacher runs the tables use: a teacher is
    trained (or imported) once, by the same run, for every table that needs it."""
    from kdbench.plan import plan

    names = list(recipe_files())
    shared = {n for n in names if n.startswith("teachers-")}
    tables = set(names) - shared
    assert shared == {
        "teachers-crd-cifar100",
        "teachers-simkd-cifar100",
        "teachers-dist-b1-imagenet",
        "teachers-simkd-imagenet",
    }
    offered: dict[str, str] = {}
    for name in shared:
        recipe = load_recipe(name)
        assert [row.method for row in recipe.rows] == ["teacher"] and all(
            t.paper is not None for t in recipe.teachers.values()
        )
        offered.update(dict.fromkeys(plan(recipe).specs, name))
    used = set()
    for name in tables:
        p = plan(load_recipe(name))
        for spec in p.specs.values():
            if spec.teacher is not None:
                assert spec.teacher.run_id in offered, (name, spec.teacher.model)
                used.add(spec.teacher.run_id)
    assert used == set(offered)  # and every shared teacher serves some table
