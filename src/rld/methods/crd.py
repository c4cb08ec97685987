"""CRD (Tian et al. 2020): L = ce_weight·CE + feat_weight·(L_NCE(v_s; M_t) + L_NCE(v_t; M_s)).

v_s, v_t: the student's and teacher's pooled features (``Features.pooled``), each mapped by its own
linear embedding to ``feat_dim`` and L2-normalised. M_s, M_t: two memory banks of one unit vector
per training sample (N × feat_dim), the running embeddings of the student and of the teacher.
L_NCE(v; M) scores each sample's embedding against K + 1 rows of the *other* network's memory —
row 0 its own (the positive), rows 1..K negatives — as exp(⟨v, m⟩ / nce_t) / Z, and takes CRD's
NCE bound (:func:`~rld.losses.crd.crd_scores`, :func:`~rld.losses.crd.crd_nce_loss`).

* Negatives ("exact" mode, the published default ``CFG.CRD.MODE`` / ``--mode exact``): the positive
  is the sample itself; the K negatives are drawn uniformly, with replacement, from the training
  samples of the *other* classes (``ctx.train_targets``). They are drawn in the step, on the
  device, with the global torch generator (saved and restored with every checkpoint), without
  host synchronisation: the indices are sorted by class once; a draw r ∈ [0, N − n_y) skips
  over the own class's block. The published data sets draw them in the loader
  (CIFAR100InstanceSample in HobbitLong/RepDistiller dataset/cifar100.py and mdistiller
  mdistiller/dataset/cifar100.py; ImageNetInstanceSample in mdistiller/dataset/imagenet.py).
  ImageNetInstanceSample draws with replacement, as here; CIFAR100InstanceSample draws without
  replacement whenever K does not exceed the negatives (16384 of 49500 on CIFAR-100), so about
  15% of its draws would be repeats here — a cheaper, capturable sampler, the same distribution
  per draw.
* Memory (ContrastMemory in RepDistiller crd/memory.py and mdistiller/distillers/CRD.py): each
  row starts uniform in ±1/sqrt(feat_dim/3); after the scores, under no_grad, the rows of the
  batch's samples become m·row + (1 − m)·v, renormalised to unit length (m = ``nce_momentum``).
* Z: each term's normalisation constant is set once, on the first batch, to the mean of that
  batch's unnormalised scores times N, then kept (a buffer, so a resumed run keeps it).

Under torchrun the embeddings and indices of all processes update every memory (all-gathered), and
Z is estimated from the mean over the processes, so the banks stay equal on every process, as
with the single published memory.

Defaults (mdistiller mdistiller/engine/cfg.py, CRD section; RepDistiller train_student.py and
scripts/run_cifar_distill.sh: ``-a 0 -b 0.8``): CE 1.0, feat_weight 0.8, feat_dim 128,
K = 16384, nce_t 0.07, momentum 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from rld.losses import crd_nce_loss, crd_scores
from rld.losses._common import check_positive
from rld.methods._stages import ce_term, check_int, check_weights, model_label
from rld.methods.base import Method, MethodConfig, MethodContext, MethodSpec, probe_features
from rld.models.features import Features


@dataclass
class CRDConfig(MethodConfig):
    name: str = "crd"
    ce_weight: float = 1.0
    feat_weight: float = field(default=0.8, metadata={"help": "weight of the contrastive (NCE) term"})
    feat_dim: int = field(default=128, metadata={"help": "size of the embeddings and of each memory entry"})
    nce_k: int = field(default=16384, metadata={"help": "negatives per sample, drawn from the other classes"})
    nce_t: float = field(default=0.07, metadata={"help": "temperature of the contrastive scores"})
    nce_momentum: float = field(default=0.5, metadata={"help": "momentum of the memory update"})


class Embed(nn.Module):
    """A linear map to ``dim_out`` then L2 normalisation: (B, ...) → (B, dim_out) unit vectors
    (Embed in RepDistiller models/util.py and mdistiller/distillers/CRD.py)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.reshape(x.shape[0], -1)), dim=1)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_gather(t: Tensor) -> Tensor:
    """``t`` (B, ...) of every process, concatenated in rank order (itself in one process)."""
    world = _world_size()
    if world == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def _mean_over_processes(t: Tensor) -> Tensor:
    world = _world_size()
    if world == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / world


class CRD(Method):
    """CRD's embeddings (trained), memory banks and Z (buffers: saved and restored with the run)."""

    def __init__(self, spec: MethodSpec, params: dict[str, Any], ctx: MethodContext):
        super().__init__()
        self.spec = spec
        self.ce_weight, self.feat_weight = float(params["ce_weight"]), float(params["feat_weight"])
        self.nce_k, self.nce_t = int(params["nce_k"]), float(params["nce_t"])
        self.nce_momentum = float(params["nce_momentum"])
        feat_dim = int(params["feat_dim"])
        dims = []
        for role, model in (("student", ctx.student), ("teacher", ctx.teacher)):
            pooled = probe_features(model, ctx.input_shape).pooled
            if pooled is None:
                raise ValueError(f"crd embeds the {role}'s pooled feature, which model {model_label(model)!r} lacks")
            dims.append(pooled.shape[1])
        labels = ctx.train_targets
        if labels is None:
            raise ValueError(
                "crd keeps a memory entry per training sample and draws negatives from the other classes: "
                "it needs the training labels, which this data set's loader does not expose"
            )
        y = torch.as_tensor(labels).detach().to("cpu", torch.int64).reshape(-1)
        n = y.numel()
        if n < 2 or int(y.min()) < 0 or int(y.max()) >= ctx.num_classes:
            raise ValueError(f"crd needs training labels in 0..{ctx.num_classes - 1} for at least 2 samples")
        counts = torch.bincount(y, minlength=ctx.num_classes)
        if int(counts.max()) == n:
            raise ValueError("crd draws negatives from other classes, but every training sample has the same label")
        self.n_data = n
        # the published order of construction: the two embeddings, then the two memories
        self.embed_s = Embed(dims[0], feat_dim)
        self.embed_t = Embed(dims[1], feat_dim)
        stdv = 1.0 / math.sqrt(feat_dim / 3)  # RepDistiller crd/memory.py, ContrastMemory.__init__
        self.register_buffer("memory_s", torch.rand(n, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(n, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z", torch.full((2,), -1.0))  # (Z_s, Z_t); negative until the first step sets them
        # The sampler's tables, derived from the labels (not state): the sample indices sorted by
        # class, and where each class's block starts and how long it is.
        self.register_buffer("class_order", torch.argsort(y, stable=True), persistent=False)
        self.register_buffer("class_count", counts, persistent=False)
        self.register_buffer("class_start", torch.cumsum(counts, 0) - counts, persistent=False)

    def contrast_indices(self, index: Tensor, target: Tensor) -> Tensor:
        """(B,) sample indices and labels → (B, K + 1): column 0 the sample, columns 1..K negatives
        drawn uniformly with replacement from the training samples of the other classes."""
        count = self.class_count[target][:, None]  # (B, 1) samples of the own class
        start = self.class_start[target][:, None]
        available = self.n_data - count  # negatives of each sample
        u = torch.rand(index.shape[0], self.nce_k, dtype=torch.float64, device=index.device)
        r = torch.minimum((u * available).long(), available - 1)  # uniform in [0, available)
        r = r + (r >= start) * count  # skip the own class's block
        return torch.cat([index[:, None].long(), self.class_order[r]], dim=1)

    @torch.no_grad()
    def _normalisers(self, scores_s: Tensor, scores_t: Tensor) -> Tensor:
        """(Z_s, Z_t): estimated from this batch (mean score × N) while unset, else the kept values."""
        estimate = _mean_over_processes(torch.stack([scores_s.mean(), scores_t.mean()]).float() * self.n_data)
        self.z.copy_(torch.where(self.z > 0, self.z, estimate))
        return self.z.clone()

    @torch.no_grad()
    def _update_memory(self, v_s: Tensor, v_t: Tensor, index: Tensor) -> None:
        """Rows ``index`` of each memory ← m·row + (1 − m)·v, renormalised (crd/memory.py)."""
        index = _all_gather(index.long())
        m = self.nce_momentum
        for memory, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
            rows = memory[index].mul_(m).add_(_all_gather(v.detach()).mul(1 - m))
            rows = rows.div(rows.pow(2).sum(dim=1, keepdim=True).pow(0.5))
            memory.index_copy_(0, index, rows)

    def forward(
        self, student: Features, teacher: Features | None, target: Tensor, epoch: float | Tensor, index: Tensor | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if index is None:
            raise ValueError(
                "crd needs each sample's index in the training set (Batch.indices) and the batch has none: "
                "its memories hold one entry per training sample"
            )
        if teacher is None or teacher.pooled is None or student.pooled is None:
            raise ValueError("crd needs the pooled features of the student and the teacher")
        v_s = self.embed_s(student.pooled.float())
        v_t = self.embed_t(teacher.pooled.float())
        contrast = self.contrast_indices(index, target)
        # each embedding against the other network's memory rows (crd/memory.py, ContrastMemory.forward)
        scores_s = crd_scores(v_s, self.memory_t[contrast], self.nce_t)
        scores_t = crd_scores(v_t, self.memory_s[contrast], self.nce_t)
        z = self._normalisers(scores_s, scores_t)
        nce = crd_nce_loss(scores_s / z[0], self.n_data) + crd_nce_loss(scores_t / z[1], self.n_data)
        self._update_memory(v_s, v_t, index)
        parts = {
            "ce": ce_term(student.logits, target, self.ce_weight),
            "crd": self.feat_weight * nce,
        }
        return parts["ce"] + parts["crd"], parts


def check(params: dict[str, Any]) -> None:
    check_weights(params, "ce_weight", "feat_weight")
    check_int(params, "feat_dim", 1)
    check_int(params, "nce_k", 1)
    check_positive("nce_t", params["nce_t"])
    m = params["nce_momentum"]
    if isinstance(m, bool) or not isinstance(m, int | float) or not 0 <= m < 1:
        raise ValueError(f"nce_momentum must be in [0, 1), got {m!r}")


def build(params: dict[str, Any], ctx: MethodContext) -> CRD:
    return CRD(SPEC, params, ctx)


SPEC = MethodSpec(
    "crd",
    CRDConfig,
    build,
    check,
    summary="CE + 0.8·NCE of embeddings against memories, K = 16384 other-class negatives (Tian et al. 2020)",
    teacher_needs=("pooled",),
    student_features=True,
    uses_rng=True,
)
