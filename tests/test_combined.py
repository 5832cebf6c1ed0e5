"""Method combinations (``first+second``): one set of networks, the first's loss plus the second's terms."""

from __future__ import annotations

import copy

import torch
from kdbench import methods, models


def test_rkd_plus_mlkd_sums_both_and_shares_the_networks():
    torch.manual_seed(0)
    teacher = models.create("resnet8", num_classes=10).eval()
    student = models.create("resnet8", num_classes=10)
    images, strong = torch.randn(6, 3, 32, 32), torch.randn(6, 3, 32, 32)
    targets = torch.randint(0, 10, (6,))
    cls = methods.get("rkd+mlkd")
    assert cls is methods.get("rkd+mlkd") and methods.is_implemented("rkd+mlkd")
    assert cls.needs.strong_view and cls.needs.teacher and not cls.needs.teacher_logits_only
    params = methods.resolve_params("rkd+mlkd", None, {"weight": 2.0, "second": {"weight": 0.5}})
    assert params.weight == 2.0 and params.second.weight == 0.5 and params.second.temperature == 4.0
    d = cls(student, copy.deepcopy(teacher), params, images[:2])
    d.train()
    _, terms = d.forward_train(images, targets, epoch=1, indices=torch.arange(6), strong=strong)
    assert {"ce", "rkd", "mlkd_kd_weak", "mlkd_ce_strong"} <= set(terms) and "mlkd_ce" not in terms
    names = [k for k in d.state_dict() if "student." in k]
    assert not any(
        k.startswith("second.student.") or k.startswith("second.teacher.") for k in names
    )
    assert len(d.trainable_parameters()) == len(
        list(student.parameters())
    )  # RKD and MLKD add no modules
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in d.teacher.parameters())
