"""Table layouts beyond 'rows = methods, columns = pairs': evaluation-head columns (SimKD S.4/S.5), rows
with their own columns and training (S.4, S.6), and per-cell quantities — measured test losses (Table 5)
and pruning-ratio columns computed from parameter counts (S.8/S.9)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from kdbench import methods, models
from kdbench.errors import KdbenchError
from kdbench.io import atomic_write_json
from kdbench.plan import plan
from kdbench.recipe import PaperValue, Recipe, load_recipe
from kdbench.results import render
from kdbench.results.compare import compare
from kdbench.results.regression import regressions
from kdbench.results.tables import record_table
from kdbench.store.records import MAIN_HEAD, RunResult
from kdbench.store.run_dir import RunDir

from planted import epoch

BASE = {
    "name": "layouts",
    "paper": "Layouts: a test paper",
    "table": "Table L",
    "title": "layouts",
    "source": "test",
    "protocol": {"name": "test", "follows": "test"},
    "dataset": {"name": "cifar100"},
    "training": {
        "epochs": 240,
        "batch_size": 64,
        "lr": 0.05,
        "lr_by_model": {"simkd/resnet8x4": 0.02},
        "milestones": [150, 180, 210],
    },
    "trials": 2,
    "paper_trials": 4,
    "teachers": {"t": {"model": "simkd/resnet32x4", "label": "ResNet-32x4", "paper": 79.42}},
    "columns": [
        {
            "id": "sc",
            "teacher": "t",
            "student": "simkd/resnet8x4",
            "label": "ResNet-8x4 · student",
            "head": "student_classifier",
        },
        {
            "id": "tc",
            "teacher": "t",
            "student": "simkd/resnet8x4",
            "label": "ResNet-8x4 · teacher",
            "head": "teacher_classifier",
        },
    ],
    "quantities": [
        {"id": "l2", "label": "test ℓ2", "source": "test_loss", "term": "simkd", "margin": 0.01},
        {"id": "cost", "label": "pruning cost %", "source": "pruning_cost"},
        {"id": "ratio", "label": "projector %", "source": "added_params_ratio"},
    ],
    "rows": [
        {"label": "KD", "method": "kd", "columns": ["sc"], "paper": {"sc": "74.42 ± 0.05"}},
        {
            "label": "Joint",
            "method": "simkd",
            "params": {"ce_weight": 0.5, "kd_weight": 0.5, "weight": 0.5},
            "paper": {"sc": "74.00 ± 0.10", "tc": "73.90 ± 0.10"},
            "paper_quantities": {"tc": {"l2": "0.300 ± 0.001", "cost": "2.88", "ratio": "17.34"}},
        },
        {
            "label": "Slow",
            "method": "kd",
            "columns": ["sc"],
            "training": {"lr": 0.001, "nesterov": True},
        },
        {"label": "Teacher", "method": "teacher", "columns": ["tc"]},
    ],
}


def recipe(**changes) -> Recipe:
    return Recipe.model_validate({**BASE, **changes})


# --------------------------------------------------------------------------- schema and plan


def test_rows_keep_to_their_columns():
    p = plan(recipe())
    status = {(c.row, c.column): c.status for c in p.cells}
    assert status[("KD", "tc")] == status[("Teacher", "sc")] == status[("Slow", "tc")] == "absent"
    assert status[("Joint", "tc")] == status[("Joint", "sc")] == "planned"
    joint = {c.column: c.run_ids for c in p.cells if c.row == "Joint"}
    assert joint["sc"] == joint["tc"]  # the two classifier columns read the same runs


def test_row_training_override_beats_the_per_model_lr():
    p = plan(recipe())
    lrs = {
        c.row: {p.specs[r].train.lr for r in c.run_ids}
        for c in p.cells
        if c.status == "planned" and c.row != "Teacher"
    }
    assert lrs == {"KD": {0.02}, "Joint": {0.02}, "Slow": {0.001}}
    slow = next(c for c in p.cells if c.row == "Slow" and c.run_ids)
    assert all(p.specs[r].train.nesterov for r in slow.run_ids)
    kd = next(c for c in p.cells if c.row == "KD" and c.run_ids)
    assert set(slow.run_ids).isdisjoint(kd.run_ids)  # a different schedule is a different run


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rows": [{"label": "KD", "method": "kd", "columns": ["zz"]}]}, "names column 'zz'"),
        (
            {"rows": [{"label": "KD", "method": "kd", "columns": ["sc"], "paper": {"tc": 70.0}}]},
            "not in its 'columns'",
        ),
        (
            {"rows": [{"label": "KD", "method": "kd", "paper_quantities": {"sc": {"cots": 1.0}}}]},
            "quantity 'cots'",
        ),
        ({"rows": [{"label": "KD", "method": "kd", "training": {"lrr": 0.1}}]}, "lrr"),
        ({"quantities": [{"id": "l2", "label": "x", "source": "test_loss"}]}, "'term' names"),
    ],
)
def test_layout_mistakes_are_named(change, message):
    with pytest.raises(Exception, match=message):
        recipe(**change)


def test_paper_values_remember_their_printed_precision():
    assert PaperValue.model_validate("2.5").decimals == 1
    assert PaperValue.model_validate("0.345 ± 0.001").decimals == 3
    assert PaperValue.model_validate(2.5).decimals is None


# --------------------------------------------------------------------------- SimKD's loss variants and test loss


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    student, teacher = models.create("simkd/resnet8x4", 10), models.create("simkd/resnet32x4", 10)
    return student, teacher, torch.randn(4, 3, 32, 32)


def _simkd(pair, **params):
    student, teacher, images = pair
    cls = methods.get("simkd")
    torch.manual_seed(1)
    return cls(student, teacher, cls.Params(**params), images[:2]).train()


def test_simkd_output_loss_is_the_mse_of_reused_classifier_logits(pair):
    """Table S.7: ‖W_t f_t − W_t P(f_s)‖² on pooled features = MSE of the two logit vectors (the bias cancels)."""
    _, teacher, images = pair
    losses = {}
    for alignment in ("input", "output", "input+output"):
        distiller = _simkd(pair, alignment=alignment)
        _, terms = distiller.forward_train(images, torch.zeros(4, dtype=torch.long), 1)
        losses[alignment] = terms["simkd"].detach().item()
    distiller = _simkd(pair)
    with torch.no_grad():
        s, t = distiller.student.forward_features(images), teacher.forward_features(images)
        projected = distiller.projector(distiller._align(s.stages[-1]))
        reused = distiller.teacher.classifier(projected.mean(dim=(2, 3)))
        by_hand = F.mse_loss(reused, t.logits).item()
        input_l2 = F.mse_loss(projected, t.head_map).item()
    assert losses["output"] == pytest.approx(by_hand, rel=1e-5)
    assert losses["input"] == pytest.approx(input_l2, rel=1e-5)
    assert losses["input+output"] == pytest.approx(input_l2 + by_hand, rel=1e-5)


def test_simkd_reports_its_test_loss_to_the_loop(pair):
    from kdbench.train import evaluate

    _, _, images = pair
    distiller = _simkd(pair)
    batches = [
        (images[:3], torch.zeros(3, dtype=torch.long), None),
        (images[3:], torch.zeros(1, dtype=torch.long), None),
    ]
    stats = evaluate(distiller, batches, torch.device("cpu"))
    terms = [distiller.forward_test_terms(b[0])["simkd"].item() for b in batches]
    assert stats.test_losses["simkd"] == pytest.approx((3 * terms[0] + terms[1]) / 4, rel=1e-6)
    assert {MAIN_HEAD, "student_classifier"} <= set(stats.test)


def test_pruning_ratio_parts_follow_eq6(pair):
    student, teacher, _ = pair
    size = _simkd(pair).inference_size()
    n_proj = 256 * (256 + 256 + 4) // 2 + 9 * 256 * 256 // 4 + 2 * 256  # Eq. 5, r = 2
    assert size.added == n_proj
    assert size.teacher == methods.parameter_count(teacher.classifier)
    assert size.student == methods.parameter_count(student) - methods.parameter_count(
        student.classifier
    )
    kd = methods.get("kd")(student, teacher, methods.get("kd").Params(), pair[2][:2])
    assert kd.inference_size().total == methods.parameter_count(student)


# --------------------------------------------------------------------------- compare


def _finish(results: Path, spec, best: float, **extra) -> None:
    run = RunDir(results, spec.run_id)
    atomic_write_json(run.spec_file, spec.model_dump(mode="json"))
    run.write_result(
        RunResult(
            best_top1=best,
            best_top5=99.0,
            best_epoch=200,
            last_top1=best - 1,  # with its checksum:
            last_top5=99.0,
            epochs=240,
            **extra,
        )
    )  # without one the run is shown unverified


@pytest.fixture
def planted(tmp_path) -> Path:
    r = recipe()
    p = plan(r)
    record_table(tmp_path, r, "full", p.trials, {})
    cells = {(c.row, c.column): c for c in p.cells}
    for run_id, (main, own, l2) in zip(
        cells[("Joint", "tc")].run_ids, [(73.8, 74.1, 0.30), (74.0, 73.9, 0.302)]
    ):
        _finish(
            tmp_path,
            p.specs[run_id],
            main,
            heads={"student_classifier": {"best_top1": own, "last_top1": own - 1}},
            test_losses={"simkd": {"best": l2, "last": l2 + 0.01}},
        )
    for run_id in cells[("KD", "sc")].run_ids:
        _finish(tmp_path, p.specs[run_id], 74.4)
    return tmp_path


def test_head_columns_read_their_head(planted):
    (comp,) = compare(planted)
    cells = {(c["row"], c["column"]): c for _, c in comp.cells.iterrows()}
    assert cells[("Joint", "tc")]["ours_mean"] == pytest.approx(73.9)
    assert cells[("Joint", "sc")]["ours_mean"] == pytest.approx(74.0)
    assert cells[("KD", "sc")]["ours_mean"] == pytest.approx(
        74.4
    )  # KD's own prediction is its student classifier
    assert cells[("KD", "tc")]["status"] == cells[("KD", "tc")]["verdict"] == "absent"
    assert cells[("Teacher", "tc")]["paper_mean"] == 79.42  # from the teachers list
    (last,) = compare(planted, metric="last")
    assert {(c["row"], c["column"]): c["ours_mean"] for _, c in last.cells.iterrows()}[
        ("Joint", "sc")
    ] == pytest.approx(73.0)


def test_quantities_measured_and_computed(planted):
    (comp,) = compare(planted)
    q = {row["quantity"]: row for _, row in comp.quantities.iterrows() if row["column"] == "tc"}
    assert (
        q["l2"]["ours_mean"] == pytest.approx(0.301)
        and q["l2"]["n"] == 2
        and q["l2"]["verdict"] == "reproduced"
    )
    # resnet8x4 ← resnet32x4 at r = 2 (SimKD zoo): Table S.8 prints (2.88%, 17.34%); the counts give 2.88 and 17.35.
    assert (
        q["cost"]["ours_mean"] == pytest.approx(2.88, abs=0.005)
        and q["cost"]["verdict"] == "matches"
    )
    assert (
        q["ratio"]["ours_mean"] == pytest.approx(17.35, abs=0.005)
        and q["ratio"]["verdict"] == "differs"
    )
    assert not (comp.quantities["row"] == "KD").any()  # only rows that print quantities get them
    (last,) = compare(planted, metric="last")
    assert last.quantities.set_index(["column", "quantity"]).loc[
        ("tc", "l2"), "ours_mean"
    ] == pytest.approx(0.311)


def test_layouts_render_in_every_format(planted):
    comparisons = compare(planted)
    (comp,) = comparisons
    text = render.to_markdown(comp)
    assert (
        "test ℓ2 0.301 ± 0.001 (paper 0.300 ± 0.001) ✓" in text
        and "pruning cost % 2.88 (paper 2.88) ✓" in text
    )
    assert "| KD | 74.40 ± 0.00 (n=2)<br>paper 74.42 ± 0.05" in text and "| –" in text
    assert "2.88\\% / 2.88\\%" in render.to_latex(comp) and "--" in render.to_latex(comp)
    assert "test ℓ2" in render.to_html(comp)
    rows = list(csv.DictReader(io.StringIO(render.to_csv(comparisons))))
    by_quantity = {(r["row"], r["column"], r["quantity"]): r for r in rows}
    assert by_quantity[("Joint", "tc", "cost")]["student"] == "ResNet-8x4 · teacher"
    assert by_quantity[("Joint", "tc", "top1")]["paper_mean"] == "73.9000"
    assert (
        "computed quantities: 1 matches, 1 differs; measured quantities: 1 reproduced"
        in render.summary_text(comp)
    )


def test_regression_mode_checks_accuracy_rows_only(planted, tmp_path_factory):
    comparisons = compare(planted)
    baseline = tmp_path_factory.mktemp("baseline") / "baseline.csv"
    baseline.write_text(render.to_csv(comparisons))
    gate = regressions(comparisons[0].cells, baseline, 0.5)
    assert gate.regressed == [] and gate.missing == [] and gate.checked > 0


def test_computed_quantity_needs_a_teacher():
    from kdbench.results import quantities

    r = recipe()
    spec = next(s for s in plan(r).specs.values() if s.method == "kd")
    with pytest.raises(KdbenchError, match="no teacher"):
        quantities.computed(
            r.quantities[1],
            spec.model_copy(update={"teacher": None, "method": "ce", "method_params": {}}),
        )


def test_seed_layout_recipes_share_runs_with_their_base_tables():
    t1, t4 = plan(load_recipe("simkd-table1")), plan(load_recipe("simkd-table4"))
    s4, s6, s8 = (plan(load_recipe(n)) for n in ("simkd-tables4", "simkd-tables6", "simkd-tables8"))

    def runs(p, row, column):
        return next(c.run_ids for c in p.cells if c.row == row and c.column == column)

    assert runs(s4, "α = 0 (KD)", "res32x4_res8x4_sc") == runs(t1, "KD", "res32x4_res8x4")
    assert runs(s4, "α = 1 (SimKD)", "res32x4_res8x4_tc") == runs(t1, "SimKD", "res32x4_res8x4")
    assert runs(s6, "LR 0.05", "res32x4_res8x4") == runs(t4, "Sequential", "res32x4_res8x4")
    assert runs(s8, "r = 2", "res32x4_vgg8") == runs(t1, "SimKD", "res32x4_vgg8")
    assert {s.train.lr for s in s6.specs.values() if s.method == "simkd-sequential"} == {
        0.01,
        0.05,
        0.1,
        0.5,
    }


# --------------------------------------------------------------------------- ImageNet layouts: top-5, mid-training and per-column training

EPOCH_LAYOUT = {
    "columns": [
        {"id": "top1", "teacher": "t", "student": "resnet8x4", "label": "top-1"},
        {"id": "top5", "teacher": "t", "student": "resnet8x4", "label": "top-5", "measure": "top5"},
        {"id": "quarter", "teacher": "t", "student": "resnet8x4", "label": "1/4", "at_epoch": 60},
        {
            "id": "smooth",
            "teacher": "ls",
            "student": "resnet8x4",
            "label": "w/ LS",
            "training": {"label_smoothing": 0.1},
        },
    ],
    "teachers": {
        "t": {"model": "resnet32x4", "label": "ResNet-32x4", "paper": 79.42},
        "ls": {
            "model": "resnet32x4",
            "label": "ResNet-32x4 (LS)",
            "training": {"label_smoothing": 0.1},
        },
    },
    "quantities": [],
    "rows": [{"label": "KD", "method": "kd"}, {"label": "Teacher", "method": "teacher"}],
}


def test_columns_read_top5_and_mid_training_epochs(tmp_path):
    r = recipe(**EPOCH_LAYOUT)
    p = plan(r)
    record_table(tmp_path, r, "full", p.trials, {})
    cells = {(c.row, c.column): c for c in p.cells}
    assert (
        cells[("KD", "top1")].run_ids
        == cells[("KD", "top5")].run_ids
        == cells[("KD", "quarter")].run_ids
    )
    for k, run_id in enumerate(cells[("KD", "top1")].run_ids):
        # 240 epochs; accuracy rises to 60 + k at epoch 60, dips at 61, ends at 70 + k (best = last).
        curve = [
            epoch(e, 50.0 + k + (10 if e == 60 else 0) + (20 if e == 240 else 0), 90.0 + k)
            for e in range(1, 241)
        ]
        _finish(tmp_path, p.specs[run_id], 70.0 + k)
        RunDir(tmp_path, run_id).write_metrics(curve)
    (comp,) = compare(tmp_path)
    ours = {(c["row"], c["column"]): c["ours_mean"] for _, c in comp.cells.iterrows()}
    assert ours[("KD", "top1")] == pytest.approx(70.5) and ours[("KD", "top5")] == pytest.approx(
        99.0
    )
    assert ours[("KD", "quarter")] == pytest.approx(60.5)  # best up to epoch 60
    (last,) = compare(tmp_path, metric="last")
    assert {(c["row"], c["column"]): c["ours_mean"] for _, c in last.cells.iterrows()}[
        ("KD", "quarter")
    ] == pytest.approx(60.5)


def test_an_at_epoch_column_reads_that_epoch_or_the_best_up_to_it(tmp_path):
    # SimKD Table 3's 1/4 and 1/2 columns read the epoch itself (column metric 'last'), its Full column the best.
    layout = {
        **EPOCH_LAYOUT,
        "columns": [
            {
                "id": "at",
                "teacher": "t",
                "student": "resnet8x4",
                "label": "1/4, at",
                "at_epoch": 60,
                "metric": "last",
            },
            {
                "id": "upto",
                "teacher": "t",
                "student": "resnet8x4",
                "label": "1/4, best",
                "at_epoch": 60,
            },
            {
                "id": "full",
                "teacher": "t",
                "student": "resnet8x4",
                "label": "full",
                "at_epoch": 240,
            },
        ],
    }
    r = recipe(**layout)
    p = plan(r)
    record_table(tmp_path, r, "full", p.trials, {})
    cells = {(c.row, c.column): c for c in p.cells}
    for k, run_id in enumerate(cells[("KD", "at")].run_ids):
        # A peak of 65 + k at epoch 50, 60 + k at epoch 60, 70 + k at the end (epoch 200 peaks at 72 + k).
        curve = [
            epoch(e, {50: 65.0, 60: 60.0, 200: 72.0, 240: 70.0}.get(e, 50.0) + k, 90.0)
            for e in range(1, 241)
        ]
        _finish(tmp_path, p.specs[run_id], 72.0 + k)
        RunDir(tmp_path, run_id).write_metrics(curve)

    def ours(**kw):
        (comp,) = compare(tmp_path, **kw)
        return {
            c["column"]: (c["ours_mean"], c["metric"])
            for _, c in comp.cells.iterrows()
            if c["row"] == "KD"
        }

    assert ours() == {
        "at": (pytest.approx(60.5), "last"),
        "upto": (pytest.approx(65.5), "best"),
        "full": (pytest.approx(72.5), "best"),
    }
    # --metric overrides the column: best up to 60 everywhere, or the epoch itself everywhere.
    assert {c: v for c, (v, _) in ours(metric="best").items()} == {
        "at": pytest.approx(65.5),
        "upto": pytest.approx(65.5),
        "full": pytest.approx(72.5),
    }
    assert {c: v for c, (v, _) in ours(metric="last").items()} == {
        "at": pytest.approx(60.5),
        "upto": pytest.approx(60.5),
        "full": pytest.approx(70.5),
    }
    (comp,) = compare(tmp_path)
    assert "(n=2) [at epoch 60]" in render.to_markdown(comp)
    (last,) = compare(tmp_path, metric="last")
    assert "[at epoch 60]" not in render.to_markdown(last)  # every cell reads what the title says


def test_column_and_teacher_training_reach_their_runs():
    p = plan(recipe(**EPOCH_LAYOUT))
    cells = {(c.row, c.column): c for c in p.cells}
    smooth = {p.specs[r].train.label_smoothing for r in cells[("KD", "smooth")].run_ids}
    plain = {p.specs[r].train.label_smoothing for r in cells[("KD", "top1")].run_ids}
    assert smooth == {0.1} and plain == {0.0}
    teacher_ls, teacher = (p.specs[cells[("Teacher", c)].run_ids[0]] for c in ("smooth", "top1"))
    assert teacher_ls.train.label_smoothing == 0.1 and teacher.train.label_smoothing == 0.0
    assert teacher_ls.run_id != teacher.run_id
    # Fields added to the spec later stay out of the run id at their old value: finished runs keep their ids.
    assert (
        "label_smoothing" not in teacher.canonical_json()
        and "label_smoothing" in teacher_ls.canonical_json()
    )


@pytest.mark.parametrize(
    "column, message",
    [
        (
            {
                "id": "x",
                "teacher": "t",
                "student": "resnet8x4",
                "label": "x",
                "head": "student_classifier",
                "measure": "top5",
            },
            "cannot be combined",
        ),
        (
            {"id": "x", "teacher": "t", "student": "resnet8x4", "label": "x", "at_epoch": 241},
            "after the last epoch",
        ),
    ],
)
def test_column_reading_mistakes_are_named(column, message):
    with pytest.raises(Exception, match=message):
        recipe(columns=[column], quantities=[], rows=[{"label": "KD", "method": "kd"}])


def test_label_smoothing_and_weight_decay_scope_reach_the_loss_and_optimizer():
    from kdbench.train import stages

    student, teacher = (
        models.create("resnet8", num_classes=10),
        models.create("resnet8", num_classes=10),
    )
    example = torch.randn(2, 3, 32, 32)
    kd = methods.get("kd")
    smoothed = kd(
        student, teacher, kd.Params(ce_weight=1.0, kd_weight=0.0), example, label_smoothing=0.1
    )
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    _, terms = smoothed.forward_train(x, y, epoch=1)
    with torch.no_grad():
        smoothed.train()
        expected = F.cross_entropy(student(x), y, label_smoothing=0.1)
    assert terms["ce"].item() == pytest.approx(expected.item(), rel=1e-5)

    spec = plan(
        recipe(training={**BASE["training"], "decay_norm_and_bias": False, "weight_decay": 1e-4})
    ).ordered()[0]
    groups = stages.sgd(list(student.parameters()), spec).param_groups
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]
    assert all(p.ndim > 1 for p in groups[0]["params"]) and all(
        p.ndim <= 1 for p in groups[1]["params"]
    )
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(student.parameters()))
