"""Planning: run ids hash the spec, teachers are shared, profiles never mix, unimplemented rows stay visible."""

from __future__ import annotations

import pytest
from kdbench.errors import KdbenchError
from kdbench.plan import ADDED_TRAIN_DEFAULTS, Plan, RunRef, RunSpec, TrainSpec, plan
from kdbench.recipe import Recipe, Training, TrainingFields, TrainingOverride, load_recipe
from kdbench.recipe.schema import NOT_OVERRIDABLE


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("simkd-table1")


def test_full_plan_shape(recipe, monkeypatch):
    from kdbench import methods

    monkeypatch.setattr(methods, "is_implemented", lambda name: name in ("ce", "kd", "simkd"))
    p = plan(recipe, "full")
    teachers = [
        s
        for s in p.specs.values()
        if s.teacher is None and s.model in ("simkd/resnet38x2", "resnet32x4", "simkd/resnet110x2")
    ]
    assert len(teachers) == 3
    # 7 pairs; implemented rows: Student (ce), KD, SimKD; 4 trials each; two columns share student resnet8x4.
    kd_runs = [s for s in p.specs.values() if s.method == "kd"]
    simkd_runs = [s for s in p.specs.values() if s.method == "simkd"]
    ce_students = [
        s for s in p.specs.values() if s.method == "ce" and s.seed in range(4) and s not in teachers
    ]
    assert len(kd_runs) == len(simkd_runs) == 7 * 4
    # The Student row of both ResNet-8x4 columns is the same 4 runs (no teacher in a ce spec),
    # and a teacher is the ce run of its architecture with seed 0 (same parameters as a Student row).
    assert len({s.run_id for s in ce_students if s.model == "resnet8x4"}) == 4
    assert all(t.method_params == ce_students[0].method_params for t in teachers)
    cells = {(c.row, c.column): c for c in p.cells}
    assert len(cells) == 11 * 7
    assert cells[("FitNet", "res32x4_res8x4")].status == "not_implemented"
    assert (
        cells[("Teacher", "res32x4_vgg8")].run_ids == cells[("Teacher", "res32x4_res8x4")].run_ids
    )


def test_protocol_values_reach_the_spec(recipe):
    p = plan(recipe, "full")
    shuffle = next(s for s in p.specs.values() if s.model == "ShuffleV2" and s.method == "kd")
    r8 = next(s for s in p.specs.values() if s.model == "resnet8x4" and s.method == "kd")
    assert shuffle.train.lr == 0.01 and r8.train.lr == 0.05
    assert r8.method_params["ce_weight"] == 1.0 and r8.method_params["kd_weight"] == 1.0
    simkd = next(s for s in p.specs.values() if s.method == "simkd")
    assert simkd.method_params["ce_weight"] == 0 and simkd.method_params["factor"] == 2
    assert (
        r8.train.lr_at(150) == 0.05
        and r8.train.lr_at(151) == pytest.approx(0.005)
        and r8.train.lr_at(240) == pytest.approx(5e-5)
    )


def test_run_id_is_a_hash_of_the_spec(recipe):
    a = plan(recipe, "full")
    b = plan(load_recipe("simkd-table1"), "full")
    assert list(a.specs) == list(b.specs)
    spec = next(iter(a.specs.values()))
    assert RunSpec.model_validate_json(spec.canonical_json()).run_id == spec.run_id
    changed = spec.model_copy(
        update={"train": spec.train.model_copy(update={"weight_decay": 1e-4})}
    )
    assert changed.run_id != spec.run_id
    assert spec.model_copy(update={"seed": spec.seed + 1}).run_id != spec.run_id


def test_aliases_do_not_change_run_ids(recipe):
    spec = next(s for s in plan(recipe, "full").specs.values() if s.model == "resnet8x4")
    assert "simkd/" not in spec.model  # recipe says simkd/resnet8x4, an alias of the CRD network


def test_profiles_never_share_runs(recipe):
    ids = [set(plan(recipe, profile).specs) for profile in ("full", "ci", "smoke")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    smoke = plan(recipe, "smoke")
    spec = next(iter(smoke.specs.values()))
    assert spec.data.name == "synthetic" and spec.profile == "smoke" and smoke.trials == 1
    ci = plan(recipe, "ci", ci_overrides={"train_fraction": 0.05, "epochs": 3})
    spec = next(iter(ci.specs.values()))
    assert (
        spec.data.name == "cifar100" and spec.data.train_fraction == 0.05 and spec.train.epochs == 3
    )
    assert spec.train.milestones == (2, 2, 3)  # 150/180/210 of 240, scaled to 3 epochs


def test_smoke_teachers_train_longer_and_smoke_caps_the_lr(recipe):
    """Smoke students read their teacher through BatchNorm running statistics: 8 steps left a ResNet-110x2's far from
    converged and VID/SemCKD diverged; the smoke teachers train 12 epochs, and no smoke run above LR 0.01."""
    smoke = plan(recipe, "smoke")
    teacher_ids = {s.teacher.run_id for s in smoke.specs.values() if s.teacher is not None}
    assert len(teacher_ids) == len(recipe.teachers)
    for spec in smoke.specs.values():
        is_teacher = spec.run_id in teacher_ids
        assert spec.train.epochs == (12 if is_teacher else 2), spec.run_id
        assert spec.train.milestones == (
            (8, 9, 10) if is_teacher else (1, 2, 2)
        )  # 150/180/210 of 240, scaled
    assert {s.train.lr for s in smoke.specs.values()} == {
        0.01
    }  # the recipe's 0.05 and 0.01 (ShuffleNetV2), capped
    full = plan(recipe, "full")
    assert all(s.train.epochs == 240 for s in full.specs.values()) and {
        s.train.lr for s in full.specs.values()
    } == {0.05, 0.01}


def test_subsets_of_the_table(recipe):
    p = plan(recipe, "full", trials=2, columns=["res32x4_res8x4"], rows=["kd", "Student"])
    assert {c.row for c in p.cells} == {"Student", "KD"}
    assert {s.model for s in p.specs.values()} == {"resnet32x4", "resnet8x4"}
    assert next(s for s in p.specs.values() if s.method == "kd").dependencies == [
        next(s.run_id for s in p.specs.values() if s.model == "resnet32x4")
    ]
    with pytest.raises(
        KdbenchError, match="no column 'res32x4_res8x5'. Did you mean 'res32x4_res8x4'"
    ):
        plan(recipe, "full", columns=["res32x4_res8x5"])
    with pytest.raises(KdbenchError, match="unknown profile 'smok'. Did you mean 'smoke'"):
        plan(recipe, "smok")


def test_teachers_run_first(recipe):
    order = plan(recipe, "full").ordered()
    first_student = next(i for i, s in enumerate(order) if s.teacher is not None)
    teacher_ids = {s.teacher.run_id for s in order if s.teacher is not None}
    assert all(order.index(s) < first_student for s in order if s.run_id in teacher_ids)


def test_the_order_of_a_valid_plan_is_teachers_then_students_then_followers_in_plan_order():
    p = plan(load_recipe("simkd-table1"), "smoke", trials=2)
    assert p.ordered() == sorted(p.specs.values(), key=lambda s: len(s.dependencies))


def test_runs_inserted_dependents_first_are_ordered_after_their_dependencies(recipe):
    full = plan(recipe, "full", trials=1, columns=["res32x4_res8x4"], rows=["kd"])
    (student,) = [s for s in full.specs.values() if s.teacher is not None]
    teacher = full.specs[student.teacher.run_id]
    # teacher -> student -> follower (init_from only) -> second follower (teacher and init_from): the count of
    # teacher/init_from references puts the follower beside the student, the second follower beside nothing.
    follower = student.model_copy(
        update={
            "method": "ce",
            "teacher": None,
            "init_from": RunRef(method="kd", run_id=student.run_id),
        }
    )
    second = student.model_copy(
        update={"init_from": RunRef(method="ce", run_id=follower.run_id), "seed": 1}
    )
    chain = [teacher, student, follower, second]
    assert len({s.run_id for s in chain}) == 4
    backwards = Plan(recipe, "full", 1, specs={s.run_id: s for s in reversed(chain)})
    assert [s.run_id for s in backwards.ordered()] == [s.run_id for s in chain]


def test_bad_method_parameters_name_the_row(recipe):
    data = recipe.model_dump()
    data["rows"][1]["params"] = {"kd_temprature": 4}
    bad = type(recipe).model_validate(data)
    with pytest.raises(
        KdbenchError,
        match=r"row 'KD' \(method kd\): invalid parameters: unknown parameter .kd_temprature.. Did you mean .kd_temperature.?",
    ):
        plan(bad, "full")


def test_protocol_preset_selects_each_methods_variant(recipe):
    """simkd-table1 says `preset: simkd`: every baseline gets SimKD's 1·CE + 1·KD + β·method."""
    from kdbench import methods

    assert recipe.protocol.preset == "simkd"
    specs = plan(recipe, "full").specs.values()
    for row in recipe.rows:
        if row.is_teacher_row or not methods.is_implemented(row.method):
            continue
        spec = next(s for s in specs if s.method == row.method)
        variant = methods.get(row.method).variants.get("simkd")
        expected = methods.resolve_params(row.method, "simkd" if variant else None, {}).model_dump(
            mode="json"
        )
        assert spec.method_params == expected, row.label
        if variant:
            assert (
                spec.method_params["ce_weight"] == 1.0 and spec.method_params["kd_weight"] == 1.0
            ), row.label


def _tiny_recipe(rows: list[dict]) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "tiny",
            "paper": "t",
            "table": "T",
            "title": "t",
            "source": "t",
            "protocol": {"name": "t", "follows": "t"},
            "dataset": {"name": "cifar100"},
            "training": {
                "epochs": 240,
                "batch_size": 64,
                "lr": 0.05,
                "milestones": [150, 180, 210],
            },
            "trials": 1,
            "teachers": {"t": {"model": "resnet32x4", "label": "T"}},
            "columns": [
                {"id": "a", "teacher": "t", "student": "resnet8x4", "label": "A"},
                {"id": "b", "teacher": "t", "student": "resnet20", "label": "B"},
            ],
            "rows": rows,
        }
    )


def test_parameters_can_differ_by_column():
    recipe = _tiny_recipe(
        [
            {
                "label": "DKD",
                "method": "dkd",
                "params": {"beta": 8.0},
                "params_by_column": {"b": {"beta": 2.0}},
            }
        ]
    )
    betas = {
        s.model: s.method_params["beta"]
        for s in plan(recipe, "full").specs.values()
        if s.method == "dkd"
    }
    assert betas == {"resnet8x4": 8.0, "resnet20": 2.0}


def test_training_fields_are_written_once():
    """A recipe's Training, a row's TrainingOverride and a run's TrainSpec are built from recipe.TrainingFields: a
    field added there reaches all three, and ADDED_TRAIN_DEFAULTS holds each added field's own default."""
    fields = set(TrainingFields.model_fields)
    assert set(TrainSpec.model_fields) == fields
    assert set(Training.model_fields) == fields | {"lr_by_model"}
    assert set(TrainingOverride.model_fields) == fields - NOT_OVERRIDABLE
    assert all(f.default is None for f in TrainingOverride.model_fields.values())
    for name, value in ADDED_TRAIN_DEFAULTS.items():
        assert TrainSpec.model_fields[name].default == value, name


def test_quick_profiles_shorten_pretraining_stages():
    recipe = _tiny_recipe([{"label": "AB", "method": "ab"}])
    init = {
        p: next(s for s in plan(recipe, p).specs.values() if s.method == "ab").method_params[
            "init_epochs"
        ]
        for p in ("full", "ci", "smoke")
    }
    assert init == {"full": 30, "ci": 1, "smoke": 1}  # 30 × 2/240 rounds to 0: at least one epoch


def test_quick_profiles_keep_a_disabled_pretraining_stage_off():
    """init_epochs 0 means no pre-training stage: quick profiles keep it 0 (they used to raise it to 1 epoch)."""
    recipe = _tiny_recipe([{"label": "AB", "method": "ab", "params": {"init_epochs": 0}}])
    init = {
        p: next(s for s in plan(recipe, p).specs.values() if s.method == "ab").method_params[
            "init_epochs"
        ]
        for p in ("full", "ci", "smoke")
    }
    assert init == {"full": 0, "ci": 0, "smoke": 0}


def test_epoch_valued_parameters_are_declared_not_named():
    """The plan scales the parameters a method declares with epoch_count, whatever their name."""
    from kdbench import methods
    from kdbench.methods.base import MethodParams, epoch_count

    declared = {n: methods.get(n).Params.epoch_fields() for n in methods.names()}
    assert {n: f for n, f in declared.items() if f} == {
        "ab": ["init_epochs"],
        "fsp": ["init_epochs"],
        "ft": ["init_epochs"],
    }

    class WarmupParams(MethodParams):
        warmup: int = epoch_count(20)
        steps: int = 20  # not in epochs: kept

    scaled = WarmupParams().scale_epochs(2, 240)
    assert (scaled.warmup, scaled.steps) == (1, 20)
    assert WarmupParams(warmup=120).scale_epochs(30, 240).warmup == 15
