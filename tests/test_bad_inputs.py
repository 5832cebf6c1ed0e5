"""Every bad input a user can give is answered through the CLI: exit code 2, no traceback, and a message that names
the file, the key or line, what was expected and, where there is one, the nearest valid value.

The library-level checks behind these messages are tested in test_recipes.py, test_checkpoints.py and
test_data.py; here each one is met where a user meets it, on the command line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from kdbench import cli
from kdbench.checkpoints import sha256_of
from kdbench.data import cifar
from kdbench.plan import plan
from kdbench.recipe import Recipe

TINY = {
    "name": "tiny", "paper": "kdbench test", "table": "Table T", "title": "tiny", "source": "tests/test_bad_inputs.py",
    "protocol": {"name": "test", "follows": "kdbench defaults"},
    "dataset": {"name": "synthetic", "options": {"num_classes": 4, "image_size": 16, "train_size": 32, "test_size": 16}},
    "training": {"epochs": 1, "batch_size": 16, "lr": 0.05, "milestones": []},
    "trials": 1,
    "teachers": {"r20": {"model": "resnet20", "label": "ResNet-20"}},
    "columns": [{"id": "r20_r8", "teacher": "r20", "student": "resnet8x4", "label": "ResNet-8x4"}],
    "rows": [{"label": "KD", "method": "kd"}, {"label": "Teacher", "method": "teacher"}],
}


def kdbench(monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    """Run the CLI in-process; assert it refused cleanly (exit 2, no traceback); its output on one line."""
    monkeypatch.setenv("COLUMNS", "2000")  # rich wraps at the terminal width
    result = CliRunner().invoke(cli.app, list(args))
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}\n{result.output}"
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


def write_recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def with_change(tmp_path: Path, change) -> Path:
    data = json.loads(json.dumps(TINY))
    change(data)
    return write_recipe(tmp_path, yaml.safe_dump(data, sort_keys=False))


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


# ---------------------------------------------------------------- recipes


def test_malformed_yaml_names_the_file_and_line(tmp_path, monkeypatch):
    path = write_recipe(tmp_path, "name: tiny\ntraining: {epochs: 1\nrows: []\n")
    out = kdbench(monkeypatch, "show", str(path))
    assert re.search(rf"{re.escape(str(path))}:\d: malformed YAML: expected ',' or '}}'", out)


def test_unknown_key_names_line_and_nearest_key(tmp_path, monkeypatch):
    path = with_change(tmp_path, lambda d: d["training"].update(batchsize=d["training"].pop("batch_size")))
    out = kdbench(monkeypatch, "reproduce", str(path), "--dry-run")
    assert f"{path}:{line_of(path, 'batchsize')}: unknown key 'training.batchsize'. Did you mean 'batch_size'?" in out
    assert "Valid keys here: batch_size," in out


def test_wrong_type_names_key_expected_type_and_value(tmp_path, monkeypatch):
    path = with_change(tmp_path, lambda d: d["training"].update(epochs="two"))
    out = kdbench(monkeypatch, "show", str(path))
    assert f"{path}:{line_of(path, 'epochs')}: key 'training.epochs': Input should be a valid integer" in out
    assert "(got 'two')" in out


@pytest.mark.parametrize(("change", "key", "bad", "nearest"), [
    (lambda d: d["columns"][0].update(student="resnet8x5"), "columns.0.student", "model 'resnet8x5'", "resnet8x4"),
    (lambda d: d["teachers"]["r20"].update(model="resnet_20"), "teachers.r20.model", "model 'resnet_20'", "resnet20"),
    (lambda d: d["rows"][0].update(method="kdd"), "rows.0.method", "method 'kdd'", "kd"),
    (lambda d: d["dataset"].update(name="cifar1000"), "dataset.name", "dataset 'cifar1000'", "cifar100"),
])
def test_unknown_names_are_refused_at_load_with_did_you_mean(tmp_path, monkeypatch, change, key, bad, nearest):
    path = with_change(tmp_path, change)
    out = kdbench(monkeypatch, "show", str(path))
    line = line_of(path, bad.split("'")[1])
    assert f"{path}:{line}: key '{key}': unknown {bad}. Did you mean '{nearest}'?" in out
    assert f"Known {bad.split()[0]}s: " in out


def test_unknown_recipe_name_suggests_the_nearest(monkeypatch, tmp_path):
    out = kdbench(monkeypatch, "status", "simkd-tabel1", "--results", str(tmp_path))
    assert "unknown recipe 'simkd-tabel1'. Did you mean 'simkd-table1'?" in out


def test_a_recipe_name_cannot_become_a_path(tmp_path, monkeypatch):
    """A table's record is written to RESULTS/tables/<name>--<profile>.json: the name must be a plain slug."""
    path = with_change(tmp_path, lambda d: d.update(name="../../x"))
    out = kdbench(monkeypatch, "reproduce", str(path), "--profile", "smoke", "--results", str(tmp_path / "r"))
    assert f"{path}:1: key 'name': Value error, recipe names are lower-case letters, digits and '-'" in out
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- runs


def spec_file(tmp_path: Path, recipe: dict, *, teacher: bool) -> Path:
    """The spec.json of the recipe's teacher run (or of its first student run), as `kdbench train` takes it."""
    specs = plan(Recipe.model_validate(recipe), "full").specs.values()
    spec = next(s for s in specs if (s.teacher is None) == teacher)
    path = tmp_path / f"{spec.run_id}.json"
    path.write_text(spec.model_dump_json())
    return path


def test_a_pair_a_method_cannot_align_gives_the_methods_reason(tmp_path, monkeypatch):
    recipe = json.loads(json.dumps(TINY))
    recipe["teachers"]["r20"]["model"] = "vgg8"
    recipe["columns"][0]["student"] = "resnet8"
    recipe["rows"][0]["method"] = "fsp"
    results = tmp_path / "results"
    teacher = CliRunner().invoke(cli.app, ["train", str(spec_file(tmp_path, recipe, teacher=True)), "--results",
                                           str(results), "--device", "cpu"])
    assert teacher.exit_code == 0, teacher.output
    out = kdbench(monkeypatch, "train", str(spec_file(tmp_path, recipe, teacher=False)), "--results", str(results),
                  "--device", "cpu")
    assert ("FSP (CifarResNet student, CifarVGG teacher) needs the same number of taps f0..fk with equal channel counts "
            "in both networks; the student's are [16, 16, 32, 64] and the teacher's [64, 128, 256, 512, 512]") in out


def _on_dataset(name: str, options: dict | None = None) -> dict:
    recipe = json.loads(json.dumps(TINY))
    recipe["dataset"] = {"name": name, "options": options or {}}
    return recipe


def test_missing_cifar_says_which_files_to_put_where(tmp_path, monkeypatch):
    def offline(spec, data_dir):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(cifar, "_download", offline)
    data = tmp_path / "data"
    out = kdbench(monkeypatch, "train", str(spec_file(tmp_path, _on_dataset("cifar100"), teacher=True)),
                  "--results", str(tmp_path / "r"), "--data-dir", str(data), "--device", "cpu")
    for phrase in (str(data / "cifar-100-python"), "train, test, meta", "cifar-100-python.tar.gz",
                   "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "--data-dir", "KDBENCH_DATA"):
        assert phrase in out


def test_a_cifar_file_with_another_md5_is_named_with_both_md5s(tmp_path, monkeypatch):
    folder = tmp_path / "data" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name in ("train", "test", "meta"):
        (folder / name).write_bytes(b"not the CIFAR file")
    out = kdbench(monkeypatch, "train", str(spec_file(tmp_path, _on_dataset("cifar100"), teacher=True)),
                  "--results", str(tmp_path / "r"), "--data-dir", str(tmp_path / "data"), "--device", "cpu")
    assert str(folder) in out and cifar.md5sum(folder / "train") in out
    assert any(md5 in out for md5 in cifar.CIFAR_MD5["cifar100"].values())


def test_missing_imagenet_says_which_folders_to_put_where(tmp_path, monkeypatch):
    data = tmp_path / "data"
    out = kdbench(monkeypatch, "train", str(spec_file(tmp_path, _on_dataset("imagenet"), teacher=True)),
                  "--results", str(tmp_path / "r"), "--data-dir", str(data), "--device", "cpu")
    assert str(data / "imagenet") in out and "train" in out and "val" in out


# ---------------------------------------------------------------- teacher checkpoints


def _imported(tmp_path: Path, path: Path, sha256: str, model: str = "resnet8") -> Path:
    recipe = json.loads(json.dumps(TINY))
    recipe["teachers"]["r20"] = {"model": model, "label": "T", "checkpoint": {"path": str(path), "sha256": sha256}}
    return spec_file(tmp_path, recipe, teacher=True)


@pytest.fixture()
def resnet8_file(tmp_path: Path) -> Path:
    from kdbench import models

    path = tmp_path / "resnet8.pt"
    torch.save(models.create("resnet8", num_classes=4).state_dict(), path)
    return path


def test_a_checkpoint_with_another_sha256_is_refused(tmp_path, monkeypatch, resnet8_file):
    out = kdbench(monkeypatch, "train", str(_imported(tmp_path, resnet8_file, "0" * 64)), "--results", str(tmp_path / "r"),
                  "--device", "cpu")
    assert str(resnet8_file) in out and sha256_of(resnet8_file) in out and "does not match the recipe's 0000" in out


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path, monkeypatch, resnet8_file):
    spec = _imported(tmp_path, resnet8_file, sha256_of(resnet8_file), model="resnet14")
    out = kdbench(monkeypatch, "train", str(spec), "--results", str(tmp_path / "r"), "--device", "cpu")
    assert "does not fit the architecture 'resnet14'" in out


class Payload:
    """Unpickling this runs code: it creates the file named by ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_never_runs(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": Payload(marker)}, path)
    out = kdbench(monkeypatch, "train", str(_imported(tmp_path, path, sha256_of(path))), "--results", str(tmp_path / "r"),
                  "--device", "cpu")
    assert str(path) in out and "cannot be loaded safely: torch.load(weights_only=True) refused it" in out
    assert not marker.exists()


# ---------------------------------------------------------------- paths under --results


@pytest.mark.parametrize("run_id", ["../x", "../../etc", "/tmp/x", ".hidden", "a/b"])
def test_train_takes_no_run_id_that_leaves_the_results_dir(tmp_path, monkeypatch, run_id):
    results = tmp_path / "results"
    out = kdbench(monkeypatch, "train", run_id, "--results", str(results), "--device", "cpu")
    assert f"no spec at '{run_id}': pass a spec.json file or the id of a run under {results}/runs/" in out


@pytest.mark.parametrize("run_id", ["../x", "..", "a/../../b", ".lock"])
def test_clean_takes_no_run_id_that_leaves_the_results_dir(tmp_path, monkeypatch, run_id):
    outside = tmp_path / "x"
    outside.mkdir()
    out = kdbench(monkeypatch, "clean", "--results", str(tmp_path / "results"), "--run", run_id, "--yes")
    assert f"'{run_id}' is not a run id" in out and outside.is_dir()


def test_an_unreadable_table_record_names_the_file(tmp_path):
    """compare meets a table record it cannot read (damaged, or from another schema): an error, not a traceback."""
    from kdbench.errors import KdbenchError
    from kdbench.results.compare import compare

    (tmp_path / "tables").mkdir()
    bad = tmp_path / "tables" / "simkd-table1--smoke.json"
    bad.write_text('{"recipe": {"name": "simkd-table1"}, "profile": "smoke", "trials": 1}')
    with pytest.raises(KdbenchError, match=r"simkd-table1--smoke\.json: not a readable table record.*Delete it"):
        compare(tmp_path)
