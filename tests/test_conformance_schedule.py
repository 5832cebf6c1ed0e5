"""Conformance of every shipped recipe's resolved plan with its authors' optimisation protocol.

The expectations below are written by hand from the authors' released training code (file:line in each
``Protocol.source``) and the papers, not read from the recipes: epochs, batch, base LR per student, the LR at
every epoch boundary of the schedule, momentum, Nesterov, weight decay and which parameters it applies to.
Every recipe in ``kdbench/recipes/`` must have an entry here, so a new recipe states its protocol before it ships.
DIST's released scheduler (per-iteration StepLR after a flat "warm-up") is simulated iteration by iteration
and compared with kdbench's per-epoch LR.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from kdbench import methods, models
from kdbench.plan import Plan, RunSpec, plan
from kdbench.recipe import RECIPES_DIR, load_recipe
from kdbench.train import stages
from torch import nn

# LR multipliers at the first and last epoch of every constant stretch, by hand: ×0.1 for epochs after
# 150, 180, 210 (RepDistiller helper/util.py adjust_learning_rate, SimKD helper/util.py:8-14, mdistiller
# engine/utils.py:117-124) and after 30, 60, 90 on ImageNet (SimKD helper/util.py:8-27; DIST's StepLR of 30
# epochs, configs/strategies/distill/resnet_dist.yaml).
CIFAR_240 = {1: 1.0, 150: 1.0, 151: 0.1, 180: 0.1, 181: 0.01, 210: 0.01, 211: 0.001, 240: 0.001}
IMAGENET_100 = {1: 1.0, 30: 1.0, 31: 0.1, 60: 0.1, 61: 0.01, 90: 0.01, 91: 0.001, 100: 0.001}
IMAGENET_120 = {**IMAGENET_100, 100: 0.001, 120: 0.001}


def small_nets_at_001(model: str, teacher_run: bool) -> float:
    """0.01 for MobileNetV2 / ShuffleNet students and teachers, else 0.05: SimKD train_student.py:95-96 and
    train_teacher.py:60-61 (incl. MobileNetV2_1_0 = simkd/MobileNetV2x2, ShuffleV2_1_5), RepDistiller
    train_student.py:92-94 (IPWD follows it), DIST_KD README.md:88-90."""
    return 0.01 if model.split("/")[-1].startswith(("MobileNetV2", "ShuffleV")) else 0.05


# The WRN students are mdistiller's wrn.py (its double BatchNorm update), kdbench's mdistiller/ zoo.
MLKD_STUDENTS = {
    "resnet20",
    "resnet32",
    "resnet8x4",
    "mdistiller/wrn_16_2",
    "mdistiller/wrn_40_1",
    "vgg8",
}


def mlkd_lr(model: str, teacher_run: bool) -> float:
    """0.025 for the six students of MLKD's released CIFAR configs (configs/cifar100/ours/*.yaml:12);
    teachers are trained under RepDistiller's teacher protocol."""
    return (
        small_nets_at_001(model, teacher_run)
        if teacher_run or model not in MLKD_STUDENTS
        else 0.025
    )


def imagenet_lr(model: str, teacher_run: bool) -> float:
    """0.1 for the global batch 256, every network (DIST resnet_dist.yaml lr; SimKD scripts/run_distill.sh)."""
    return 0.1


@dataclass(frozen=True)
class Protocol:
    source: str
    epochs: int
    batch_size: int
    schedule: dict[int, float]
    base_lr: Callable[[str, bool], float]
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = True  # False: BN γ/β and biases get no weight decay
    row_lr: dict[str, float] = field(
        default_factory=dict
    )  # a row's own LR (an LR sweep), by row label
    row_epochs: dict[str, int] = field(default_factory=dict)  # a row's own length, by row label

    def epochs_of(self, row: str) -> int:
        return self.row_epochs.get(row, self.epochs)


SIMKD_CIFAR = Protocol(
    "SimKD train_student.py:42-51, 95-96, 285-288 (SGD over every trainable module, no Nesterov)",
    240,
    64,
    CIFAR_240,
    small_nets_at_001,
)
REPDISTILLER_CIFAR = Protocol(
    "RepDistiller train_student.py:44-54, 92-94, 273-276", 240, 64, CIFAR_240, small_nets_at_001
)
DIST_CIFAR = Protocol(
    "DIST dist_cifar.yaml (sgd_no_nesterov, opt_no_filter, warm-up 120 at warmup_lr = lr, StepLR 30)",
    240,
    64,
    CIFAR_240,
    small_nets_at_001,
)
# MLKD's own rows train 480 epochs in both 2023 releases (6327e73, 77b91ec configs/cifar100/ours/*.yaml:11), same
# milestones; the "(240 epochs)" rows, the baselines and the teachers train 240 (HEAD 5ee473f; CRD's protocol).
MLKD_480 = {"MLKD": 480, "RKD+MLKD": 480, "ReviewKD+MLKD": 480}
MLKD_CIFAR = Protocol(
    "mdistiller engine/trainer.py:37-47, configs/cifar100/ours/*.yaml:11-17 (2023: 480 epochs for MLKD)",
    240,
    64,
    CIFAR_240,
    mlkd_lr,
    row_epochs=MLKD_480,
)
DIST_B1 = Protocol(
    "DIST resnet_dist.yaml; ics tools/train.py:110-118, lib/utils/optim.py:41-63 (Nesterov, 1-D filter)",
    100,
    256,
    IMAGENET_100,
    imagenet_lr,
    nesterov=True,
    weight_decay=1e-4,
    decay_norm_and_bias=False,
)
SIMKD_IMAGENET = Protocol(
    "SimKD scripts/run_distill.sh (ImageNet), train_student.py:285-288, helper/util.py:8-27",
    120,
    256,
    IMAGENET_120,
    imagenet_lr,
    weight_decay=1e-4,
)

PROTOCOLS: dict[str, Protocol] = {
    **{
        f"simkd-{t}": SIMKD_CIFAR
        for t in (
            "table1",
            "table2",
            "table4",
            "table5",
            "tables2",
            "tables4",
            "tables5",
            "tables7",
            "tables8",
            "tables9",
        )
    },
    # Table S.6 sweeps the sequential step's initial LR (appendix B.3): the row names it.
    "simkd-tables6": Protocol(
        SIMKD_CIFAR.source + "; Table S.6 rows",
        240,
        64,
        CIFAR_240,
        small_nets_at_001,
        row_lr={"LR 0.01": 0.01, "LR 0.05": 0.05, "LR 0.1": 0.1, "LR 0.5": 0.5},
    ),
    "simkd-table3": SIMKD_IMAGENET,
    "simkd-tables3": SIMKD_IMAGENET,
    "teachers-simkd-imagenet": SIMKD_IMAGENET,
    "teachers-simkd-cifar100": SIMKD_CIFAR,
    "teachers-crd-cifar100": REPDISTILLER_CIFAR,
    "dist-table5": DIST_CIFAR,
    **{f"dist-table{t}": DIST_B1 for t in (2, 3, 8, 9, 10)},
    "teachers-dist-b1-imagenet": DIST_B1,
    "mlkd-appendix-table1": MLKD_CIFAR,
    "mlkd-appendix-table2": MLKD_CIFAR,
    **{f"ipwd-appendix-table{t}": REPDISTILLER_CIFAR for t in (1, 2, 3, 4)},
}

RECIPE_FILES = sorted(p for p in RECIPES_DIR.glob("*/*.yaml"))


def expected_multiplier(schedule: dict[int, float], epoch: int) -> float:
    """The hand-written multiplier of the last listed epoch at or before ``epoch`` (stretches are constant)."""
    return schedule[max(e for e in schedule if e <= epoch)]


@dataclass(frozen=True)
class PlannedRun:
    spec: RunSpec
    row: str
    teacher_run: bool


def trained_runs(p: Plan) -> list[PlannedRun]:
    """Every run of the full plan that trains (imported teachers do not), with the row that asks for it."""
    runs: dict[str, PlannedRun] = {}
    for cell in p.cells:
        teacher_row = cell.method == "teacher"
        for run_id in cell.run_ids:
            spec = p.specs[run_id]
            if spec.checkpoint is None:
                runs.setdefault(run_id, PlannedRun(spec, cell.row, teacher_row))
    return list(runs.values())


@pytest.fixture(scope="module")
def plans() -> dict[str, Plan]:
    recipes = [load_recipe(path) for path in RECIPE_FILES]
    # Teachers trained by kdbench (--teachers trained): their protocol is checked too, not only the students'.
    return {r.name: plan(r.with_teacher_source("trained"), "full") for r in recipes}


def test_every_recipe_states_its_protocol(plans):
    assert RECIPE_FILES and set(plans) == set(PROTOCOLS)


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_lr_at_every_epoch_of_every_run(name, plans):
    protocol = PROTOCOLS[name]
    runs = trained_runs(plans[name])
    assert runs
    checked: set[tuple] = set()
    for run in runs:
        t = run.spec.train
        epochs = protocol.epochs_of(run.row)
        assert (t.epochs, t.batch_size) == (epochs, protocol.batch_size), run.spec.run_id
        base = protocol.row_lr.get(run.row) or protocol.base_lr(run.spec.model, run.teacher_run)
        if (t, base) in checked:  # runs of one schedule and base LR: checked once
            continue
        checked.add((t, base))
        got = [t.lr_at(epoch) for epoch in range(1, epochs + 1)]
        expected = [
            base * expected_multiplier(protocol.schedule, epoch) for epoch in range(1, epochs + 1)
        ]
        assert got == pytest.approx(expected, rel=1e-12), (run.spec.model, run.row)
        for epoch, multiplier in protocol.schedule.items():  # the boundaries, spelled out
            assert t.lr_at(epoch) == pytest.approx(base * multiplier, rel=1e-12), (
                run.spec.model,
                epoch,
            )


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_optimizer_settings_and_weight_decay_scope(name, plans):
    """The optimizer train/loop.py builds for each run: momentum, Nesterov, weight decay, and which tensors it decays."""
    protocol = PROTOCOLS[name]
    probe = nn.ModuleDict(
        {"conv": nn.Conv2d(3, 4, 3), "bn": nn.BatchNorm2d(4), "fc": nn.Linear(4, 2)}
    )
    names = {id(p): n for n, p in probe.named_parameters()}
    decayed_if_filtered = {"conv.weight", "fc.weight"}  # not BN γ/β, not biases
    for run in {
        r.spec.train: r for r in trained_runs(plans[name])
    }.values():  # one run per distinct schedule
        optimizer = stages.sgd(list(probe.parameters()), run.spec, run.spec.train.lr_at(1))
        decay = {
            names[id(p)]: g["weight_decay"] for g in optimizer.param_groups for p in g["params"]
        }
        assert set(decay) == set(names.values())
        expected = {
            n: (
                protocol.weight_decay
                if protocol.decay_norm_and_bias or n in decayed_if_filtered
                else 0.0
            )
            for n in names.values()
        }
        assert decay == expected, run.spec.run_id
        for group in optimizer.param_groups:
            assert (group["momentum"], group["nesterov"], group["dampening"]) == (
                protocol.momentum,
                protocol.nesterov,
                0,
            )


def test_dist_b1_filter_spares_exactly_batchnorm_and_biases_of_a_real_student():
    """DIST B1 (ics lib/utils/optim.py:41-63): no decay for 1-D parameters and biases; here on the ResNet-18 student."""
    spec = next(
        s
        for s in plan(load_recipe(RECIPES_DIR / "dist/table2.yaml"), "full").specs.values()
        if s.model == "imagenet/resnet18"
    )
    student = models.create("imagenet/resnet18", num_classes=10)
    names = {id(p): n for n, p in student.named_parameters()}
    bn_params = {
        f"{m}.{p}"
        for m, mod in student.named_modules()
        if isinstance(mod, nn.BatchNorm2d)
        for p in ("weight", "bias")
    }
    undecayed = {
        names[id(p)]
        for g in stages.sgd(list(student.parameters()), spec).param_groups
        if g["weight_decay"] == 0
        for p in g["params"]
    }
    assert undecayed == bn_params | {n for n in names.values() if n.endswith(".bias")}
    assert "fc.bias" in undecayed and "fc.weight" not in undecayed


# --------------------------------------------------------------------------- DIST's per-iteration scheduler


def dist_iteration_lrs(
    lr: float, epochs: int, steps: int, warmup_epochs: int, decay_epochs: int, gamma: float
) -> np.ndarray:
    """LR of every training iteration under DIST's released scheduler (ics lib/utils/scheduler.py:7-18, 83-95;
    tools/train.py:141-153, 191, 360), modelled from its code: ``scheduler.step(i)`` before iteration i; a
    flat warm-up (warmup_lr = lr) while i ≤ W = warmup·steps; then StepLR's closed form at ``i − W − 1``,
    lr·γ^⌊(i − W − 1) / D⌋ with D = decay·steps. Without warm-up GradualWarmupScheduler sets total_epoch = −1,
    so the StepLR argument is i."""
    i = np.arange(epochs * steps)
    if warmup_epochs == 0:
        return lr * gamma ** (i // (decay_epochs * steps))
    w = warmup_epochs * steps
    return np.where(i <= w, lr, lr * gamma ** (np.maximum(i - w - 1, 0) // (decay_epochs * steps)))


@pytest.mark.parametrize(
    ("recipe", "steps", "warmup", "off_by_one"),
    [
        # CIFAR-100: 50000 images, batch 64, drop_last (lib/dataset/builder.py:78-81) → 781 iterations per epoch.
        ("dist-table5", 50_000 // 64, 120, {151, 181, 211}),
        # ImageNet B1: 1281167 images, global batch 256, drop_last → 5004 iterations per epoch, no warm-up.
        ("dist-table2", 1_281_167 // 256, 0, set()),
    ],
)
def test_dist_per_iteration_steplr_equals_the_per_epoch_schedule(
    recipe, steps, warmup, off_by_one, plans
):
    """kdbench sets the LR once per epoch; DIST's StepLR moves per iteration. They agree on every iteration but
    the first of each decayed epoch after a warm-up (the audit's 'off by one iteration at each boundary')."""
    for t in {r.spec.train for r in trained_runs(plans[recipe])}:
        lrs = dist_iteration_lrs(t.lr, t.epochs, steps, warmup, 30, 0.1).reshape(t.epochs, steps)
        kdbench = np.array([t.lr_at(e) for e in range(1, t.epochs + 1)])[:, None]
        mismatch = ~np.isclose(lrs, kdbench, rtol=1e-12, atol=0)
        rows, cols = np.nonzero(mismatch)
        assert set((rows + 1).tolist()) == off_by_one and set(cols.tolist()) <= {0}, t
        for epoch in off_by_one:  # that one iteration still runs at the previous stretch's LR
            assert lrs[epoch - 1, 0] == pytest.approx(t.lr_at(epoch - 1), rel=1e-12)


def test_dist_scheduler_model_without_warmup_is_torch_steplr_stepped_per_iteration():
    """The no-warm-up branch of the model above equals torch's StepLR stepped once per iteration."""
    sgd = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(sgd, step_size=3 * 5, gamma=0.1)
    got = []
    for _ in range(10 * 5):
        got.append(sgd.param_groups[0]["lr"])
        sgd.step()
        scheduler.step()
    assert dist_iteration_lrs(0.1, 10, 5, 0, 3, 0.1) == pytest.approx(np.array(got), rel=1e-12)


# --------------------------------------------------------------------------- loss warm-ups

# ReviewKD's HCL weight ramps as min(e / W, 1) over the 1-indexed epoch e (mdistiller distillers/ReviewKD.py,
# ``min(kwargs["epoch"] / self.warmup_epochs, 1.0)``): W = 20 in the CIFAR-100 configs
# (configs/cifar100/reviewkd/*.yaml), 1 in the ImageNet ones (configs/imagenet/*/reviewkd.yaml).
LOSS_WARMUP = {"dist-table2": 1, "ipwd-appendix-table2": 20, "mlkd-appendix-table2": 20}


@pytest.mark.parametrize("name", sorted(LOSS_WARMUP))
def test_reviewkd_loss_warmup_at_every_epoch_of_the_ramp(name, plans):
    warmup = LOSS_WARMUP[name]
    p = plans[name]
    row = next(r for r in p.recipe.rows if r.method == "reviewkd")
    spec = p.specs[next(c for c in p.cells if c.row == row.label and c.run_ids).run_ids[0]]
    method = methods.get("reviewkd")
    torch.manual_seed(0)
    images = torch.randn(8, 3, 16, 16)
    teacher = models.create("resnet8x4", num_classes=10).eval()
    d = method(
        models.create("resnet8", num_classes=10),
        teacher,
        method.Params(**spec.method_params),
        images[:4],
    ).eval()
    targets = torch.arange(8) % 10
    with torch.no_grad():
        full = d.forward_train(images, targets, epoch=spec.train.epochs)[1]["reviewkd"]
        for epoch in sorted(
            {1, 2, warmup // 2 or 1, warmup - 1 or 1, warmup, warmup + 1, spec.train.epochs}
        ):
            term = d.forward_train(images, targets, epoch=epoch)[1]["reviewkd"]
            assert float(term / full) == pytest.approx(min(epoch / warmup, 1.0), rel=1e-6), epoch
