"""Local prototype structure (DS-SRD's L_proto): each epoch from `warmup_epochs` on, the teacher embeds the
training images (plain pipeline; pooled features, or logits where the student's width differs, or, where the
logits differ too (a self-supervised teacher's projection), pooled features with the student's side mapped to
the teacher's width by a trained Linear: `embed: projected`) and k-means
(faiss, 20 iterations) clusters them for every K in `clusters`. Per cluster the concentration
phi = mean distance of its members to the centroid / log(n + 10) (clusters of <= 1 member get the largest phi),
clipped to its 10th-90th percentiles and rescaled to mean `phi_mean` (0.1); centroids are L2-normalised.

Per step and clustering: the batch's own centroids plus `negatives` (100) centroids drawn from the clusters no
row of the batch belongs to; scores = normalise(embedding) . centroids^T / phi (each column by its own phi);
proto = mean over clusterings of KD_T(student scores, key scores), T 4. The key is the teacher's embedding of the
same image (`key_network: teacher`, DS-SRD's augmentation script) or another network's on another view, e.g.
the student's second view (`key_network: student, key_view: x2`, its supervised script) or a mean student; it
is a target (detached). K larger than the training set / 10 is refused.

Three behaviours of DS-SRD's code (Supervised DS-SRD: train_student_pcl.py, helper/loops.py) are options, off by
default (docs/deviations.md): `halve_rows_over: 1.5` halves the teacher-embedding rows whose norm exceeds 1.5
before k-means (a leftover of PCL's multi-GPU gathering); `key_grad: true` sends the gradient through a student
key (its KL target is not detached); `original_negatives: true` draws negatives from ids below the largest
assigned id (`range(im2cluster.max())`), so that cluster is never a negative.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.core.host_sync import to_device
from kdzoo.distillers.base import Method, Recipes, Requires
from kdzoo.distillers.kd import kd_loss
from kdzoo.distillers.registry import register_method
from kdzoo.errors import ConfigError
from kdzoo.models.features import Needs

EMBEDS = ("auto", "pooled", "logits", "projected")


@dataclass
class ProtoParams:
    clusters: list[int] = field(default_factory=lambda: [500, 800, 1000])
    negatives: int = 100
    warmup_epochs: int = 10  # the term acts from this epoch on, counted from 1 (DS-SRD's --warmup_epoch 10)
    embed: str = "auto"  # pooled | logits | projected | auto (pooled where the widths match, else logits where
    # theirs match and the teacher's classifier trained, else projected)
    key_network: str = "teacher"
    key_view: str = "x"
    phi_mean: float = 0.1
    iterations: int = 20
    redo: int = 5  # k-means restarts, the best kept (DS-SRD: nredo 5)
    T: float = 4.0
    halve_rows_over: float = 0.0  # DS-SRD: 1.5 (rows of the teacher embedding over this norm halved); 0 = off
    key_grad: bool = False  # DS-SRD's supervised script: true (the student key is not detached)
    original_negatives: bool = False  # DS-SRD: true (negatives from range(max assigned id))


@dataclass
class Clustering:
    centroids: Tensor  # (K, D), L2-normalised
    phi: Tensor  # (K,)
    assign: Tensor  # (N,) cluster of every training image
    top_id: int = -1  # the largest assigned id (set once the clustering is final)


def concentration(distances: np.ndarray, assign: np.ndarray, k: int, mean: float) -> np.ndarray:
    """phi per cluster from the members' (not squared) distances to their centroid (PCL's estimate)."""
    phi = np.zeros(k)
    counts = np.bincount(assign, minlength=k)
    sums = np.bincount(assign, weights=distances, minlength=k)
    many = counts > 1
    phi[many] = sums[many] / counts[many] / np.log(counts[many] + 10)
    phi[~many] = phi.max()
    phi = phi.clip(np.percentile(phi, 10), np.percentile(phi, 90))
    return mean * phi / phi.mean()


def kmeans(x: np.ndarray, k: int, iterations: int, redo: int, seed: int, gpu: Optional[int] = None):
    """(centroids (K, D), assignment (N,), distance to the assigned centroid (N,)) by faiss."""
    import faiss

    d = x.shape[1]
    clus = faiss.Clustering(d, k)
    clus.niter, clus.nredo, clus.seed, clus.verbose = iterations, redo, seed, False
    clus.max_points_per_centroid, clus.min_points_per_centroid = 1000, 10
    if gpu is not None and hasattr(faiss, "StandardGpuResources"):  # faiss's GPU build, on this process's GPU
        config = faiss.GpuIndexFlatConfig()
        config.device = gpu
        index = faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), d, config)
    else:
        index = faiss.IndexFlatL2(d)
    clus.train(x, index)
    squared, assign = index.search(x, 1)
    centroids = faiss.vector_to_array(clus.centroids).reshape(k, d)
    return centroids, assign[:, 0].astype(np.int64), np.sqrt(np.maximum(squared[:, 0], 0))


def cluster(embedding: Tensor, k: int, params: ProtoParams, seed: int) -> Clustering:
    x = np.ascontiguousarray(embedding.detach().float().cpu().numpy())
    gpu = (embedding.device.index or 0) if embedding.device.type == "cuda" else None
    centroids, assign, distances = kmeans(x, k, params.iterations, params.redo, seed, gpu=gpu)
    device = embedding.device
    return Clustering(F.normalize(torch.from_numpy(centroids).to(device), dim=1),
                      torch.from_numpy(concentration(distances, assign, k, params.phi_mean)).float().to(device),
                      torch.from_numpy(assign).to(device))


def pooled_width(shapes) -> Optional[int]:
    return int(shapes.pooled[-1]) if shapes is not None and shapes.pooled is not None else None


def logits_width(shapes) -> Optional[int]:
    return int(shapes.logits[-1]) if shapes is not None and shapes.logits is not None else None


def proto_scores(embedding: Tensor, c: Clustering, ids: Tensor) -> Tensor:
    """normalise(embedding) . centroids[ids]^T / phi[ids]."""
    return F.normalize(embedding.float(), dim=1) @ c.centroids[ids].t() / c.phi[ids]


def sample_negatives(c: Clustering, positives: Tensor, count: int, original: bool = False) -> Tensor:
    """`count` clusters (at most all of them) that no row of the batch belongs to, uniformly without replacement;
    `original`: only ids below the largest assigned one, as DS-SRD's range(im2cluster.max()).

    Where the batch cannot leave fewer than `count` free clusters (each row takes at most one), the draw stays on
    the device: the `count` highest of uniform scores, the batch's clusters scored out (no host synchronisation).
    Otherwise the free clusters are counted on the host."""
    pool = c.top_id if original else c.centroids.shape[0]
    if count <= pool - positives.numel():
        scores = torch.rand(c.centroids.shape[0], device=positives.device)
        scores = scores.index_fill(0, positives, -1.0)
        if original:
            scores[c.top_id:] = -1.0
        return scores.topk(count).indices
    free = torch.ones(c.centroids.shape[0], dtype=torch.bool)
    free[positives.cpu()] = False
    if original:
        free[c.top_id:] = False
    candidates = free.nonzero().flatten()
    pick = torch.randperm(len(candidates))[:count]
    return to_device(candidates[pick], positives.device)


def proto_loss(student: Tensor, key: Tensor, index: Tensor, clusterings: list[Clustering], negatives: int,
               temperature: float, original_negatives: bool = False) -> Tensor:
    """ProtoNCE over every clustering: the student embedding against its image's prototype among `negatives`
    sampled others, prototypes scaled by their concentration phi (PCL, as DS-SRD uses it; see the module
    docstring)."""
    total = 0.0
    for c in clusterings:
        positives = c.assign[index]
        ids = torch.cat([positives, sample_negatives(c, positives, negatives, original_negatives)])
        total = total + kd_loss(proto_scores(student, c, ids), proto_scores(key, c, ids), temperature)
    return total / len(clusterings)


@register_method
class Proto(Method):
    name = "proto"
    reference = "AiXia520/DS-SRD"  # the code its tests compare against
    description = "DS-SRD local structure: KD between student and key scores against the teacher's k-means prototypes"
    paper = "Xu et al., DS-SRD: a unified framework for structured representation distillation, 2023"
    student_needs = Needs(logits=True, pooled=True)
    teacher_needs = Needs(logits=True, pooled=True)
    requires = Requires(index=True, epoch_passes=True, labels=False, live_teacher=True)
    recipes = Recipes(apart=True, loss={"ce": 1.0, "kd": 1.0, "crd": 0.8, "proto": 0.8})
    # labels: the clusters come from the teacher's embedding; the key is a network's embedding
    # live_teacher: the epoch pass runs the teacher over the images
    Params = ProtoParams

    def __init__(self, params: ProtoParams, ctx):
        super().__init__(params, ctx)
        p = params
        if p.embed not in EMBEDS:
            raise ConfigError(f"methods.proto.embed: {p.embed!r}; use one of {', '.join(EMBEDS)}")
        n = len(ctx.train_targets)
        if not p.clusters:
            raise ConfigError("methods.proto.clusters: give at least one K")
        for k in p.clusters:
            if k < 2 or k > n // 10:
                raise ConfigError(f"methods.proto.clusters: K={k} needs 2 <= K <= training images / 10 "
                                  f"({n} images: at most {n // 10})")
        if p.negatives < 1 or p.iterations < 1 or p.redo < 1 or p.T <= 0 or p.phi_mean <= 0 or p.halve_rows_over < 0:
            raise ConfigError("methods.proto: negatives, iterations and redo must be >= 1; T and phi_mean > 0; "
                              "halve_rows_over >= 0")
        width_s, width_t = pooled_width(ctx.student_shapes), pooled_width(ctx.teacher_shapes)
        logits_s, logits_t = logits_width(ctx.student_shapes), logits_width(ctx.teacher_shapes)
        self.what = p.embed
        if p.embed == "auto":
            logits_ok = logits_s is not None and logits_s == logits_t and ctx.teacher_logits_trained
            self.what = "pooled" if width_s is not None and width_s == width_t else \
                "logits" if logits_ok else "projected"
        elif p.embed == "pooled" and width_s != width_t:
            raise ConfigError(f"methods.proto.embed: pooled features of student ({width_s}) and teacher ({width_t}) "
                              "differ in width; use embed: logits or projected")
        elif p.embed == "logits" and logits_s != logits_t:
            raise ConfigError(f"methods.proto.embed: logits of student ({logits_s}) and teacher ({logits_t}) differ in "
                              "width; use embed: projected")
        self.projector = None
        if self.what == "projected":
            if width_s is None or width_t is None:
                raise ConfigError("methods.proto.embed: projected needs pooled features of student and teacher")
            self.projector = torch.nn.Linear(width_s, width_t)  # the student's pooled feature in the teacher's space
        self.clusterings: Optional[list[Clustering]] = None

    def bind(self, binding) -> "Proto":
        if self.params.key_grad and self.params.key_network != binding.student:
            raise ConfigError(f"methods.proto.key_grad: the key is {self.params.key_network}'s, which this term does "
                              f"not train; a gradient through the key needs key_network: {binding.student}")
        return super().bind(binding)

    @property
    def teacher_what(self) -> str:
        """What the teacher (and the key) give: pooled features when the student's are projected to them."""
        return "pooled" if self.what == "projected" else self.what

    def reads_teacher_logits(self) -> bool:
        return self.teacher_what == "logits"

    def teacher_views(self) -> tuple[str, ...]:
        """The step reads the teacher only as the key (the epoch pass runs it apart)."""
        return (self.params.key_view,) if self.params.key_network == self.binding.teacher else ()

    def extra_reads(self):
        return ((self.params.key_network, self.params.key_view, Needs(logits=True, pooled=True)),)

    @property
    def first_epoch(self) -> int:
        return max(self.params.warmup_epochs - 1, 0)  # 0-based

    def on_epoch_start(self, epoch: int, passes=None) -> Optional[dict[str, float]]:
        if epoch < self.first_epoch or passes is None:
            self.clusterings = None
            return None
        started = time.time()
        embedding = passes.embed(self.binding.teacher, self.teacher_what)
        if self.params.halve_rows_over > 0:  # DS-SRD's (PCL's) step, as an option
            embedding = torch.where(embedding.norm(dim=1, keepdim=True) > self.params.halve_rows_over,
                                    embedding / 2, embedding)
        embedded = time.time()
        main = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        self.clusterings = []
        for i, k in enumerate(self.params.clusters):
            if main:  # one k-means, on the main process; the others receive its result
                c = cluster(embedding, k, self.params, seed=1000 * epoch + i)
            else:
                c = Clustering(embedding.new_zeros(k, embedding.shape[1]), embedding.new_zeros(k),
                               torch.zeros(len(embedding), dtype=torch.long, device=embedding.device))
            if torch.distributed.is_initialized():
                for tensor in (c.centroids, c.phi, c.assign):
                    torch.distributed.broadcast(tensor, src=0)
            c.top_id = int(c.assign.max())
            self.clusterings.append(c)
        return {"proto_embed_s": round(embedded - started, 3), "proto_cluster_s": round(time.time() - embedded, 3)}

    def step_losses(self, ctx) -> dict[str, Tensor]:
        b, p = self.binding, self.params
        student = ctx.features(b.student, b.view)
        s = self.projector(student.pooled) if self.projector is not None else getattr(student, self.what)
        if self.clusterings is None:
            return {b.term(self.name): s.sum() * 0.0}
        keyed = ctx.features(p.key_network, p.key_view) if p.key_grad else \
            ctx.no_grad_features(p.key_network, p.key_view)
        if self.projector is not None and p.key_network != b.teacher:  # a student-like key: in the teacher's space
            key = self.projector(keyed.pooled)
        else:
            key = getattr(keyed, self.teacher_what)
        key = key if p.key_grad else key.detach()  # a target, unless the original's gradient is asked for
        index = ctx.batch.index_of(b.view)
        return {b.term(self.name): proto_loss(s, key, index, self.clusterings, p.negatives, p.T,
                                              p.original_negatives)}
