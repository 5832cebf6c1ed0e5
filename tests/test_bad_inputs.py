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
from kdbench import cli
from kdbench.data.datasets import cifar
from kdbench.plan import plan
from kdbench.recipe import Recipe
from kdbench.train.checkpoints import sha256_of
from typer.testing import CliRunner

TINY = {
    "name": "tiny",
    "paper": "kdbench test",
    "table": "Table T",
    "title": "tiny",
    "source": "tests/test_bad_inputs.py",
    "protocol": {"name": "test", "follows": "kdbench defaults"},
    "dataset": {
        "name": "synthetic",
        "options": {"num_classes": 4, "image_size": 16, "train_size": 32, "test_size": 16},
    },
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
    assert isinstance(result.exception, SystemExit), (
        f"uncaught {result.exception!r}\n{result.output}"
    )
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
    path = with_change(
        tmp_path, lambda d: d["training"].update(batchsize=d["training"].pop("batch_size"))
    )
    out = kdbench(monkeypatch, "reproduce", str(path), "--dry-run")
    assert (
        f"{path}:{line_of(path, 'batchsize')}: unknown key 'training.batchsize'. Did you mean 'batch_size'?"
        in out
    )
    assert "Valid keys here: batch_size," in out


def test_wrong_type_names_key_expected_type_and_value(tmp_path, monkeypatch):
    path = with_change(tmp_path, lambda d: d["training"].update(epochs="two"))
    out = kdbench(monkeypatch, "show", str(path))
    assert (
        f"{path}:{line_of(path, 'epochs')}: key 'training.epochs': Input should be a valid integer"
        in out
    )
    assert "(got 'two')" in out


@pytest.mark.parametrize(
    ("change", "key", "bad", "nearest"),
    [
        (
            lambda d: d["columns"][0].update(student="resnet8x5"),
            "columns.0.student",
            "model 'resnet8x5'",
            "resnet8x4",
        ),
        (
            lambda d: d["teachers"]["r20"].update(model="resnet_20"),
            "teachers.r20.model",
            "model 'resnet_20'",
            "resnet20",
        ),
        (lambda d: d["rows"][0].update(method="kdd"), "rows.0.method", "method 'kdd'", "kd"),
        (
            lambda d: d["dataset"].update(name="cifar1000"),
            "dataset.name",
            "dataset 'cifar1000'",
            "cifar100",
        ),
    ],
)
def test_unknown_names_are_refused_at_load_with_did_you_mean(
    tmp_path, monkeypatch, change, key, bad, nearest
):
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
    out = kdbench(
        monkeypatch, "reproduce", str(path), "--profile", "smoke", "--results", str(tmp_path / "r")
    )
    assert (
        f"{path}:1: key 'name': Value error, recipe names are lower-case letters, digits and '-'"
        in out
    )
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
    teacher = CliRunner().invoke(
        cli.app,
        [
            "train",
            str(spec_file(tmp_path, recipe, teacher=True)),
            "--results",
            str(results),
            "--device",
            "cpu",
        ],
    )
    assert teacher.exit_code == 0, teacher.output
    out = kdbench(
        monkeypatch,
        "train",
        str(spec_file(tmp_path, recipe, teacher=False)),
        "--results",
        str(results),
        "--device",
        "cpu",
    )
    assert (
        "FSP (CifarResNet student, CifarVGG teacher) needs the same number of taps f0..fk with equal channel counts "
        "in both networks; the student's are [16, 16, 32, 64] and the teacher's [64, 128, 256, 512, 512]"
    ) in out


def _on_dataset(name: str, options: dict | None = None) -> dict:
    recipe = json.loads(json.dumps(TINY))
    recipe["dataset"] = {"name": name, "options": options or {}}
    return recipe


def test_missing_cifar_says_which_files_to_put_where(tmp_path, monkeypatch):
    def offline(spec, data_dir):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(cifar, "_download", offline)
    data = tmp_path / "data"
    out = kdbench(
        monkeypatch,
        "train",
        str(spec_file(tmp_path, _on_dataset("cifar100"), teacher=True)),
        "--results",
        str(tmp_path / "r"),
        "--data-dir",
        str(data),
        "--device",
        "cpu",
    )
    for phrase in (
        str(data / "cifar-100-python"),
        "train, test, meta",
        "cifar-100-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "--data-dir",
        "KDBENCH_DATA",
    ):
        assert phrase in out


def test_a_cifar_file_with_another_md5_is_named_with_both_md5s(tmp_path, monkeypatch):
    folder = tmp_path / "data" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name in ("train", "test", "meta"):
        (folder / name).write_bytes(b"not the CIFAR file")
    out = kdbench(
        monkeypatch,
        "train",
        str(spec_file(tmp_path, _on_dataset("cifar100"), teacher=True)),
        "--results",
        str(tmp_path / "r"),
        "--data-dir",
        str(tmp_path / "data"),
        "--device",
        "cpu",
    )
    assert str(folder) in out and cifar.md5sum(folder / "train") in out
    assert any(md5 in out for md5 in cifar.CIFAR_MD5["cifar100"].values())


def test_missing_imagenet_says_which_folders_to_put_where(tmp_path, monkeypatch):
    data = tmp_path / "data"
    out = kdbench(
        monkeypatch,
        "train",
        str(spec_file(tmp_path, _on_dataset("imagenet"), teacher=True)),
        "--results",
        str(tmp_path / "r"),
        "--data-dir",
        str(data),
        "--device",
        "cpu",
    )
    assert str(data / "imagenet") in out and "train" in out and "val" in out


# ---------------------------------------------------------------- teacher checkpoints


def _imported(tmp_path: Path, path: Path, sha256: str, model: str = "resnet8") -> Path:
    recipe = json.loads(json.dumps(TINY))
    recipe["teachers"]["r20"] = {
        "model": model,
        "label": "T",
        "checkpoint": {"path": str(path), "sha256": sha256},
    }
    return spec_file(tmp_path, recipe, teacher=True)


@pytest.fixture()
def resnet8_file(tmp_path: Path) -> Path:
    from kdbench import models

    path = tmp_path / "resnet8.pt"
    torch.save(models.create("resnet8", num_classes=4).state_dict(), path)
    return path


def test_a_checkpoint_with_another_sha256_is_refused(tmp_path, monkeypatch, resnet8_file):
    out = kdbench(
        monkeypatch,
        "train",
        str(_imported(tmp_path, resnet8_file, "0" * 64)),
        "--results",
        str(tmp_path / "r"),
        "--device",
        "cpu",
    )
    assert (
        str(resnet8_file) in out
        and sha256_of(resnet8_file) in out
        and "does not match the recipe's 0000" in out
    )


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path, monkeypatch, resnet8_file):
    spec = _imported(tmp_path, resnet8_file, sha256_of(resnet8_file), model="resnet14")
    out = kdbench(
        monkeypatch, "train", str(spec), "--results", str(tmp_path / "r"), "--device", "cpu"
    )
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
    out = kdbench(
        monkeypatch,
        "train",
        str(_imported(tmp_path, path, sha256_of(path))),
        "--results",
        str(tmp_path / "r"),
        "--device",
        "cpu",
    )
    assert (
        str(path) in out
        and "cannot be loaded safely: torch.load(weights_only=True) refused it" in out
    )
    assert not marker.exists()


# ---------------------------------------------------------------- paths under --results


@pytest.mark.parametrize("run_id", ["../x", "../../etc", "/tmp/x", ".hidden", "a/b"])
def test_train_takes_no_run_id_that_leaves_the_results_dir(tmp_path, monkeypatch, run_id):
    results = tmp_path / "results"
    out = kdbench(monkeypatch, "train", run_id, "--results", str(results), "--device", "cpu")
    assert (
        f"no spec at '{run_id}': pass a spec.json file or the id of a run under {results}/runs/"
        in out
    )


@pytest.mark.parametrize("run_id", ["../x", "..", "a/../../b", ".lock"])
def test_clean_takes_no_run_id_that_leaves_the_results_dir(tmp_path, monkeypatch, run_id):
    outside = tmp_path / "x"
    outside.mkdir()
    out = kdbench(
        monkeypatch, "clean", "--results", str(tmp_path / "results"), "--run", run_id, "--yes"
    )
    assert f"'{run_id}' is not a run id" in out and outside.is_dir()


def test_an_unreadable_table_record_names_the_file(tmp_path):
    """compare meets a table record it cannot read (damaged, or from another schema): an error, not a traceback."""
    from kdbench.errors import KdbenchError
    from kdbench.results.compare import compare

    (tmp_path / "tables").mkdir()
    bad = tmp_path / "tables" / "simkd-table1--smoke.json"
    bad.write_text('{"recipe": {"name": "simkd-table1"}, "profile": "smoke", "trials": 1}')
    with pytest.raises(
        KdbenchError, match=r"simkd-table1--smoke\.json: not a readable table record.*Delete it"
    ):
        compare(tmp_path)


# ---------------------------------------------------------------- recipes a loader must not trust (issue 14)


def billion_laughs(levels: int = 9) -> str:
    """Nested anchors and aliases: ~1 KB of YAML that expands to 10**levels strings."""
    lines = ['lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for k in range(1, levels):
        lines.append(f"lol{k}: &lol{k} [" + ", ".join([f"*lol{k - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_before_it_is_expanded(tmp_path, monkeypatch):
    import time

    path = write_recipe(tmp_path, billion_laughs())
    assert path.stat().st_size < 1300
    start = time.perf_counter()
    out = kdbench(monkeypatch, "show", str(path))
    assert time.perf_counter() - start < 20  # before: 93 s of CPU, then a MemoryError traceback
    assert (
        f"{path}:" in out
        and "expands to more than 100,000 values once its anchors and aliases" in out
    )


def test_a_recursive_alias_is_refused(tmp_path, monkeypatch):
    path = write_recipe(tmp_path, "a: &a [1, *a]\n")
    assert "a recursive anchor" in kdbench(monkeypatch, "show", str(path))


def test_deep_nesting_is_refused(tmp_path, monkeypatch):
    path = write_recipe(
        tmp_path, "a: " + "[" * 3000 + "]" * 3000 + "\n"
    )  # before: a RecursionError traceback
    assert f"{path}: nested too deeply to be a recipe" in kdbench(monkeypatch, "show", str(path))


def test_a_huge_file_is_refused_without_being_parsed(tmp_path, monkeypatch):
    path = write_recipe(tmp_path, "name: tiny\nnote: '" + "x" * (2 << 20) + "'\n")
    out = kdbench(monkeypatch, "show", str(path))
    assert (
        f"{path}: 2,097," in out and "is not a recipe" in out and "limit is 1,048,576 bytes" in out
    )


def test_a_duplicated_key_is_refused_with_both_lines(tmp_path, monkeypatch):
    text = yaml.safe_dump(TINY, sort_keys=False).replace("  lr: 0.05\n", "  lr: 0.05\n  lr: 0.5\n")
    path = write_recipe(tmp_path, text)
    out = kdbench(monkeypatch, "show", str(path))
    first = line_of(path, "lr: 0.05")
    assert (
        f"{path}:{first + 1}: key 'training.lr' is given twice in one mapping (first at line {first})"
        in out
    )


@pytest.mark.parametrize(
    ("content", "line", "byte"),
    [
        ("name: tiny\npaper: Caf\xe9\n".encode("latin-1"), 2, "0xe9"),  # a latin-1 recipe
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 1, "0x89"),  # a binary file
    ],
)
def test_a_recipe_that_is_not_utf8_text_is_refused(tmp_path, monkeypatch, content, line, byte):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    out = kdbench(monkeypatch, "show", str(path))
    assert f"{path}:{line}: not UTF-8 text (byte {byte}" in out and "saved as UTF-8" in out


def _set(section: str, key: str, value):
    def change(d):
        (d[section] if section else d).update({key: value})

    return change


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        (_set("training", "lr", float("inf")), "training.lr", "Input should be a finite number"),
        (_set("training", "lr", float("nan")), "training.lr", "Input should be a finite number"),
        (_set("training", "epochs", True), "training.epochs", "expected a number, got true/false"),
        (_set("", "trials", True), "trials", "expected a number, got true/false"),
        (
            _set("training", "milestones", [True]),
            "training.milestones",
            "expected a number, got true/false",
        ),
        (
            _set("training", "lr_decay", True),
            "training.lr_decay",
            "expected a number, got true/false",
        ),
        (
            _set("training", "milestones", [3, 2]),
            "training.milestones",
            "milestones must increase strictly",
        ),
        (_set("training", "milestones", [2]), "training.milestones", "milestones must lie in 1..1"),
        (_set("training", "milestones", [0]), "training.milestones", "milestones must lie in 1..1"),
        (
            _set("training", "weight_decay", -5e-4),
            "training.weight_decay",
            "greater than or equal to 0",
        ),
        (_set("training", "momentum", -0.9), "training.momentum", "greater than or equal to 0"),
        (_set("training", "lr_decay", 0), "training.lr_decay", "greater than 0"),
        (_set("training", "epochs", 100_000), "training.epochs", "less than or equal to 10000"),
        (_set("", "trials", 1_000_000), "trials", "less than or equal to 100"),
    ],
)
def test_nonsense_numbers_are_refused_with_file_line_and_key(
    tmp_path, monkeypatch, change, key, message
):
    path = with_change(tmp_path, change)
    out = kdbench(monkeypatch, "show", str(path))
    line = line_of(path, f"{key.split('.')[-1]}:")
    assert f"{path}:{line}: key '{key}': " in out and message in out


def test_a_row_milestone_beyond_the_recipes_epochs_is_refused(tmp_path, monkeypatch):
    path = with_change(tmp_path, lambda d: d["rows"][0].update(training={"milestones": [5]}))
    out = kdbench(monkeypatch, "show", str(path))
    line = [i for i, text in enumerate(path.read_text().splitlines(), 1) if "milestones:" in text][
        1
    ]
    assert f"{path}:{line}: rows[0].training.milestones [5]: milestones must lie in 1..1" in out
    assert "it trains the recipe's training.epochs (1)" in out


def test_a_duplicated_row_label_is_refused_at_its_line(tmp_path, monkeypatch):
    path = with_change(tmp_path, lambda d: d["rows"].insert(1, {"label": "KD", "method": "kd"}))
    out = kdbench(monkeypatch, "show", str(path))
    second = [i for i, line in enumerate(path.read_text().splitlines(), 1) if "label: KD" in line][
        1
    ]
    assert (
        f"{path}:{second}: rows[1].label 'KD' is already the label of rows[0]: row labels must be unique"
        in out
    )


@pytest.mark.parametrize(
    ("params", "key", "message"),
    [
        (
            {"params": {"kd_temperature": -4}},
            "rows.0.params.kd_temperature",
            "a temperature must be > 0",
        ),
        ({"params": {"kd_weight": -0.9}}, "rows.0.params.kd_weight", "a loss weight must be ≥ 0"),
        ({"params": {"kd_weight": float("inf")}}, "rows.0.params.kd_weight", "finite number"),
        (
            {"params": {"ce_weight": True}},
            "rows.0.params.ce_weight",
            "expected a number, got true/false",
        ),
        (
            {"params_by_column": {"r20_r8": {"ce_weight": -1}}},
            "rows.0.params_by_column.r20_r8.ce_weight",
            "a loss weight must be ≥ 0",
        ),
    ],
)
def test_invalid_method_parameters_are_refused_at_load_with_their_line(
    tmp_path, monkeypatch, params, key, message
):
    path = with_change(tmp_path, lambda d: d["rows"][0].update(params))
    out = kdbench(monkeypatch, "show", str(path))
    assert (
        f"{path}:{line_of(path, key.split('.')[-1] + ':')}: key '{key}': " in out and message in out
    )


# Loss weights and softmax temperatures of the methods' Params, by the names the methods give them.
WEIGHT_NAMES = {"alpha", "beta", "gamma", "w_dist", "w_angle"}
TEMPERATURE_NAMES = {"nce_t", "soft"}


def _signed_fields() -> list[tuple[str, str, str]]:
    from kdbench import methods

    found = []
    for name in methods.names():
        for field in methods.get(name).Params.model_fields:
            if field.endswith("weight") or field in WEIGHT_NAMES:
                found.append((name, field, "weight"))
            elif field.endswith("temperature") or field in TEMPERATURE_NAMES:
                found.append((name, field, "temperature"))
    return found


@pytest.mark.parametrize(("method", "field", "kind"), _signed_fields())
def test_every_methods_weights_and_temperatures_refuse_wrong_signs(method, field, kind):
    from kdbench import methods
    from pydantic import ValidationError

    own = "|greater than (or equal to )?0"  # a field that declares its own bound (Field(ge=0))
    with pytest.raises(
        ValidationError,
        match=("a loss weight must be ≥ 0" if kind == "weight" else "a temperature must be > 0")
        + own,
    ):
        methods.resolve_params(method, None, {field: -1.0})
    if kind == "temperature":
        with pytest.raises(ValidationError):
            methods.resolve_params(method, None, {field: 0.0})
    methods.resolve_params(method, None, {field: 0.5})  # a positive value is still taken


def test_the_sign_check_covers_every_method():
    from kdbench import methods

    covered = {method for method, _, _ in _signed_fields()}
    assert covered == set(methods.names())
    assert {
        ("dkd", "beta"),
        ("dist", "gamma"),
        ("rkd", "w_angle"),
        ("crd", "nce_t"),
        ("mlkd", "temperature"),
    } <= {(m, f) for m, f, _ in _signed_fields()}


def test_trials_and_plan_size_are_bounded(tmp_path, monkeypatch):
    path = write_recipe(tmp_path, yaml.safe_dump(TINY))
    assert "1000 trials per cell: choose 1 to 100" in kdbench(
        monkeypatch, "show", str(path), "--trials", "1000"
    )
    many = with_change(
        tmp_path, lambda d: d["rows"].extend({"label": f"KD{i}", "method": "kd"} for i in range(60))
    )
    out = kdbench(monkeypatch, "show", str(many), "--trials", "100")
    assert (
        "62 rows × 1 columns × 100 trials would plan up to 6,200 runs, more than the 5,000" in out
    )


# ---------------------------------------------------------------- command lines that used to end in a traceback


def test_a_file_that_is_not_a_spec_is_not_called_corrupted(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text("# kdbench\n")
    out = kdbench(
        monkeypatch, "train", str(readme), "--results", str(tmp_path / "r"), "--device", "cpu"
    )
    assert f"{readme} is not a run spec (not JSON" in out and "Delete" not in out
    binary = tmp_path / "model.pt"
    binary.write_bytes(b"\x80\x02\xff\xfe")
    assert f"{binary} is not a run spec" in kdbench(
        monkeypatch, "train", str(binary), "--results", str(tmp_path / "r")
    )


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_a_cuda_device_without_cuda_is_one_error_line(tmp_path, monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = write_recipe(tmp_path, yaml.safe_dump(TINY))
    out = kdbench(
        monkeypatch, "reproduce", str(path), "--results", str(tmp_path / "r"), "--device", device
    )
    assert f"--device {device} requested but CUDA is not available on this machine" in out


@pytest.mark.parametrize(
    ("executor", "option", "owner"),
    [
        ("local", ["--partition", "gpu"], "slurm"),
        ("local", ["--time", "240"], "slurm"),  # the default value, given: still refused
        ("local", ["--no-wait"], "slurm"),
        ("local", ["--slurm-setup", "module load cuda"], "slurm"),
        ("slurm", ["--runs-per-gpu", "2"], "local"),
        ("slurm", ["--cpu-jobs", "4"], "local"),
    ],
)
def test_an_option_of_the_other_executor_is_one_error_line(
    tmp_path, monkeypatch, executor, option, owner
):
    path = write_recipe(tmp_path, yaml.safe_dump(TINY))
    results = tmp_path / "r"
    out = kdbench(
        monkeypatch,
        "reproduce",
        str(path),
        "--results",
        str(results),
        "--executor",
        executor,
        *option,
    )
    assert (
        f"error: {option[0]} is an option of --executor {owner}; --executor {executor} does not use it"
        in out
    )
    assert not results.exists()  # refused before anything is planned or recorded


def test_an_unknown_executor_names_the_choices(tmp_path, monkeypatch):
    path = write_recipe(tmp_path, yaml.safe_dump(TINY))
    out = kdbench(monkeypatch, "reproduce", str(path), "--executor", "slrum")
    assert "'slrum' is not one of 'local', 'slurm'" in out


@pytest.mark.parametrize(
    "content", ["", '<!DOCTYPE html>\n<html><body><table><tr><td>1</td></tr>\n</table>\n"<p>']
)
def test_a_baseline_that_is_not_a_compare_csv_is_one_error_line(tmp_path, monkeypatch, content):
    recipe = write_recipe(tmp_path, yaml.safe_dump(TINY))
    baseline = tmp_path / "baseline.csv"
    baseline.write_text(content)
    out = kdbench(
        monkeypatch,
        "compare",
        str(tmp_path / "r"),
        "--recipe",
        str(recipe),
        "--baseline",
        str(baseline),
    )
    assert f"baseline {baseline} is not a kdbench compare CSV" in out


def test_compare_output_into_a_missing_folder_or_onto_a_folder(tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path, yaml.safe_dump(TINY))
    missing = tmp_path / "nowhere" / "table.md"
    out = kdbench(
        monkeypatch,
        "compare",
        str(tmp_path / "r"),
        "--recipe",
        str(recipe),
        "--format",
        "markdown",
        "-o",
        str(missing),
    )
    assert f"--output {missing}: the folder {missing.parent} does not exist" in out
    out = kdbench(
        monkeypatch, "compare", str(tmp_path / "r"), "--recipe", str(recipe), "-o", str(tmp_path)
    )
    assert f"--output {tmp_path} is a directory: give a file name" in out


@pytest.mark.parametrize("content", [b"not an archive at all", b"PK\x03\x04 truncated zip"])
def test_an_npz_path_that_is_not_an_npz_is_one_error_line(tmp_path, monkeypatch, content):
    bad = tmp_path / "images.npz"
    bad.write_bytes(content)
    spec = spec_file(tmp_path, _on_dataset("npz", {"path": str(bad)}), teacher=True)
    out = kdbench(
        monkeypatch, "train", str(spec), "--results", str(tmp_path / "r"), "--device", "cpu"
    )
    assert f"npz dataset file {bad} is not a readable .npz archive" in out


def test_status_watch_off_a_terminal_prints_a_line_per_change(tmp_path, monkeypatch):
    from kdbench.store.run_dir import RunDir

    results = tmp_path / "results"
    spec = plan(Recipe.model_validate(TINY), "full").ordered()[0]
    run = RunDir(results, spec.run_id)
    run.path.mkdir(parents=True)
    run.spec_file.write_text(spec.model_dump_json())
    naps = []

    def sleep(seconds):
        naps.append(seconds)
        if len(naps) == 1:
            run.failed_file.write_text(
                json.dumps({"error": "TrainingDiverged", "message": "loss is nan at epoch 1"})
            )
        elif len(naps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr("time.sleep", sleep)
    monkeypatch.setenv("COLUMNS", "2000")
    result = CliRunner().invoke(cli.app, ["status", "--watch", "--results", str(results)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"watching every run in {results}")
    assert re.fullmatch(
        rf"\d\d:\d\d:\d\d pending ce resnet20 s0 \({spec.run_id}\): epoch 0/1", lines[1]
    )
    assert re.fullmatch(
        rf"\d\d:\d\d:\d\d failed ce resnet20 s0 \({spec.run_id}\): epoch 0/1; TrainingDiverged: loss is nan at "
        "epoch 1",
        lines[2],
    )
    assert len(lines) == 3  # the third poll saw no change: no line


# ---------------------------------------------------------------- finished runs that cannot be trusted, and --trials

TWO_ROWS = {
    **TINY,
    "rows": [
        {"label": "KD", "method": "kd"},
        {"label": "KD T2", "method": "kd", "params": {"kd_temperature": 2}},
        {"label": "Teacher", "method": "teacher"},
    ],
}


def run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    """Run the CLI in-process, whatever its exit code (no traceback); its output on one line."""
    monkeypatch.setenv("COLUMNS", "2000")
    result = CliRunner().invoke(cli.app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory) -> tuple[Path, Path]:
    """TWO_ROWS reproduced once on tiny synthetic data (a teacher and two KD runs, one epoch each)."""
    folder = tmp_path_factory.mktemp("reproduced")
    recipe = folder / "two.yaml"
    recipe.write_text(yaml.safe_dump(TWO_ROWS, sort_keys=False))
    result = CliRunner().invoke(
        cli.app, ["reproduce", str(recipe), "--results", str(folder / "results"), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    return recipe, folder / "results"


@pytest.fixture()
def copy(reproduced, tmp_path) -> tuple[Path, Path]:
    import shutil

    recipe, results = reproduced
    shutil.copytree(results, tmp_path / "results")
    return recipe, tmp_path / "results"


def _kd_run(recipe: Path, results: Path):
    from kdbench.recipe import load_recipe
    from kdbench.store.run_dir import RunDir

    cell = next(c for c in plan(load_recipe(recipe), "full").cells if c.row == "KD")
    return RunDir(results, cell.run_ids[0])


def _csv_cell(monkeypatch, results: Path, recipe: Path, row: str, out: Path) -> dict:
    import csv

    run_cli(
        monkeypatch,
        "compare",
        str(results),
        "--recipe",
        str(recipe),
        "--format",
        "csv",
        "-o",
        str(out),
    )
    return next(
        r for r in csv.DictReader(out.open()) if r["row"] == row and r["quantity"] == "top1"
    )


def test_a_run_without_its_checksum_manifest_is_shown_unverified_everywhere(
    copy, monkeypatch, tmp_path
):
    recipe, results = copy
    run = _kd_run(recipe, results)
    run.checksums_file.unlink()
    result = json.loads(run.result_file.read_text())
    run.result_file.write_text(
        json.dumps({**result, "best_top1": 99.99})
    )  # an edit nothing can detect now
    cell = _csv_cell(monkeypatch, results, recipe, "KD", tmp_path / "t.csv")
    assert float(cell["ours_mean"]) == 99.99 and cell["n_unverified"] == "1"  # shown, and marked
    out = run_cli(monkeypatch, "compare", str(results), "--recipe", str(recipe))
    assert "99.99 (n=1) [1 unverified]" in out
    why = f"run {run.run_id} is unverified: result.json, metrics.jsonl, model.pt have no recorded sha256 ({run.checksums_file} is missing)"
    assert why in out and f"rm -r {run.path}" in out
    assert why in run_cli(monkeypatch, "status", str(recipe), "--results", str(results))
    again = run_cli(
        monkeypatch, "reproduce", str(recipe), "--results", str(results), "--device", "cpu"
    )
    assert why in again  # reused, but never silently


def test_a_run_whose_result_fails_its_checksum_says_so_in_compare_status_and_reproduce(
    copy, monkeypatch, tmp_path
):
    recipe, results = copy
    run = _kd_run(recipe, results)
    result = json.loads(run.result_file.read_text())
    run.result_file.write_text(json.dumps({**result, "best_top1": 99.99}))
    why = f"run {run.run_id}: {run.result_file} does not match its recorded sha256"
    repair = f"Repair: rm -f {run.result_file}"
    cell = _csv_cell(monkeypatch, results, recipe, "KD", tmp_path / "t.csv")
    assert cell["status"] == "failed" and cell["n"] == "0"
    compared = run_cli(monkeypatch, "compare", str(results), "--recipe", str(recipe))
    assert f"corrupted: {why}" in compared and repair in compared
    status = run_cli(monkeypatch, "status", str(recipe), "--results", str(results))
    assert (
        "2 done 0 running 1 failed" in status and f"corrupted: {why}" in status and repair in status
    )
    again = run_cli(
        monkeypatch, "reproduce", str(recipe), "--results", str(results), "--device", "cpu"
    )
    assert why in again and repair in again


@pytest.mark.e2e
def test_a_subset_reproduced_with_more_trials_changes_only_its_cells(copy, monkeypatch, tmp_path):
    recipe, results = copy
    out = run_cli(
        monkeypatch,
        "reproduce",
        str(recipe),
        "--results",
        str(results),
        "--device",
        "cpu",
        "--methods",
        "KD",
        "--trials",
        "2",
    )
    assert "3 of 3 runs done" in out  # the teacher, KD's first trial (reused) and its second
    kd = _csv_cell(monkeypatch, results, recipe, "KD", tmp_path / "a.csv")
    other = _csv_cell(monkeypatch, results, recipe, "KD T2", tmp_path / "b.csv")
    assert (kd["n"], kd["n_planned"], kd["status"]) == ("2", "2", "done")
    assert (other["n"], other["n_planned"], other["status"]) == (
        "1",
        "1",
        "done",
    )  # before: 1 of 2, "partial"
    status = run_cli(monkeypatch, "status", str(recipe), "--results", str(results))
    assert "4 done 0 running 0 failed 0 skipped 0 pending" in status
    # A subset without --trials leaves the counts as recorded; the whole table with --trials sets every cell.
    run_cli(
        monkeypatch,
        "reproduce",
        str(recipe),
        "--results",
        str(results),
        "--device",
        "cpu",
        "--methods",
        "KD T2",
    )
    assert _csv_cell(monkeypatch, results, recipe, "KD", tmp_path / "c.csv")["n_planned"] == "2"
    run_cli(
        monkeypatch,
        "reproduce",
        str(recipe),
        "--results",
        str(results),
        "--device",
        "cpu",
        "--trials",
        "1",
    )
    assert _csv_cell(monkeypatch, results, recipe, "KD", tmp_path / "d.csv")["n_planned"] == "1"
