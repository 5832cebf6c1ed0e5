"""The CRD, SRRL and SemCKD methods: what the pure losses (tests/test_losses_contrastive.py) cannot
check — CRD's memory banks, negative sampling, the constant Z and the state that a checkpoint carries;
module shapes and parameter counts; and each method's loss term recomputed by hand.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from kdbench import losses, methods, models
from kdbench.errors import KdbenchError
from kdbench.methods.crd import epoch_seed, momentum_update, sample_contrast_indices
from torch import nn

from reference import calibrated_teacher
from test_losses_contrastive import NUM_CLASSES

# ---------------------------------------------------------------------------------------------
# Methods: shared fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_template() -> models.KDModel:
    """A random ResNet-32x4 whose BN running statistics were calibrated on random images."""
    return calibrated_teacher("resnet32x4", NUM_CLASSES)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def make(name, teacher_template, images, student="resnet8x4", params=None, seed=2, **context):
    torch.manual_seed(seed)
    cls = methods.get(name)
    s = models.create(student, num_classes=NUM_CLASSES)
    return cls(
        s,
        copy.deepcopy(teacher_template),
        params if params is not None else cls.Params(),
        images[:4],
        **context,
    )


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-6, atol: float = 1e-7) -> None:
    torch.testing.assert_close(a.detach(), b.detach(), rtol=rtol, atol=atol)


# Fixtures of methods-baselines.md §5b (100 classes); pairs = (teacher, student).
PAIRS = [
    ("resnet32x4", "resnet8x4"),
    ("wrn_40_2", "wrn_16_2"),
    ("resnet56", "resnet20"),
    ("resnet32x4", "ShuffleV2"),
]


def bare(name: str, teacher: str, student: str, params=None, **context):
    torch.manual_seed(0)
    cls = methods.get(name)
    t = models.create(teacher, num_classes=100)
    s = models.create(student, num_classes=100)
    return cls(
        s, t, params if params is not None else cls.Params(), torch.randn(2, 3, 32, 32), **context
    )


# ---------------------------------------------------------------------------------------------
# CRD method
# ---------------------------------------------------------------------------------------------


def test_crd_params_variants_and_recipe_row():
    p = methods.get("crd").Params()
    assert (p.ce_weight, p.kd_weight, p.weight) == (1.0, 0.0, 0.8)  # CRD/RepDistiller protocol
    assert (p.feat_dim, p.nce_k, p.nce_t, p.nce_m, p.kd_temperature) == (128, 16384, 0.07, 0.5, 4.0)
    for variant, weights in {
        "crd": (1.0, 0.0, 0.8),
        "crd+kd": (1.0, 1.0, 0.8),
        "simkd": (1.0, 1.0, 0.8),
    }.items():
        r = methods.resolve_params("crd", variant, {})
        assert (r.ce_weight, r.kd_weight, r.weight) == weights, variant
    # SimKD Table 1 row: params {ce_weight: 1, kd_weight: 1, weight: 0.8}
    assert (
        methods.resolve_params("crd", None, {"ce_weight": 1, "kd_weight": 1, "weight": 0.8}).weight
        == 0.8
    )
    assert methods.get("crd").needs == methods.Needs(teacher=True, sample_indices=True)


@pytest.mark.parametrize(("pair", "expected"), list(zip(PAIRS, [65_792, 33_024, 16_640, 164_096])))
def test_crd_embedding_heads_match_fixture(pair, expected):
    d = bare("crd", *pair, train_labels=torch.arange(20) % 10)
    assert n_params(d.embed_s) + n_params(d.embed_t) == expected
    assert d.embed_s.linear.out_features == d.embed_t.linear.out_features == 128
    assert d.embed_s.linear.bias is not None


def test_crd_banks_are_buffers(teacher_template, images):
    n = 100
    d = make("crd", teacher_template, images, train_labels=torch.arange(n) % NUM_CLASSES)
    buffers = dict(d.named_buffers())
    assert buffers["memory_s"].shape == buffers["memory_t"].shape == (n, 128)
    stdv = 1 / math.sqrt(128 / 3)
    for bank in (d.memory_s, d.memory_t):
        assert bank.min() >= -stdv and bank.max() <= stdv and bank.std() > 0.5 * stdv / math.sqrt(3)
    assert not torch.equal(d.memory_s, d.memory_t)
    assert d.z.tolist() == [-1.0, -1.0]
    params = {id(p) for p in d.trainable_parameters()}
    assert all(id(b) not in params for b in buffers.values())
    state = d.training_state()
    assert {"memory_s", "memory_t", "z", "sampler_seed"} <= set(state)
    assert "train_labels" not in state  # given to the constructor every time, not checkpointed
    assert {"embed_s.linear.weight", "embed_t.linear.bias"} <= set(state)


def test_sampled_negatives_fast_path_draws_the_same():
    # The method passes min_available (known at construction) to skip device syncs: same draws.
    labels = torch.arange(300) % 3
    indices = torch.tensor([4, 8, 15, 16, 23, 42])
    slow = sample_contrast_indices(indices, labels, 100, torch.Generator().manual_seed(11))
    fast = sample_contrast_indices(
        indices, labels, 100, torch.Generator().manual_seed(11), min_available=200
    )
    assert torch.equal(slow, fast)


def test_sampled_negatives_exact_mode():
    labels = torch.arange(200) % 10
    indices = torch.tensor([0, 17, 55, 199, 100])
    g = torch.Generator().manual_seed(3)
    idx = sample_contrast_indices(indices, labels, 150, g)
    assert idx.shape == (5, 151) and idx.dtype == torch.int64
    assert torch.equal(idx[:, 0], indices)  # position 0: the sample itself ("exact")
    neg = idx[:, 1:]
    assert (
        labels[neg] != labels[indices][:, None]
    ).all()  # only other classes, so never the positive
    assert (neg != indices[:, None]).all()
    assert all(row.unique().numel() == 150 for row in neg)  # without replacement (180 eligible ≥ K)
    assert neg.min() >= 0 and neg.max() < 200
    # Reproducible from the generator alone.
    again = sample_contrast_indices(indices, labels, 150, torch.Generator().manual_seed(3))
    assert torch.equal(again, idx)
    assert not torch.equal(
        sample_contrast_indices(indices, labels, 150, torch.Generator().manual_seed(4)), idx
    )


def test_sampled_negatives_with_replacement_when_too_few():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    indices = torch.tensor([0, 2, 5])
    idx = sample_contrast_indices(indices, labels, 40, torch.Generator().manual_seed(0))
    assert torch.equal(idx[:, 0], indices)
    neg = idx[:, 1:]
    assert (labels[neg] != labels[indices][:, None]).all()
    # Every eligible sample is drawn (40 draws from 4, 3 and 5 candidates).
    assert set(neg[0].tolist()) == {2, 3, 4, 5} and set(neg[1].tolist()) == {0, 1, 5}
    assert set(neg[2].tolist()) == {0, 1, 2, 3, 4}
    with pytest.raises(KdbenchError, match="two classes"):
        sample_contrast_indices(
            torch.tensor([0]), torch.zeros(5, dtype=torch.long), 3, torch.Generator()
        )


def test_sampled_negatives_are_uniform_over_other_classes():
    # 30 samples, 3 classes; 3000 draws of K = 5 for sample 0 (class 0): each of the 20 eligible
    # samples is expected 750 times (binomial sd ≈ 24); no class-0 sample ever.
    labels = torch.arange(30) % 3
    idx = sample_contrast_indices(
        torch.zeros(3000, dtype=torch.long), labels, 5, torch.Generator().manual_seed(1)
    )
    counts = torch.bincount(idx[:, 1:].flatten(), minlength=30)
    assert counts[labels == 0].sum() == 0
    eligible = counts[labels != 0].double()
    assert eligible.sum() == 15_000 and (eligible - 750).abs().max() < 120


def _capture_embeddings(d):
    seen = {}
    d.embed_s.register_forward_hook(lambda m, i, o: seen.__setitem__("s", o.detach().clone()))
    d.embed_t.register_forward_hook(lambda m, i, o: seen.__setitem__("t", o.detach().clone()))
    return seen


def test_crd_step_z_memory_update_and_term(teacher_template, images):
    n, k = 40, 24
    labels = torch.arange(n) % NUM_CLASSES
    params = methods.resolve_params("crd", None, {"nce_k": k})
    d = make("crd", teacher_template, images, params=params, train_labels=labels)
    seen = _capture_embeddings(d)
    d.train()
    indices = torch.tensor([3, 9, 14, 20, 27, 31, 38, 5])
    targets = labels[indices]
    mem_s, mem_t = d.memory_s.clone(), d.memory_t.clone()
    expected_contrast = sample_contrast_indices(
        indices, labels, k, torch.Generator().manual_seed(epoch_seed(int(d.sampler_seed), 1))
    )

    _, terms = d.forward_train(images, targets, epoch=1, indices=indices)
    assert set(terms) == {"ce", "crd"}
    emb_s, emb_t = seen["s"], seen["t"]
    assert torch.allclose(emb_s.norm(dim=1), torch.ones(8)) and torch.allclose(
        emb_t.norm(dim=1), torch.ones(8)
    )
    scores_s = losses.crd_scores(
        emb_s, mem_t, expected_contrast, 0.07
    )  # student anchor, teacher bank
    scores_t = losses.crd_scores(emb_t, mem_s, expected_contrast, 0.07)
    # The same scores from explicitly gathered rows, as the reference computes them.
    rows_t = mem_t[expected_contrast]  # (B, K+1, D)
    close(scores_s, torch.exp(torch.einsum("bkd,bd->bk", rows_t, emb_s) / 0.07), rtol=1e-5)
    # Z: mean(exp-scores) · N of the first batch, per side.
    z_s, z_t = scores_s.mean() * n, scores_t.mean() * n
    close(d.z, torch.stack([z_s, z_t]), rtol=1e-5)
    close(terms["crd"], 0.8 * losses.crd(scores_s, scores_t, d.z[0], d.z[1], n), rtol=1e-5)
    # Memory update: the batch's rows become normalise(0.5·old + 0.5·new); no other row moves.
    old_s, old_t = mem_s[indices], mem_t[indices]
    close(
        d.memory_s[indices],
        (0.5 * old_s + 0.5 * emb_s) / (0.5 * old_s + 0.5 * emb_s).norm(dim=1, keepdim=True),
    )
    close(d.memory_t[indices], momentum_update(old_t, emb_t, 0.5))
    assert torch.allclose(d.memory_t[indices].norm(dim=1), torch.ones(8))
    rest = torch.ones(n, dtype=torch.bool)
    rest[indices] = False
    assert torch.equal(d.memory_s[rest], mem_s[rest]) and torch.equal(d.memory_t[rest], mem_t[rest])

    # Z is fixed after the first call, whatever the later scores are.
    z_first = d.z.clone()
    for epoch in (1, 2):
        d.forward_train(images, targets, epoch=epoch, indices=indices.flip(0))
    assert torch.equal(d.z, z_first)


def test_momentum_update_rule():
    old = torch.tensor([[3.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    new = torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    # (1.5, 0.5)/√2.5 and (0, 1.5)/1.5
    got = momentum_update(old, new, 0.5)
    assert got.flatten().tolist() == pytest.approx(
        [1.5 / math.sqrt(2.5), 0.5 / math.sqrt(2.5), 0.0, 1.0], rel=1e-15
    )
    assert momentum_update(old, new, 0.9).tolist()[0] == pytest.approx(
        [2.7 / math.sqrt(2.7**2 + 0.01), 0.1 / math.sqrt(2.7**2 + 0.01)], rel=1e-15
    )


def test_crd_state_round_trips_through_state_dict(teacher_template, images):
    n = 40
    labels = torch.arange(n) % NUM_CLASSES
    params = methods.resolve_params("crd", "crd+kd", {"nce_k": 16})
    first = make("crd", teacher_template, images, params=params, train_labels=labels, seed=2)
    first.train()
    opt = torch.optim.SGD(first.trainable_parameters(), lr=0.01, momentum=0.9)
    batches = [torch.arange(8), torch.arange(8, 16)]
    for indices in batches:  # "epoch 1"
        _, terms = first.forward_train(images, labels[indices], epoch=1, indices=indices)
        opt.zero_grad()
        sum(terms.values()).backward()
        opt.step()
    state = {k: v.clone() for k, v in first.training_state().items()}
    assert state["z"].min() > 0

    resumed = make("crd", teacher_template, images, params=params, train_labels=labels, seed=7)
    assert not torch.equal(resumed.memory_s, first.memory_s) and resumed.z[0] < 0
    missing, unexpected = resumed.load_state_dict(state, strict=False)
    assert not unexpected and all(key.startswith("teacher.") for key in missing)
    for key in ("memory_s", "memory_t", "z", "sampler_seed"):
        assert torch.equal(getattr(resumed, key), getattr(first, key)), key

    # Epoch 2 on both: the same negatives, the same Z (not re-estimated), the same loss and banks.
    for d in (first, resumed):
        d.train()
    indices = torch.arange(16, 24)
    _, t_first = first.forward_train(images, labels[indices], epoch=2, indices=indices)
    _, t_resumed = resumed.forward_train(images, labels[indices], epoch=2, indices=indices)
    assert set(t_first) == {"ce", "kd", "crd"}
    close(t_resumed["crd"], t_first["crd"])
    assert torch.equal(resumed.z, state["z"])
    close(resumed.memory_s, first.memory_s)
    close(resumed.memory_t, first.memory_t)


def test_crd_loading_an_unset_z_re_estimates_it(teacher_template, images):
    labels = torch.arange(30) % NUM_CLASSES
    params = methods.resolve_params("crd", None, {"nce_k": 8})
    d = make("crd", teacher_template, images, params=params, train_labels=labels)
    fresh_state = {k: v.clone() for k, v in d.training_state().items()}
    d.train()
    d.forward_train(images, labels[:8], epoch=1, indices=torch.arange(8))
    assert d.z.min() > 0
    d.load_state_dict(fresh_state, strict=False)
    assert d.z.tolist() == [-1.0, -1.0]
    d.forward_train(images, labels[:8], epoch=1, indices=torch.arange(8))
    assert d.z.min() > 0


def test_crd_needs_indices_and_labels(teacher_template, images):
    with pytest.raises(ValueError, match="training labels"):
        make("crd", teacher_template, images)
    d = make(
        "crd",
        teacher_template,
        images,
        params=methods.resolve_params("crd", None, {"nce_k": 4}),
        train_labels=torch.arange(20) % NUM_CLASSES,
    )
    with pytest.raises(KdbenchError, match="dataset index"):
        d.forward_train(images, torch.zeros(8, dtype=torch.long), epoch=1)


def test_crd_default_k_on_a_tiny_training_set(teacher_template, images):
    # K = 16384 > eligible samples: drawn with replacement, as the reference does; loss finite.
    d = make("crd", teacher_template, images, train_labels=torch.arange(64) % NUM_CLASSES)
    d.train()
    _, terms = d.forward_train(
        images, torch.zeros(8, dtype=torch.long), epoch=1, indices=torch.arange(8)
    )
    assert torch.isfinite(terms["crd"]) and terms["crd"] > 0


# ---------------------------------------------------------------------------------------------
# SRRL method
# ---------------------------------------------------------------------------------------------


def test_srrl_params_and_variants():
    p = methods.get("srrl").Params()
    assert (p.ce_weight, p.kd_weight, p.weight, p.connector_input) == (1.0, 1.0, 1.0, "pooled")
    off = methods.resolve_params("srrl", "official", {})
    assert (off.ce_weight, off.kd_weight, off.weight, off.connector_input) == (1.0, 0.0, 1.0, "map")
    assert methods.resolve_params("srrl", None, {"ce_weight": 1, "kd_weight": 1, "weight": 1}) == p


@pytest.mark.parametrize(("pair", "expected"), list(zip(PAIRS, [66_048, 16_640, 4_224, 262_656])))
def test_srrl_connector_matches_fixture(pair, expected):
    d = bare("srrl", *pair)
    conv = d.connector[0]
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.bias is None
    assert isinstance(d.connector[1], nn.BatchNorm2d) and isinstance(d.connector[2], nn.ReLU)
    assert n_params(d.connector) == expected


@pytest.mark.parametrize("student", ["resnet8x4", "ShuffleV2"])
@pytest.mark.parametrize("variant", [None, "official"])
def test_srrl_term_by_hand(student, variant, teacher_template, images):
    d = make(
        "srrl",
        teacher_template,
        images,
        student=student,
        params=methods.resolve_params("srrl", variant, {}),
    )
    d.eval()
    targets = torch.arange(8) % NUM_CLASSES
    with torch.no_grad():
        fs, ft = d.student.forward_features(images), d.teacher.forward_features(images)
        conv, bn = d.connector[0], d.connector[1]
        w = conv.weight[:, :, 0, 0]

        def connect(x):  # 1×1 conv + eval-mode BN + ReLU on (B, C, H, W), by hand
            y = torch.einsum("oc,bchw->bohw", w, x)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            return torch.relu(
                (y - bn.running_mean[:, None, None]) * scale[:, None, None] + bn.bias[:, None, None]
            )

        if variant is None:
            h = connect(fs.pooled[:, :, None, None]).flatten(1)
        else:
            h = connect(fs.head_map).mean(dim=(2, 3))
        pred = h @ d.teacher.classifier.weight.t() + d.teacher.classifier.bias
        expected = ((h - ft.pooled) ** 2).mean() + ((pred - ft.logits) ** 2).mean()
        logits, terms = d.forward_train(images, targets, epoch=1)
    assert set(terms) == ({"ce", "kd", "srrl"} if variant is None else {"ce", "srrl"})
    close(terms["srrl"], expected, rtol=1e-5)
    close(logits, fs.logits)  # SRRL predicts with the student's own classifier


def test_srrl_gradient_flows_through_frozen_teacher_classifier(teacher_template, images):
    d = make("srrl", teacher_template, images)
    d.train()
    _, terms = d.forward_train(images, torch.zeros(8, dtype=torch.long), epoch=1)
    terms["srrl"].backward()
    assert all(p.grad is None for p in d.teacher.parameters())
    assert d.connector[0].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# SemCKD method
# ---------------------------------------------------------------------------------------------


def test_semckd_params_and_variants():
    p = methods.get("semckd").Params()
    assert (p.ce_weight, p.kd_weight, p.weight, p.soft, p.factor) == (1.0, 1.0, 400.0, 1.0, 4)
    assert methods.get("semckd").needs.fixed_batch
    assert methods.resolve_params("semckd", "imagenet", {}).weight == 50.0
    assert methods.resolve_params("semckd", "simkd", {}) == p
    assert (
        methods.resolve_params("semckd", None, {"ce_weight": 1, "kd_weight": 1, "weight": 400}) == p
    )


# The reference MLPEmbed also holds an unused duplicate regressor, Linear(64→32) + Linear(32→16)
# = 2080 + 528 = 2608 parameters per MLP at B = 64, which §5b's counts include.
UNUSED_PER_MLP = 2_608


@pytest.mark.parametrize(
    ("pair", "expected"), list(zip(PAIRS, [10_249_280, 2_588_480, 671_936, 10_575_424]))
)
def test_semckd_modules_match_fixture(pair, expected):
    d = bare("semckd", *pair, batch_size=64)  # the protocol's batch size
    n_s, n_t = len(d.query), len(d.key)
    assert (n_s, n_t) == (3, 3)
    for mlp in [*d.query, *d.key]:
        assert (mlp.linear1.in_features, mlp.linear1.out_features, mlp.linear2.out_features) == (
            64,
            32,
            16,
        )
    extra = sum(n_params(m) for name, m in d.named_children() if name not in ("student", "teacher"))
    assert extra + (n_s + n_t) * UNUSED_PER_MLP == expected
    # Projector of pair (i, j): C_s → 2C_t → 2C_t → C_t, no biases, no BN/ReLU at the end.
    s, t = d.probe(torch.randn(2, 3, 32, 32))
    for i, f_s in enumerate(s.stages[1:]):
        for j, f_t in enumerate(t.stages[1:]):
            convs = [m for m in d.proj[i][j] if isinstance(m, nn.Conv2d)]
            c_s, c_t = f_s.shape[1], f_t.shape[1]
            assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
                (c_s, 2 * c_t, (1, 1)),
                (2 * c_t, 2 * c_t, (3, 3)),
                (2 * c_t, c_t, (1, 1)),
            ]
            assert all(c.bias is None for c in convs) and isinstance(d.proj[i][j][-1], nn.Conv2d)


@pytest.mark.parametrize("student", ["resnet8x4", "ShuffleV2"])
def test_semckd_term_by_hand(student, teacher_template, images):
    d = make("semckd", teacher_template, images, student=student, batch_size=8)
    assert (
        d.batch_size == 8
        and d.query[0].linear1.in_features == 8
        and d.query[0].linear2.out_features == 2
    )
    d.eval()
    with torch.no_grad():
        fs, ft = d.student.forward_features(images), d.teacher.forward_features(images)

        def embed(mlp, fmap):
            flat = fmap.reshape(8, -1)
            g = flat @ flat.t()
            x = (
                torch.relu(g @ mlp.linear1.weight.t() + mlp.linear1.bias) @ mlp.linear2.weight.t()
                + mlp.linear2.bias
            )
            return x / x.norm(dim=1, keepdim=True)

        s_taps, t_taps = fs.stages[1:], ft.stages[1:]
        q = torch.stack([embed(m, f) for m, f in zip(d.query, s_taps)], 1)
        k = torch.stack([embed(m, f) for m, f in zip(d.key, t_taps)], 1)
        energy = torch.einsum("bid,bjd->bij", q, k)
        att = torch.exp(energy) / torch.exp(energy).sum(-1, keepdim=True)

        def pool(m, size):
            r = m.shape[-1] // size
            return m.reshape(*m.shape[:2], size, r, size, r).mean(dim=(3, 5))

        total = torch.zeros(())
        for i, f_s in enumerate(s_taps):
            for j, f_t in enumerate(t_taps):
                size = min(f_s.shape[-1], f_t.shape[-1])
                diff = d.proj[i][j](pool(f_s, size)) - pool(f_t, size)
                total = total + (att[:, i, j] * (diff**2).mean(dim=(1, 2, 3))).sum()
        expected = 400 * total / (8 * len(s_taps))
        _, terms = d.forward_train(images, torch.zeros(8, dtype=torch.long), epoch=1)
    assert set(terms) == {"ce", "kd", "semckd"}
    close(terms["semckd"], expected, rtol=1e-5)


def test_semckd_trains_its_modules_at_its_batch_size(teacher_template, images):
    d = make("semckd", teacher_template, images, batch_size=8)
    d.train()
    _, terms = d.forward_train(images, torch.zeros(8, dtype=torch.long), epoch=1)
    terms["semckd"].backward()
    for name, p in d.named_parameters():
        if name.split(".")[0] in ("query", "key", "proj"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in d.teacher.parameters())


def test_semckd_batch_size_is_fixed(teacher_template, images):
    d = make("semckd", teacher_template, images, batch_size=8)
    d.train()
    # The loop drops an incomplete last batch (Needs.fixed_batch), as the reference skips that step;
    # any other batch size is an error.
    for wrong in (images[:5], torch.cat([images, images[:1]])):
        with pytest.raises(KdbenchError, match="built for batch size 8"):
            d.forward_train(wrong, torch.zeros(len(wrong), dtype=torch.long), epoch=1)
    with pytest.raises(ValueError, match="needs the training batch size"):
        make("semckd", teacher_template, images)


def test_crd_memory_banks_are_checkpointed_but_not_in_the_final_weights(teacher_template, images):
    d = make("crd", teacher_template, images, train_labels=torch.arange(64) % NUM_CLASSES)
    assert {"memory_s", "memory_t", "z", "sampler_seed"} <= set(d.training_state())
    assert not {"memory_s", "memory_t", "z", "sampler_seed"} & set(d.inference_state())
    assert any(k.startswith("embed_s.") for k in d.inference_state())
