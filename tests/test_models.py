"""Model zoos: registry, exact parameter counts and feature taps (architectures.md §3-5).

CIFAR networks run at their native 32×32 and 100 classes; ImageNet networks at 1000 classes (their
published parameter counts) and, to keep the suite fast, at ``IMAGENET_TEST_SIZE`` px (every tap
keeps its stride; the native-size checks are the FLOP tests in tests/test_imagenet_models.py).
"""

from __future__ import annotations

import inspect
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F
from kdbench import models
from kdbench.errors import UnknownNameError
from kdbench.models import Features, KDModel
from kdbench.models._blocks import channel_shuffle

_X1 = "16@32 16@32 32@16 64@8"
_X2 = "16@32 32@32 64@16 128@8"
_X4 = "32@32 64@32 128@16 256@8"
_VGG = "64@32 128@16 256@8 512@4 512@4"
IMAGENET_TEST_SIZE = 64
_IN_BASIC = "64@32 64@16 128@8 256@4 512@2"
_IN_BOTTLENECK = "64@32 256@16 512@8 1024@4 2048@2"

# name -> (exact parameter count at 100 classes (ImageNet: 1000), penultimate dim, stage taps f0..fk
# as C@H at the test input size); counted on the reference implementations (docs/references.md §Model zoos and feature taps; ResNet-101/152
# and MobileNetV2: torchvision's published counts).
SPEC: dict[str, tuple[int, int, str]] = {
    "resnet8": (83_892, 64, _X1),
    "resnet14": (181_108, 64, _X1),
    "resnet20": (278_324, 64, _X1),
    "resnet32": (472_756, 64, _X1),
    "resnet44": (667_188, 64, _X1),
    "resnet56": (861_620, 64, _X1),
    "resnet110": (1_736_564, 64, _X1),
    "resnet8x4": (1_233_540, 256, _X4),
    "resnet32x4": (7_433_860, 256, _X4),
    "simkd/resnet116": (1_833_780, 64, _X1),
    "simkd/resnet110x2": (6_911_220, 128, _X2),
    "simkd/resnet110x4": (27_584_900, 256, _X4),
    "simkd/resnet38": (569_972, 64, _X1),
    "simkd/resnet14x2": (703_732, 128, _X2),
    "simkd/resnet38x2": (2_255_604, 128, _X2),
    "simkd/resnet14x4": (2_783_620, 256, _X4),
    "simkd/resnet38x4": (8_983_940, 256, _X4),
    "wrn_16_1": (180_916, 64, _X1),
    "wrn_16_2": (703_284, 128, _X2),
    "wrn_40_1": (569_780, 64, _X1),
    "wrn_40_2": (2_255_156, 128, _X2),
    "mdistiller/wrn_16_1": (180_916, 64, _X1),
    "mdistiller/wrn_16_2": (703_284, 128, _X2),
    "mdistiller/wrn_40_1": (569_780, 64, _X1),
    "mdistiller/wrn_40_2": (2_255_156, 128, _X2),
    "vgg8": (3_965_028, 512, _VGG),
    "vgg11": (9_277_284, 512, _VGG),
    "vgg13": (9_462_180, 512, _VGG),
    "vgg16": (14_774_436, 512, _VGG),
    "vgg19": (20_086_692, 512, _VGG),
    "MobileNetV2": (812_836, 1280, "16@16 12@16 16@8 48@4 160@2"),
    "simkd/MobileNetV2x2": (2_353_060, 1280, "32@16 24@16 32@8 96@4 320@2"),
    "ShuffleV1": (949_258, 960, "24@32 240@16 480@8 960@4"),
    "ShuffleV2": (1_355_528, 1024, "24@32 116@16 232@8 464@4"),
    "simkd/ShuffleV2_1_5": (2_580_548, 1024, "24@32 176@16 352@8 704@4"),
    "ResNet50": (23_705_252, 2048, "64@32 256@32 512@16 1024@8 2048@4"),
    "imagenet/resnet18": (11_689_512, 512, _IN_BASIC),
    "imagenet/resnet34": (21_797_672, 512, _IN_BASIC),
    "imagenet/resnet50": (25_557_032, 2048, _IN_BOTTLENECK),
    "imagenet/resnet101": (44_549_160, 2048, _IN_BOTTLENECK),
    "imagenet/resnet152": (60_192_808, 2048, _IN_BOTTLENECK),
    "imagenet/mobilenet_v1": (4_231_976, 1024, "32@32 128@16 256@8 512@4 1024@2"),
    "imagenet/mobilenet_v1_tf_init": (4_231_976, 1024, "32@32 128@16 256@8 512@4 1024@2"),
    "imagenet/mobilenet_v2": (3_504_872, 1280, "32@32 24@16 32@8 96@4 320@2"),
}

# Head map (C@H) where it is not the last stage tap's shape; families whose head map is a
# tensor of its own (after a head BN-ReLU or head conv) rather than ``stages[-1]``.
HEAD_MAP = {
    "MobileNetV2": "1280@2",
    "simkd/MobileNetV2x2": "1280@2",
    "ShuffleV2": "1024@4",
    "simkd/ShuffleV2_1_5": "1024@4",
    "imagenet/mobilenet_v2": "1280@2",
}
SEPARATE_HEAD_MAP = {"wrn", "mobilenetv2", "shufflenetv2", "imagenet_mobilenet_v2"}

ALIASES = {
    "simkd/resnet8x4": "resnet8x4",
    "simkd/resnet32x4": "resnet32x4",
    "simkd/resnet110": "resnet110",
    "simkd/vgg8": "vgg8",
    "simkd/vgg13": "vgg13",
    "simkd/MobileNetV2": "MobileNetV2",
    "simkd/ShuffleV1": "ShuffleV1",
    "simkd/ShuffleV2": "ShuffleV2",
}


def _shape(tap: str) -> tuple[int, int, int, int]:
    channels, size = map(int, tap.split("@"))
    return (2, channels, size, size)


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _shapes(model: torch.nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


def _classes(name: str) -> int:
    """The class count the SPEC parameter counts are quoted at."""
    return 1000 if models.info(name).zoo == "imagenet" else 100


def _test_size(name: str) -> int:
    return IMAGENET_TEST_SIZE if models.info(name).zoo == "imagenet" else models.input_size(name)


def _create(name: str) -> KDModel:
    return models.create(name, _classes(name))


def _forward(model: KDModel, size: int = 32) -> tuple[torch.Tensor, Features]:
    """One batch of two random ``size``×``size`` images and the model's features for it."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        return x, model.forward_features(x)


@lru_cache(maxsize=None)
def _features(name: str) -> Features:
    return _forward(_create(name), _test_size(name))[1]


def test_registry_lists_exactly_the_spec_models() -> None:
    assert models.names() == sorted(SPEC)


@pytest.mark.parametrize("name", models.names())
def test_model_matches_spec(name: str) -> None:
    params, penultimate, taps = SPEC[name]
    model = _create(
        name
    ).eval()  # eval: MobileNetV2's dropout sits between ``pooled`` and the classifier
    assert _num_params(model) == params
    x, feats = _forward(model, _test_size(name))
    assert feats.logits.shape == (2, _classes(name))
    assert [tuple(t.shape) for t in feats.stages] == [_shape(t) for t in taps.split()]
    assert len(feats.preact) == len(feats.stages)
    assert [p.shape for p in feats.preact] == [s.shape for s in feats.stages]
    assert feats.head_map.shape == _shape(HEAD_MAP.get(name, taps.split()[-1]))
    assert (feats.head_map is feats.stages[-1]) == (
        models.info(name).family not in SEPARATE_HEAD_MAP
    )
    assert feats.pooled.shape == (2, penultimate)
    torch.testing.assert_close(feats.pooled, feats.head_map.mean(dim=(2, 3)))
    with torch.no_grad():
        torch.testing.assert_close(model.classifier(feats.pooled), feats.logits)
        torch.testing.assert_close(model(x), feats.logits)


@pytest.mark.parametrize(
    "name",
    ["resnet8", "resnet20", "simkd/resnet38x2", "resnet8x4", "ResNet50", "vgg8", "ShuffleV1"],
)
def test_preact_is_the_input_of_the_stage_final_relu(name: str) -> None:
    feats = _features(name)
    assert feats.preact[0] is feats.stages[0]
    for pre, post in zip(feats.preact[1:], feats.stages[1:]):
        assert not torch.equal(pre, post)
        torch.testing.assert_close(F.relu(pre), post)


def test_wrn_preact_is_the_next_bn_output() -> None:
    model = models.create("wrn_16_2").eval()  # eval: re-applying the BNs below changes nothing
    feats = _forward(model)[1]
    next_bns = [model.block2[0].bn1, model.block3[0].bn1, model.bn]
    assert feats.preact[0] is feats.stages[0]
    with torch.no_grad():
        for bn, pre, post in zip(next_bns, feats.preact[1:], feats.stages[1:]):
            torch.testing.assert_close(bn(post), pre)
    torch.testing.assert_close(F.relu(feats.preact[-1]), feats.head_map)
    assert feats.stages[3].min() < 0  # stage outputs are raw residual sums, never ReLU'd


def test_shufflenetv2_preact_is_taken_before_the_shuffle() -> None:
    feats = _features("ShuffleV2")
    for pre, post in zip(feats.preact[1:], feats.stages[1:]):
        torch.testing.assert_close(channel_shuffle(F.relu(pre), 2), post)


def test_mobilenetv2_has_no_preact() -> None:
    feats = _features("MobileNetV2")
    assert feats.preact is feats.stages


@pytest.mark.parametrize("alias, canonical", sorted(ALIASES.items()))
def test_simkd_aliases_resolve_to_the_crd_network(alias: str, canonical: str) -> None:
    assert models.canonical_name(alias) == canonical
    assert models.info(alias) == models.info(canonical)
    assert alias in models.info(canonical).aliases
    assert alias not in models.names()
    assert _num_params(models.create(alias)) == SPEC[canonical][0]


def test_info_fields() -> None:
    wrn = models.info("simkd/resnet38x2")
    assert (wrn.zoo, wrn.family, wrn.paper_label) == ("simkd", "resnet", "WRN-40-2")
    assert models.info("wrn_40_2").family == "wrn"
    assert models.info("resnet8x4").paper_label == "ResNet-8x4"
    assert models.info("ResNet50").family == "resnet_bottleneck"
    assert {models.info(n).zoo for n in models.names()} == {
        "crd",
        "simkd",
        "imagenet",
        "mdistiller",
    }
    assert {models.input_size(n) for n in models.names() if models.info(n).zoo != "imagenet"} == {
        32
    }
    assert {models.input_size(n) for n in models.names() if models.info(n).zoo == "imagenet"} == {
        224
    }
    assert models.info("imagenet/mobilenet_v1").paper_label == "MobileNet"
    with pytest.raises(AttributeError):
        wrn.name = "other"  # type: ignore[misc]


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'resnet8x4'") as err:
        models.create("resnet8x5")
    assert err.value.kind == "model"
    with pytest.raises(UnknownNameError):
        models.info("resnet8x5")


def test_registering_a_taken_name_fails() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        models.register("x", zoo="crd", family="resnet", paper_label="X", aliases=("resnet8",))(
            lambda *, num_classes=100: models.create("resnet8", num_classes)
        )
    assert "x" not in models.names()


def test_every_name_is_written_out_in_its_family_file() -> None:
    """A model's definition is found by searching for its name (timm's rule), also for the names
    registered in a loop over a variant table: no name is assembled from parts."""
    for name in models.names():
        factory = models.registry.MODELS.get(name).factory
        module = inspect.getmodule(getattr(factory, "func", factory))  # a partial's function
        source = inspect.getsource(module)
        for key in (name, *models.info(name).aliases):
            assert f'"{key}"' in source, f"{key!r} is not written out in {module.__name__}"


@pytest.mark.parametrize("name", models.names())
def test_num_classes_changes_only_the_classifier(name: str) -> None:
    with torch.device("meta"):  # shapes only: no weights drawn
        ten, hundred = models.create(name, 10), models.create(name, 100)
    head = {
        n for n, p in ten.named_parameters() if any(p is q for q in ten.classifier.parameters())
    }
    assert {f"{k}.{p}" for k in ("classifier", "fc") for p in ("weight", "bias")} >= head
    ten_shapes, hundred_shapes = _shapes(ten), _shapes(hundred)
    assert ten_shapes.keys() == hundred_shapes.keys()
    assert {k for k in hundred_shapes if ten_shapes[k] != hundred_shapes[k]} == head
    assert ten.classifier.weight.shape == (10, SPEC[name][1])


# BN-before-ReLU lists (OFD margins; architectures.md §1 and each family's section): the families
# that declare one, and for the exact ones, which tap each BN's output *is*.
BN_BEFORE_RELU_FAMILIES = {
    "resnet",
    "wrn",
    "vgg",
    "mobilenetv2",
    "resnet_bottleneck",
    "imagenet_resnet",
    "imagenet_mobilenet_v1",
    "imagenet_mobilenet_v2",
}
BN_OUTPUT_IS_PREACT = {
    "wrn",
    "vgg",
    "imagenet_mobilenet_v1",
}  # exact; ResNets add the shortcut after the BN
BN_COVERS_DEEPEST = {
    "imagenet_resnet": 3
}  # mdistiller lists layers 2-4 only; the others cover every tap


@pytest.mark.parametrize("name", models.names())
def test_bn_before_relu_matches_the_preact_taps(name: str) -> None:
    from kdbench.errors import KdbenchError

    with torch.device("meta"):  # the layers' identities and widths only
        model = _create(name)
    family = models.info(name).family
    if family not in BN_BEFORE_RELU_FAMILIES:
        with pytest.raises(
            KdbenchError, match="does not define BN-before-ReLU layers \\(OFD unsupported\\)"
        ):
            model.bn_before_relu()
        return
    bns = model.bn_before_relu()
    feats = _features(name)
    assert all(type(bn) is torch.nn.BatchNorm2d for bn in bns)
    assert len(bns) == BN_COVERS_DEEPEST.get(family, len(feats.preact) - 1)
    assert [bn.num_features for bn in bns] == [p.shape[1] for p in feats.preact[1:][-len(bns) :]]
    own = {id(m) for m in model.modules()}
    assert all(id(bn) in own for bn in bns) and len({id(bn) for bn in bns}) == len(bns)


@pytest.mark.parametrize(
    "name",
    [
        "wrn_16_2",
        "vgg8",
        "resnet8x4",
        "ResNet50",
        "MobileNetV2",
        "imagenet/resnet18",
        "imagenet/mobilenet_v1",
        "imagenet/mobilenet_v2",
    ],
)
def test_bn_before_relu_outputs_feed_the_preact_taps(name: str) -> None:
    """Exact families: each BN's output is the preact tap. ResNets: tap = BN output + shortcut, so
    the BN output has the tap's shape and differs from it; MobileNetV2: same (residual added)."""
    model = _create(name).eval()
    outputs: list[torch.Tensor] = []
    hooks = [
        bn.register_forward_hook(lambda m, i, o: outputs.append(o)) for bn in model.bn_before_relu()
    ]
    try:
        feats = _forward(model, _test_size(name))[1]
    finally:
        for h in hooks:
            h.remove()
    assert len(outputs) == BN_COVERS_DEEPEST.get(models.info(name).family, len(feats.preact) - 1)
    for out, pre in zip(outputs, feats.preact[1:][-len(outputs) :]):
        assert out.shape == pre.shape
        if models.info(name).family in BN_OUTPUT_IS_PREACT:
            torch.testing.assert_close(out, pre, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["wrn_16_2", "wrn_40_1"])
def test_mdistiller_wrn_updates_three_bns_twice_per_forward(name: str) -> None:
    """mdistiller's wrn.py:141-143 re-applies block2[0].bn1, block3[0].bn1 and the head BN after the logits:
    train-mode outputs and gradients are those of the CRD network, but those three BNs' running statistics move
    twice per forward, running ← (1−m)²·r + (1−(1−m)²)·batch (batch mean and unbiased variance over N, H, W)."""
    torch.manual_seed(0)
    plain, twice = models.create(name), models.create(f"mdistiller/{name}")
    twice.load_state_dict(plain.state_dict())
    x = torch.randn(6, 3, 32, 32)
    taps = {"f1": plain.block2[0].bn1, "f2": plain.block3[0].bn1, "f3": plain.bn}
    inputs: dict[str, torch.Tensor] = {}

    def keep_input(key: str):
        def hook(module, args) -> None:
            inputs.setdefault(key, args[0].detach().clone())

        return hook

    hooks = [bn.register_forward_pre_hook(keep_input(key)) for key, bn in taps.items()]
    a, b = plain.train().forward_features(x), twice.train().forward_features(x)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=0)
    for p_a, p_b in zip(a.preact, b.preact):
        torch.testing.assert_close(p_b, p_a, rtol=0, atol=0)
    weights = [
        torch.randn_like(t) for t in (a.logits, *a.preact[1:])
    ]  # a loss that reads the taps too
    for f in (a, b):
        sum((t * w).sum() for t, w in zip((f.logits, *f.preact[1:]), weights)).backward()
    for (n, g_a), g_b in zip(
        ((n, p.grad) for n, p in plain.named_parameters()), (p.grad for p in twice.parameters())
    ):
        assert (g_b - g_a).abs().max() <= 1e-5 * g_a.abs().max(), n  # float32 summation order only
    twice_bns = {"f1": twice.block2[0].bn1, "f2": twice.block3[0].bn1, "f3": twice.bn}
    m = 0.1
    for key, f in inputs.items():
        mean = f.double().mean(dim=(0, 2, 3))
        var = f.double().var(dim=(0, 2, 3), unbiased=True)
        bn = twice_bns[key]
        keep = (1 - m) ** 2  # from the initial running mean 0 and running var 1
        torch.testing.assert_close(
            bn.running_mean.double(), (1 - keep) * mean, rtol=1e-5, atol=1e-6
        )
        torch.testing.assert_close(
            bn.running_var.double(), keep + (1 - keep) * var, rtol=1e-5, atol=1e-6
        )
        assert int(bn.num_batches_tracked) == 2 and int(taps[key].num_batches_tracked) == 1
        torch.testing.assert_close(taps[key].running_mean.double(), m * mean, rtol=1e-5, atol=1e-6)
    others = [
        k
        for k in plain.state_dict()
        if k.endswith("running_mean")
        and not any(k.startswith(p) for p in ("block2.0.bn1", "block3.0.bn1", "bn."))
    ]
    assert others and all(torch.equal(plain.state_dict()[k], twice.state_dict()[k]) for k in others)
    assert not torch.allclose(
        plain.eval()(x), twice.eval()(x)
    )  # evaluation reads the running statistics
