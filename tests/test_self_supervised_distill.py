"""Self-supervised distillation beyond the joint weak student: proto against the BYOL target's prototypes (the weak
student's pooled feature projected to the target's width), offline distillation from a frozen self-supervised
teacher (label-free: garbage labels give the same weights; logit terms refused; kNN monitor, last checkpoint),
tabular views (masking and noise) and a self-supervised tabular run."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kdzoo.checkpoints.store import resolve_checkpoint
from kdzoo.config import load_config
from kdzoo.core.dist import DistInfo
from kdzoo.data.views import FeatureCorruption
from kdzoo.engine.trainer import make_engine
from kdzoo.errors import ConfigError
from kdzoo.program import BuildContext
from kdzoo.regimes.self_supervised import SelfSupervised
from tests.conftest import CONFIGS, FAST, run_cli
from tests.method_harness import EpochRuntime, step_info

SS = CONFIGS / "digits" / "self_supervised"
SMALL = [*FAST, "epochs=1", "dataset.subset=256", "engine.precision=fp32"]
PROTO_NOW = ["methods.weak.proto.warmup_epochs=1", "methods.weak.proto.clusters=[5,10]"]


def _ss_program(*overrides):
    cfg = load_config(SS / "dssrd.yaml", [*SMALL, *overrides])
    cpu = torch.device("cpu")
    return SelfSupervised.build(BuildContext(cfg=cfg, device=cpu, dist=DistInfo()))


def test_weak_proto_projects_to_the_target_width_and_trains_weak_and_projector_only():
    torch.manual_seed(0)
    program = _ss_program(*PROTO_NOW)
    phase = program.phases[0]
    proto = program.trainable.methods["weak:proto"]
    assert proto.what == "projected" and proto.teacher_what == "pooled"
    assert (proto.projector.in_features, proto.projector.out_features) == (64, 256)  # resnet8 -> resnet8x4
    target = program.models["teacher"].module
    target.train(True)
    stats = phase.on_epoch_start(0, EpochRuntime(program))
    assert stats["proto_cluster_s"] >= 0 and target.training  # embedded in eval mode, put back in train mode
    assert [len(c.centroids) for c in proto.clusterings] == [5, 10]
    assert proto.clusterings[0].centroids.shape[1] == 256  # the target's pooled width
    program.train(True)
    batch = program.data["train"].batch(next(iter(program.data["train"].loader(DistInfo()))))
    terms = phase.step(batch, step_info())
    for p in phase.params:
        p.grad = None
    assert float(terms["weak.proto"].detach()) > 0
    terms["weak.proto"].backward()
    weak = program.models["weak"].module
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in weak.named_parameters()
               if p.dim() > 1 and not n.startswith("fc."))
    assert proto.projector.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in target.parameters())
    assert all(p.grad is None for p in program.models["student"].module.parameters())


def test_proto_embed_choices_with_widths_that_differ():
    with pytest.raises(ConfigError, match="use embed: projected"):
        _ss_program(*PROTO_NOW, "methods.weak.proto.embed=logits")
    with pytest.raises(ConfigError, match="logits or projected"):
        _ss_program(*PROTO_NOW, "methods.weak.proto.embed=pooled")


@pytest.fixture(scope="module")
def byol_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ss") / "byol"
    assert run_cli("pretrain", "-c", SS / "byol.yaml", "--out", run, *SMALL) == 0
    return run


def test_a_self_supervised_run_resolves_to_its_last_checkpoint(byol_run):
    assert resolve_checkpoint(byol_run).name == "last.safetensors"  # its best was picked on test labels


def test_offline_from_a_frozen_ss_teacher_reads_no_labels(byol_run, tmp_path):
    teacher = f"teacher.checkpoint={byol_run / 'checkpoints' / 'target.last.safetensors'}"
    overrides = [*SMALL, teacher, "methods.proto.warmup_epochs=1", "methods.proto.clusters=[5,10]"]
    weights = []
    for garbage in (False, True):
        out = tmp_path / f"run{int(garbage)}"
        engine = make_engine(load_config(SS / "offline_crd.yaml", overrides), out, quiet=True)
        if garbage:
            raw = engine.program.data["train"].dataset
            while hasattr(raw, "dataset"):
                raw = raw.dataset
            original = raw.targets.clone()
            raw.targets = torch.randint(0, 10, raw.targets.shape, generator=torch.Generator().manual_seed(1))
            assert float((raw.targets != original).float().mean()) > 0.5
        engine.fit()
        weights.append(load_file(str(out / "checkpoints" / "last.safetensors")))
        record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        assert record["train_proto"] > 0 and record["train_crd"] > 0
        assert "test_knn_top1" in record and "test_top1" not in record  # its classifier never trains
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert resolve_checkpoint(tmp_path / "run0").name == "last.safetensors"
    assert run_cli("linear-eval", "--checkpoint", tmp_path / "run0", "--no-augment", "--epochs", "1", "--out",
                   tmp_path / "probe", *FAST) == 0


def test_logit_terms_against_an_ss_teacher_exit_2(byol_run, tmp_path, capsys):
    teacher = f"teacher.checkpoint={byol_run / 'checkpoints' / 'target.last.safetensors'}"
    code = run_cli("distill", "-c", SS / "offline_crd.yaml", "--out", tmp_path / "r", teacher, "loss.kd=1", *FAST)
    err = capsys.readouterr().err
    assert code == 2 and "loss.kd: reads the teacher's logits" in err and len(err.strip().splitlines()) == 1


def test_feature_corruption_masks_with_p_0_2_then_adds_noise():
    torch.manual_seed(0)
    x = torch.full((20_000,), 5.0)
    view = FeatureCorruption(lambda s: s)
    y = view(x)
    masked = (y.abs() < 1.0).float().mean()  # 5 + noise never comes near 0; 0 + noise (sd 0.1) always does
    assert abs(float(masked) - 0.2) < 0.01
    kept = y[y.abs() >= 1.0] - 5.0
    assert abs(float(kept.std()) - 0.1) < 0.005 and abs(float(kept.mean())) < 0.005
    assert not torch.equal(view(x), view(x))  # a fresh draw per call


def _write_covtype(root, n: int = 15_120 + 60) -> None:
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.integers(0, 4000, size=(n, 10)), np.eye(4, dtype=int)[rng.integers(0, 4, n)],
                           np.eye(40, dtype=int)[rng.integers(0, 40, n)], (np.arange(n) % 7 + 1)[:, None]], axis=1)
    root.mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "covtype.data.gz", "wt") as f:
        f.writelines(",".join(map(str, r)) + "\n" for r in rows)


def test_self_supervised_tabular_run_and_probe(tmp_path, capsys):
    data = tmp_path / "data"
    _write_covtype(data)
    run = tmp_path / "cov"
    common = [*FAST, f"dataset.root={data}", "epochs=1", "dataset.subset=1024", "methods.weak.crd.nce_k=256"]
    assert run_cli("pretrain", "-c", CONFIGS / "tabular" / "covtype_byol.yaml", "--out", run, *common) == 0
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_byol"] > 0 and record["train_weak.crd"] > 0
    assert run_cli("linear-eval", "--checkpoint", run, "--network", "weak", "--no-augment", "--epochs", "1",
                   "--out", tmp_path / "probe", *FAST) == 0
    code = run_cli("pretrain", "-c", SS / "byol.yaml", "--out", tmp_path / "img", "dataset.views.x=tabular", *FAST)
    assert code == 2 and "corrupts feature vectors" in capsys.readouterr().err


def test_proto_auto_projects_for_a_self_supervised_teacher_of_another_width(tmp_path):
    run = tmp_path / "wide"
    assert run_cli("pretrain", "-c", SS / "byol.yaml", "--out", run, *SMALL, "student.arch=resnet8x4") == 0
    teacher = f"teacher.checkpoint={run / 'checkpoints' / 'target.last.safetensors'}"
    engine = make_engine(load_config(SS / "offline_crd.yaml", [*SMALL, teacher, "methods.proto.clusters=[5,10]"]),
                         tmp_path / "r", quiet=True)
    proto = engine.program.trainable.methods["proto"]
    assert proto.what == "projected" and not proto.reads_teacher_logits()  # its logits never trained: not those
    engine.lock.release()
