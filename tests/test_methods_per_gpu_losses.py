"""Batch-dependent losses of SP and SemCKD computed per original GPU (``training.loss_chunk``), as SimKD's
ImageNet DDP runs did (4 GPUs × 64): checked against each GPU's loss computed on its own chunk."""

from __future__ import annotations

import copy

import pytest
import torch
from kdbench import methods, models
from kdbench.errors import KdbenchError
from kdbench.methods import Step
from kdbench.models.base import Features
from kdbench.plan import plan
from kdbench.recipe import load_recipe

CLASSES = 10


@pytest.fixture(scope="module")
def features() -> tuple[Features, Features, torch.Tensor]:
    torch.manual_seed(0)
    student, teacher = (
        models.create("resnet8", num_classes=CLASSES),
        models.create("resnet14", num_classes=CLASSES),
    )
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        return (
            student.train().forward_features(images),
            teacher.eval().forward_features(images),
            images,
        )


def _rows(f: Features, lo: int, hi: int) -> Features:
    """The features of samples lo..hi-1: what one GPU of the original run computed for its share."""
    return Features(
        [s[lo:hi] for s in f.stages],
        [p[lo:hi] for p in f.preact],
        f.head_map[lo:hi],
        f.pooled[lo:hi],
        f.logits[lo:hi],
    )


def _sp_by_hand(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Tung & Mori Eq. 2–4 from first principles: G = A·Aᵀ with A the B×CHW map, each row divided by its
    L2 norm, loss = Σ (G_t − G_s)² / B²."""
    b = f_s.shape[0]
    grams = []
    for f in (f_s, f_t):
        a = f.reshape(b, -1).double()
        g = torch.stack([torch.stack([(a[i] * a[j]).sum() for j in range(b)]) for i in range(b)])
        grams.append(g / g.pow(2).sum(dim=1, keepdim=True).sqrt())
    return (grams[1] - grams[0]).pow(2).sum() / b**2


def test_sp_per_chunk_is_the_mean_of_each_gpus_gram_loss(features):
    s, t, images = features
    params = methods.resolve_params("sp", "simkd", {})
    d = methods.get("sp")(
        models.create("resnet8", num_classes=CLASSES),
        models.create("resnet14", num_classes=CLASSES),
        params,
        images[:2],
        loss_chunk=4,
    )
    chunked = d.distill(s, t, Step(torch.zeros(8, dtype=torch.long), 1, loss_chunk=4))[1]["sp"]
    by_hand = (
        sum(_sp_by_hand(s.stages[-1][lo : lo + 4], t.stages[-1][lo : lo + 4]) for lo in (0, 4)) / 2
    )
    torch.testing.assert_close(chunked.double(), 3000.0 * by_hand, rtol=1e-5, atol=1e-8)
    whole = d.distill(s, t, Step(torch.zeros(8, dtype=torch.long), 1))[1]["sp"]
    torch.testing.assert_close(
        whole.double(), 3000.0 * _sp_by_hand(s.stages[-1], t.stages[-1]), rtol=1e-5, atol=1e-8
    )
    assert not torch.allclose(whole, chunked)  # the Gram loss does depend on the batch


def test_semckd_per_chunk_equals_one_selfa_per_gpu(features):
    """With loss_chunk 4 the attention MLPs are built for 4 (SimKD's SelfA(opt.batch_size) after the per-GPU
    split), and the loss is the mean of the loss each GPU computes on its 4 samples with the same modules."""
    s, t, images = features
    params = methods.resolve_params("semckd", "imagenet", {})
    cls = methods.get("semckd")
    student, teacher = (
        models.create("resnet8", num_classes=CLASSES),
        models.create("resnet14", num_classes=CLASSES),
    )
    emulated = cls(
        copy.deepcopy(student),
        copy.deepcopy(teacher),
        params,
        images[:2],
        batch_size=8,
        loss_chunk=4,
    ).train()
    gpu = cls(
        copy.deepcopy(student), copy.deepcopy(teacher), params, images[:2], batch_size=4
    ).train()
    assert (
        emulated.query[0].linear1.in_features == 4 and emulated.query[0].linear2.out_features == 1
    )
    gpu.load_state_dict(emulated.state_dict())
    targets = torch.zeros(8, dtype=torch.long)
    chunked = emulated.distill(s, t, Step(targets, 1, loss_chunk=4))[1]["semckd"]
    per_gpu = [
        gpu.distill(_rows(s, lo, lo + 4), _rows(t, lo, lo + 4), Step(targets[:4], 1))[1]["semckd"]
        for lo in (0, 4)
    ]
    torch.testing.assert_close(chunked, (per_gpu[0] + per_gpu[1]) / 2)
    with pytest.raises(KdbenchError, match="built for batch size 4 but got a batch of 8"):
        gpu.distill(s, t, Step(targets, 1))
    with pytest.raises(KdbenchError, match="must divide the batch size"):
        cls(
            copy.deepcopy(student),
            copy.deepcopy(teacher),
            params,
            images[:2],
            batch_size=8,
            loss_chunk=3,
        )


def test_simkd_table3_chunks_sp_and_semckd_per_gpu():
    """SimKD's ImageNet runs: 4 GPUs × 64. SP and SemCKD get loss_chunk 64 (smoke: 4 chunks of its batch of 32);
    the other rows' run ids are unchanged (no loss_chunk in their specs)."""
    r = load_recipe("simkd-table3")
    assert r.training.loss_chunk == 64
    for profile, chunk in (("full", 64), ("smoke", 8)):
        specs = plan(r, profile).specs.values()
        assert {s.method for s in specs if s.train.loss_chunk == chunk} == {"sp", "semckd"}
        assert all(s.train.loss_chunk is None for s in specs if s.method not in ("sp", "semckd"))
    unchunked = r.model_copy(
        update={"training": r.training.model_copy(update={"loss_chunk": None})}
    )
    before = {s.run_id for s in plan(unchunked).specs.values() if s.method not in ("sp", "semckd")}
    assert before == {s.run_id for s in plan(r).specs.values() if s.method not in ("sp", "semckd")}


def _crd(banks: int, labels: torch.Tensor):
    torch.manual_seed(3)
    params = methods.resolve_params("crd", "simkd", {"nce_k": 16, "banks": banks})
    return methods.get("crd")(
        models.create("resnet8", num_classes=CLASSES),
        models.create("resnet14", num_classes=CLASSES),
        params,
        torch.randn(2, 3, 32, 32),
        train_labels=labels,
    ).train()


def _pooled(f: torch.Tensor) -> Features:
    return Features(
        stages=[],
        preact=[],
        head_map=f.new_empty(0),
        pooled=f,
        logits=f.new_zeros(f.shape[0], CLASSES),
    )


def test_crd_per_gpu_banks_equal_independent_gpus():
    """banks: 2 on a batch of 8 == two CRD losses, each with its own heads, banks and Z, on 4 samples: the value is
    their mean, the student features get the mean of their gradients (DDP), each copy's heads the whole gradient of
    its own loss (CRDLoss outside DDP), and each copy's bank moves only at its GPU's samples."""
    labels = torch.arange(40) % CLASSES
    emulated = _crd(2, labels)
    assert len(emulated.replicas) == 1
    torch.testing.assert_close(
        emulated.replicas[0].embed_s.linear.weight, emulated.embed_s.linear.weight
    )  # DDP's broadcast
    assert not torch.equal(emulated.replicas[0].memory_s, emulated.memory_s)  # banks drawn per GPU
    state = emulated.state_dict()
    gpus = [_crd(1, labels) for _ in range(2)]
    gpus[0].load_state_dict({k: v for k, v in state.items() if not k.startswith("replicas.")})
    gpus[1].load_state_dict(
        {
            **{k: v for k, v in state.items() if not k.startswith("replicas.")},
            **{
                k.removeprefix("replicas.0."): v
                for k, v in state.items()
                if k.startswith("replicas.0.")
            },
        }
    )
    indices = torch.tensor([3, 9, 14, 20, 27, 31, 38, 5])
    contrast = methods.crd.sample_contrast_indices(
        indices, labels, 16, torch.Generator().manual_seed(0)
    )
    emulated.contrast_indices = lambda idx, epoch: contrast
    for k, gpu in enumerate(gpus):
        gpu.contrast_indices = lambda idx, epoch, k=k: contrast[4 * k : 4 * k + 4]
    g = torch.Generator().manual_seed(1)
    s_feat, t_feat = torch.randn(8, 64, generator=g), torch.randn(8, 64, generator=g)
    s_leaf = s_feat.clone().requires_grad_()
    step = Step(labels[indices], 1, indices=indices)
    loss = emulated.distill(_pooled(s_leaf), _pooled(t_feat), step)[1]["crd"]
    loss.backward()
    leaves, parts = [], []
    for k, gpu in enumerate(gpus):
        leaf = s_feat[4 * k : 4 * k + 4].clone().requires_grad_()
        part = gpu.distill(
            _pooled(leaf),
            _pooled(t_feat[4 * k : 4 * k + 4]),
            Step(step.targets[4 * k : 4 * k + 4], 1, indices=indices[4 * k : 4 * k + 4]),
        )[1]["crd"]
        (part / 2).backward()  # DDP: each GPU's gradient, averaged over the 2 GPUs
        leaves.append(leaf)
        parts.append(part)
    torch.testing.assert_close(loss, (parts[0] + parts[1]) / 2)
    torch.testing.assert_close(s_leaf.grad, torch.cat([leaf.grad for leaf in leaves]))
    for replica, gpu in zip(emulated.copies(), gpus):
        for head in ("embed_s", "embed_t"):  # not averaged: each GPU's own heads, its own loss
            torch.testing.assert_close(
                getattr(replica, head).linear.weight.grad, 2 * getattr(gpu, head).linear.weight.grad
            )
        torch.testing.assert_close(replica.memory_s, gpu.memory_s)
        torch.testing.assert_close(replica.memory_t, gpu.memory_t)
        torch.testing.assert_close(replica.z, gpu.z)
    assert not torch.equal(emulated.memory_s[indices[:4]], state["memory_s"][indices[:4]])
    assert torch.equal(
        emulated.memory_s[indices[4:]], state["memory_s"][indices[4:]]
    )  # GPU 0 never saw these
    assert not any(
        k.startswith("replicas.") and k.rsplit(".", 1)[-1] in ("memory_s", "memory_t", "z")
        for k in emulated.inference_state()
    )


def test_crd_banks_default_keeps_run_ids_and_state():
    """banks: 1 is the single copy (no replicas, same state keys) and stays out of the run id; simkd-table3's CRD row
    asks for the paper's 4 GPUs."""
    r = load_recipe("simkd-table3")
    crd = {s.method_params["banks"] for s in plan(r).specs.values() if s.method == "crd"}
    assert crd == {4}
    spec = next(s for s in plan(load_recipe("simkd-table1")).specs.values() if s.method == "crd")
    assert spec.method_params["banks"] == 1 and '"banks"' not in spec.canonical_json()
    assert (
        '"banks":4'
        in spec.model_copy(
            update={"method_params": {**spec.method_params, "banks": 4}}
        ).canonical_json()
    )
    single = _crd(1, torch.arange(40) % CLASSES)
    assert not list(single.replicas) and not any(
        k.startswith("replicas") for k in single.state_dict()
    )


def test_vid_per_gpu_heads_equal_independent_gpus(features):
    """heads: 2 on a batch of 8 == two VID losses with their own regressors on 4 samples each: the value is their
    mean, the student's taps get the mean of their gradients, each set the whole gradient of its own loss."""
    s, t, images = features
    torch.manual_seed(4)
    student, teacher = (
        models.create("resnet8", num_classes=CLASSES),
        models.create("resnet14", num_classes=CLASSES),
    )
    cls = methods.get("vid")
    emulated = cls(
        copy.deepcopy(student),
        copy.deepcopy(teacher),
        methods.resolve_params("vid", "simkd", {"heads": 2}),
        images[:2],
    )
    assert len(emulated.replica_regressors) == 1
    assert not torch.equal(
        emulated.regressors[0].regressor[0].weight,
        emulated.replica_regressors[0][0].regressor[0].weight,
    )
    gpus = [
        cls(
            copy.deepcopy(student),
            copy.deepcopy(teacher),
            methods.resolve_params("vid", "simkd", {}),
            images[:2],
        )
        for _ in range(2)
    ]
    for gpu, regs in zip(gpus, [emulated.regressors, emulated.replica_regressors[0]]):
        gpu.regressors.load_state_dict(regs.state_dict())
    taps = [f.detach().clone().requires_grad_() for f in s.stages]
    leaf_features = Features(taps, taps, s.head_map, s.pooled, s.logits)
    targets = torch.zeros(8, dtype=torch.long)
    loss = emulated.distill(leaf_features, t, Step(targets, 1))[1]["vid"]
    loss.backward()
    parts, grads = [], []
    for k, gpu in enumerate(gpus):
        own = [f.detach()[4 * k : 4 * k + 4].clone().requires_grad_() for f in s.stages]
        part = gpu.distill(
            Features(own, own, s.head_map, s.pooled, s.logits),
            _rows(t, 4 * k, 4 * k + 4),
            Step(targets[:4], 1),
        )[1]["vid"]
        (part / 2).backward()  # DDP: each GPU's gradient, averaged over the 2 GPUs
        parts.append(part)
        grads.append([f.grad for f in own[1:]])
    torch.testing.assert_close(loss, (parts[0] + parts[1]) / 2)
    for i, tap in enumerate(taps[1:]):
        torch.testing.assert_close(tap.grad, torch.cat([grads[0][i], grads[1][i]]))
    for regs, gpu in zip([emulated.regressors, emulated.replica_regressors[0]], gpus):
        for (name, p), q in zip(regs.named_parameters(), gpu.regressors.parameters()):
            torch.testing.assert_close(p.grad, 2 * q.grad, msg=name)
    plain = next(s for s in plan(load_recipe("simkd-table1")).specs.values() if s.method == "vid")
    assert plain.method_params["heads"] == 1 and '"heads"' not in plain.canonical_json()
