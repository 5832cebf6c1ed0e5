"""MLKD's composition equals the released code's (docs/references.md §MLKD), quirks included."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from kdbench import losses, models
from kdbench.methods.mlkd import MLKD, MLKDParams, below_median


def test_median_masks_are_scalar_fractions():
    assert below_median(torch.tensor([0.1, 0.9, 0.5, 0.3])).tolist() == [1, 0, 0, 1]
    assert below_median(torch.tensor([0.1, 0.9, 0.5])).mean().item() == pytest.approx(
        2 / 3
    )  # (B+1)/(2B), odd B
    assert below_median(torch.ones(6)).mean().item() == 1.0  # ties at the median all count


def test_terms_match_the_released_code_composition():
    torch.manual_seed(0)
    teacher = models.create("resnet8", num_classes=10).eval()
    student = models.create("resnet8", num_classes=10)
    weak, strong = torch.randn(6, 3, 32, 32), torch.randn(6, 3, 32, 32)
    targets = torch.randint(0, 10, (6,))
    params = MLKDParams()
    d = MLKD(student, copy.deepcopy(teacher), params, weak[:2])
    d.train()
    _, terms = d.forward_train(weak, targets, epoch=1, indices=torch.arange(6), strong=strong)

    s_weak, s_strong = student(weak), student(strong)  # train-mode BN: the same batch statistics
    with torch.no_grad():
        t_weak, t_strong = teacher(weak), teacher(strong)
    probs = F.softmax(t_weak, dim=1)
    confidence = probs.max(1).values
    rho_b = (confidence <= torch.quantile(confidence, 0.5)).float().mean()
    rho_c = (probs.sum(0) <= torch.quantile(probs.sum(0), 0.5)).float().mean()
    temps = (4.0, 3.0, 5.0, 2.0, 6.0)
    expected = {
        "ce": 0.1 * F.cross_entropy(s_weak, targets),
        "ce_strong": 0.1 * F.cross_entropy(s_strong, targets),
        "kd_weak": 0.9 * rho_b * sum(losses.kd(s_weak, t_weak, t) for t in temps),
        # The released code's "strong" group: T0, 3, 5 on the strong view, then 2 and 6 on the weak view.
        "kd_strong": 0.9
        * (
            sum(losses.kd(s_strong, t_strong, t) for t in (4.0, 3.0, 5.0))
            + sum(losses.kd(s_weak, t_weak, t) for t in (2.0, 6.0))
        ),
        "cc": 0.9 * rho_c * sum(losses.mlkd_class(s_weak, t_weak, t) for t in temps),
        "bc": 0.9 * rho_b * sum(losses.mlkd_batch(s_weak, t_weak, t) for t in temps),
    }
    assert set(terms) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_paper_variant_weights_each_sample_and_uses_the_strong_view_throughout():
    torch.manual_seed(1)
    teacher = models.create("resnet8", num_classes=10).eval()
    student = models.create("resnet8", num_classes=10)
    weak, strong = torch.randn(6, 3, 32, 32), torch.randn(6, 3, 32, 32)
    targets = torch.randint(0, 10, (6,))
    from kdbench import methods

    params = methods.resolve_params("mlkd", "paper", {})
    d = MLKD(student, copy.deepcopy(teacher), params, weak[:2])
    d.train()
    _, terms = d.forward_train(weak, targets, epoch=1, indices=torch.arange(6), strong=strong)
    s_weak, s_strong = student(weak), student(strong)
    with torch.no_grad():
        t_weak, t_strong = teacher(weak), teacher(strong)
    probs = F.softmax(t_weak, dim=1)
    m = below_median(probs.max(1).values)
    n = below_median(probs.sum(0))
    temps = (4.0, 3.0, 5.0, 2.0, 6.0)
    expected = {
        "kd_weak": 0.9 * sum(losses.mlkd_instance(s_weak, t_weak, t, weights=m) for t in temps),
        "kd_strong": 0.9 * sum(losses.kd(s_strong, t_strong, t) for t in temps),
        "cc": 0.9 * sum(losses.mlkd_class(s_weak, t_weak, t, weights=n) for t in temps),
        "bc_strong": 0.9 * sum(losses.mlkd_batch(s_strong, t_strong, t, weights=m) for t in temps),
    }
    assert {"cc_strong", "bc_strong"} <= set(terms)
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value, rtol=1e-5, atol=1e-6, msg=name)
    # Per-sample weighting is mean_i(m_i · ℓ_i): with every weight 1 it is the plain loss.
    ones = torch.ones(6)
    torch.testing.assert_close(
        losses.mlkd_batch(s_weak, t_weak, 4.0, weights=ones), losses.mlkd_batch(s_weak, t_weak, 4.0)
    )
