"""Teachers imported from checkpoint files: sha256-verified, safely loaded, strictly checked, recorded."""

from __future__ import annotations

import pytest
import torch

from kdbench import train
from kdbench.checkpoints import sha256_of
from kdbench.errors import KdbenchError
from kdbench.plan import plan
from kdbench.recipe import Recipe
from kdbench.results.store import RunDir

DATA = {"name": "synthetic", "options": {"num_classes": 4, "image_size": 16, "train_size": 32, "test_size": 16}}
TRAINING = {"epochs": 1, "batch_size": 16, "lr": 0.05, "milestones": []}


def recipe(checkpoint: dict | None, teacher_model: str = "resnet8") -> Recipe:
    teacher = {"model": teacher_model, "label": "T"} | ({"checkpoint": checkpoint} if checkpoint else {})
    return Recipe.model_validate({
        "name": "imported", "paper": "t", "table": "T", "title": "t", "source": "t",
        "protocol": {"name": "t", "follows": "t"}, "dataset": DATA, "training": TRAINING, "trials": 1,
        "teachers": {"t": teacher}, "columns": [{"id": "c", "teacher": "t", "student": "resnet8", "label": "S"}],
        "rows": [{"label": "KD", "method": "kd"}, {"label": "Teacher", "method": "teacher"}],
    })


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory):
    """A resnet8 trained by kdbench: its model.pt is the checkpoint other tests import."""
    results = tmp_path_factory.mktemp("source")
    spec = next(s for s in plan(recipe(None), "full").specs.values() if s.teacher is None)
    result = train.run(spec, results, device="cpu", progress=False)
    return RunDir(results, spec.run_id).model_file, result


def teacher_spec(r: Recipe):
    return next(s for s in plan(r, "full").specs.values() if s.teacher is None)


def test_imported_teacher_is_verified_evaluated_and_used(trained_teacher, tmp_path):
    path, source = trained_teacher
    r = recipe({"path": str(path), "sha256": sha256_of(path), "source": "a kdbench run"})
    spec = teacher_spec(r)
    assert spec.checkpoint is not None and spec.method == "ce"
    result = train.run(spec, tmp_path, device="cpu", progress=False)
    assert result["imported"]["sha256"] == sha256_of(path) and result["epochs"] == 1
    assert result["best_top1"] == source["last_top1"]  # the same weights on the same test set
    student = next(s for s in plan(r, "full").specs.values() if s.method == "kd")
    assert student.teacher.run_id == spec.run_id
    assert train.run(student, tmp_path, device="cpu", progress=False)["epochs"] == 1


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
        train.run(spec, tmp_path, device="cpu", progress=False)
    assert RunDir(tmp_path, spec.run_id).is_failed() and not RunDir(tmp_path, spec.run_id).is_done()


class Payload:
    """Anything that is not tensors/containers: weights_only loading must refuse it."""


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, path)
    spec = teacher_spec(recipe({"path": str(path), "sha256": sha256_of(path)}))
    with pytest.raises(KdbenchError, match="cannot be loaded safely: torch.load\\(weights_only=True\\) refused it"):
        train.run(spec, tmp_path / "r", device="cpu", progress=False)


def test_wrong_architecture_is_refused(trained_teacher, tmp_path):
    path, _ = trained_teacher
    spec = teacher_spec(recipe({"path": str(path), "sha256": sha256_of(path)}, teacher_model="resnet14"))
    with pytest.raises(KdbenchError, match="does not fit the architecture 'resnet14'"):
        train.run(spec, tmp_path, device="cpu", progress=False)


def test_missing_file_says_where_to_put_it(tmp_path):
    spec = teacher_spec(recipe({"path": "teachers/resnet8.pt", "sha256": "a" * 64}))
    with pytest.raises(KdbenchError, match=r"teachers/resnet8.pt not found: put the file \(sha256 a+\) there"):
        train.run(spec, tmp_path, device="cpu", data_dir=tmp_path, progress=False)


def test_repdistiller_files_are_mapped_in_order_with_shapes_checked(trained_teacher, tmp_path):
    path, source = trained_teacher
    state = {k.removeprefix("student."): v for k, v in torch.load(path, weights_only=True).items()}
    foreign = {f"module_{i}": v for i, v in enumerate(state.values())}  # other names, same order
    rd = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": foreign, "epoch": 240}, rd)
    spec = teacher_spec(recipe({"path": str(rd), "sha256": sha256_of(rd), "format": "repdistiller"}))
    assert train.run(spec, tmp_path / "r", device="cpu", progress=False)["best_top1"] == source["last_top1"]
    shuffled = dict(reversed(list(foreign.items())))
    bad = tmp_path / "bad.pth"
    torch.save({"model": shuffled}, bad)
    spec = teacher_spec(recipe({"path": str(bad), "sha256": sha256_of(bad), "format": "repdistiller"}))
    with pytest.raises(KdbenchError, match="does not fit .* matched in registration order"):
        train.run(spec, tmp_path / "r2", device="cpu", progress=False)


def test_tables_record_the_imported_teacher(trained_teacher, tmp_path):
    from kdbench.results import render
    from kdbench.results.compare import compare
    from kdbench.results.tables import record_table

    path, _ = trained_teacher
    digest = sha256_of(path)
    r = recipe({"path": str(path), "sha256": digest})
    p = plan(r, "full")
    record_table(tmp_path, r, "full", p.trials, {})
    train.run(teacher_spec(r), tmp_path, device="cpu", progress=False)
    (comp,) = compare(tmp_path)
    assert set(comp.cells["teacher_checkpoint"]) == {digest}
    assert f"[imported {digest[:8]}]" in render.to_markdown(comp)
