"""The trainer end to end on digits through the CLI: train -> distill -> eval, resume, bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdzoo.checkpoints.format import load_weights, read_meta, save_weights
from kdzoo.config import load_config
from kdzoo.core.batch import Batch, StepInfo
from kdzoo.core.dist import DistInfo
from kdzoo.engine.trainer import make_engine
from kdzoo.models import create_model
from kdzoo.program import BuildContext
from kdzoo.regimes.offline import Offline
from tests.conftest import CONFIGS, FAST, REPO, run_cli
from tests.method_harness import OfflineView


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdzoo: error: ") and "\n" not in err, err
    return err


def test_train_distill_eval_through_cli(tmp_path, digits_teacher, capsys):
    meta = read_meta(digits_teacher / "checkpoints" / "best.safetensors")
    assert meta["arch"] == "resnet8x4" and meta["num_classes"] == 10 and meta["dataset"] == "digits"
    for name in ("config.yaml", "env.json", "metrics.jsonl", "summary.json", "checkpoints/last.safetensors",
                 "checkpoints/last.json", "checkpoints/last.state.pt"):
        assert (digits_teacher / name).is_file(), name
    lines = [json.loads(x) for x in (digits_teacher / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and all("test_top1" in r and "train_ce" in r for r in lines)

    out = tmp_path / "kd"
    assert run_cli("distill", "-c", CONFIGS / "digits" / "kd.yaml", "--out", out, "epochs=1",
                   f"teacher.checkpoint={digits_teacher}", *FAST) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_kd"] > 0 and record["train_ce"] > 0
    summary = json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    assert run_cli("eval", "--checkpoint", out, "--which", "last", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 540
    assert result["top1"] == pytest.approx(summary["last_top1"], abs=1e-6)


def test_teacher_gets_no_gradients_and_optimizer_holds_student_only(digits_teacher):
    cfg = load_config(CONFIGS / "digits" / "kd.yaml", [f"teacher.checkpoint={digits_teacher}", "epochs=1"])
    program = Offline.build(BuildContext(cfg=cfg, device=torch.device("cpu"), dist=DistInfo()))
    regime = OfflineView(program, cfg, program.info)
    (main,) = regime.phases()
    teacher_params = {id(p) for p in regime.teacher.parameters()}
    student_params = {id(p) for p in regime.student.parameters()}
    assert {id(p) for p in main.params} == student_params and not teacher_params & student_params
    regime.train(True)
    assert not regime.teacher.training
    batch = Batch(inputs=torch.randn(8, 1, 8, 8), targets=torch.arange(8) % 10)
    terms = main.step(batch, StepInfo(epoch=0, epochs=1, step=0, steps_per_epoch=1))
    (0.1 * terms["ce"] + 0.9 * terms["kd"]).backward()
    assert all(p.grad is None for p in regime.teacher.parameters())
    assert all(p.grad is not None for p in regime.student.parameters())


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last.safetensors"))


def test_resume_matches_uninterrupted_run(tmp_path, digits_teacher):
    common = ["epochs=3", f"teacher.checkpoint={digits_teacher}", *FAST]
    full, part = tmp_path / "full", tmp_path / "part"
    assert run_cli("distill", "-c", CONFIGS / "digits" / "kd.yaml", "--out", full, *common) == 0
    # An interrupted run: 1 epoch of the 3-epoch schedule, then --resume with the full budget.
    cfg = load_config(CONFIGS / "digits" / "kd.yaml", common)
    engine = make_engine(cfg, part, quiet=True)
    _stop_after_epochs(engine, 1)
    assert json.loads(read_json_line(part / "metrics.jsonl", -1))["epoch"] == 1
    assert run_cli("distill", "--resume", part, *FAST) == 0
    a, b = _weights(full), _weights(part)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    epochs = [json.loads(x)["epoch"] for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def read_json_line(path: Path, index: int) -> str:
    return path.read_text().splitlines()[index]


def _stop_after_epochs(engine, epochs: int) -> None:
    """Run the engine but stop (as if killed) once `epochs` epochs are checkpointed."""
    original = engine.recorder.checkpoint

    class Killed(Exception):
        pass

    def save_then_maybe_stop(phase, epoch, *args, **kwargs):
        original(phase, epoch, *args, **kwargs)
        if epoch + 1 >= epochs:
            raise Killed

    engine.recorder.checkpoint = save_then_maybe_stop
    with pytest.raises(Killed):
        engine.fit()


def test_missing_teacher_checkpoint(tmp_path, capsys):
    assert run_cli("distill", "-c", CONFIGS / "digits" / "kd.yaml", "--out", tmp_path / "r",
                   f"teacher.checkpoint={tmp_path / 'nowhere'}", *FAST) == 2
    assert "checkpoint not found" in _err(capsys)


def test_teacher_of_another_architecture_or_class_count(tmp_path, digits_teacher, capsys):
    assert run_cli("distill", "-c", CONFIGS / "digits" / "kd.yaml", "--out", tmp_path / "a",
                   f"teacher.checkpoint={digits_teacher}", "teacher.arch=resnet56", *FAST) == 2
    assert "holds a resnet8x4, but teacher.arch is resnet56" in _err(capsys)
    # the same teacher checkpoint, claimed for a 100-class run: refused by its metadata
    state, meta = load_weights(digits_teacher / "checkpoints" / "best.safetensors")
    fake = tmp_path / "t100.safetensors"
    save_weights(fake, state, {**meta, "num_classes": 100})
    assert run_cli("distill", "-c", CONFIGS / "digits" / "kd.yaml", "--out", tmp_path / "b",
                   f"teacher.checkpoint={fake}", *FAST) == 2
    assert "has 100 classes, but dataset digits has 10" in _err(capsys)
    # metadata that lies about the architecture: the weights do not fit
    save_weights(fake, state, {**meta, "arch": "resnet20"})
    assert run_cli("distill", "-c", CONFIGS / "digits" / "kd.yaml", "--out", tmp_path / "c",
                   f"teacher.checkpoint={fake}", *FAST) == 2
    assert "does not fit" in _err(capsys)


def test_corrupt_and_pickled_teacher(tmp_path, digits_teacher, capsys):
    good = (digits_teacher / "checkpoints" / "best.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good[: len(good) - 1000])
    assert run_cli("distill", "-c", CONFIGS / "digits" / "kd.yaml", "--out", tmp_path / "a",
                   f"teacher.checkpoint={cut}", *FAST) == 2
    assert "truncated" in _err(capsys)
    pickled = tmp_path / "teacher.pth"
    torch.save({"model": {}}, pickled)
    assert run_cli("distill", "-c", CONFIGS / "digits" / "kd.yaml", "--out", tmp_path / "b",
                   f"teacher.checkpoint={pickled}", *FAST) == 2
    assert "import-checkpoint" in _err(capsys)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    from kdzoo.distillers.ce import CrossEntropy

    out = tmp_path / "nan"
    original = CrossEntropy.losses

    def nan_in_second_epoch(self, batch, s, t, step):
        terms = original(self, batch, s, t, step)
        if step.epoch == 1 and step.step % step.steps_per_epoch == 3:
            terms["ce"] = terms["ce"] * float("nan")
        return terms

    monkeypatch.setattr(CrossEntropy, "losses", nan_in_second_epoch)
    assert run_cli("train", "-c", CONFIGS / "digits" / "student.yaml", "--out", out, "epochs=3", *FAST) == 2
    err = _err(capsys)
    assert "non-finite in main epoch 2, step 4" in err and "last good checkpoint" in err
    meta = read_meta(out / "checkpoints" / "last.safetensors")
    assert meta["epoch"] == 1
    state = load_file(str(out / "checkpoints" / "last.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_resume_refuses_recipe_changes(tmp_path, capsys):
    out = tmp_path / "r"
    assert run_cli("train", "-c", CONFIGS / "digits" / "student.yaml", "--out", out, "epochs=1", *FAST) == 0
    assert run_cli("train", "--resume", out, "optim.lr=1") == 2
    assert "only epochs, engine.*, logging.* and dataset.root" in _err(capsys)
    assert run_cli("train", "-c", CONFIGS / "digits" / "student.yaml", "--out", out, *FAST) == 2
    assert "already holds a run" in _err(capsys)


def test_import_published_checkpoint(tmp_path, capsys):
    model = create_model("resnet20", num_classes=10, in_channels=1)
    pth = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": model.state_dict(), "accuracy": 70.0}, pth)
    out = tmp_path / "imported"
    assert run_cli("import-checkpoint", pth, "--arch", "resnet20", "--num-classes", 10, "--dataset", "digits",
                   "--out", out) == 0
    meta = read_meta(out / "checkpoints" / "best.safetensors")
    assert meta["arch"] == "resnet20" and meta["in_channels"] == 1
    assert run_cli("eval", "--checkpoint", out, "--json") == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["n"] == 540
    bare = tmp_path / "bare.pth"
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, bare)  # DataParallel keys
    assert run_cli("import-checkpoint", bare, "--arch", "resnet20", "--num-classes", 10, "--dataset", "digits",
                   "--out", tmp_path / "bare") == 0
    assert run_cli("import-checkpoint", bare, "--arch", "resnet32", "--num-classes", 10, "--dataset", "digits",
                   "--out", tmp_path / "wrong") == 2
    assert "does not fit" in _err(capsys)


def test_torchrun_two_processes_match_single_process_eval(tmp_path, digits_teacher, capsys):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "kdzoo.cli", "distill", "-c", str(CONFIGS / "digits" / "kd.yaml"), "--out", str(out), "epochs=1",
           f"teacher.checkpoint={digits_teacher}", "engine.precision=fp32", *FAST]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    env_info = json.loads((out / "env.json").read_text())
    assert env_info["world_size"] == 2
    summary = json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    assert run_cli("eval", "--checkpoint", out, "--which", "last", "--json") == 0
    single = json.loads(capsys.readouterr().out)
    assert single["top1"] == pytest.approx(summary["last_top1"], abs=1e-9)


def test_torchrun_resume_continues_each_ranks_own_random_stream(tmp_path):
    """Each rank's RNG (augmentations) is checkpointed and restored for that rank: a resumed 2-process run
    equals an uninterrupted one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    common = ["engine.precision=fp32", "schedule.name=constant", "dataset.subset=400", *FAST]

    def torchrun(port: int, *args: str) -> None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "-m", "kdzoo.cli", "train", *args]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]

    full, part = tmp_path / "full", tmp_path / "part"
    torchrun(29541, "-c", str(CONFIGS / "digits" / "student.yaml"), "--out", str(full), "epochs=2", *common)
    torchrun(29542, "-c", str(CONFIGS / "digits" / "student.yaml"), "--out", str(part), "epochs=1", *common)
    torchrun(29543, "--resume", str(part), "epochs=2", *FAST)
    a, b = _weights(full), _weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
