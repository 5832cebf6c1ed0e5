"""The logit methods DKD, RLD, WSLD and IPWD: their terms equal the weighted pure losses
(tests/test_losses_logit.py checks those), with their warm-ups, variants and IPWD's extra head.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from kdbench import losses, methods
from kdbench.models.base import Features, KDModel
from torch import nn

# ---------------------------------------------------------------------------------------------
# Methods: terms equal the weighted pure losses (a tiny linear "network", so these are fast)
# ---------------------------------------------------------------------------------------------

NUM_CLASSES, DIM = 5, 12


class TinyNet(KDModel):
    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Linear(3 * 2 * 2, DIM)
        self.classifier = nn.Linear(DIM, NUM_CLASSES)

    def forward_features(self, x: torch.Tensor) -> Features:
        pooled = torch.relu(self.body(x.flatten(1)))
        return Features(
            stages=[x], preact=[x], head_map=x, pooled=pooled, logits=self.classifier(pooled)
        )


@pytest.fixture(scope="module")
def tiny_batch():
    g = torch.Generator().manual_seed(3)
    return torch.randn(6, 3, 2, 2, generator=g), torch.randint(0, NUM_CLASSES, (6,), generator=g)


def tiny(name: str, variant: str | None = None, **overrides):
    params = methods.resolve_params(name, variant, overrides)
    return methods.get(name)(TinyNet(1), TinyNet(2), params, torch.randn(2, 3, 2, 2))


def logits_of(d, images):
    with torch.no_grad():
        return d.student(images), d.teacher(images)


def close(a: torch.Tensor, b: torch.Tensor | float) -> None:
    b = torch.as_tensor(b, dtype=a.dtype)
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("epoch", "factor"), [(1, 1 / 20), (10, 0.5), (20, 1.0), (200, 1.0)])
def test_dkd_method_terms_and_warmup(epoch, factor, tiny_batch):
    images, y = tiny_batch
    d = tiny("dkd")
    p = d.params
    assert (p.ce_weight, p.kd_weight, p.weight, p.alpha, p.beta, p.temperature, p.warmup) == (
        1.0,
        0.0,
        1.0,
        1.0,
        8.0,
        4.0,
        20,
    )
    logits, terms = d.forward_train(images, y, epoch=epoch)
    z_s, z_t = logits_of(d, images)
    assert set(terms) == {"ce", "dkd"}
    close(logits, z_s)
    close(terms["ce"], F.cross_entropy(z_s, y))
    close(terms["dkd"], factor * losses.dkd(z_s, z_t, y, 1.0, 8.0, 4.0))


@pytest.mark.parametrize(
    ("variant", "beta", "temperature", "warmup"),
    [
        ("cifar", 8.0, 4.0, 20),
        ("cifar-beta2", 2.0, 4.0, 20),
        ("cifar-beta6", 6.0, 4.0, 20),
        ("imagenet-r34-r18", 0.5, 1.0, 1),
        ("imagenet-r50-mv1", 2.0, 1.0, 1),
    ],
)
def test_dkd_variants(variant, beta, temperature, warmup, tiny_batch):
    images, y = tiny_batch
    d = tiny("dkd", variant)
    assert (d.params.beta, d.params.temperature, d.params.warmup) == (beta, temperature, warmup)
    _, terms = d.forward_train(images, y, epoch=1)
    z_s, z_t = logits_of(d, images)
    close(terms["dkd"], min(1 / warmup, 1.0) * losses.dkd(z_s, z_t, y, 1.0, beta, temperature))


@pytest.mark.parametrize(
    ("variant", "overrides", "temperature", "alpha_t"),
    [
        (None, {}, 4.0, 4.0),
        ("same-t", {}, 4.0, 4.0),
        ("same-t", {"temperature": 2.0}, 2.0, 2.0),
        ("cfg-default", {}, 4.0, 1.0),
        ("imagenet-r34-r18", {}, 1.0, 1.0),
    ],
)
def test_rld_method_temperatures_and_warmup(variant, overrides, temperature, alpha_t, tiny_batch):
    images, y = tiny_batch
    d = tiny("rld", variant, **overrides)
    p = d.params
    assert (p.ce_weight, p.alpha, p.temperature) == (1.0, 1.0, temperature)
    z_s, z_t = logits_of(d, images)
    for epoch in (1, 5, 40):
        _, terms = d.forward_train(images, y, epoch=epoch)
        assert set(terms) == {"ce", "rld"}
        factor = min(epoch / p.warmup, 1.0)
        close(terms["rld"], factor * losses.rld(z_s, z_t, y, 1.0, p.beta, temperature, alpha_t))
        close(terms["ce"], F.cross_entropy(z_s, y))


def test_rld_method_defaults_and_logit_stand(tiny_batch):
    images, y = tiny_batch
    p = methods.get("rld").Params()
    assert (
        p.ce_weight,
        p.kd_weight,
        p.alpha,
        p.beta,
        p.temperature,
        p.alpha_temperature,
        p.warmup,
    ) == (1.0, 0.0, 1.0, 8.0, 4.0, None, 20)
    assert (p.logit_stand, p.safe) == (False, False)
    d = tiny("rld", "logit-stand")
    _, terms = d.forward_train(images, y, epoch=20)
    z_s, z_t = logits_of(d, images)
    close(terms["rld"], losses.rld(z_s, z_t, y, 1.0, 8.0, 4.0, 4.0, logit_stand=True))
    close(terms["ce"], F.cross_entropy(z_s, y))  # CE on the raw logits


@pytest.mark.parametrize(
    ("variant", "alpha", "temperature"),
    [(None, 2.5, 2.0), ("released-code", 2.5, 2.0), ("paper-cifar-unverified", 2.25, 4.0)],
)
def test_wsld_method_terms(variant, alpha, temperature, tiny_batch):
    images, y = tiny_batch
    d = tiny("wsld", variant)
    assert (d.params.ce_weight, d.params.kd_weight, d.params.weight, d.params.temperature) == (
        1.0,
        0.0,
        alpha,
        temperature,
    )
    logits, terms = d.forward_train(images, y, epoch=1)
    z_s, z_t = logits_of(d, images)
    assert set(terms) == {"ce", "wsld"}
    close(logits, z_s)
    close(terms["wsld"], alpha * losses.wsld(z_s, z_t, y, temperature))
    close(terms["ce"], F.cross_entropy(z_s, y))


def test_ipwd_method_terms_and_extra_head(tiny_batch):
    images, y = tiny_batch
    d = tiny("ipwd")
    p = d.params
    assert (
        "reconstructed" in d.title.lower()
        and "reconstructed" in sys.modules[type(d).__module__].__doc__.lower()
    )
    assert (p.ce_weight, p.kd_weight, p.weight, p.temperature, p.cls_weight) == (
        0.1,
        0.0,
        0.9,
        4.0,
        1.0,
    )
    assert (p.form, p.logit_norm, p.self_normalize, p.max_weight, p.start_epoch, p.head_detach) == (
        "mirror",
        "zscore",
        True,
        None,
        1,
        False,
    )
    assert isinstance(d.cls_head, nn.Linear) and (
        d.cls_head.in_features,
        d.cls_head.out_features,
    ) == (DIM, NUM_CLASSES)
    assert not hasattr(d, "kd_head")
    logits, terms = d.forward_train(images, y, epoch=1)
    with torch.no_grad():
        f = d.student.forward_features(images)
        z_t = d.teacher(images)
        z_cls = d.cls_head(f.pooled)
    assert set(terms) == {"ce", "ipwd", "ipwd_cls"}
    close(logits, f.logits)
    close(terms["ce"], 0.1 * F.cross_entropy(f.logits, y))
    close(terms["ipwd"], 0.9 * losses.ipwd(f.logits, z_t, z_cls, y, 4.0))
    close(terms["ipwd_cls"], F.cross_entropy(z_cls, y))
    close(d.forward_test_heads(images)[""], f.logits)  # the original head predicts
    assert any(k.startswith("cls_head.") for k in d.inference_state())


@pytest.mark.parametrize("variant", ["summary", "prob-ratio", "raw-weights", "mirror"])
def test_ipwd_method_weight_variants(variant, tiny_batch):
    images, y = tiny_batch
    d = tiny("ipwd", variant)
    p = d.params
    _, terms = d.forward_train(images, y, epoch=1)
    with torch.no_grad():
        f = d.student.forward_features(images)
        z_t, z_cls = d.teacher(images), d.cls_head(f.pooled)
    expected = losses.ipwd(
        f.logits,
        z_t,
        z_cls,
        y,
        4.0,
        form=p.form,
        logit_norm=p.logit_norm,
        self_normalize=p.self_normalize,
    )
    close(terms["ipwd"], 0.9 * expected)


def test_ipwd_method_start_epoch_uses_plain_kd_before(tiny_batch):
    images, y = tiny_batch
    d = tiny("ipwd", None, start_epoch=5)
    z_s, z_t = logits_of(d, images)
    _, before = d.forward_train(images, y, epoch=4)
    _, after = d.forward_train(images, y, epoch=5)
    close(before["ipwd"], 0.9 * losses.kd(z_s, z_t, 4.0))
    assert not torch.isclose(after["ipwd"], before["ipwd"])
    assert "ipwd_cls" in before  # the extra head trains from the start


def test_ipwd_method_dagger_uses_a_kd_only_head(tiny_batch):
    images, y = tiny_batch
    d = tiny("ipwd", "dagger")
    assert isinstance(d.kd_head, nn.Linear)
    _, terms = d.forward_train(images, y, epoch=1)
    with torch.no_grad():
        f = d.student.forward_features(images)
        z_t, z_cls, z_kd = d.teacher(images), d.cls_head(f.pooled), d.kd_head(f.pooled)
    assert set(terms) == {"ce", "ipwd", "ipwd_kd_head", "ipwd_cls"}
    close(terms["ipwd_kd_head"], 0.9 * losses.kd(z_kd, z_t, 4.0))
    close(terms["ipwd"], 0.9 * losses.ipwd(f.logits, z_t, z_cls, y, 4.0, logits_kd=z_kd))
    assert set(d.kd_head.parameters()) <= set(d.trainable_parameters())


@pytest.mark.parametrize(("variant", "backbone_gets_grad"), [(None, True), ("linear-probe", False)])
def test_ipwd_method_head_detach(variant, backbone_gets_grad, tiny_batch):
    images, y = tiny_batch
    d = tiny("ipwd", variant)
    _, terms = d.forward_train(images, y, epoch=1)
    terms["ipwd_cls"].backward()
    grad = d.student.body.weight.grad
    assert (grad is not None and grad.abs().sum() > 0) == backbone_gets_grad
    assert d.cls_head.weight.grad.abs().sum() > 0
