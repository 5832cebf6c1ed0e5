"""ImageNet zoo: torchvision state-dict compatibility and output equality, mdistiller's taps, and FLOPs /
memory at the native 224×224 input (architectures.md §5)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from kdbench import cost, models
from kdbench._torchvision import import_torchvision
from kdbench.execute.local import packing
from torch import nn

SIZE = 64  # small test images: every tap keeps its stride (ResNet layer4 is 2×2)
TORCHVISION = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "mobilenet_v2"]


def _randomised_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so equality tests exercise every BN."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            m.weight.data.copy_(0.5 + 0.5 * torch.rand(n, generator=gen))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=gen))
    return model.eval()


def _images() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def _torchvision_and_ours(name: str) -> tuple[nn.Module, models.KDModel]:
    torch.manual_seed(0)
    reference = _randomised_bn(getattr(import_torchvision().models, name)(num_classes=1000))
    ours = models.create(f"imagenet/{name}", num_classes=1000).eval()
    state = reference.state_dict()
    if name == "mobilenet_v2":
        state = ours.from_torchvision_state(state)
    ours.load_state_dict(state, strict=True)
    return reference, ours


def _outputs(module: nn.Module, submodules: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """Outputs of ``submodules`` during one forward pass of ``module``."""
    seen: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: seen.append(out.clone())) for m in submodules
    ]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_weights_load_strictly_and_give_the_same_outputs(name: str) -> None:
    reference, ours = _torchvision_and_ours(name)
    ref_keys, our_keys = list(reference.state_dict()), list(ours.state_dict())
    if (
        name == "mobilenet_v2"
    ):  # its classifier is Sequential(Dropout, Linear): classifier.1.* there
        ref_keys = [k.replace("classifier.1.", "classifier.") for k in ref_keys]
    assert our_keys == ref_keys
    x = _images()
    with torch.no_grad():
        expected, feats = reference(x), ours.forward_features(x)
    torch.testing.assert_close(feats.logits, expected, rtol=0, atol=0)
    torch.testing.assert_close(ours(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_taps_are_mdistillers(name: str) -> None:
    """stages = torchvision's stem ReLU and layer outputs; preact = the same before their final ReLU."""
    reference, ours = _torchvision_and_ours(name)
    x = _images()
    expected = _outputs(
        reference,
        [reference.relu, reference.layer1, reference.layer2, reference.layer3, reference.layer4],
        x,
    )
    with torch.no_grad():
        feats = ours.forward_features(x)
    for got, want in zip(feats.stages, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    stem = _outputs(reference, [reference.bn1], x)[0]
    torch.testing.assert_close(feats.preact[0], stem, rtol=0, atol=0)
    for pre, post in zip(feats.preact, feats.stages, strict=True):
        assert pre.min() < 0
        torch.testing.assert_close(F.relu(pre), post, rtol=0, atol=0)
    assert feats.head_map is feats.stages[-1]


def test_mobilenet_v2_taps_at_strides_4_to_32_and_the_1280_channel_head_map() -> None:
    reference, ours = _torchvision_and_ours("mobilenet_v2")
    x = _images()
    taps = [reference.features[i] for i in (0, 3, 6, 13, 17, 18)]
    expected = _outputs(reference, taps, x)
    with torch.no_grad():
        feats = ours.forward_features(x)
    for got, want in zip([*feats.stages, feats.head_map], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert [SIZE // t.shape[-1] for t in feats.stages] == [2, 4, 8, 16, 32]
    assert feats.head_map.shape[1] == 1280 and feats.preact is feats.stages


def test_mobilenet_v1_taps_are_the_pre_relu_outputs_of_units_3_5_11_13() -> None:
    model = _randomised_bn(models.create("imagenet/mobilenet_v1", num_classes=1000))
    x = _images()
    with torch.no_grad():
        feats = model.forward_features(x)
        manual = model.model[0](x)
        pre_taps = []
        for i in range(1, 14):
            pre = model.model[i][:-1](manual)
            manual = model.model[i](manual)
            if i in (3, 5, 11, 13):
                pre_taps.append(pre)
    for got, want in zip(feats.preact[1:], pre_taps, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert got.min() < 0
    for pre, post in zip(feats.preact[1:], feats.stages[1:], strict=True):
        torch.testing.assert_close(F.relu(pre), post, rtol=0, atol=0)
    assert [t.shape[1] for t in feats.stages[1:]] == [128, 256, 512, 1024]
    torch.testing.assert_close(feats.pooled, manual.mean(dim=(2, 3)))


@pytest.mark.parametrize("classes", [1000, 10])
def test_mobilenet_v1_tf_init_draws_dists_distributions(classes: int) -> None:
    """DIST's MobileNet init (ics lib/models/mobilenet_v1.py:5-20) from its definition: each conv weight is
    N(0, σ²) with σ = √(2 / (k·k·C_out)) (sample std within 5 standard errors, and 68.3 % of the weights within
    ±σ where there are enough of them to tell a normal from a uniform), BN 1 / 0, fc U(±1/√classes), biases 0."""
    torch.manual_seed(0)
    model = models.create("imagenet/mobilenet_v1_tf_init", num_classes=classes)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 27 and all(c.bias is None for c in convs)
    for conv in convs:
        w = conv.weight.detach().double().flatten()
        sigma = (2.0 / (conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels)) ** 0.5
        n = w.numel()
        assert abs(w.mean().item()) < 5 * sigma / n**0.5, conv
        assert abs(w.std().item() / sigma - 1) < 5 / (2 * n) ** 0.5, conv
        if n >= 100_000:
            assert abs((w.abs() < sigma).double().mean().item() - 0.6827) < 0.01, conv
    depthwise = model.model[13][0]  # 3×3 over 1024 channels: σ = √(2 / 9216)
    assert depthwise.groups == 1024 and depthwise.weight.std().item() == pytest.approx(
        (2 / 9216) ** 0.5, rel=0.05
    )
    bound = 1 / classes**0.5
    fc = model.fc.weight.detach()
    assert fc.abs().max().item() <= bound and fc.abs().max().item() > 0.98 * bound
    assert fc.std().item() == pytest.approx(bound / 3**0.5, rel=0.05)
    assert torch.count_nonzero(model.fc.bias) == 0
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert (
            torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.count_nonzero(bn.bias) == 0
        )
    # PyTorch's default (mdistiller's MobileNet): the depthwise convs start about 10× larger.
    default = models.create("imagenet/mobilenet_v1", num_classes=classes)
    assert default.model[13][0].weight.std().item() > 9 * depthwise.weight.std().item()
    assert _shapes(default) == _shapes(model)


def _shapes(model: nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


# Forward multiply-adds at 224×224: torchvision's published GFLOPS (``_ops`` of IMAGENET1K_V1, MACs);
# MobileNet-V1: Howard et al. 2017, Table 1: 569 M mult-adds.
NATIVE_GMACS = {
    "imagenet/resnet18": 1.814,
    "imagenet/resnet50": 4.089,
    "imagenet/mobilenet_v2": 0.301,
    "imagenet/mobilenet_v1": 0.569,
}


@pytest.mark.parametrize("name", sorted(NATIVE_GMACS))
def test_flops_are_counted_at_the_native_input_size(name: str) -> None:
    assert models.input_size(name) == 224
    assert cost.forward_flops(name, 1000) / 2e9 == pytest.approx(NATIVE_GMACS[name], abs=5e-4)


def test_a_run_without_an_image_size_is_sized_at_its_models_native_input() -> None:
    imagenet = SimpleNamespace(
        model="imagenet/resnet18", data=SimpleNamespace(name="imagenet", options={})
    )
    cifar = SimpleNamespace(model="resnet8x4", data=SimpleNamespace(name="cifar100", options={}))
    small = SimpleNamespace(
        model="imagenet/resnet18",
        data=SimpleNamespace(name="imagenet_synthetic", options={"image_size": 64}),
    )
    assert [cost.image_side(s) for s in (imagenet, cifar, small)] == [224, 32, 64]
    params, activations = packing.model_size("imagenet/resnet18", 1000, 224)
    assert params == 11_689_512
    assert (
        activations > 64 * 112 * 112
    )  # the stem conv alone writes 64×112×112 elements per image at 224 px
