"""Every registered method on an ImageNet pair (ResNet-34 → ResNet-18), and the pair-specific behaviour on
ResNet-50 → MobileNet-V1, at a small resolution (64 px: all taps keep their strides; 10 classes)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from kdbench import losses, methods, models
from kdbench.methods import Distiller

SIZE, BATCH, CLASSES = 64, 4, 10


@pytest.fixture(scope="module")
def networks() -> dict[str, models.KDModel]:
    torch.manual_seed(0)
    return {
        name: models.create(name, num_classes=CLASSES).eval()
        for name in (
            "imagenet/resnet34",
            "imagenet/resnet18",
            "imagenet/resnet50",
            "imagenet/mobilenet_v1",
        )
    }


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=gen), torch.randint(
        0, CLASSES, (BATCH,), generator=gen
    )


def imagenet_variant(cls: type[Distiller], pair: str) -> str | None:
    """The method's variant for this ImageNet pair (e.g. ``imagenet-r34-r18``), else its generic ``imagenet``."""
    named = [v for v in cls.variants if v.startswith("imagenet") and pair in v]
    return named[0] if named else ("imagenet" if "imagenet" in cls.variants else None)


def build(
    name: str, teacher: str, student: str, networks, images: torch.Tensor, pair: str
) -> Distiller:
    cls = methods.get(name)
    params = methods.resolve_params(name, imagenet_variant(cls, pair), {})
    t = copy.deepcopy(networks[teacher]) if cls.needs.teacher else None
    labels = torch.arange(64) % CLASSES if cls.needs.sample_indices else None
    return cls(
        copy.deepcopy(networks[student]),
        t,
        params,
        images[:2],
        train_labels=labels,
        batch_size=BATCH,
    )


def train_step(
    d: Distiller, images: torch.Tensor, targets: torch.Tensor
) -> dict[str, torch.Tensor]:
    d.train()
    strong = torch.flip(images, dims=[3]) if d.needs.strong_view else None
    if d.init_stage() is not None:
        sum(d.forward_init(images, targets).values()).backward()
    logits, terms = d.forward_train(
        images, targets, epoch=1, indices=torch.arange(BATCH), strong=strong
    )
    assert logits.shape == (BATCH, CLASSES)
    sum(terms.values()).backward()
    return terms


@pytest.mark.parametrize("name", methods.names())
def test_every_method_trains_resnet34_into_resnet18(name, networks, batch) -> None:
    images, targets = batch
    cls = methods.get(name)
    assert (
        cls.supports(networks["imagenet/resnet18"], networks["imagenet/resnet34"], images[:2])
        is None
    )
    d = build(name, "imagenet/resnet34", "imagenet/resnet18", networks, images, "r34-r18")
    terms = train_step(d, images, targets)
    assert terms and all(v.shape == () and math.isfinite(v.item()) for v in terms.values()), terms
    trainable = d.trainable_parameters()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    if d.teacher is not None:
        assert all(p.grad is None for p in d.teacher.parameters())
    assert d.forward_test_heads(images)[""].shape == (BATCH, CLASSES)


def test_fsp_says_why_it_cannot_serve_resnet50_to_mobilenet_v1(networks, batch) -> None:
    reason = methods.get("fsp").supports(
        networks["imagenet/mobilenet_v1"], networks["imagenet/resnet50"], batch[0][:2]
    )
    assert (
        reason is not None
        and "equal channel counts" in reason
        and "[32, 128, 256, 512, 1024]" in reason
    )


def test_ofd_on_resnet50_to_mobilenet_v1_distils_the_taps_the_teacher_lists_bns_for(
    networks, batch
) -> None:
    """mdistiller's ResNet-50 lists BN-before-ReLU for layers 2–4: three pairs, back-aligned with the taps."""
    images, targets = batch
    d = build("ofd", "imagenet/resnet50", "imagenet/mobilenet_v1", networks, images, "r50-mv1")
    assert d.params.weight == 1e-4 and d.n_pairs == 3
    assert [(c[0].in_channels, c[0].out_channels) for c in d.connectors] == [
        (256, 512),
        (512, 1024),
        (1024, 2048),
    ]
    bns = d.teacher.bn_before_relu()
    torch.testing.assert_close(d.margins()[0], losses.ofd_margins(bns[0].weight, bns[0].bias))
    assert math.isfinite(train_step(d, images, targets)["ofd"].item())


@pytest.mark.parametrize(
    ("variant", "mid"), [("imagenet-r50-mv1", 512), ("imagenet-r50-mv1-rv", 256)]
)
def test_reviewkd_mobilenet_mid_channels(variant, mid, networks, batch) -> None:
    """ABF width on MobileNet-V1 (pooled 1024): mdistiller min(512, 1024) = 512, ReviewKD's own ImageNet code 256."""
    images, targets = batch
    params = methods.resolve_params("reviewkd", variant, {})
    d = methods.get("reviewkd")(
        copy.deepcopy(networks["imagenet/mobilenet_v1"]),
        copy.deepcopy(networks["imagenet/resnet50"]),
        params,
        images[:2],
    )
    assert {abf.conv1[0].out_channels for abf in d.abfs} == {mid}
    assert {abf.conv2[0].in_channels for abf in d.abfs} == {mid}
    assert all(math.isfinite(v.item()) for v in train_step(d, images, targets).values())


@pytest.mark.parametrize("name", ["reviewkd", "dkd"])
def test_resnet50_to_mobilenet_v1_variants_train(name, networks, batch) -> None:
    images, targets = batch
    d = build(name, "imagenet/resnet50", "imagenet/mobilenet_v1", networks, images, "r50-mv1")
    assert d.params == methods.resolve_params(name, "imagenet-r50-mv1", {})
    assert all(math.isfinite(v.item()) for v in train_step(d, images, targets).values())
