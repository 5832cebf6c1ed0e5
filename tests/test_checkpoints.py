"""Teachers imported from checkpoint files: sha256-verified, safely loaded, strictly checked, recorded."""

from __future__ import annotations

import pytest
import torch
from kdbench import train
from kdbench.errors import KdbenchError
from kdbench.plan import plan
from kdbench.recipe import Recipe
from kdbench.store.records import RunResult
from kdbench.store.run_dir import RunDir
from kdbench.train.checkpoints import sha256_of
from kdbench.train.options import RunOptions

DATA = {
    "name": "synthetic",
    "options": {"num_classes": 4, "image_size": 16, "train_size": 32, "test_size": 16},
}
TRAINING = {"epochs": 1, "batch_size": 16, "lr": 0.05, "milestones": []}


def recipe(checkpoint: dict | None, teacher_model: str = "resnet8") -> Recipe:
    teacher = {"model": teacher_model, "label": "T"} | (
        {"checkpoint": checkpoint} if checkpoint else {}
    )
    return Recipe.model_validate(
        {
            "name": "imported",
            "paper": "t",
            "table": "T",
            "title": "t",
            "source": "t",
            "protocol": {"name": "t", "follows": "t"},
            "dataset": DATA,
            "training": TRAINING,
            "trials": 1,
            "teachers": {"t": teacher},
            "columns": [{"id": "c", "teacher": "t", "student": "resnet8", "label": "S"}],
            "rows": [{"label": "KD", "method": "kd"}, {"label": "Teacher", "method": "teacher"}],
        }
    )


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory):
    """A resnet8 trained by kdbench: its model.pt is the checkpoint other tests import."""
    results = tmp_path_factory.mktemp("source")
    spec = next(s for s in plan(recipe(None), "full").specs.values() if s.teacher is None)
    result = train.run(spec, results, RunOptions(device="cpu"), show_progress=False)
    return RunDir(results, spec.run_id).model_file, result


def teacher_spec(r: Recipe):
    return next(s for s in plan(r, "full").specs.values() if s.teacher is None)


def test_imported_teacher_is_verified_evaluated_and_used(trained_teacher, tmp_path):
    path, source = trained_teacher
    r = recipe({"path": str(path), "sha256": sha256_of(path), "source": "a kdbench run"})
    spec = teacher_spec(r)
    assert spec.checkpoint is not None and spec.method == "ce"
    result = train.run(spec, tmp_path, RunOptions(device="cpu"), show_progress=False)
    assert result.imported.sha256 == sha256_of(path) and result.epochs == 1
    assert result.best_top1 == source.last_top1  # the same weights on the same test set
    student = next(s for s in plan(r, "full").specs.values() if s.method == "kd")
    assert student.teacher.run_id == spec.run_id
    assert train.run(student, tmp_path, RunOptions(device="cpu"), show_progress=False).epochs == 1


def test_run_id_names_the_content_not_the_location(trained_teacher, tmp_path):
    path, _ = trained_teacher
    digest = sha256_of(path)
    copy = tmp_path / "elsewhere.pt"
    copy.write_bytes(path.read_bytes())
    a = teacher_spec(recipe({"path": str(path), "sha256": digest}))
    b = teacher_spec(recipe({"path": str(copy), "sha256": digest}))
    assert a.run_id == b.run_id and a.run_id != teacher_spec(recipe(None)).run_id


def test_sha256_mismatch_is_refused(trained_teacher, tmp_path):
    path, _ = trained_teacher
    spec = teacher_spec(recipe({"path": str(path), "sha256": "0" * 64}))
    with pytest.raises(KdbenchError, match="does not match the recipe's 0000"):
        train.run(spec, tmp_path, RunOptions(device="cpu"), show_progress=False)
    assert RunDir(tmp_path, spec.run_id).is_failed() and not RunDir(tmp_path, spec.run_id).is_done()


class Payload:
    """Anything that is not tensors/containers: weights_only loading must refuse it."""


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, path)
    spec = teacher_spec(recipe({"path": str(path), "sha256": sha256_of(path)}))
    with pytest.raises(
        KdbenchError, match="cannot be loaded safely: torch.load\\(weights_only=True\\) refused it"
    ):
        train.run(spec, tmp_path / "r", RunOptions(device="cpu"), show_progress=False)


def test_wrong_architecture_is_refused(trained_teacher, tmp_path):
    path, _ = trained_teacher
    spec = teacher_spec(
        recipe({"path": str(path), "sha256": sha256_of(path)}, teacher_model="resnet14")
    )
    with pytest.raises(KdbenchError, match="does not fit the architecture 'resnet14'"):
        train.run(spec, tmp_path, RunOptions(device="cpu"), show_progress=False)


def test_missing_file_says_where_to_put_it(tmp_path):
    spec = teacher_spec(recipe({"path": "teachers/resnet8.pt", "sha256": "a" * 64}))
    with pytest.raises(
        KdbenchError, match=r"teachers/resnet8.pt not found: put the file \(sha256 a+\) there"
    ):
        train.run(spec, tmp_path, RunOptions(device="cpu", data_dir=tmp_path), show_progress=False)


def test_repdistiller_files_are_mapped_in_order_with_shapes_checked(trained_teacher, tmp_path):
    path, source = trained_teacher
    state = {k.removeprefix("student."): v for k, v in torch.load(path, weights_only=True).items()}
    foreign = {f"module_{i}": v for i, v in enumerate(state.values())}  # other names, same order
    rd = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": foreign, "epoch": 240}, rd)
    spec = teacher_spec(
        recipe({"path": str(rd), "sha256": sha256_of(rd), "format": "repdistiller"})
    )
    assert (
        train.run(spec, tmp_path / "r", RunOptions(device="cpu"), show_progress=False).best_top1
        == source.last_top1
    )
    shuffled = dict(reversed(list(foreign.items())))
    bad = tmp_path / "bad.pth"
    torch.save({"model": shuffled}, bad)
    spec = teacher_spec(
        recipe({"path": str(bad), "sha256": sha256_of(bad), "format": "repdistiller"})
    )
    with pytest.raises(KdbenchError, match="does not fit .* matched in registration order"):
        train.run(spec, tmp_path / "r2", RunOptions(device="cpu"), show_progress=False)


def test_tables_record_the_imported_teacher(trained_teacher, tmp_path):
    from kdbench.results import render
    from kdbench.results.compare import compare
    from kdbench.results.tables import record_table

    path, _ = trained_teacher
    digest = sha256_of(path)
    r = recipe({"path": str(path), "sha256": digest})
    p = plan(r, "full")
    record_table(tmp_path, r, "full", p.trials, {})
    train.run(teacher_spec(r), tmp_path, RunOptions(device="cpu"), show_progress=False)
    (comp,) = compare(tmp_path)
    assert set(comp.cells["teacher_checkpoint"]) == {digest}
    assert f"[imported {digest[:8]}]" in render.to_markdown(comp)


# --- torchvision weight files (format "torchvision"; kdbench/models/pretrained.py) ----------------------------


def torchvision_file(tmp_path, name: str = "resnet18") -> tuple:
    """A randomly initialised torchvision network saved as torch.hub names its files: <name>-<sha256[:8]>.pth."""
    from kdbench._torchvision import import_torchvision

    torch.manual_seed(0)
    state = getattr(import_torchvision().models, name)(
        num_classes=DATA["options"]["num_classes"]
    ).state_dict()
    staged = tmp_path / "staged.pth"
    torch.save(state, staged)
    digest = sha256_of(staged)
    path = staged.rename(tmp_path / f"{name}-{digest[:8]}.pth")
    return path, digest, state


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_file_imports_with_its_hash_prefix_and_records_the_full_digest(tmp_path, name):
    path, digest, state = torchvision_file(tmp_path, name)
    spec = teacher_spec(
        recipe(
            {"path": str(path), "sha256": digest[:8], "format": "torchvision"},
            teacher_model=f"imagenet/{name}",
        )
    )
    result = train.run(spec, tmp_path / "r", RunOptions(device="cpu"), show_progress=False)
    assert result.imported.model_dump() == {
        "path": str(path),
        "sha256": digest,
        "format": "torchvision",
    }
    saved = torch.load(RunDir(tmp_path / "r", spec.run_id).model_file, weights_only=True)
    saved = {k.removeprefix("student."): v for k, v in saved.items()}
    renamed = {k.replace("classifier.1.", "classifier."): v for k, v in state.items()}
    assert saved.keys() == renamed.keys()
    assert all(torch.equal(saved[k], renamed[k]) for k in renamed)


def test_torchvision_file_with_another_hash_prefix_is_refused(tmp_path):
    path, digest, _ = torchvision_file(tmp_path)
    wrong = "0" * 8 if not digest.startswith("0" * 8) else "f" * 8
    spec = teacher_spec(
        recipe(
            {"path": str(path), "sha256": wrong, "format": "torchvision"},
            teacher_model="imagenet/resnet18",
        )
    )
    with pytest.raises(
        KdbenchError, match=f"sha256 {digest} does not match the recipe's {wrong} \\(a prefix\\)"
    ):
        train.run(spec, tmp_path / "r", RunOptions(device="cpu"), show_progress=False)
    assert RunDir(tmp_path / "r", spec.run_id).is_failed()


def test_a_torchvision_file_for_another_architecture_is_refused(tmp_path):
    path, digest, _ = torchvision_file(tmp_path, "resnet18")
    spec = teacher_spec(
        recipe(
            {"path": str(path), "sha256": digest, "format": "torchvision"},
            teacher_model="imagenet/resnet34",
        )
    )
    with pytest.raises(KdbenchError, match="does not fit the architecture 'imagenet/resnet34'"):
        train.run(spec, tmp_path / "r", RunOptions(device="cpu"), show_progress=False)


def test_hash_prefixes_shorter_than_8_digits_are_invalid():
    with pytest.raises(ValueError, match="sha256"):
        recipe({"path": "resnet34-b627a593.pth", "sha256": "b627a59", "format": "torchvision"})


def test_missing_torchvision_file_names_the_download_url_and_the_expected_accuracy(tmp_path):
    spec = teacher_spec(
        recipe(
            {"path": "resnet34-b627a593.pth", "sha256": "b627a593", "format": "torchvision"},
            teacher_model="imagenet/resnet34",
        )
    )
    with pytest.raises(
        KdbenchError,
        match=r"resnet34-b627a593.pth not found.*Download it from "
        r"https://download.pytorch.org/models/resnet34-b627a593.pth .*top-1 73.314",
    ):
        train.run(spec, tmp_path, RunOptions(device="cpu", data_dir=tmp_path), show_progress=False)


def test_the_pretrained_table_agrees_with_torchvisions_weight_metadata():
    from kdbench import models
    from kdbench._torchvision import import_torchvision
    from kdbench.models import pretrained

    tv = import_torchvision().models
    enums = {
        "resnet18": tv.ResNet18_Weights,
        "resnet34": tv.ResNet34_Weights,
        "resnet50": tv.ResNet50_Weights,
        "resnet101": tv.ResNet101_Weights,
        "resnet152": tv.ResNet152_Weights,
        "mobilenet_v2": tv.MobileNet_V2_Weights,
    }
    assert sorted(pretrained.TORCHVISION_IMAGENET1K_V1) == sorted(f"imagenet/{n}" for n in enums)
    for name, enum in enums.items():
        ours, theirs = pretrained.for_model(f"imagenet/{name}"), enum.IMAGENET1K_V1
        assert (
            ours.url == theirs.url and ours.top1 == theirs.meta["_metrics"]["ImageNet-1K"]["acc@1"]
        )
        assert (
            ours.sha256_prefix == theirs.url.rsplit("-", 1)[1].removesuffix(".pth")
            and len(ours.sha256_prefix) == 8
        )
        with torch.device("meta"):
            assert (
                sum(p.numel() for p in models.create(ours.model, 1000).parameters())
                == theirs.meta["num_params"]
            )
        assert pretrained.for_file(ours.file) is ours
        if ours.legacy_file:
            assert pretrained.for_file(ours.legacy_file) is ours
    assert (
        pretrained.for_model("imagenet/mobilenet_v1") is None
        and pretrained.for_file("other.pth") is None
    )


def test_show_says_where_to_get_a_torchvision_teacher_and_what_it_should_score(tmp_path):
    import yaml
    from kdbench.cli import app
    from typer.testing import CliRunner

    r = recipe(
        {"path": "resnet34-b627a593.pth", "sha256": "b627a593", "format": "torchvision"},
        teacher_model="imagenet/resnet34",
    )
    path = tmp_path / "imported.yaml"
    path.write_text(yaml.safe_dump(r.model_dump(mode="json", exclude_defaults=True)))
    out = CliRunner().invoke(app, ["show", str(path), "--results", str(tmp_path / "results")])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert (
        "Teacher t is imported: resnet34-b627a593.pth (torchvision, sha256 b627a593); torchvision IMAGENET1K_V1 "
        "weights of imagenet/resnet34: https://download.pytorch.org/models/resnet34-b627a593.pth, sha256 prefix "
        "b627a593, published top-1 73.314"
    ) in text


# --- the authors' checkpoint layouts (RepDistiller, mdistiller, SimKD, DIST), each written here -----------------


def their_state(path) -> dict:
    """The fixture's resnet8 under other parameter names in the same order, as the RepDistiller zoo names them."""
    state = {k.removeprefix("student."): v for k, v in torch.load(path, weights_only=True).items()}
    return {f"layer_{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(state.items())}


def import_file(tmp_path, file, fmt: str = "repdistiller") -> RunResult:
    spec = teacher_spec(recipe({"path": str(file), "sha256": sha256_of(file), "format": fmt}))
    return train.run(
        spec, tmp_path / f"r-{file.name}", RunOptions(device="cpu"), show_progress=False
    )


def test_repdistiller_last_file_with_its_argparse_options_loads(trained_teacher, tmp_path):
    """RepDistiller train_teacher.py saves {'opt': argparse.Namespace, 'model', 'optimizer'} as {model}_last.pth."""
    import argparse

    path, source = trained_teacher
    optimizer = torch.optim.SGD(
        [torch.nn.Parameter(torch.zeros(2))], lr=0.05, momentum=0.9
    ).state_dict()
    opt = argparse.Namespace(
        model="resnet8", learning_rate=0.05, lr_decay_epochs=[150, 180, 210], trial=0
    )
    file = tmp_path / "resnet8_last.pth"
    torch.save({"opt": opt, "model": their_state(path), "optimizer": optimizer}, file)
    assert import_file(tmp_path, file).best_top1 == source.last_top1


def test_repdistiller_epoch_file_with_a_numpy_accuracy_loads(trained_teacher, tmp_path):
    import numpy as np

    path, source = trained_teacher
    file = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": their_state(path), "accuracy": np.float64(71.98)}, file)
    assert import_file(tmp_path, file).best_top1 == source.last_top1


@pytest.mark.parametrize("name", ["best", "latest", "epoch_240"])
def test_mdistiller_distiller_file_gives_its_student(trained_teacher, tmp_path, name):
    """mdistiller engine/trainer.py saves the DataParallel distiller: {'model': {module.student.*, module.teacher.*,
    extra modules}, 'optimizer', 'best_acc', 'epoch'}; the student is the network."""
    path, source = trained_teacher
    student = {f"module.student.{k}": v for k, v in their_state(path).items()}
    teacher = {f"module.teacher.{k}": torch.zeros_like(v) for k, v in their_state(path).items()}
    file = tmp_path / name
    torch.save(
        {
            "epoch": 240,
            "model": {**student, **teacher, "module.conv_reg.weight": torch.zeros(3, 3)},
            "optimizer": {"state": {}, "param_groups": []},
            "best_acc": torch.tensor(71.0),
        },
        file,
    )
    assert import_file(tmp_path, file).best_top1 == source.last_top1


def test_simkd_best_file_of_a_dataparallel_model_loads(trained_teacher, tmp_path):
    """SimKD train_teacher.py:230-236 saves {'epoch', 'best_acc', 'model'}; nn.DataParallel prefixes 'module.'."""
    path, source = trained_teacher
    file = tmp_path / "resnet8_best.pth"
    torch.save(
        {
            "epoch": 231,
            "best_acc": 71.0,
            "model": {f"module.{k}": v for k, v in their_state(path).items()},
        },
        file,
    )
    assert import_file(tmp_path, file).best_top1 == source.last_top1


def test_a_state_dict_under_state_dict_loads_whatever_the_format_name(trained_teacher, tmp_path):
    path, source = trained_teacher
    state = {k.removeprefix("student."): v for k, v in torch.load(path, weights_only=True).items()}
    file = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": state, "epoch": 1}, file)
    assert import_file(tmp_path, file, fmt="kdbench").best_top1 == source.last_top1


def test_a_file_without_weights_says_what_it_holds(tmp_path):
    file = tmp_path / "empty.pth"
    torch.save({"epoch": 3, "best_acc": 1.0}, file)
    with pytest.raises(
        KdbenchError, match=r"holds no state dict .* it holds 'epoch' \(int\), 'best_acc' \(float\)"
    ):
        import_file(tmp_path, file)


def test_a_refused_global_is_named(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, path)
    spec = teacher_spec(recipe({"path": str(path), "sha256": sha256_of(path)}))
    with pytest.raises(
        KdbenchError,
        match=r"Unsupported global: GLOBAL (tests\.)?test_checkpoints\.Payload was not an allowed global by default\)",
    ) as caught:
        train.run(spec, tmp_path / "r", RunOptions(device="cpu"), show_progress=False)
    assert "safe_globals" not in str(
        caught.value
    )  # torch's advice to allow the class is not repeated
    assert "Payload" in RunDir(tmp_path / "r", spec.run_id).failure()["message"]


def test_a_wrong_architecture_error_keeps_the_keys_and_shapes(trained_teacher, tmp_path):
    path, _ = trained_teacher
    spec = teacher_spec(
        recipe({"path": str(path), "sha256": sha256_of(path)}, teacher_model="resnet14")
    )
    with pytest.raises(
        KdbenchError,
        match=r"does not fit the architecture 'resnet14': Error\(s\) in loading state_dict "
        r"for CifarResNet: Missing key\(s\) in state_dict: \"stages\.0\.1\.conv1\.weight\"",
    ) as caught:
        train.run(spec, tmp_path, RunOptions(device="cpu"), show_progress=False)
    assert "\n" not in str(caught.value)
