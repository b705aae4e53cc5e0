"""The GPU path on the CPU: benchmarks/gpu_check.py runs every section at small sizes (so it cannot rot before a GPU
runs it), its host-sync count catches a `.item()` slipped into a step, and the pieces it relies on: the host-read
counter, the sync-free selection of non-target classes and original rows, fused optimizers only where they run."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from kdzoo.config.schema import OptimConfig
from kdzoo.core.host_sync import HostSyncs, host_side
from kdzoo.distillers.common import non_target_classes
from kdzoo.program.optim import build_optimizer, fusable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def test_host_reads_are_counted_by_call_and_host_side_reads_are_not():
    x = torch.randn(6)
    with HostSyncs(torch.device("cpu")) as syncs:
        x.sum().item()
        if x.max() > 0:
            pass
        x[x > 0].tolist()
        x.nonzero()
        x.index_select(0, torch.tensor([1, 2])).sum() * 2 + x.clamp(min=0)  # device-only work: not counted
        with host_side():
            float(torch.rand(()))
    assert dict(syncs.counts) == {"item": 1, "__bool__": 1, "__getitem__[bool mask]": 1, "tolist": 1, "nonzero": 1}
    assert syncs.total == 5


@pytest.mark.parametrize("k", [1, 2])
def test_non_target_classes_select_what_a_mask_selects(k):
    z = torch.randn(7, 10)
    label = torch.stack([torch.randperm(10)[:k] for _ in range(7)])
    keep = torch.ones_like(z, dtype=torch.bool).scatter_(1, label, False)
    assert torch.equal(z.gather(1, non_target_classes(label, 10)), z[keep].view(7, 10 - k))


def test_fused_optimizers_only_on_one_cuda_device():
    params = [torch.nn.Parameter(torch.randn(3))]
    assert not fusable(params) and not fusable([])
    optimizer = build_optimizer(params, OptimConfig())
    assert not optimizer.param_groups[0].get("fused")  # the CPU keeps torch's default implementation


def test_gpu_check_runs_every_section_on_the_cpu(tmp_path):
    import gpu_check

    report = tmp_path / "gpu_check.md"
    code = gpu_check.main(["--device", "cpu", "--quick", "--work", str(tmp_path / "work"), "--out", str(report)])
    text = report.read_text()
    assert code == 0, text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| case")]
    regimes = [r for r in rows if r.startswith(("| offline", "| mutual", "| double_student", "| self_supervised",
                                                "| linear_probe"))]
    assert len(regimes) == 11 and all(r.endswith("| ok |") and "| 0 (-) |" in r for r in regimes), regimes
    for expected in ("| 8 | default", "| 8 | plain (fp32)", "| 8 | compiled", "loader: device | 400 |",
                     "PyTorch loader, 0 workers | 400 |", "| replay |", "| student |", "| no | the PyTorch loader"):
        assert any(expected in r for r in rows), expected
    assert "FAILED" not in text and "CPU " in text  # the environment line names the CPU


def test_gpu_check_reports_a_host_sync_slipped_into_a_step(tmp_path, monkeypatch):
    import gpu_check

    from kdzoo.distillers.kd import KD

    original = KD.losses

    def with_item(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        terms["kd"].item()  # the realistic bug: a loss read back to the host each step
        return terms

    monkeypatch.setattr(KD, "losses", with_item)
    report = tmp_path / "gpu_check.md"
    code = gpu_check.main(["--device", "cpu", "--quick", "--sections", "regimes", "--work", str(tmp_path / "w"),
                           "--out", str(report)])
    kd_row = next(r for r in report.read_text().splitlines() if r.startswith("| offline: kd (logit)"))
    assert code == 1 and "item" in kd_row and kd_row.endswith("| SYNCS |"), kd_row


def test_a_loaded_state_keeps_the_optimizers_own_implementation(monkeypatch):
    """A checkpoint brings its groups' fused/foreach flags; the optimizer keeps the ones it was built with (a CPU
    checkpoint resumed on a GPU must stay fused: GradScaler hands a fused step its scale)."""
    from kdzoo.program import optim

    def params():
        return [torch.nn.Parameter(torch.randn(3))]

    plain = build_optimizer(params(), OptimConfig())
    monkeypatch.setattr(optim, "fusable", lambda p: True)  # torch runs fused SGD on the CPU too
    fused = build_optimizer(params(), OptimConfig())
    assert fused.param_groups[0]["fused"] is True
    fused.load_state_dict(plain.state_dict())
    assert fused.param_groups[0]["fused"] is True and not fused.param_groups[0]["foreach"]
    monkeypatch.undo()
    fresh = build_optimizer(params(), OptimConfig())
    fresh.load_state_dict(fused.state_dict())
    assert not fresh.param_groups[0]["fused"]


def test_the_device_loaders_draws_are_not_the_shuffles_numbers():
    """On the CPU both generators are torch's Mersenne twister: seeded alike they would draw the same numbers, so
    crop offsets would follow the shuffle."""
    from tests.test_device_loader import dataset, device_loader

    loader = device_loader(dataset())
    for epoch in (0, 3):
        loader.set_epoch(epoch)
        assert loader.generator.initial_seed() != loader.sampler_generator.initial_seed()
        assert not torch.equal(torch.rand(8, generator=loader.generator),
                               torch.rand(8, generator=loader.sampler_generator))


def test_the_goals_of_the_gpu_table_are_judged_from_the_measured_numbers(tmp_path):
    import gpu_check

    check = gpu_check.Check(gpu_check.parse(["--device", "cpu", "--quick", "--work", str(tmp_path)]))
    assert gpu_check.goals(check) == []  # nothing measured, nothing claimed
    check.epoch = {"device": {"epoch_s": 6.0, "eval_s": 0.5}, "torch": {"epoch_s": 9.0, "eval_s": 0.5}}
    check.replayed = {"replay": {"epoch_s": 3.5, "eval_s": 0.5}}
    check.default_ratio = {64: 1.15, 256: 1.25}
    lines = gpu_check.goals(check)
    assert "- 240 epochs with the live teacher: 26.0 min (goal under 30: met)" in lines  # the faster loader
    assert "- 240 epochs from the replay cache: 16.0 min (goal under 15: not met)" in lines
    assert lines[-2:] == ["- default KD step at batch 64: 1.15x its limit (goal within 1.2x: met)",
                          "- default KD step at batch 256: 1.25x its limit (goal within 1.2x: not met)"]


# Methods whose step the CIFAR pair harness below cannot build, and where their step is checked instead
HARNESS_CANNOT = {
    "byol": "two views and no labels: gpu_check's self_supervised case",
    "proto": "clusters from an epoch pass: gpu_check's double_student cases",
    "mixup": "grouped batches (CKD)", "mixup3": "grouped batches (CKD)", "ckd": "grouped batches (CKD)",
    "ckd_add": "grouped batches (CKD)", "ckd_mixup": "grouped batches (CKD)", "ckd_inter": "grouped batches (CKD)",
    "dist_plus": "needs equal last-stage shapes (another pair)", "fsp": "needs equal stage widths (another pair)",
    "dot": "an optimizer step, no loss term", "nd": "class centres from an epoch pass",
    "trans_kd": "needs a _trans student",
}


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    import step_overhead

    from kdzoo.data import image_info
    from kdzoo.engine.device import Precision

    folder = tmp_path_factory.mktemp("teachers")
    args = step_overhead.pair_parser("").parse_args(["--batch", "8", "--student", "resnet8", "--teacher",
                                                       "resnet8x4"])
    precision = Precision("fp32", torch.device("cpu"))
    common = dict(args=args, info=image_info("cifar100", 100, 3, 32, (0.5,) * 3, (0.25,) * 3),
                  targets=torch.randint(0, 100, (500,)), precision=precision,
                  engine=step_overhead.engine_section(step_overhead.SETTINGS["plain"], precision))
    teachers = {arch: step_overhead.random_teacher(folder, arch, 100) for arch in ("resnet8x4", "resnet8x4_aux")}
    return step_overhead, common, teachers


def _methods():
    from kdzoo.distillers import METHODS

    return [m for m in METHODS.names() if m not in HARNESS_CANNOT]


@pytest.mark.parametrize("method", _methods())
def test_no_methods_step_reads_the_host(harness, method):
    """Each method's real training step (the engine's train_step on the offline regime), after a first step, makes
    none of the tensor calls that synchronise a GPU: a `.item()`, a boolean mask or a blocking copy in a new
    method's loss fails here, on the CPU."""
    from kdzoo.distillers import METHODS

    step_overhead, common, teachers = harness
    cls = METHODS.get(method)
    aux = bool(cls.student_needs.heads)
    loss = {"ce": 1.0, **{term: 1.0 for term in cls.term_names()}}
    step = step_overhead.regime_step(
        common["args"], common["info"], common["targets"], common["engine"], common["precision"], loss,
        (teachers["resnet8x4_aux"] if aux else teachers["resnet8x4"]) if cls.needs_teacher() else None,
        student="resnet8_aux" if aux else None, views=tuple(cls.recipes.dataset.get("views", {"x": "train"})))
    step()
    with HostSyncs(torch.device("cpu")) as syncs:
        step()
    assert syncs.total == 0, dict(syncs.counts)
