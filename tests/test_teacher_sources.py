"""Where teachers come from: the authors' released files (downloaded, trusted on first use) or kdbench's own
training, and which epoch of a trained teacher its students read. No test uses the network: downloads read
``file://`` URLs of files written here."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import torch
import yaml
from kdbench import train
from kdbench.cli import app
from kdbench.errors import KdbenchError
from kdbench.io import sha256_file
from kdbench.models import pretrained
from kdbench.plan import CheckpointRef, RunSpec, plan
from kdbench.recipe import Recipe, load_recipe
from kdbench.store.run_dir import RunDir
from kdbench.train import checkpoints
from kdbench.train.options import RunOptions
from typer.testing import CliRunner

DATA = {
    "name": "synthetic",
    "options": {"num_classes": 4, "image_size": 16, "train_size": 32, "test_size": 16},
}


def recipe(teacher: dict, source: str = "released", epochs: int = 1) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "sources",
            "paper": "t",
            "table": "T",
            "title": "t",
            "source": "t",
            "protocol": {"name": "t", "follows": "t"},
            "dataset": DATA,
            "training": {"epochs": epochs, "batch_size": 16, "lr": 0.05, "milestones": []},
            "trials": 1,
            "teacher_source": source,
            "teachers": {"t": {"model": "resnet8", "label": "T", **teacher}},
            "columns": [{"id": "c", "teacher": "t", "student": "resnet8", "label": "S"}],
            "rows": [{"label": "KD", "method": "kd"}, {"label": "Teacher", "method": "teacher"}],
        }
    )


def teacher_spec(r: Recipe, profile: str = "full") -> RunSpec:
    return next(s for s in plan(r, profile).specs.values() if s.teacher is None)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A trained resnet8 saved as RepDistiller does (``{'model': state, 'epoch': …}``)."""
    results = tmp_path_factory.mktemp("source")
    spec = teacher_spec(recipe({}, source="trained"))
    result = train.run(spec, results, RunOptions(device="cpu"), show_progress=False)
    state = {
        k.removeprefix("student."): v
        for k, v in torch.load(RunDir(results, spec.run_id).model_file).items()
    }
    buffer = io.BytesIO()
    torch.save({"model": state, "epoch": 1}, buffer)
    return buffer.getvalue(), result


@pytest.fixture
def release(monkeypatch, tmp_path, teacher_file):
    """A released resnet8 in the catalogue: a dead first link, then a member of a tar archive (file:// URLs)."""
    content, _ = teacher_file
    archive = tmp_path / "site" / "teachers.tar"
    archive.parent.mkdir()
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("teachers/resnet8_vanilla/ckpt_epoch_240.pth")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    entry = pretrained.ReleasedTeacher(
        "test/resnet8",
        "resnet8",
        "teachers/test/resnet8_vanilla/ckpt_epoch_240.pth",
        "repdistiller",
        "a test release",
        (
            pretrained.Download((tmp_path / "site" / "gone.pth").as_uri()),
            pretrained.Download(archive.as_uri(), "teachers/resnet8_vanilla/ckpt_epoch_240.pth"),
        ),
    )
    monkeypatch.setitem(pretrained.RELEASED, entry.name, entry)
    return entry


def test_released_teacher_is_downloaded_recorded_on_first_use_and_imported(
    release, tmp_path, teacher_file
):
    content, source = teacher_file
    data_dir = tmp_path / "data"
    r = recipe({"released": "test/resnet8"})
    spec = teacher_spec(r)
    assert spec.checkpoint == CheckpointRef(
        path=release.path, sha256=None, format="repdistiller", released="test/resnet8"
    )
    (path,) = checkpoints.prepare(plan(r).specs.values(), data_dir)
    assert path == data_dir / release.path and path.read_bytes() == content
    assert (
        data_dir / "teachers" / "archives" / "teachers.tar"
    ).is_file()  # kept for the archive's other members
    record = json.loads(checkpoints.first_use_file(data_dir).read_text())
    assert (
        record[release.path]["sha256"] == sha256_file(path)
        and record[release.path]["released"] == "test/resnet8"
    )
    result = train.run(
        spec, tmp_path / "r", RunOptions(device="cpu", data_dir=data_dir), show_progress=False
    )
    assert result.imported.sha256 == sha256_file(path) and result.best_top1 == source.last_top1


def test_a_file_that_changed_since_its_first_use_is_refused(release, tmp_path):
    data_dir = tmp_path / "data"
    r = recipe({"released": "test/resnet8"})
    (path,) = checkpoints.prepare(plan(r).specs.values(), data_dir)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(
        KdbenchError,
        match=r"differs from [0-9a-f]{64}, recorded in .*sha256-first-use.json when the "
        r"file was first used",
    ):
        train.run(
            teacher_spec(r),
            tmp_path / "r",
            RunOptions(device="cpu", data_dir=data_dir),
            show_progress=False,
        )


def test_offline_one_message_names_every_missing_file_and_where_to_put_it(monkeypatch, tmp_path):
    for model in ("resnet8", "resnet14"):
        monkeypatch.setitem(
            pretrained.RELEASED,
            f"test/{model}",
            pretrained.ReleasedTeacher(
                f"test/{model}",
                model,
                f"teachers/test/{model}.pth",
                "repdistiller",
                f"the {model} release",
                (pretrained.Download((tmp_path / "offline" / f"{model}.pth").as_uri()),),
            ),
        )
    r = Recipe.model_validate(
        {
            **recipe({}).model_dump(),
            "teachers": {
                "a": {"model": "resnet8", "label": "A", "released": "test/resnet8"},
                "b": {"model": "resnet14", "label": "B", "released": "test/resnet14"},
            },
            "columns": [
                {"id": "a", "teacher": "a", "student": "resnet8", "label": "S"},
                {"id": "b", "teacher": "b", "student": "resnet8", "label": "S"},
            ],
        }
    )
    with pytest.raises(KdbenchError) as caught:
        checkpoints.prepare(plan(r).specs.values(), tmp_path / "data")
    message = str(caught.value)
    assert message.startswith("2 teacher checkpoint(s) missing, so no run was started:")
    for model in ("resnet8", "resnet14"):
        assert (
            f"{tmp_path / 'data' / 'teachers' / 'test' / model}.pth: the download failed" in message
        )
        assert (
            f"put the file there (its sha256 is recorded on first use); it is one of the {model} release: download it from"
            in message
        )
    assert message.endswith("Or train the teachers instead: add --teachers trained.")


def test_reproduce_checks_the_teacher_files_before_any_run_starts(release, monkeypatch, tmp_path):
    monkeypatch.setitem(
        pretrained.RELEASED,
        "test/resnet8",
        pretrained.ReleasedTeacher(
            "test/resnet8",
            "resnet8",
            release.path,
            "repdistiller",
            "a test release",
            by_hand="https://example.org/folder",
        ),
    )
    path = tmp_path / "sources.yaml"
    path.write_text(
        yaml.safe_dump(
            recipe({"released": "test/resnet8"}).model_dump(mode="json", exclude_defaults=True)
        )
    )
    results = tmp_path / "results"
    out = CliRunner().invoke(
        app,
        [
            "reproduce",
            str(path),
            "--profile",
            "ci",
            "--results",
            str(results),
            "--data-dir",
            str(tmp_path / "data"),
            "--device",
            "cpu",
        ],
    )
    text = " ".join(out.output.split())
    assert out.exit_code == 2, out.output
    assert "1 teacher checkpoint(s) missing, so no run was started" in text
    assert "by hand from https://example.org/folder (file ckpt_epoch_240.pth)" in text
    assert not (results / "runs").exists()


def test_sha256_published_in_the_catalogue_is_checked(monkeypatch, tmp_path, teacher_file):
    content, _ = teacher_file
    site = tmp_path / "site.pth"
    site.write_bytes(content)
    monkeypatch.setitem(
        pretrained.RELEASED,
        "test/resnet8",
        pretrained.ReleasedTeacher(
            "test/resnet8",
            "resnet8",
            "teachers/t.pth",
            "repdistiller",
            "a test release",
            (pretrained.Download(site.as_uri()),),
            sha256="0" * 64,
        ),
    )
    with pytest.raises(KdbenchError, match="does not match the recipe's 0{64}"):
        checkpoints.prepare(
            plan(recipe({"released": "test/resnet8"})).specs.values(), tmp_path / "data"
        )


def test_teacher_source_trained_trains_every_teacher_with_the_run_ids_of_before():
    released, trained = (
        load_recipe("dist-table5"),
        load_recipe("dist-table5").with_teacher_source("trained"),
    )
    imported = [s for s in plan(released).specs.values() if s.checkpoint is not None]
    assert sorted(s.checkpoint.released for s in imported) == [
        "crd/ResNet50",
        "crd/resnet32x4",
        "crd/resnet56",
        "crd/wrn_40_2",
    ]
    assert all(
        s.checkpoint.sha256 is None and s.checkpoint.path.startswith("teachers/crd/")
        for s in imported
    )
    specs = plan(trained).specs.values()
    assert all(s.checkpoint is None for s in specs)
    # The teachers kdbench trained before teacher sources existed keep their runs.
    assert "ce-resnet32x4-s0-6c83df82908d" in {s.run_id for s in specs}
    # The torchvision import keeps the id it had before teacher sources (d40acc531447 was its id before DIST's recipes
    # set drop_last, which is part of every dist-table2 spec, the imported teachers' included).
    assert {
        s.run_id
        for s in plan(load_recipe("dist-table2")).specs.values()
        if s.checkpoint is not None
    } >= {"ce-imagenet-resnet34-s0-5b830eb01da3"}
    with pytest.raises(
        KdbenchError, match="unknown teacher source 'trainde'. Did you mean 'trained'"
    ):
        released.with_teacher_source("trainde")


def test_released_names_are_checked(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(
        yaml.safe_dump(
            recipe({"released": "crd/resnet32x5"}).model_dump(mode="json", exclude_defaults=True)
        )
    )
    with pytest.raises(
        KdbenchError,
        match=r"typo.yaml:\d+: key 'teachers.t.released': unknown released teacher "
        r"'crd/resnet32x5'. Did you mean 'crd/resnet32x4'",
    ):
        load_recipe(path)
    with pytest.raises(KdbenchError, match="unknown released teacher 'crd/resnet32x5'"):
        plan(recipe({"released": "crd/resnet32x5"}))
    with pytest.raises(
        KdbenchError, match="names the released file 'crd/resnet56', which is a resnet56"
    ):
        plan(recipe({"released": "crd/resnet56"}))
    with pytest.raises(ValueError, match="either a 'checkpoint' file or a 'released' one"):
        recipe({"released": "crd/resnet56", "checkpoint": {"path": "x.pth"}})


def test_every_released_teacher_names_where_to_get_it():
    for entry in pretrained.RELEASED.values():
        assert entry.downloads or entry.by_hand, entry.name
        assert entry.path.startswith("teachers/") and entry.where()
    crd = pretrained.released("crd/resnet32x4")
    assert (
        crd.downloads[0].url
        == "http://shape2prog.csail.mit.edu/repo/resnet32x4_vanilla/ckpt_epoch_240.pth"
    )
    assert crd.downloads[1].member == "cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth"
    assert pretrained.released("simkd/resnet38x2").path.endswith(
        "resnet38x2_vanilla/resnet38x2_best.pth"
    )


def test_show_and_cli_option_name_the_teacher_source(tmp_path):
    out = CliRunner().invoke(
        app, ["show", "dist-table5", "--results", str(tmp_path), "--data-dir", str(tmp_path)]
    )
    text = " ".join(out.output.split())
    assert out.exit_code == 0, out.output
    assert (
        "Teachers: released" in text
        and "Teacher res32x4 is imported: teachers/crd/resnet32x4_vanilla/ckpt_epoch_240.pth"
        in text
    )
    assert "http://shape2prog.csail.mit.edu/repo/resnet32x4_vanilla/ckpt_epoch_240.pth" in text
    out = CliRunner().invoke(
        app, ["show", "simkd-table5", "--teachers", "trained", "--results", str(tmp_path)]
    )
    text = " ".join(out.output.split())
    assert (
        "Teachers: trained" in text
        and "Teacher res32x4 is trained; its students read its best epoch." in text
    )


# --- which epoch a trained teacher hands on (Teacher.keep) --------------------------------------------------------


def test_keep_is_part_of_the_run_id_only_when_not_last():
    last, best = (
        teacher_spec(recipe({}, "trained")),
        teacher_spec(recipe({"keep": "best"}, "trained")),
    )
    assert (
        "keep" not in json.loads(last.canonical_json())
        and json.loads(best.canonical_json())["keep"] == "best"
    )
    assert best.run_id != last.run_id
    assert (
        teacher_spec(
            recipe({"keep": "best", "released": "crd/resnet56"} | {"model": "resnet56"})
        ).keep
        == "last"
    )


def test_keep_best_saves_the_best_epoch_and_students_read_it(tmp_path):
    r = recipe({"keep": "best"}, "trained", epochs=4)
    spec = teacher_spec(r)
    result = train.run(spec, tmp_path, RunOptions(device="cpu"), show_progress=False)
    run = RunDir(tmp_path, spec.run_id)
    history = run.read_metrics()
    best_epoch = next(h.epoch for h in history if h.test_top1 == max(g.test_top1 for g in history))
    assert result.kept.model_dump() == {
        "keep": "best",
        "epoch": best_epoch,
        "top1": result.best_top1,
        "file": "model_best.pt",
    }
    best_state = run.load_torch(run.best_model_file)  # written through the run's checksums
    assert json.loads(run.checksums_file.read_text())["model_best.pt"]
    teacher = train.load_trained_model(tmp_path, spec.run_id, "resnet8", 4)
    assert all(torch.equal(v, best_state[f"student.{k}"]) for k, v in teacher.state_dict().items())
    # A resume after the last epoch writes the same best weights from the checkpoint, which carries them.
    run.result_file.unlink()
    run.best_model_file.unlink()
    train.run(spec, tmp_path, RunOptions(device="cpu"), show_progress=False)
    again = run.load_torch(run.best_model_file)
    assert all(torch.equal(again[k], best_state[k]) for k in best_state)


def test_simkd_teachers_keep_their_best_epoch_and_crd_teachers_their_last():
    for name in (
        "teachers-simkd-cifar100",
        "teachers-simkd-imagenet",
        "simkd-table1",
        "simkd-tables3",
    ):
        assert all(t.keep == "best" for t in load_recipe(name).teachers.values()), name
    for name in (
        "teachers-crd-cifar100",
        "dist-table5",
        "mlkd-appendix-table1",
        "ipwd-appendix-table1",
    ):
        assert all(
            t.keep == "last" and t.released.startswith("crd/")
            for t in load_recipe(name).teachers.values()
        ), name


def test_a_missing_torchvision_teacher_is_fetched_from_torch_hub_s_address(monkeypatch, tmp_path):
    """The download goes to download.pytorch.org/models/<file> (intercepted here: no network)."""
    asked = []

    def offline(url, timeout):
        asked.append((url, timeout))
        raise OSError("no network in tests")

    monkeypatch.setattr(checkpoints.urllib.request, "urlopen", offline)
    spec = next(
        s
        for s in plan(load_recipe("dist-table2"), "full").specs.values()
        if s.checkpoint is not None and s.model == "imagenet/resnet34"
    )
    with pytest.raises(
        KdbenchError,
        match=r"resnet34-b627a593.pth: the download failed \(https://download.pytorch.org/"
        r"models/resnet34-b627a593.pth: OSError: no network in tests\)",
    ):
        checkpoints.prepare([spec], tmp_path)
    assert asked == [
        (
            "https://download.pytorch.org/models/resnet34-b627a593.pth",
            checkpoints.DOWNLOAD_TIMEOUT_S,
        )
    ]


def test_an_archive_put_there_by_hand_is_used_without_a_download(release, tmp_path, teacher_file):
    content, _ = teacher_file
    data_dir = tmp_path / "data"
    r = recipe({"released": "test/resnet8"})
    (tmp_path / "site" / "teachers.tar").rename(tmp_path / "elsewhere.tar")  # the links now fail
    with pytest.raises(
        KdbenchError,
        match=r"A downloaded teachers.tar can be put at .*teachers/archives/teachers.tar "
        r"instead: kdbench copies the file out of it.",
    ):
        checkpoints.prepare(plan(r).specs.values(), data_dir)
    assert not (
        data_dir / "teachers" / "archives" / "teachers.tar"
    ).exists()  # a failed download leaves nothing
    (tmp_path / "elsewhere.tar").rename(data_dir / "teachers" / "archives" / "teachers.tar")
    (path,) = checkpoints.prepare(plan(r).specs.values(), data_dir)
    assert path.read_bytes() == content
