"""DS-SRD's local prototype structure: phi against a hand computation (clipping and scaling), the loss against a
hand computation with fixed centroids, k-means, the per-epoch pass over the training images, gradients, bad input
and a CLI run that logs the clustering cost."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from kdzoo.distillers.proto import (
    Clustering,
    ProtoParams,
    concentration,
    kmeans,
    proto_loss,
)
from kdzoo.errors import ConfigError
from tests.conftest import CONFIGS, FAST, run_cli
from tests.method_harness import EpochRuntime, backward_once, build_regime, random_batch


def test_published_defaults():
    p = ProtoParams()
    assert (p.clusters, p.negatives, p.warmup_epochs, p.phi_mean, p.iterations, p.T, p.key_network) == \
        ([500, 800, 1000], 100, 10, 0.1, 20, 4.0, "teacher")


def test_phi_by_hand_with_clipping_and_scaling():
    # clusters: 0 -> distances 1, 3; 1 -> one member (gets the max); 2 -> 1, 1, 1, 1; 3 -> 2, 2; 4 -> 0.5, 1.5
    assign = np.array([0, 0, 1, 2, 2, 2, 2, 3, 3, 4, 4])
    dist = np.array([1, 3, 9, 1, 1, 1, 1, 2, 2, 0.5, 1.5], dtype=float)
    raw = [2 / math.log(12), None, 1 / math.log(14), 2 / math.log(12), 1 / math.log(12)]
    raw[1] = max(v for v in raw if v is not None)
    lo, hi = np.percentile(raw, 10), np.percentile(raw, 90)
    clipped = np.clip(raw, lo, hi)
    expected = 0.1 * clipped / clipped.mean()
    got = concentration(dist, assign, 5, 0.1)
    assert np.allclose(got, expected)
    assert got.mean() == pytest.approx(0.1) and got.max() <= 0.1 * hi / clipped.mean() + 1e-12


def _kd(s, t, temp):
    p_t = np.exp(t / temp) / np.exp(t / temp).sum(1, keepdims=True)
    log_p_s = s / temp - np.log(np.exp(s / temp).sum(1, keepdims=True))
    return float((p_t * (np.log(p_t) - log_p_s)).sum(1).mean() * temp**2)


def test_loss_by_hand_with_fixed_centroids():
    torch.manual_seed(0)
    centroids = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    phi = torch.tensor([0.05, 0.1, 0.2, 0.08, 0.12, 0.15])
    assign = torch.tensor([0, 1, 1, 2, 3, 4, 5, 0])
    c = Clustering(centroids, phi, assign)
    student, key, index = torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 3])
    # positives: clusters 0, 1, 2 (one per row); negatives: all of 3, 4, 5 (count 100 > 3 free clusters). The KD
    # over the columns does not depend on their order, so the hand computation fixes one.
    got = float(proto_loss(student, key, index, [c, c], 100, 4.0))
    ids = [0, 1, 2, 3, 4, 5]
    cen, ph = centroids.numpy()[ids], phi.numpy()[ids]

    def scores(x):
        x = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
        return x @ cen.T / ph

    assert got == pytest.approx(_kd(scores(student), scores(key), 4.0), rel=1e-5)


def test_negatives_exclude_the_batch_clusters_and_are_capped():
    from kdzoo.distillers.proto import sample_negatives

    torch.manual_seed(0)
    c = Clustering(torch.eye(10), torch.ones(10), torch.arange(10))
    negatives = sample_negatives(c, torch.tensor([0, 3, 3]), 4)
    assert len(negatives) == 4 and not ({0, 3} & set(negatives.tolist()))
    assert len(sample_negatives(c, torch.tensor([0, 3]), 100)) == 8


def test_kmeans_separates_blobs():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (200, 8)), rng.normal(5, 0.1, (200, 8))]).astype(np.float32)
    _, assign, distances = kmeans(x, 2, 20, 1, seed=0)
    assert len(set(assign[:200])) == 1 and len(set(assign[200:])) == 1 and assign[0] != assign[-1]
    assert distances.max() < 1.0


def _regime(tmp_path, teacher="resnet8", **proto):
    section = {"clusters": [5, 10], "warmup_epochs": 2, "negatives": 3, "redo": 1, **proto}
    return build_regime(tmp_path, "resnet8", teacher, {"ce": 1.0, "proto": 0.8}, {"proto": section}, n_train=200)


def test_epoch_pass_embeds_the_training_images_in_dataset_order(tmp_path):
    from kdzoo.program.epoch_pass import EpochPasses

    r = _regime(tmp_path)
    passes = EpochPasses(EpochRuntime(r.program), {"teacher": r.teacher})
    pooled = passes.embed("teacher", "pooled")
    probe = r.program.data["probe"].dataset
    images = torch.stack([probe[i][0] for i in (0, 7, 199)])
    assert pooled.shape == (200, 64)
    assert torch.allclose(pooled[[0, 7, 199]], r.teacher(images).pooled, atol=1e-5)


def test_term_waits_for_warmup_then_trains_the_student(tmp_path):
    r = _regime(tmp_path)
    phase = r.phases()[-1]
    assert phase.on_epoch_start(0, EpochRuntime(r.program)) == {}  # epoch 1 of 2: no clustering yet
    terms = phase.step(random_batch(r), None)
    assert float(terms["proto"].detach()) == 0
    stats = phase.on_epoch_start(1, EpochRuntime(r.program))
    assert stats["proto_cluster_s"] >= 0 and stats["proto_embed_s"] >= 0
    method = r.methods["proto"]
    assert [len(c.centroids) for c in method.clusterings] == [5, 10]
    assert all(torch.allclose(c.centroids.norm(dim=1), torch.ones(len(c.centroids))) for c in method.clusterings)
    r.program.models["teacher"].module.zero_grad()
    # proto alone: its gradient must reach the student (the key is a detached target)
    r2 = build_regime(tmp_path, "resnet8", "resnet8", {"proto": 1.0},
                      {"proto": {"clusters": [5], "warmup_epochs": 1, "negatives": 3, "redo": 1}}, n_train=200)
    r2.phases()[-1].on_epoch_start(0, EpochRuntime(r2.program))
    terms = backward_once(r2, random_batch(r2))
    assert float(terms["proto"].detach()) > 0
    body = [(n, p) for n, p in r2.student.named_parameters() if not n.startswith("fc.")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in body if p.dim() > 1)
    assert all(p.grad is None for p in r2.teacher.parameters())  # pooled features: the classifier gets none


def test_embedding_follows_widths(tmp_path):
    assert _regime(tmp_path).methods["proto"].what == "pooled"
    assert _regime(tmp_path, teacher="resnet8x4").methods["proto"].what == "logits"  # 64 vs 256 wide
    with pytest.raises(ConfigError, match="use embed: logits"):
        _regime(tmp_path, teacher="resnet8x4", embed="pooled")


def test_k_larger_than_a_tenth_of_the_training_set_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="K=25"):
        _regime(tmp_path, clusters=[5, 25])


def test_proto_without_a_teacher_exits_2(tmp_path, capsys):
    code = run_cli("train", "-c", CONFIGS / "digits" / "student.yaml", "--out", tmp_path / "r", "loss.proto=1",
                   *FAST)
    assert code == 2 and "teacher" in capsys.readouterr().err


def test_cli_run_logs_the_clustering_cost(tmp_path, digits_teacher):
    out = tmp_path / "r"
    code = run_cli("distill", "-c", CONFIGS / "digits" / "dssrd" / "crd_proto.yaml", "--out", out, "epochs=2",
                   f"teacher.checkpoint={digits_teacher}", *FAST)
    assert code == 0
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["proto_cluster_s"] >= 0 and last["train_proto"] > 0


def test_projected_embedding_trains_student_and_projector(tmp_path):
    r = build_regime(tmp_path, "resnet8", "resnet8x4", {"proto": 1.0},
                     {"proto": {"clusters": [5], "warmup_epochs": 1, "negatives": 3, "redo": 1, "embed": "projected"}},
                     n_train=200)
    method = r.methods["proto"]
    assert method.what == "projected" and method.reads_teacher_logits() is False
    r.phases()[-1].on_epoch_start(0, EpochRuntime(r.program))
    assert method.clusterings[0].centroids.shape[1] == 256  # the teacher's pooled width
    terms = backward_once(r, random_batch(r))
    assert float(terms["proto"].detach()) > 0 and method.projector.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for n, p in r.student.named_parameters() if p.dim() > 1 and not n.startswith("fc."))
    assert all(p.grad is None for p in r.teacher.parameters())


def test_phi_comes_from_euclidean_not_squared_distances():
    """Two clusters: A = (0,0), (2,0) (distances 1, 1 to its centroid), B = (10,0), (10,6) (3, 3). Raw phi
    1/log 12 and 3/log 12, clipped to their 10th/90th percentiles (1.2 and 2.8 over log 12), mean 0.1: 0.06 and
    0.14 (squared distances would give 0.036 and 0.164)."""
    from kdzoo.distillers.proto import cluster

    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [10.0, 6.0]])
    c = cluster(x, 2, ProtoParams(redo=1), seed=0)
    assert c.assign[0] == c.assign[1] != c.assign[2] == c.assign[3]
    assert float(c.phi[c.assign[0]]) == pytest.approx(0.06) and float(c.phi[c.assign[2]]) == pytest.approx(0.14)


def test_original_negatives_never_draw_the_largest_assigned_id():
    from kdzoo.distillers.proto import sample_negatives

    c = Clustering(torch.eye(10), torch.ones(10), torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 7, 7]), top_id=7)
    for seed in range(20):
        torch.manual_seed(seed)
        drawn = set(sample_negatives(c, torch.tensor([0]), 9, original=True).tolist())
        assert drawn == {1, 2, 3, 4, 5, 6}  # range(7) without the batch's 0: never 7, nor the unused 8, 9
    assert set(sample_negatives(c, torch.tensor([0]), 9).tolist()) == set(range(1, 10))


def test_halve_rows_over_halves_only_the_large_teacher_rows(tmp_path, monkeypatch):
    from kdzoo.distillers import proto
    from kdzoo.program.epoch_pass import EpochPasses

    r = _regime(tmp_path, halve_rows_over=1e9)  # the threshold is set below, from the embedding itself
    seen = []
    real = proto.cluster
    monkeypatch.setattr(proto, "cluster", lambda emb, *a, **k: seen.append(emb) or real(emb, *a, **k))
    embedding = EpochPasses(EpochRuntime(r.program), {"teacher": r.teacher}).embed("teacher", "pooled")
    norms = embedding.norm(dim=1)
    r.methods["proto"].params.halve_rows_over = float(norms.median())
    r.phases()[-1].on_epoch_start(1, EpochRuntime(r.program))
    large = norms > norms.median()
    assert 0 < int(large.sum()) < len(norms)
    assert torch.allclose(seen[0][large], embedding[large] / 2) and torch.allclose(seen[0][~large], embedding[~large])


def _two_view_proto_grads(teacher, key_grad: bool):
    """proto's gradient on the student's first conv in DS-SRD's digits recipe (key: the student's view x2)."""
    from kdzoo.config import load_config
    from kdzoo.core.dist import DistInfo
    from tests.method_harness import step_info
    from tests.test_dssrd_double import RECIPE, _program

    torch.manual_seed(0)
    program = _program(teacher, f"methods.proto.key_grad={str(key_grad).lower()}")
    assert load_config(RECIPE).methods["proto"]["key_view"] == "x2"
    phase = program.phases[-1]
    phase.on_epoch_start(0, EpochRuntime(program))
    program.train(True)
    batch = program.data["train"].batch(next(iter(program.data["train"].loader(DistInfo()))))
    torch.manual_seed(0)  # the same negatives in both runs
    proto = phase.step(batch, step_info())["proto"]
    proto.backward()
    return float(proto.detach()), program.models["student"].module.conv1.weight.grad.clone()


def test_key_grad_sends_the_gradient_through_the_students_key_view(digits_teacher):
    """DS-SRD's supervised script does not detach its key (the student's second view): the same loss value,
    another gradient; by default the key is a target."""
    loss, detached = _two_view_proto_grads(digits_teacher, key_grad=False)
    loss_live, live = _two_view_proto_grads(digits_teacher, key_grad=True)
    assert loss == pytest.approx(loss_live, rel=1e-5) and loss > 0
    assert not torch.allclose(detached, live)


def test_key_grad_needs_the_student_as_key(tmp_path):
    with pytest.raises(ConfigError, match="key_grad"):
        _regime(tmp_path, key_grad=True)  # the key is the frozen teacher's


def test_negatives_drawn_on_the_device_are_uniform_over_the_free_clusters():
    """The sync-free draw (enough free clusters guaranteed): never a batch cluster (nor, with `original`, an id at
    or above the largest assigned one), each free cluster equally likely, no repeats."""
    from kdzoo.core.host_sync import HostSyncs
    from kdzoo.distillers.proto import sample_negatives

    torch.manual_seed(0)
    c = Clustering(torch.eye(20), torch.ones(20), torch.arange(20), top_id=15)
    counts = torch.zeros(20)
    with HostSyncs(torch.device("cpu")) as syncs:
        draws = [sample_negatives(c, torch.tensor([2, 5, 5]), 4, original=True) for _ in range(3000)]
    assert syncs.total == 0
    for drawn in draws:
        assert len(set(drawn.tolist())) == 4
        counts[drawn] += 1
    free = [i for i in range(15) if i not in (2, 5)]
    assert counts[[2, 5, *range(15, 20)]].sum() == 0
    expected = 3000 * 4 / len(free)  # 923
    assert (counts[free] - expected).abs().max() < 4.5 * (expected * (1 - 4 / len(free))) ** 0.5
