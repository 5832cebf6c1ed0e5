"""The feature and relation methods (FitNet, AT, SP, CC, VID, RKD, PKT, NST): their taps, pairing,
weights, variants, extra modules and parameter counts, and their terms against the numpy references
of tests/test_losses_feature.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from kdbench import methods, models
from kdbench.errors import KdbenchError
from kdbench.methods.fitnet import ConvReg
from kdbench.models.base import Features, KDModel
from torch import nn

from reference import ref_adaptive_pool, ref_align
from test_losses_feature import (
    FEATURE_METHODS,
    _t,
    ref_at,
    ref_cc,
    ref_fitnet,
    ref_nst,
    ref_pkt,
    ref_rkd,
    ref_sp,
    ref_vid,
)

# ---------------------------------------------------------------------------------------------
# Methods: taps, pairing, weights, variants and extra modules
# ---------------------------------------------------------------------------------------------

NUM_CLASSES = 10
_MODELS: dict[str, KDModel] = {}


def calibrated(name: str) -> KDModel:
    """A random network (cached) whose BN running statistics were calibrated on random images."""
    if name not in _MODELS:
        torch.manual_seed(0)
        net = models.create(name, num_classes=NUM_CLASSES)
        bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for bn in bns:
            bn.momentum = None
        net.train()
        with torch.no_grad():
            net(torch.randn(16, 3, 32, 32))
        _MODELS[name] = net.eval()
    return _MODELS[name]


def build(
    name: str, student: str, teacher: str, variant: str | None = None, **overrides
) -> methods.Distiller:
    import copy

    cls = methods.get(name)
    params = methods.resolve_params(name, variant, overrides)
    torch.manual_seed(3)
    images = torch.randn(2, 3, 32, 32)
    return cls(
        copy.deepcopy(calibrated(student)), copy.deepcopy(calibrated(teacher)), params, images
    )


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# docs/references.md §Loss weights of the baselines (fixtures): (teacher, student) → (FitNet f2 regressor, CC, VID).
FIXTURES = {
    ("resnet32x4", "resnet8x4"): (16_768, 65_792, 258_496),
    ("wrn_40_2", "wrn_16_2"): (4_288, 33_024, 64_736),
    ("resnet56", "resnet20"): (1_120, 16_640, 16_240),
    ("resnet32x4", "ShuffleV2"): (475_520, 164_096, 328_384),
    ("vgg13", "MobileNetV2"): (4_864, 229_632, 1_325_952),
}


@pytest.mark.parametrize(("teacher", "student"), list(FIXTURES))
def test_extra_parameter_counts_match_spec_fixtures(teacher, student):
    fitnet_n, cc_n, vid_n = FIXTURES[teacher, student]
    assert n_params(build("fitnet", student, teacher).regressor) == fitnet_n
    d = build("cc", student, teacher)
    assert n_params(d.embed_s) + n_params(d.embed_t) == cc_n
    assert n_params(build("vid", student, teacher).regressors) == vid_n


def test_defaults_and_variants():
    betas = {
        "fitnet": 100.0,
        "at": 1000.0,
        "sp": 3000.0,
        "cc": 0.02,
        "vid": 1.0,
        "rkd": 1.0,
        "pkt": 30000.0,
        "nst": 50.0,
    }
    for name, beta in betas.items():
        default = methods.resolve_params(name, None, {})
        assert (default.ce_weight, default.kd_weight, default.weight, default.kd_temperature) == (
            1.0,
            0.0,
            beta,
            4.0,
        ), name
        assert methods.resolve_params(name, "crd", {}) == default, name
        if name == "nst":
            assert "simkd" not in methods.get(name).variants  # NST is not in the SimKD/SemCKD code
            continue
        sk = methods.resolve_params(name, "simkd", {})
        assert (sk.ce_weight, sk.kd_weight, sk.weight, sk.kd_temperature) == (
            1.0,
            1.0,
            beta,
            4.0,
        ), name
    assert methods.resolve_params("fitnet", None, {}).hint_layer == 2
    sk = methods.resolve_params("fitnet", "simkd", {})
    assert (sk.hint_layer, sk.regressor) == (1, "simkd")
    rkd = methods.resolve_params("rkd", None, {})
    assert (rkd.w_dist, rkd.w_angle) == (25.0, 50.0)
    assert methods.resolve_params("cc", None, {}).feat_dim == 128
    assert methods.resolve_params("at", None, {}).p == 2
    assert methods.resolve_params("vid", "mdistiller", {}).trainable_variance is False
    # The SimKD Table 1 rows validate (field `weight` = β).
    for name, beta in (("fitnet", 100), ("at", 1000), ("sp", 3000), ("vid", 1)):
        methods.resolve_params(name, None, {"ce_weight": 1, "kd_weight": 1, "weight": beta})


@pytest.mark.parametrize(
    ("h_s", "h_t", "kind", "kernel", "stride", "padding"),
    [
        (8, 4, nn.Conv2d, (3, 3), (2, 2), (1, 1)),
        (4, 8, nn.ConvTranspose2d, (4, 4), (2, 2), (1, 1)),
        (6, 4, nn.Conv2d, (3, 3), (1, 1), (0, 0)),
        (4, 4, nn.Conv2d, (1, 1), (1, 1), (0, 0)),
        (16, 4, nn.Conv2d, (13, 13), (1, 1), (0, 0)),
    ],
)
def test_fitnet_regressor_cases(h_s, h_t, kind, kernel, stride, padding):
    reg = ConvReg((2, 3, h_s, h_s), (2, 5, h_t, h_t), fallback=False)
    conv = reg.conv
    assert type(conv) is kind and conv.bias is not None
    assert (conv.kernel_size, conv.stride, conv.padding) == (kernel, stride, padding)
    assert reg.pool_teacher_to is None
    assert reg(torch.randn(2, 3, h_s, h_s)).shape == (2, 5, h_t, h_t)


def test_fitnet_regressor_smaller_student_map():
    with pytest.raises(KdbenchError, match="regressor='simkd'"):
        ConvReg((2, 3, 4, 4), (2, 5, 16, 16), fallback=False)
    reg = ConvReg(
        (2, 3, 4, 4), (2, 5, 16, 16), fallback=True
    )  # SimKD code: 3×3 pad 1, teacher pooled
    assert (reg.conv.kernel_size, reg.conv.padding, reg.pool_teacher_to) == ((3, 3), (1, 1), 4)
    assert reg(torch.randn(2, 3, 4, 4)).shape == (2, 5, 4, 4)


class TinyNet(KDModel):
    """A stand-in network with chosen tap shapes: stage i = 1×1 conv of the input, pooled to size."""

    def __init__(self, taps: list[tuple[int, int]]):
        super().__init__()
        self.taps = taps
        self.convs = nn.ModuleList(nn.Conv2d(3, c, 1) for c, _ in taps)
        self.classifier = nn.Linear(taps[-1][0], NUM_CLASSES)

    def forward_features(self, x: torch.Tensor) -> Features:
        stages = [
            F.relu(F.adaptive_avg_pool2d(conv(x), h)) for conv, (_, h) in zip(self.convs, self.taps)
        ]
        pooled = stages[-1].mean(dim=(2, 3))
        return Features(stages, stages, stages[-1], pooled, self.classifier(pooled))


def test_fitnet_simkd_fallback_pools_the_teacher_map():
    torch.manual_seed(0)
    student, teacher = TinyNet([(2, 8), (3, 4)]), TinyNet([(2, 8), (5, 16)])
    images = torch.randn(4, 3, 32, 32)
    with pytest.raises(KdbenchError, match="TinyNet"):
        methods.get("fitnet")(
            student, teacher, methods.resolve_params("fitnet", None, {"hint_layer": 1}), images
        )
    params = methods.resolve_params("fitnet", "simkd", {})
    d = methods.get("fitnet")(student, teacher, params, images).double().eval()
    x = images.double()
    _, terms = d.forward_train(x, torch.zeros(4, dtype=torch.long), epoch=1)
    with torch.no_grad():
        regressed = d.regressor(student.forward_features(x).stages[1]).numpy()
        target = ref_adaptive_pool(teacher.forward_features(x).stages[1].numpy(), 4)
    np.testing.assert_allclose(
        terms["fitnet"].item(), 100.0 * ref_fitnet(regressed, target), rtol=1e-10
    )


def test_fitnet_hint_layer_must_exist_in_both():
    with pytest.raises(KdbenchError, match="hint_layer 4 does not exist"):
        build(
            "fitnet", "vgg8", "resnet32x4", hint_layer=4
        )  # VGG has f4, the CIFAR ResNet stops at f3


@pytest.mark.parametrize(("variant", "layer"), [(None, 2), ("simkd", 1)])
def test_fitnet_hint_tap(variant, layer):
    d = build("fitnet", "ShuffleV2", "resnet32x4", variant)
    # ShuffleV2 f1 116@16 / f2 232@8 → ResNet-32x4 f1 64@32 / f2 128@16: transposed conv either way.
    assert isinstance(d.regressor.conv, nn.ConvTranspose2d)
    assert (d.regressor.conv.in_channels, d.regressor.conv.out_channels) == {
        1: (116, 64),
        2: (232, 128),
    }[layer]


def test_vid_variance_init_and_mdistiller_variant():
    d = build("vid", "resnet8x4", "resnet32x4")
    for reg in d.regressors:
        assert isinstance(reg.log_scale, nn.Parameter)
        var = torch.log(1.0 + torch.exp(reg.log_scale.detach().double())) + 1e-5
        torch.testing.assert_close(var, torch.full_like(var, 5.0), rtol=1e-6, atol=1e-6)
        convs = [m for m in reg.regressor if isinstance(m, nn.Conv2d)]
        assert len(convs) == 3 and all(c.bias is None for c in convs)
        assert isinstance(reg.regressor[-1], nn.Conv2d)  # no ReLU after the last conv
    frozen = build("vid", "resnet8x4", "resnet32x4", "mdistiller")
    trainable = {id(p) for p in frozen.trainable_parameters()}
    for i, reg in enumerate(frozen.regressors):
        assert not isinstance(reg.log_scale, nn.Parameter) and id(reg.log_scale) not in trainable
        assert f"regressors.{i}.log_scale" in frozen.inference_state()


# Method terms vs the numpy references on real taps, float64 end to end. Teacher resnet32x4 has
# f1..f3, student vgg8 has f1..f4: front-aligned pairing uses (f1, f1), (f2, f2), (f3, f3) and
# drops the student's f4; the maps differ in size, so every pair is pooled.


@pytest.fixture(scope="module")
def batch64():
    torch.manual_seed(4)
    return torch.randn(6, 3, 32, 32, dtype=torch.float64)


def method_terms(
    name: str,
    images: torch.Tensor,
    student: str = "vgg8",
    teacher: str = "resnet32x4",
    variant: str | None = None,
):
    d = build(name, student, teacher, variant).double().eval()
    targets = torch.arange(len(images)) % NUM_CLASSES
    _, terms = d.forward_train(images, targets, epoch=1)
    with torch.no_grad():
        fs, ft = d.student.forward_features(images), d.teacher.forward_features(images)
    return d, terms, fs, ft


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy()


def test_at_method_sums_front_aligned_pairs(batch64):
    _, terms, fs, ft = method_terms("at", batch64)
    assert len(fs.stages) == 5 and len(ft.stages) == 4
    expected = sum(ref_at(_np(fs.stages[i]), _np(ft.stages[i])) for i in (1, 2, 3))
    assert set(terms) == {"ce", "at"}
    np.testing.assert_allclose(terms["at"].item(), 1000.0 * expected, rtol=1e-10)


def test_nst_method_sums_front_aligned_pairs(batch64):
    _, terms, fs, ft = method_terms("nst", batch64)
    expected = sum(ref_nst(_np(fs.stages[i]), _np(ft.stages[i])) for i in (1, 2, 3))
    np.testing.assert_allclose(terms["nst"].item(), 50.0 * expected, rtol=1e-10)


def test_sp_method_uses_last_spatial_maps(batch64):
    _, terms, fs, ft = method_terms("sp", batch64)
    expected = ref_sp(
        _np(fs.stages[-1]), _np(ft.stages[-1])
    )  # vgg8 f4 512@4 vs resnet32x4 f3 256@8
    np.testing.assert_allclose(terms["sp"].item(), 3000.0 * expected, rtol=1e-10)


@pytest.mark.parametrize("name", ["rkd", "pkt"])
def test_rkd_pkt_methods_use_pooled_vectors(name, batch64):
    _, terms, fs, ft = method_terms(name, batch64)
    ref, beta = {"rkd": (ref_rkd, 1.0), "pkt": (ref_pkt, 30000.0)}[name]
    np.testing.assert_allclose(
        terms[name].item(), beta * ref(_np(fs.pooled), _np(ft.pooled)), rtol=1e-10
    )


def test_cc_method_embeds_both_pooled_vectors(batch64):
    d, terms, fs, ft = method_terms("cc", batch64)
    with torch.no_grad():
        e_s, e_t = d.embed_s(fs.pooled), d.embed_t(ft.pooled)
    assert (d.embed_s.in_features, d.embed_t.in_features, d.embed_s.out_features) == (512, 256, 128)
    np.testing.assert_allclose(terms["cc"].item(), 0.02 * ref_cc(_np(e_s), _np(e_t)), rtol=1e-10)


def test_vid_method_sums_front_aligned_pairs(batch64):
    d, terms, fs, ft = method_terms("vid", batch64)
    assert len(d.regressors) == 3
    expected = 0.0
    for i, reg in zip((1, 2, 3), d.regressors):
        s, t = ref_align(_np(fs.stages[i]), _np(ft.stages[i]))
        with torch.no_grad():
            mu = _np(reg(_t(s)))
        expected += ref_vid(mu, t, _np(reg.log_scale))
    np.testing.assert_allclose(terms["vid"].item(), expected, rtol=1e-10)


@pytest.mark.parametrize(("variant", "layer", "kd"), [(None, 2, False), ("simkd", 1, True)])
def test_fitnet_method_terms(variant, layer, kd, batch64):
    d, terms, fs, ft = method_terms("fitnet", batch64, variant=variant)
    assert set(terms) == ({"ce", "kd", "fitnet"} if kd else {"ce", "fitnet"})
    with torch.no_grad():
        regressed = _np(d.regressor(fs.stages[layer]))
    np.testing.assert_allclose(
        terms["fitnet"].item(), 100.0 * ref_fitnet(regressed, _np(ft.stages[layer])), rtol=1e-10
    )


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_methods_do_not_backprop_into_teacher_features(name):
    d = build(name, "resnet8x4", "resnet32x4")
    images = torch.randn(4, 3, 32, 32)
    fs = d.student.forward_features(images)
    with torch.no_grad():
        ft = d.teacher.forward_features(images)
    leaves = Features(
        [x.clone().requires_grad_() for x in ft.stages],
        [x.clone().requires_grad_() for x in ft.preact],
        ft.head_map.clone().requires_grad_(),
        ft.pooled.clone().requires_grad_(),
        ft.logits.clone().requires_grad_(),
    )
    _, terms = d.distill(fs, leaves, methods.Step(torch.zeros(4, dtype=torch.long), 1))
    assert set(terms) == {name}
    terms[name].backward()
    for x in [*leaves.stages, *leaves.preact, leaves.head_map, leaves.pooled, leaves.logits]:
        assert x.grad is None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in d.student.parameters())
