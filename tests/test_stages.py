"""The loop over Stage objects (kdbench/train/stages.py, loop.py): a method's pre-training stage and the main stage.

The metrics below were recorded by the loop as it was before it ran stages (two loops and an adapter lambda,
kdbench commit e1fec24), for the same specs, so the stage loop must train the same epochs, at the same LRs, on
the same data epochs, in the same order.
"""

from __future__ import annotations

import json

import pytest
import torch
from kdbench import methods, models, train
from kdbench.plan import DataSpec, RunSpec, TeacherRef, TrainSpec
from kdbench.store.run_dir import RunDir
from kdbench.train import stages
from kdbench.train.loop import CHECKPOINT_KEYS


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(method: str, params: dict, teacher: TeacherRef | None, epochs: int) -> RunSpec:
    return RunSpec(
        profile="smoke",
        model="resnet8",
        method=method,
        method_params=params,
        teacher=teacher,
        data=DataSpec(
            name="synthetic",
            options={"num_classes": 10, "image_size": 16, "train_size": 32, "test_size": 16},
        ),
        train=TrainSpec(
            epochs=epochs,
            batch_size=16,
            lr=0.05,
            milestones=(2,),
            lr_decay=0.1,
            momentum=0.9,
            nesterov=False,
            weight_decay=5e-4,
        ),
        seed=3,
    )


TEACHER = tiny("ce", {"ce_weight": 1.0, "kd_weight": 0.0}, None, epochs=2)
REF = TeacherRef(model="resnet8", run_id=TEACHER.run_id)

# metrics.jsonl of each run at commit e1fec24, without images_per_s (a timing).
BEFORE = {
    "ab": (
        tiny("ab", {"init_epochs": 2}, REF, epochs=3),
        [
            {
                "epoch": 1,
                "loss": 8.046197891235352,
                "loss_ab": 8.046197891235352,
                "lr": 0.05,
                "phase": "init",
                "train_top1": 0.0,
            },  # fmt: skip
            {
                "epoch": 2,
                "loss": 7.995339393615723,
                "loss_ab": 7.995339393615723,
                "lr": 0.05,
                "phase": "init",
                "train_top1": 0.0,
            },  # fmt: skip
            {
                "epoch": 1,
                "loss": 2.278264045715332,
                "loss_ce": 2.278264045715332,
                "lr": 0.05,
                "test_top1": 18.75,
                "test_top5": 50.0,
                "train_top1": 21.875,
            },  # fmt: skip
            {
                "epoch": 2,
                "loss": 2.1763014793395996,
                "loss_ce": 2.1763014793395996,
                "lr": 0.05,
                "test_top1": 25.0,
                "test_top5": 62.5,
                "train_top1": 34.375,
            },  # fmt: skip
            {
                "epoch": 3,
                "loss": 1.986899495124817,
                "loss_ce": 1.986899495124817,
                "lr": 0.005000000000000001,
                "test_top1": 37.5,
                "test_top5": 75.0,
                "train_top1": 31.25,
            },  # fmt: skip
        ],
    ),
    # FT's pre-training stage has its own LR (0.01), apart from the main stage's 0.05.
    "ft": (
        tiny("ft", {"init_epochs": 1}, REF, epochs=3),
        [
            {
                "epoch": 1,
                "loss": 0.2726020812988281,
                "loss_ft_paraphraser": 0.2726020812988281,
                "lr": 0.01,
                "phase": "init",
                "train_top1": 0.0,
            },  # fmt: skip
            {
                "epoch": 1,
                "loss": 20.959068298339844,
                "loss_ce": 2.380582809448242,
                "loss_ft": 18.5784854888916,
                "lr": 0.05,
                "test_top1": 0.0,
                "test_top5": 50.0,
                "train_top1": 12.5,
            },  # fmt: skip
            {
                "epoch": 2,
                "loss": 31.10837435722351,
                "loss_ce": 2.2988269329071045,
                "loss_ft": 28.809547424316406,
                "lr": 0.05,
                "test_top1": 12.5,
                "test_top5": 56.25,
                "train_top1": 12.5,
            },  # fmt: skip
            {
                "epoch": 3,
                "loss": 19.717042446136475,
                "loss_ce": 2.196166515350342,
                "loss_ft": 17.520875930786133,
                "lr": 0.005000000000000001,
                "test_top1": 12.5,
                "test_top5": 50.0,
                "train_top1": 28.125,
            },  # fmt: skip
        ],
    ),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    train.run(TEACHER, root, train.RunOptions(device="cpu"), show_progress=False)
    return root


@pytest.mark.parametrize("method", sorted(BEFORE))
def test_the_init_stage_then_the_main_stage_train_as_before(results, method):
    spec, before = BEFORE[method]
    assert (
        spec.run_id
        == {"ab": "ab-resnet8-s3-2319b65ce1e2", "ft": "ft-resnet8-s3-81a331a66e25"}[method]
    )  # the specs recorded at e1fec24
    result = train.run(spec, results, train.RunOptions(device="cpu"), show_progress=False)
    run = RunDir(results, spec.run_id)
    # metrics.jsonl as written, in e1fec24's keys (typed records keep them, plus schema_version)
    history = [
        {k: v for k, v in json.loads(line).items() if k not in ("images_per_s", "schema_version")}
        for line in run.metrics_file.read_text().splitlines()
    ]
    assert [h.to_json() for h in run.read_metrics()] == [
        json.loads(line) for line in run.metrics_file.read_text().splitlines()
    ]
    assert [sorted(h) for h in history] == [sorted(h) for h in before]
    assert [(h.get("phase"), h["epoch"], h["lr"]) for h in history] == [
        (h.get("phase"), h["epoch"], h["lr"]) for h in before
    ]  # same epochs, same LR per epoch (exactly)

    def numbers(h: dict) -> dict:
        return {k: v for k, v in h.items() if k != "phase"}

    assert [numbers(h) for h in history] == [
        pytest.approx(numbers(h), rel=1e-5, abs=1e-6) for h in before
    ]
    main = [h for h in before if "phase" not in h]
    assert (result.epochs, result.best_top1, result.last_top1) == (
        len(main),
        max(h["test_top1"] for h in main),
        main[-1]["test_top1"],
    )
    checkpoint = torch.load(run.checkpoint_file, weights_only=True)
    assert sorted(checkpoint) == [
        "epoch",
        "history",
        "init_epoch",
        "init_optimizer",
        "optimizer",
        "precision",
        "state",
    ]  # the keys of e1fec24's checkpoints: those resume
    assert (checkpoint["epoch"], checkpoint["init_epoch"]) == (3, len(before) - len(main))
    assert checkpoint["init_optimizer"] is not None


def test_a_method_without_a_pre_training_stage_has_the_main_stage_only():
    spec = tiny("ce", {"ce_weight": 1.0, "kd_weight": 0.0}, None, epochs=3)
    d = methods.get("ce")(
        models.create("resnet8", num_classes=10),
        None,
        methods.get("ce").Params(),
        torch.zeros(2, 3, 16, 16),
    )
    (main,) = stages.stages(spec, d)
    assert (main.name, main.epochs, main.data_epoch_offset, main.evaluates) == ("main", 3, 0, True)
    assert [main.lr_at(e) for e in (1, 2, 3)] == [spec.train.lr_at(e) for e in (1, 2, 3)]
    assert main.step == d.forward_train
    assert {id(p) for g in main.optimizer.param_groups for p in g["params"]} == {
        id(p) for p in d.trainable_parameters()
    }


def test_the_pre_training_stage_trains_its_own_parameters_with_forward_init_on_its_own_data_epochs():
    spec = tiny("ab", {"init_epochs": 2}, REF, epochs=3)
    method = methods.get("ab")
    d = method(
        models.create("resnet8", num_classes=10),
        models.create("resnet8", num_classes=10),
        method.Params(init_epochs=2),
        torch.zeros(2, 3, 16, 16),
    )
    init, main = stages.stages(spec, d)
    assert (init.name, init.epochs, init.lr_at, init.evaluates) == ("init", 2, None, False)
    assert init.data_epoch_offset == stages.INIT_EPOCH_OFFSET and main.data_epoch_offset == 0
    assert {id(p) for g in init.optimizer.param_groups for p in g["params"]} == {
        id(p) for p in d.init_stage().parameters
    }
    images, targets = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(0)
    logits, terms = init.step(images, targets, 1, None, None)
    torch.manual_seed(0)
    expected = d.forward_init(images, targets)
    assert logits is None and set(terms) == set(expected)
    assert all(torch.equal(terms[k], expected[k]) for k in terms)
    assert set(CHECKPOINT_KEYS) == {s.name for s in (init, main)}
