"""The two-stage methods AB, FT and FSP (RepDistiller ``distiller_zoo/{AB,FT,FSP}.py``; docs/references.md §Training protocols):
their extra modules and init stages, the terms of both stages, and one end-to-end run of the loop's
pre-training stage (metrics, what it trains, resume after an init epoch).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from kdbench import losses, methods, models, train
from kdbench.errors import KdbenchError
from kdbench.methods import InitStage
from kdbench.methods.ab import ABConnector
from kdbench.plan import DataSpec, RunSpec, TeacherRef, TrainSpec
from kdbench.store.records import EpochRecord
from kdbench.store.run_dir import RunDir
from kdbench.train.options import RunOptions
from torch import nn

# ---------------------------------------------------------------------------------------------
# Extra modules (§5b fixtures) and FSP's pair requirement
# ---------------------------------------------------------------------------------------------

EXAMPLE = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def make(
    name: str,
    student: str,
    teacher: str,
    num_classes: int = 100,
    example: torch.Tensor = EXAMPLE,
    **params,
):
    cls = methods.get(name)
    torch.manual_seed(0)
    return cls(
        models.create(student, num_classes=num_classes),
        models.create(teacher, num_classes=num_classes),
        cls.Params(**params),
        example,
    )


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("teacher", "student", "ab_conn", "ft_trans", "ft_para"),
    [
        ("resnet32x4", "resnet8x4", 0, 1_033_728, 2_065_536),
        ("wrn_40_2", "wrn_16_2", 0, 258_816, 516_672),
        ("resnet56", "resnet20", 0, 64_896, 129_312),
        ("resnet32x4", "ShuffleV2", 2_495_808, 2_621_808, 2_065_536),
        ("vgg13", "MobileNetV2", 1_345_152, 1_190_880, 8_259_840),
    ],
)
def test_extra_module_parameter_counts(teacher, student, ab_conn, ft_trans, ft_para):
    ab = make("ab", student, teacher)
    assert n_params(ab.connectors) == ab_conn
    ft = make("ft", student, teacher)
    assert n_params(ft.translator) == ft_trans
    assert n_params(ft.paraphraser) == ft_para


def test_ab_connectors_are_identity_or_conv_bn_without_relu():
    same = make("ab", "resnet8x4", "resnet32x4")
    assert all(isinstance(c, nn.Identity) for c in same.connectors)
    cross = make(
        "ab", "ShuffleV2", "resnet32x4"
    )  # 116@16 → 64@32 etc.: 4×4 transposed convs, stride 2
    assert all(isinstance(c, ABConnector) for c in cross.connectors)
    assert [(c.conv.kernel_size, c.conv.stride, c.conv.out_channels) for c in cross.connectors] == [
        ((4, 4), (2, 2), 64),
        ((4, 4), (2, 2), 128),
        ((4, 4), (2, 2), 256),
    ]
    assert all(
        isinstance(c.conv, nn.ConvTranspose2d) and c.conv.bias is not None for c in cross.connectors
    )
    c = cross.connectors[0].train()
    x = torch.randn(2, 116, 16, 16)
    torch.testing.assert_close(c(x), c.bn(c.conv(x)))
    assert (c(x) < 0).any()  # no ReLU


def test_ft_modules_layout():
    ft = make("ft", "ShuffleV2", "resnet32x4")
    convs = [m for m in ft.paraphraser.encoder if isinstance(m, nn.Conv2d)]
    deconvs = [m for m in ft.paraphraser.decoder if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(256, 256), (256, 128), (128, 128)]
    assert [(m.in_channels, m.out_channels) for m in deconvs] == [
        (128, 128),
        (128, 256),
        (256, 256),
    ]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ft.paraphraser.modules())
    assert (
        sum(
            isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.1
            for m in ft.paraphraser.modules()
        )
        == 6
    )
    t_convs = [m for m in ft.translator if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size) for m in t_convs] == [
        (464, 464, (3, 3)),
        (464, 128, (3, 3)),
        (128, 128, (3, 3)),
    ]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in ft.translator) == 3


@pytest.mark.parametrize(
    ("teacher", "student"),
    [("resnet32x4", "ShuffleV2"), ("wrn_40_2", "wrn_40_1"), ("vgg13", "MobileNetV2")],
)
def test_fsp_refuses_pairs_with_unequal_channels(teacher, student):
    cls = methods.get("fsp")
    s, t = models.create(student), models.create(teacher)
    reason = cls.supports(s, t, EXAMPLE)
    assert reason is not None and "FSP" in reason and "channel" in reason
    with pytest.raises(KdbenchError, match="FSP .*student.*teacher"):
        make("fsp", student, teacher)


@pytest.mark.parametrize(
    ("teacher", "student"),
    [("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("resnet56", "resnet20")],
)
def test_fsp_accepts_pairs_with_equal_channels(teacher, student):
    cls = methods.get("fsp")
    assert cls.supports(models.create(student), models.create(teacher), EXAMPLE) is None
    make("fsp", student, teacher)


# ---------------------------------------------------------------------------------------------
# Defaults, init stages, and the terms of both stages
# ---------------------------------------------------------------------------------------------


def test_defaults_follow_the_crd_protocol():
    ab, ft, fsp = (methods.get(n).Params() for n in ("ab", "ft", "fsp"))
    assert (ab.ce_weight, ab.kd_weight, ab.init_epochs, ab.margin) == (1.0, 0.0, 30, 1.0)
    assert (ft.ce_weight, ft.kd_weight, ft.weight, ft.init_epochs, ft.rate, ft.p1, ft.p2) == (
        1.0,
        0.0,
        200.0,
        30,
        0.5,
        2.0,
        1.0,
    )
    assert (fsp.ce_weight, fsp.kd_weight, fsp.init_epochs) == (1.0, 0.0, 30)
    for name in ("ab", "ft", "fsp"):
        assert methods.resolve_params(name, "crd", {}) == methods.get(name).Params()


SMALL = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def ids(params) -> set[int]:
    return {id(p) for p in params}


def test_init_stage_parameters():
    # AB: connectors + stem + stages (not ShuffleNetV2's head conv/BN, not the classifier)
    ab = make("ab", "ShuffleV2", "resnet32x4", num_classes=10, example=SMALL)
    stage = ab.init_stage()
    assert stage.epochs == 30
    s = ab.student
    expected = (
        ids(ab.connectors.parameters()) | ids(s.stem.parameters()) | ids(s.stages.parameters())
    )
    assert ids(stage.parameters) == expected and len(stage.parameters) == len(expected)
    assert not ids(stage.parameters) & (ids(s.classifier.parameters()) | ids(s.head.parameters()))
    # WRN: the final BN (after the last stage) is not a feature module either
    wrn = make("fsp", "wrn_16_2", "wrn_40_2", num_classes=10, example=SMALL)
    w = wrn.student
    assert ids(wrn.init_stage().parameters) == ids(w.parameters()) - ids(
        w.classifier.parameters()
    ) - ids(w.bn.parameters())
    # FSP on a CIFAR ResNet: everything but the classifier
    fsp = make("fsp", "resnet8x4", "resnet32x4", num_classes=10, example=SMALL)
    r = fsp.student
    assert ids(fsp.init_stage().parameters) == ids(r.parameters()) - ids(r.classifier.parameters())
    # FT: the paraphraser only; LR 0.01 hard-coded for CIFAR ResNet / WRN students, else the base LR
    ft = make("ft", "resnet8x4", "resnet32x4", num_classes=10, example=SMALL)
    ft_stage = ft.init_stage()
    assert isinstance(ft_stage, InitStage) and ft_stage.lr == 0.01 and ft_stage.epochs == 30
    assert ids(ft_stage.parameters) == ids(ft.paraphraser.parameters())
    assert (
        make("ft", "ShuffleV2", "resnet32x4", num_classes=10, example=SMALL).init_stage().lr is None
    )
    assert make("ft", "wrn_16_2", "wrn_40_2", num_classes=10, example=SMALL).init_stage().lr == 0.01
    # init_epochs = 0: no pre-training stage
    assert (
        make(
            "ab", "resnet8x4", "resnet32x4", num_classes=10, example=SMALL, init_epochs=0
        ).init_stage()
        is None
    )


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)


def test_ab_terms_of_both_stages():
    d = make("ab", "ShuffleV2", "resnet32x4", num_classes=10, example=SMALL).eval()
    targets = torch.arange(4)
    init_terms = d.forward_init(SMALL, targets)
    s, t = d.student.forward_features(SMALL), d.teacher.forward_features(SMALL)
    assert set(init_terms) == {"ab"}
    close(
        init_terms["ab"],
        losses.ab([c(f) for c, f in zip(d.connectors, s.preact[1:])], t.preact[1:]),
    )
    logits, terms = d.forward_train(SMALL, targets, epoch=1)
    assert set(terms) == {"ce"}  # main stage: CE only
    close(logits, s.logits)
    close(terms["ce"], nn.functional.cross_entropy(s.logits, targets))


def test_ft_terms_of_both_stages():
    d = make("ft", "ShuffleV2", "resnet32x4", num_classes=10, example=SMALL).eval()
    targets = torch.arange(4)
    init_terms = d.forward_init(SMALL, targets)
    s, t = d.student.forward_features(SMALL), d.teacher.forward_features(SMALL)
    f_t = t.stages[-1]
    assert set(init_terms) == {"ft_paraphraser"}
    close(
        init_terms["ft_paraphraser"],
        ((d.paraphraser.decoder(d.paraphraser.encoder(f_t)) - f_t) ** 2).mean(),
    )
    _, terms = d.forward_train(SMALL, targets, epoch=1)
    assert set(terms) == {"ce", "ft"}
    close(terms["ft"], 200.0 * losses.ft(d.translator(s.stages[-1]), d.paraphraser.encoder(f_t)))


def test_fsp_terms_of_both_stages():
    d = make("fsp", "resnet8x4", "resnet32x4", num_classes=10, example=SMALL).eval()
    targets = torch.arange(4)
    init_terms = d.forward_init(SMALL, targets)
    s, t = d.student.forward_features(SMALL), d.teacher.forward_features(SMALL)
    assert set(init_terms) == {"fsp"}
    close(init_terms["fsp"], losses.fsp(s.stages, t.stages))
    _, terms = d.forward_train(SMALL, targets, epoch=1)
    assert set(terms) == {"ce"}


def _sgd(params) -> torch.optim.SGD:
    return torch.optim.SGD(
        params, lr=0.01, momentum=0.9, weight_decay=5e-4
    )  # P-RD, with weight decay


def _step(opt: torch.optim.Optimizer, terms: dict[str, torch.Tensor]) -> None:
    opt.zero_grad(set_to_none=True)
    sum(terms.values()).backward()
    opt.step()


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}


@pytest.mark.parametrize("name", ["ab", "ft"])
def test_init_only_modules_learn_in_the_init_stage_and_stay_fixed_after(name):
    d = make(name, "ShuffleV2", "resnet32x4", num_classes=10, example=SMALL)
    module_name = {"ab": "connectors", "ft": "paraphraser"}[name]
    module = getattr(d, module_name)
    targets = torch.arange(4)
    d.train()
    stage = d.init_stage()
    before_student, before = _snapshot(d.student), _snapshot(module)
    _step(_sgd(stage.parameters), d.forward_init(SMALL, targets))
    assert any(k.endswith("weight") for k in _changed(before, module))
    assert not any(p.grad is not None for p in d.student.classifier.parameters())
    changed_student = _changed(before_student, d.student)
    if name == "ft":
        assert not changed_student  # the student takes no part in FT's init stage
    else:
        assert any(k.startswith("stages.") and k.endswith("weight") for k in changed_student)
        # ShuffleNetV2's head BN stays in eval mode (RepDistiller's model_s.eval()): stats unchanged
        assert not any(k.startswith(("head.", "classifier.")) for k in changed_student)
    # main stage, the loop's optimizer over trainable_parameters(), weight decay included
    d.train()
    opt = _sgd(d.trainable_parameters())
    before = _snapshot(module)
    for _ in range(2):
        _step(opt, d.forward_train(SMALL, targets, epoch=1)[1])
    assert not _changed(before, module)
    assert all(p.grad is None for p in module.parameters())
    if name == "ft":
        assert all(p.grad is not None for p in d.translator.parameters())
    assert any(k.startswith(f"{module_name}.") for k in d.training_state())  # checkpointed


# ---------------------------------------------------------------------------------------------
# End to end: the loop's pre-training stage, its metrics and resume after an init epoch
# ---------------------------------------------------------------------------------------------


def tiny_spec(method: str, params: dict, teacher: TeacherRef | None) -> RunSpec:
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
            epochs=1,
            batch_size=16,
            lr=0.05,
            milestones=(),
            lr_decay=0.1,
            momentum=0.9,
            nesterov=False,
            weight_decay=5e-4,
        ),
        seed=3,
    )


def test_loop_runs_init_stage_then_main_and_resumes_identically(tmp_path, monkeypatch):
    ref_root, resumed_root = tmp_path / "ref", tmp_path / "resumed"
    teacher_spec = tiny_spec("ce", {"ce_weight": 1.0, "kd_weight": 0.0}, None)
    train.run(teacher_spec, ref_root, RunOptions(device="cpu"), show_progress=False)
    spec = tiny_spec(
        "ab", {"init_epochs": 2}, TeacherRef(model="resnet8", run_id=teacher_spec.run_id)
    )

    checkpoints: list[bytes] = []
    real_save = RunDir.save_torch

    def recording_save(self: RunDir, path: Path, obj) -> None:
        real_save(self, path, obj)
        if Path(path).name == "checkpoint.pt":
            checkpoints.append(Path(path).read_bytes())

    monkeypatch.setattr(RunDir, "save_torch", recording_save)
    reference = train.run(spec, ref_root, RunOptions(device="cpu"), show_progress=False)
    monkeypatch.setattr(RunDir, "save_torch", real_save)

    run = RunDir(ref_root, spec.run_id)
    history = run.read_metrics()
    assert [(h.phase, h.epoch) for h in history] == [("init", 1), ("init", 2), ("main", 1)]
    assert all("ab" in h.losses and h.test == {} for h in history[:2])
    assert "ce" in history[2].losses and "ab" not in history[2].losses and history[2].test
    assert reference.epochs == 1
    assert len(checkpoints) == 3

    # After the init stage: the student's feature weights moved, its classifier did not.
    after_init = torch.load(_write(tmp_path / "after_init.pt", checkpoints[1]), weights_only=True)
    assert (after_init["epoch"], after_init["init_epoch"]) == (0, 2)
    torch.manual_seed(spec.seed)  # the loop builds the student right after seeding
    initial = {
        f"student.{k}": v for k, v in models.create("resnet8", num_classes=10).state_dict().items()
    }
    state = after_init["state"]
    for key in ("student.classifier.weight", "student.classifier.bias"):
        assert torch.equal(state[key], initial[key]), key
    conv_keys = [k for k in initial if k.endswith("weight") and state[k].dim() == 4]
    assert conv_keys and all(not torch.equal(state[k], initial[k]) for k in conv_keys)

    # Resume from the checkpoint written after init epoch 1: same run as without interruption.
    shutil.copytree(
        RunDir(ref_root, teacher_spec.run_id).path, RunDir(resumed_root, teacher_spec.run_id).path
    )
    resumed_run = RunDir(resumed_root, spec.run_id)
    _write(resumed_run.checkpoint_file, checkpoints[0])
    assert torch.load(resumed_run.checkpoint_file, weights_only=True)["init_epoch"] == 1
    resumed = train.run(spec, resumed_root, RunOptions(device="cpu"), show_progress=False)
    assert "resuming" in resumed_run.log_file.read_text()

    def numbers(h: EpochRecord) -> dict:
        return h.model_dump(exclude={"images_per_s"})

    assert [numbers(h) for h in resumed_run.read_metrics()] == [numbers(h) for h in history]
    for key in ("best_top1", "last_top1", "last_top5"):
        assert getattr(resumed, key) == getattr(reference, key), key
    ref_state = torch.load(run.model_file, weights_only=True)
    new_state = torch.load(resumed_run.model_file, weights_only=True)
    assert set(ref_state) == set(new_state)
    assert all(torch.equal(ref_state[k], new_state[k]) for k in ref_state)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
