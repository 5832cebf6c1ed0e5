"""Conformance of kdbench's training step with the authors' protocol, from first principles.

Two things are held here:

* **What the optimizer holds.** For every registered method, the parameters ``train/loop.py`` optimises are the
  student's plus the method's own modules, named below from the authors' code (e.g. SimKD's projector, CRD's
  two embedding heads and not its memory banks, VID's regressors, SemCKD's attention MLPs and projections);
  never the teacher's. The pre-training stages of AB, FT and FSP optimise what RepDistiller's
  ``helper/pretrain.py`` does.
* **One training step.** For each seed method (KD, SimKD, DIST on CIFAR and on ImageNet B1, MLKD, IPWD) and
  SimKD Table 1's baselines (FitNet, AT, SP, VID, CRD, SRRL, SemCKD), the run's spec comes from the shipped
  recipe; its loss weights are checked against the values the authors' scripts use; then two steps of the
  real loop (``stages.sgd`` and ``loop._train_epoch``, float64, tiny networks) are compared with an
  independent computation written here: every loss term from its formula (explicit torch, the method's extra
  modules evaluated functionally from their weights), gradients by ``torch.autograd.grad`` of the summed
  reference loss, and SGD with momentum, weight decay and Nesterov written out by hand.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from kdbench import methods, models, train
from kdbench.methods import Distiller
from kdbench.models.per_gpu_batchnorm import emulate_per_gpu_batchnorm
from kdbench.plan import SMOKE_MAX_LR, RunSpec, plan
from kdbench.recipe import RECIPES_DIR, load_recipe
from kdbench.train import loop, stages
from kdbench.train.compute import ComputeOptions
from kdbench.train.options import RunOptions
from torch import nn

from reference import calibrated_teacher

NUM_CLASSES = 10
CPU = torch.device("cpu")

# --------------------------------------------------------------------------- which modules are optimised

# Modules besides the student that each method trains, from the authors' code: RepDistiller train_student.py
# (trainable_list / module_list appends) and SimKD train_student.py:218-274 for its baselines.
EXTRA_MODULES: dict[str, set[str]] = {
    "ce": set(),
    "kd": set(),
    "dist": set(),
    "mlkd": set(),
    "dkd": set(),
    "rld": set(),
    "wsld": set(),
    "at": set(),
    "sp": set(),
    "nst": set(),
    "pkt": set(),
    "rkd": set(),
    "fsp": set(),
    "cc": {"embed_s", "embed_t"},  # RepDistiller: both LinearEmbed heads trained
    "crd": {"embed_s", "embed_t"},  # CRDLoss.embed_s / embed_t; the memory banks are buffers
    "fitnet": {"regressor"},  # ConvReg
    "vid": {"regressors"},  # one VIDLoss (regressor + log_scale) per tap pair
    "srrl": {"connector"},
    "semckd": {"query", "key", "proj"},  # SelfA's query/key MLPEmbeds and the Proj blocks
    "simkd": {"projector"},  # the teacher's classifier is reused frozen
    "ipwd": {"cls_head"},  # reconstruction: the CE-only extra head
    "ab": {"connectors"},  # trained in the init stage, no gradient after it
    "ft": {"paraphraser", "translator"},  # paraphraser: init stage only
    "ofd": {"connectors"},
    "reviewkd": {"abfs"},
    "simkd-sequential": {"new_classifier"},
}
STUDENT_FROZEN = {"simkd-sequential"}  # Table 4: the SimKD encoder and projector are kept fixed
# ResNet-8x4 → ResNet-14x4 unless a method needs other shapes to have its modules (AB's connectors are
# identities, without parameters, where the two maps have equal shapes, as RepDistiller's are).
PAIR_STUDENT = {"ab": "resnet8"}


@pytest.fixture(scope="module")
def teacher_template() -> models.KDModel:
    """ResNet-14x4: the widths of ResNet-8x4 (FSP needs equal channels at every tap), twice its depth."""
    return calibrated_teacher("simkd/resnet14x4", NUM_CLASSES)


def build(
    name: str,
    student: str,
    teacher: models.KDModel | None,
    example: torch.Tensor,
    params=None,
    batch_size: int = 8,
    n_train: int = 100,
    **context,
) -> Distiller:
    cls = methods.get(name)
    torch.manual_seed(2)
    labels = torch.arange(n_train) % NUM_CLASSES if cls.needs.sample_indices else None
    return cls(
        models.create(student, num_classes=NUM_CLASSES),
        copy.deepcopy(teacher) if cls.needs.teacher else None,
        params if params is not None else cls.Params(),
        example,
        train_labels=labels,
        batch_size=batch_size,
        **context,
    )


def test_every_method_has_its_modules_stated():
    assert set(EXTRA_MODULES) == set(methods.names())


def optimised_names(d: Distiller, optimizer: torch.optim.Optimizer) -> set[str]:
    names = {id(p): n for n, p in d.named_parameters()}
    return {names[id(p)] for g in optimizer.param_groups for p in g["params"]}


@pytest.fixture(scope="module")
def simkd_spec() -> RunSpec:
    """A SimKD Table 1 run: SGD over every trainable module, weight decay 5e-4 on all of them."""
    return plan(load_recipe(RECIPES_DIR / "simkd/table1.yaml"), "full", rows=["SimKD"]).ordered()[
        -1
    ]


@pytest.mark.parametrize("name", sorted(EXTRA_MODULES))
def test_optimizer_holds_student_and_declared_modules_never_the_teacher(
    name, teacher_template, simkd_spec
):
    d = build(
        name, PAIR_STUDENT.get(name, "resnet8x4"), teacher_template, torch.randn(4, 3, 16, 16)
    )
    spec = simkd_spec
    optimizer = stages.sgd(d.trainable_parameters(), spec)
    got = optimised_names(d, optimizer)
    modules = EXTRA_MODULES[name] | (set() if name in STUDENT_FROZEN else {"student"})
    expected = {n for n, _ in d.named_parameters() if n.split(".")[0] in modules}
    assert got == expected
    assert {n.split(".")[0] for n in got} == modules  # each declared module has parameters
    assert not any(n.startswith("teacher.") for n in got)
    assert all(
        g["weight_decay"] == 5e-4 for g in optimizer.param_groups
    )  # extra modules decayed too
    buffers = {n for n, _ in d.named_buffers()}
    if name == "crd":
        assert {"memory_s", "memory_t", "z"} <= buffers
    assert not got & buffers


@pytest.mark.parametrize(
    ("name", "student", "lr"),
    [
        ("ab", "resnet8", None),
        ("fsp", "resnet8x4", None),
        ("ft", "resnet8x4", 0.01),
        ("ft", "ShuffleV2", None),
    ],
)
def test_pretraining_stage_optimises_what_repdistiller_pretrain_does(
    name, student, lr, teacher_template
):
    """RepDistiller helper/pretrain.py: AB trains its connectors and the student's feature modules
    (``get_feat_modules``: all but the classifier), FSP the feature modules, FT the paraphraser; 30 epochs at
    the base LR, FT at 0.01 for the CIFAR ResNet/WRN students (train_student.py's hard-coded list)."""
    d = build(name, student, teacher_template, torch.randn(4, 3, 16, 16))
    stage = d.init_stage()
    assert stage is not None and stage.epochs == 30 and stage.lr == lr
    names = {id(p): n for n, p in d.named_parameters()}
    got = {names[id(p)] for p in stage.parameters}
    student_features = {
        n
        for n in names.values()
        if n.startswith("student.") and not n.startswith("student.classifier.")
    }
    if name == "ft":
        assert got == {n for n in names.values() if n.startswith("paraphraser.")}
    elif name == "ab":
        assert got == student_features | {n for n in names.values() if n.startswith("connectors.")}
    else:
        assert got == student_features


# --------------------------------------------------------------------------- reference pieces (float64)


def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -torch.log_softmax(logits, dim=1)[torch.arange(len(y)), y].mean()


def kl_rows(z_s: torch.Tensor, z_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(z_t/T) ‖ softmax(z_s/T)) per row."""
    log_s, log_t = torch.log_softmax(z_s / temperature, 1), torch.log_softmax(z_t / temperature, 1)
    return (log_t.exp() * (log_t - log_s)).sum(1)


def kd(z_s: torch.Tensor, z_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.: T² · batch mean of KL(p_t ‖ p_s)."""
    return temperature**2 * kl_rows(z_s, z_t, temperature).mean()


def bn(x: torch.Tensor, layer: nn.BatchNorm2d) -> torch.Tensor:
    """BatchNorm in training mode: batch statistics, biased variance."""
    dims = [0] + list(range(2, x.dim()))
    mean, var = x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)
    shape = [1, -1] + [1] * (x.dim() - 2)
    return (x - mean) / torch.sqrt(var + layer.eps) * layer.weight.reshape(
        shape
    ) + layer.bias.reshape(shape)


def conv(x: torch.Tensor, layer: nn.Conv2d) -> torch.Tensor:
    return F.conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding, groups=layer.groups)


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    return x @ layer.weight.t() + layer.bias


def normalize(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Rows divided by their L2 norm (clamped below at ``eps``)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


def pool_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """k×k average pooling of a square map down to size×size."""
    k = x.shape[-1] // size
    return x if k == 1 else x.reshape(*x.shape[:2], size, k, size, k).mean(dim=(3, 5))


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """DIST's Pearson correlation per row: cosine of the centred rows, eps added to the norm product
    (hunto/DIST_KD lib/models/losses/dist_kd.py cosine_similarity / pearson_correlation)."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(
    z_s: torch.Tensor, z_t: torch.Tensor, tau: float, beta: float, gamma: float
) -> torch.Tensor:
    """DIST Eq. 8-10 with the released τ² factor: β·inter (per sample, across classes) + γ·intra (per class,
    across the batch), each 1 − mean Pearson correlation of softmax(z/τ)."""
    y_s, y_t = torch.softmax(z_s / tau, 1), torch.softmax(z_t / tau, 1)
    inter = 1 - pearson_rows(y_s, y_t).mean()
    intra = 1 - pearson_rows(y_s.t(), y_t.t()).mean()
    return tau**2 * (beta * inter + gamma * intra)


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor
    strong: torch.Tensor | None


class Reference:
    """The independent side: the networks' features of a float64 copy of the distiller, and the state
    (CRD's normalising constants) a method keeps between steps."""

    def __init__(self, d: Distiller, pieces: int = 1):
        self.d = d
        self.pieces = (
            pieces  # per-GPU BatchNorm: each of ``pieces`` slices goes through the student alone
        )
        self.state: dict[str, torch.Tensor] = {}

    def student(self, x: torch.Tensor):
        parts = [self.d.student.forward_features(c) for c in x.chunk(self.pieces)]
        if self.pieces == 1:
            return parts[0]
        return type(parts[0])(
            [torch.cat(t) for t in zip(*(p.stages for p in parts))],
            [],
            parts[0].head_map.new_empty(0),
            torch.cat([p.pooled for p in parts]),
            torch.cat([p.logits for p in parts]),
        )

    def teacher(self, x: torch.Tensor):
        with torch.no_grad():
            return self.d.teacher.forward_features(x)


# Each reference: (Reference, Batch, epoch) -> {term name: weighted term}, from the definitions.


def ref_kd(r: Reference, b: Batch, epoch: int, ce_w: float, kd_w: float, temperature: float = 4.0):
    s, t = r.student(b.x), r.teacher(b.x)
    return {"ce": ce_w * ce(s.logits, b.y), "kd": kd_w * kd(s.logits, t.logits, temperature)}


def ref_simkd(r: Reference, b: Batch, epoch: int):
    """SimKD Eq. 3 (released code): MSE between P(f_s) and the teacher's last map; P = three conv-BN-ReLU blocks
    (1×1 C_s→C_t/2, 3×3 C_t/2→C_t/2, 1×1 C_t/2→C_t), maps pooled to the smaller size (SimKD models/util.py)."""
    s, t = r.student(b.x), r.teacher(b.x)
    f_s, f_t = s.stages[-1], t.head_map  # SimKD feat_s[-2], feat_t[-2]
    size = min(f_s.shape[-1], f_t.shape[-1])
    h = pool_to(f_s, size)
    layers = list(r.d.projector)
    for i in range(0, len(layers), 3):
        h = torch.relu(bn(conv(h, layers[i]), layers[i + 1]))
    return {"simkd": 1.0 * ((h - pool_to(f_t, size)) ** 2).mean()}


def ref_dist(r: Reference, b: Batch, epoch: int, chunk: int | None = None):
    """1·CE + 2·DIST (τ 1, β = γ = 1; DIST README / dist_cifar.yaml, resnet_dist.yaml: ori 1, kd 2). On the
    ImageNet B1 protocol each of the original GPUs saw ``chunk`` samples: DDP averages their gradients, i.e.
    the loss is the mean over chunks of each GPU's own loss (BatchNorm per chunk too: see Reference.pieces)."""
    s, t = r.student(b.x), r.teacher(b.x)
    n = len(b.y) // (chunk or len(b.y))
    parts = [
        (ce(zs, y), dist_loss(zs, zt, 1.0, 1.0, 1.0))
        for zs, zt, y in zip(s.logits.chunk(n), t.logits.chunk(n), b.y.chunk(n))
    ]
    return {"ce": 1.0 * sum(p[0] for p in parts) / n, "dist": 2.0 * sum(p[1] for p in parts) / n}


def median(v: torch.Tensor) -> torch.Tensor:
    """NumPy's 50th percentile (linear interpolation): the middle value, or the mean of the two middle ones."""
    v = v.sort().values
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def ref_mlkd(r: Reference, b: Batch, epoch: int):
    """MLKD's released code (mdistiller KD_ours.py, as specified in the module docs): λ_ce 0.1 on both views,
    λ_kd 0.9, S = {4, 3, 5, 2, 6}; masks from the teacher's weak-view float32 softmax act as their means ρ; the
    'strong' group's T = 2, 6 read the weak view; no strong-view correlation terms."""
    s_w, t_w = r.student(b.x).logits, r.teacher(b.x).logits
    s_s, t_s = r.student(b.strong).logits, r.teacher(b.strong).logits
    temps = (4.0, 3.0, 5.0, 2.0, 6.0)
    probs = torch.softmax(t_w.float(), 1)
    conf, cls_conf = probs.max(1).values, probs.sum(0)
    rho_b = (conf <= median(conf)).double().mean()
    rho_c = (cls_conf <= median(cls_conf)).double().mean()

    def batch_corr(zs, zt, temp):
        ps, pt = torch.softmax(zs / temp, 1), torch.softmax(zt / temp, 1)
        return ((pt @ pt.t() - ps @ ps.t()) ** 2).sum() / len(zs)

    def class_corr(zs, zt, temp):
        ps, pt = torch.softmax(zs / temp, 1), torch.softmax(zt / temp, 1)
        return ((pt.t() @ pt - ps.t() @ ps) ** 2).sum() / zs.shape[1]

    strong_group = [kd(s_s, t_s, T) for T in temps[:3]] + [kd(s_w, t_w, T) for T in temps[3:]]
    return {
        "ce": 0.1 * ce(s_w, b.y),
        "ce_strong": 0.1 * ce(s_s, b.y),
        "kd_weak": 0.9 * rho_b * sum(kd(s_w, t_w, T) for T in temps),
        "kd_strong": 0.9 * sum(strong_group),
        "cc": 0.9 * rho_c * sum(class_corr(s_w, t_w, T) for T in temps),
        "bc": 0.9 * rho_b * sum(batch_corr(s_w, t_w, T) for T in temps),
    }


def ref_ipwd(r: Reference, b: Batch, epoch: int):
    """IPWD as kdbench reconstructs it (docs/protocol-choices.md; no released code): 0.1·CE(y^kd) +
    0.9·T²·mean_i ŵ_i KL_i (T 4) + 1·CE(y^cls), y^cls = a linear head on the pooled feature; ŵ = 1 + H_kd/(H_cls
    + 1e-7) from z-scored (Bessel std + 1e-7) detached logits at T = 1, divided by its batch mean."""
    s, t = r.student(b.x), r.teacher(b.x)
    z_cls = linear(s.pooled, r.d.cls_head)

    def zscore(z):
        return (z - z.mean(1, keepdim=True)) / (1e-7 + z.std(1, keepdim=True))

    with torch.no_grad():
        h_kd = -torch.log_softmax(zscore(s.logits), 1)[torch.arange(len(b.y)), b.y]
        h_cls = -torch.log_softmax(zscore(z_cls), 1)[torch.arange(len(b.y)), b.y]
        w = 1 + h_kd / (h_cls + 1e-7)
        w = w / w.mean()
    return {
        "ce": 0.1 * ce(s.logits, b.y),
        "ipwd": 0.9 * 16.0 * (w * kl_rows(s.logits, t.logits, 4.0)).mean(),
        "ipwd_cls": 1.0 * ce(z_cls, b.y),
    }


def simkd_baseline(beta: float, name: str, feature_loss: Callable):
    """SimKD's baseline protocol (scripts/run_distill.sh, train_student.py:61-71): 1·CE + 1·KD(T 4) + β·loss."""

    def reference(r: Reference, b: Batch, epoch: int):
        s, t = r.student(b.x), r.teacher(b.x)
        return {
            "ce": ce(s.logits, b.y),
            "kd": kd(s.logits, t.logits, 4.0),
            name: beta * feature_loss(r, s, t, b),
        }

    return reference


def fitnet_hint(r, s, t, b):
    """SimKD's FitNet: hint layer f1, ConvReg (here 1×1 conv with bias, the maps having equal size) + BN + ReLU, MSE."""
    reg = r.d.regressor
    assert s.stages[1].shape[-1] == t.stages[1].shape[-1] and reg.conv.kernel_size == (1, 1)
    return ((torch.relu(bn(conv(s.stages[1], reg.conv), reg.bn)) - t.stages[1]) ** 2).mean()


def attention(f: torch.Tensor) -> torch.Tensor:
    return normalize(f.pow(2).mean(1).flatten(1), 1e-12)


def at_loss(r, s, t, b):
    """Zagoruyko & Komodakis as in RepDistiller's at_loss: Σ over f1..fk of mean((a_s − a_t)²)."""
    return sum(
        ((attention(fs) - attention(ft)) ** 2).mean() for fs, ft in zip(s.stages[1:], t.stages[1:])
    )


def sp_loss(r, s, t, b):
    """Tung & Mori: ‖norm_rows(A_t A_tᵀ) − norm_rows(A_s A_sᵀ)‖²_F / B² on the last stage map."""
    a_s, a_t = s.stages[-1].flatten(1), t.stages[-1].flatten(1)
    g_s, g_t = normalize(a_s @ a_s.t(), 1e-12), normalize(a_t @ a_t.t(), 1e-12)
    return ((g_t - g_s) ** 2).sum() / len(b.y) ** 2


def vid_loss(r, s, t, b):
    """Ahn et al.: Σ over f1..fk of mean ½((μ − t)²/σ² + log σ²), μ = 1×1 conv-ReLU-conv-ReLU-conv, σ² = softplus(a) + 1e-5."""
    total = 0.0
    for fs, ft, reg in zip(s.stages[1:], t.stages[1:], r.d.regressors):
        c1, _, c2, _, c3 = list(reg.regressor)
        mu = conv(torch.relu(conv(torch.relu(conv(fs, c1)), c2)), c3)
        var = (torch.log1p(torch.exp(reg.log_scale)) + 1e-5).reshape(1, -1, 1, 1)
        total = total + (0.5 * ((mu - ft) ** 2 / var + torch.log(var))).mean()
    return total


def crd_loss(r, s, t, b):
    """Tian et al. / RepDistiller CRDLoss: embeddings normalise(W f + b) (128-d), 16384 other-class negatives
    from the method's sampler, scores exp(⟨m, v⟩/0.07)/Z with Z = mean·N fixed on the first batch, NCE with
    P_n = 1/N and ε 1e-7 on both sides; then the banks' rows ← normalise(0.5·old + 0.5·new)."""
    d = r.d
    e_s, e_t = (
        normalize(linear(s.pooled, d.embed_s.linear)),
        normalize(linear(t.pooled, d.embed_t.linear)),
    )
    idx = d.contrast_indices(b.indices, 1)
    n = d.memory_s.shape[0]
    total = 0.0
    for side, anchor, bank in (("s", e_s, d.memory_t), ("t", e_t, d.memory_s)):
        scores = torch.exp(
            (anchor @ bank.t()).gather(1, idx) / 0.07
        )  # ⟨bank[idx[i, k]], anchor[i]⟩
        if side not in r.state:
            r.state[side] = scores.detach().mean() * n
        p = scores / r.state[side]
        m = idx.shape[1] - 1
        log_d1 = torch.log(p[:, 0] / (p[:, 0] + m / n + 1e-7))
        log_d0 = torch.log((m / n) / (p[:, 1:] + m / n + 1e-7))
        total = total - (log_d1.sum() + log_d0.sum()) / len(b.y)
    with torch.no_grad():  # new banks: this step's graph holds the old ones
        for bank_name, emb in (("memory_s", e_s), ("memory_t", e_t)):
            bank = getattr(d, bank_name).clone()
            bank[b.indices] = normalize(0.5 * bank[b.indices] + 0.5 * emb)
            setattr(d, bank_name, bank)
    return total


def srrl_loss(r, s, t, b):
    """SimKD's SRRL: h = ReLU(BN(1×1 conv(pooled_s))), MSE(h, pooled_t) + MSE(W_t h + b_t, z_t)."""
    c, norm = r.d.connector[0], r.d.connector[1]
    h = torch.relu(bn(conv(s.pooled[:, :, None, None], c), norm)).flatten(1)
    return ((h - t.pooled) ** 2).mean() + (
        (linear(h, r.d.teacher.classifier) - t.logits) ** 2
    ).mean()


def semckd_loss(r, s, t, b):
    """SemCKD (SimKD repo SemCKDLoss, SelfA, Proj): attention softmax_j(q_i·k_j) of each student tap over the
    teacher taps from embedded B×B Gram rows; Σ_b,i,j att · per-sample MSE(Proj_ij(s_i), t_j) / (B·n_s)."""
    d, bsz = r.d, len(b.y)

    def embed(mlp, f):
        g = f.flatten(1) @ f.flatten(1).t()
        return normalize(linear(torch.relu(linear(g, mlp.linear1)), mlp.linear2))

    q = torch.stack([embed(m, f) for m, f in zip(d.query, s.stages[1:])], 1)
    k = torch.stack([embed(m, f) for m, f in zip(d.key, t.stages[1:])], 1)
    att = torch.softmax(q @ k.transpose(1, 2), dim=-1)  # (B, n_s, n_t), soft = 1
    total = 0.0
    for i, fs in enumerate(s.stages[1:]):
        for j, ft in enumerate(t.stages[1:]):
            size = min(fs.shape[-1], ft.shape[-1])
            c1, b1, _, c2, b2, _, c3 = list(d.proj[i][j])
            h = conv(
                torch.relu(bn(conv(torch.relu(bn(conv(pool_to(fs, size), c1), b1)), c2), b2)), c3
            )
            total = total + (att[:, i, j] * ((h - pool_to(ft, size)) ** 2).flatten(1).mean(1)).sum()
    return total / (bsz * len(s.stages[1:]))


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    recipe: str  # its file under kdbench/recipes/
    row: str
    weights: dict  # the loss weights of the authors' scripts, checked against the resolved spec
    reference: Callable
    teacher: str = "resnet8x4"
    batch: int | None = 16  # None: the smoke profile's (32, with its per-GPU chunks)


CASES = {
    "kd-simkd": Case(
        "simkd/table1.yaml",
        "KD",
        {"ce_weight": 1.0, "kd_weight": 1.0, "kd_temperature": 4.0},
        lambda r, b, e: ref_kd(r, b, e, 1.0, 1.0),
    ),
    "kd-crd": Case(
        "dist/table5.yaml",
        "KD",
        {"ce_weight": 0.1, "kd_weight": 0.9, "kd_temperature": 4.0},
        lambda r, b, e: ref_kd(r, b, e, 0.1, 0.9),
    ),
    # DIST resnet_kdt4.yaml: 0.9·CE + 1·KD_4, under B1 (Nesterov, no decay on BN/bias).
    "kd-dist-b1": Case(
        "dist/table2.yaml",
        "KD",
        {"ce_weight": 0.9, "kd_weight": 1.0, "kd_temperature": 4.0},
        lambda r, b, e: ref_kd(r, b, e, 0.9, 1.0),
        batch=None,
    ),
    "simkd": Case(
        "simkd/table1.yaml",
        "SimKD",
        {
            "ce_weight": 0.0,
            "kd_weight": 0.0,
            "weight": 1.0,
            "factor": 2,
            "student_tap": "stage",
            "projector": "1x1-3x3-1x1",
            "alignment": "input",
        },
        ref_simkd,
    ),
    "dist-cifar": Case(
        "dist/table5.yaml",
        "DIST",
        {"ce_weight": 1.0, "weight": 2.0, "beta": 1.0, "gamma": 1.0, "temperature": 1.0},
        ref_dist,
    ),
    "dist-b1": Case(
        "dist/table2.yaml",
        "DIST",
        {"ce_weight": 1.0, "weight": 2.0, "beta": 1.0, "gamma": 1.0, "temperature": 1.0},
        lambda r, b, e: ref_dist(r, b, e, chunk=4),
        batch=None,
    ),
    "mlkd": Case(
        "mlkd/appendix-table1.yaml",
        "MLKD",
        {
            "ce_weight": 0.1,
            "kd_weight": 0.0,
            "weight": 0.9,
            "temperature": 4.0,
            "masking": "scalar",
            "strong_group_uses_weak_logits": True,
            "strong_correlations": False,
        },
        ref_mlkd,
    ),
    "ipwd": Case(
        "ipwd/appendix-table1.yaml",
        "IPWD",
        {
            "ce_weight": 0.1,
            "kd_weight": 0.0,
            "weight": 0.9,
            "temperature": 4.0,
            "cls_weight": 1.0,
            "form": "mirror",
            "logit_norm": "zscore",
            "self_normalize": True,
        },
        ref_ipwd,
    ),
    "fitnet": Case(
        "simkd/table1.yaml",
        "FitNet",
        {
            "ce_weight": 1.0,
            "kd_weight": 1.0,
            "weight": 100.0,
            "hint_layer": 1,
            "regressor": "simkd",
        },
        simkd_baseline(100.0, "fitnet", fitnet_hint),
    ),
    "at": Case(
        "simkd/table1.yaml",
        "AT",
        {"ce_weight": 1.0, "kd_weight": 1.0, "weight": 1000.0},
        simkd_baseline(1000.0, "at", at_loss),
    ),
    "sp": Case(
        "simkd/table1.yaml",
        "SP",
        {"ce_weight": 1.0, "kd_weight": 1.0, "weight": 3000.0},
        simkd_baseline(3000.0, "sp", sp_loss),
    ),
    "vid": Case(
        "simkd/table1.yaml",
        "VID",
        {"ce_weight": 1.0, "kd_weight": 1.0, "weight": 1.0},
        simkd_baseline(1.0, "vid", vid_loss),
    ),
    "crd": Case(
        "simkd/table1.yaml",
        "CRD",
        {
            "ce_weight": 1.0,
            "kd_weight": 1.0,
            "weight": 0.8,
            "feat_dim": 128,
            "nce_k": 16384,
            "nce_t": 0.07,
            "nce_m": 0.5,
        },
        simkd_baseline(0.8, "crd", crd_loss),
    ),
    "srrl": Case(
        "simkd/table1.yaml",
        "SRRL",
        {"ce_weight": 1.0, "kd_weight": 1.0, "weight": 1.0},
        simkd_baseline(1.0, "srrl", srrl_loss),
    ),
    "semckd": Case(
        "simkd/table1.yaml",
        "SemCKD",
        {"ce_weight": 1.0, "kd_weight": 1.0, "weight": 400.0},
        simkd_baseline(400.0, "semckd", semckd_loss),
        teacher="resnet14",
    ),
}

STUDENT, SIZE = (
    "resnet8",
    16,
)  # tiny stand-ins (and Case.teacher); the recipe gives protocol and weights
CRD_TRAIN = 20_000  # enough other-class samples for 16384 negatives without replacement


def specs_of(case: Case) -> tuple[RunSpec, RunSpec]:
    """The first run of the case's row: full protocol, and the smoke profile's (batch 32, chunks scaled)."""
    recipe = load_recipe(RECIPES_DIR / case.recipe)
    full, smoke = (plan(recipe, profile, rows=[case.row]) for profile in ("full", "smoke"))
    first = [next(c for c in p.cells if c.row == case.row and c.run_ids) for p in (full, smoke)]
    return full.specs[first[0].run_ids[0]], smoke.specs[first[1].run_ids[0]]


def sgd_by_hand(
    params: dict[str, torch.Tensor],
    grads: dict[str, torch.Tensor | None],
    buffers: dict[str, torch.Tensor],
    lr: float,
    momentum: float,
    weight_decay: dict[str, float],
    nesterov: bool,
) -> None:
    """PyTorch's SGD, written out: d = g + λp; b ← d on the first step, else μb + d; p ← p − lr·(d + μb if Nesterov
    else b). Parameters without a gradient are left alone (no decay either)."""
    with torch.no_grad():
        for name, p in params.items():
            g = grads[name]
            if g is None:
                continue
            d = g + weight_decay[name] * p
            buffers[name] = d.clone() if name not in buffers else momentum * buffers[name] + d
            p -= lr * (d + momentum * buffers[name] if nesterov else buffers[name])


@pytest.fixture(scope="module")
def small_teachers() -> Callable[[str], models.KDModel]:
    """Random teachers whose BN running statistics were averaged over random SIZE×SIZE images, in eval mode."""
    cache: dict[str, models.KDModel] = {}

    def get(name: str) -> models.KDModel:
        if name not in cache:
            torch.manual_seed(0)
            teacher = models.create(name, num_classes=NUM_CLASSES)
            for layer in teacher.modules():
                if isinstance(layer, nn.BatchNorm2d):
                    layer.momentum = None
            teacher.train()
            with torch.no_grad():
                teacher(torch.randn(64, 3, SIZE, SIZE))
            cache[name] = teacher.eval()
        return copy.deepcopy(cache[name])

    return get


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_two_training_steps_equal_the_first_principles_step(case_id, small_teachers):
    case = CASES[case_id]
    full, spec = specs_of(case)
    # The smoke spec trains the full protocol's loss and optimizer (only length, batch, chunks and the LR cap differ).
    assert spec.method_params == full.method_params
    assert spec.train.lr == min(full.train.lr, SMOKE_MAX_LR)
    for key in ("momentum", "nesterov", "weight_decay", "decay_norm_and_bias", "label_smoothing"):
        assert getattr(spec.train, key) == getattr(full.train, key), key
    for key, value in case.weights.items():
        assert spec.method_params[key] == value, key
    method = methods.get(spec.method)
    if (
        case.batch is not None
    ):  # the per-step arithmetic does not depend on the batch size: a small one is enough
        assert spec.train.loss_chunk is None and spec.train.bn_chunk is None
        spec = spec.model_copy(
            update={"train": spec.train.model_copy(update={"batch_size": case.batch})}
        )
    t = spec.train
    batch = t.batch_size

    gen = torch.Generator().manual_seed(7)
    n_train = CRD_TRAIN if method.needs.sample_indices else 2 * batch
    batches = [
        Batch(
            torch.randn(batch, 3, SIZE, SIZE, generator=gen, dtype=torch.float64),
            torch.randint(0, NUM_CLASSES, (batch,), generator=gen),
            torch.randperm(n_train, generator=gen)[:batch],
            torch.randn(batch, 3, SIZE, SIZE, generator=gen, dtype=torch.float64)
            if method.needs.strong_view
            else None,
        )
        for _ in range(2)
    ]
    torch.manual_seed(3)
    student = models.create(STUDENT, num_classes=NUM_CLASSES)
    labels = torch.randint(0, NUM_CLASSES, (n_train,), generator=gen)
    d = method(
        student,
        small_teachers(case.teacher),
        method.Params(**spec.method_params),
        torch.randn(4, 3, SIZE, SIZE),
        train_labels=labels if method.needs.sample_indices else None,
        batch_size=batch,
        label_smoothing=t.label_smoothing,
        loss_chunk=t.loss_chunk,
    ).double()
    ref = Reference(copy.deepcopy(d), pieces=batch // t.bn_chunk if t.bn_chunk else 1)
    if t.bn_chunk is not None:  # as train/loop.py does, on one process
        emulate_per_gpu_batchnorm(d, batch // t.bn_chunk)

    # kdbench: the loop's optimizer and step, LR set as at the start of epoch 1.
    optimizer = stages.sgd(d.trainable_parameters(), spec)
    for group in optimizer.param_groups:
        group["lr"] = t.lr_at(1)
    recorded: list[dict[str, torch.Tensor]] = []

    def step(images, targets, epoch, indices, strong, **cached):
        logits, terms = d.forward_train(images, targets, epoch, indices, strong, **cached)
        recorded.append({k: v.detach().clone() for k, v in terms.items()})
        return logits, terms

    loop_batches = [
        (b.x, b.y, b.indices, *([b.strong] if b.strong is not None else [])) for b in batches
    ]
    loop._train_epoch(
        step,
        d,
        optimizer,
        loop_batches,
        CPU,
        1,
        None,
        ComputeOptions(precision="fp32").resolve(CPU),
    )

    # The reference: trained parameters named from the method's definition, decay by hand from the protocol.
    modules = EXTRA_MODULES[spec.method] | {"student"}
    params = {n: p for n, p in ref.d.named_parameters() if n.split(".")[0] in modules}
    decay = {
        n: t.weight_decay
        if (t.decay_norm_and_bias or (p.dim() > 1 and not n.endswith(".bias")))
        else 0.0
        for n, p in params.items()
    }
    buffers: dict[str, torch.Tensor] = {}
    ref.d.train()
    for k, b in enumerate(batches):
        terms = case.reference(ref, b, 1)
        assert set(terms) == set(recorded[k]), (k, sorted(terms), sorted(recorded[k]))
        for name, value in terms.items():
            torch.testing.assert_close(
                recorded[k][name],
                value.detach(),
                rtol=1e-10,
                atol=1e-12,
                msg=f"step {k + 1} {name}",
            )
        loss = sum(terms.values())
        grads = dict(
            zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True))
        )
        sgd_by_hand(params, grads, buffers, t.lr_at(1), t.momentum, decay, t.nesterov)

    got = dict(d.named_parameters())
    moved = 0
    for name, expected in params.items():
        torch.testing.assert_close(got[name], expected, rtol=1e-9, atol=1e-12, msg=name)
        moved += name in buffers
    assert moved and not any(n.startswith("teacher.") for n in buffers)
    assert set(optimised_names(d, optimizer)) == set(params)


def test_the_loop_builds_the_distiller_and_optimizer_the_step_test_mirrors(tmp_path, monkeypatch):
    """train.run itself: the method's params, loss chunk and per-GPU BatchNorm from the spec, SGD over the
    trainable parameters with the protocol's Nesterov and decay scope, and the LR set at every epoch."""
    from kdbench.models.per_gpu_batchnorm import _PerGpuBatchNorm
    from kdbench.plan import DataSpec, TeacherRef, TrainSpec

    data = DataSpec(
        name="synthetic",
        options={"num_classes": 4, "image_size": 16, "train_size": 32, "test_size": 16},
    )

    def spec(method: str, teacher: TeacherRef | None, **train_fields) -> RunSpec:
        fields = {
            "epochs": 1,
            "batch_size": 16,
            "lr": 0.1,
            "milestones": (),
            "lr_decay": 0.1,
            "momentum": 0.9,
            "nesterov": False,
            "weight_decay": 5e-4,
            **train_fields,
        }
        return RunSpec(
            profile="smoke",
            model="resnet8",
            method=method,
            method_params=methods.resolve_params(method, None, {}).model_dump(),
            teacher=teacher,
            data=data,
            train=TrainSpec(**fields),
            seed=0,
        )

    teacher = spec("ce", None)
    train.run(teacher, tmp_path, RunOptions(device="cpu"), show_progress=False)
    dist = spec(
        "dist",
        TeacherRef(model="resnet8", run_id=teacher.run_id),
        epochs=3,
        milestones=(1, 2),
        nesterov=True,
        weight_decay=1e-4,
        decay_norm_and_bias=False,
        loss_chunk=4,
        bn_chunk=4,
    )
    seen: list[tuple[int, float, dict[str, float], bool]] = []
    real = loop._train_epoch

    def recording(step, distiller, optimizer, batches, device, epoch, *rest, **kwargs):
        names = {id(p): n for n, p in distiller.named_parameters()}
        decay = {
            names[id(p)]: g["weight_decay"] for g in optimizer.param_groups for p in g["params"]
        }
        assert all(g["nesterov"] and g["momentum"] == 0.9 for g in optimizer.param_groups)
        assert distiller.loss_chunk == 4 and distiller.params == methods.get("dist").Params(
            **dist.method_params
        )
        pieces = {m.pieces for m in distiller.student.modules() if isinstance(m, _PerGpuBatchNorm)}
        seen.append((epoch, optimizer.param_groups[0]["lr"], decay, pieces == {4}))
        return real(step, distiller, optimizer, batches, device, epoch, *rest, **kwargs)

    monkeypatch.setattr(loop, "_train_epoch", recording)
    train.run(dist, tmp_path, RunOptions(device="cpu"), show_progress=False)
    assert [e for e, *_ in seen] == [1, 2, 3]
    assert [lr for _, lr, *_ in seen] == pytest.approx([0.1, 0.01, 0.001], rel=1e-12)
    reference = models.create("resnet8", num_classes=4)
    bn_params = {
        f"student.{m}.{p}"
        for m, layer in reference.named_modules()
        if isinstance(layer, nn.BatchNorm2d)
        for p in ("weight", "bias")
    }
    everything = {f"student.{n}" for n, _ in reference.named_parameters()}
    decay = seen[0][2]
    assert set(decay) == everything  # the student only: DIST has no modules of its own
    assert {n for n, wd in decay.items() if wd == 0.0} == bn_params | {
        n for n in everything if n.endswith(".bias")
    }
    assert {wd for wd in decay.values()} == {0.0, 1e-4}
    assert all(ok for *_, ok in seen)  # 16-sample batches normalised as 4 GPUs of 4
