"""Cached teacher outputs: computed once, reused on resume and repeat, invalidated by a changed teacher or subset;
grouped CKD and mixup runs end to end through the CLI."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from kdzoo.config import load_config
from kdzoo.engine.trainer import make_engine
from kdzoo.models.frozen import FrozenTeacher
from tests.conftest import CONFIGS, FAST, run_cli
from tests.test_engine import _stop_after_epochs

KD = CONFIGS / "digits" / "kd.yaml"
FEW = ["dataset.subset_size=150", "dataset.eval_batch_size=40", *FAST]  # 120 train images: 3 teacher batches
CKD = ["loss={ckd_cls: 1, ckd_rel: 1}", "teacher.cache=true"]


@pytest.fixture
def forwards(monkeypatch):
    calls = {"n": 0}
    original = FrozenTeacher.forward

    def counted(self, x):
        calls["n"] += 1
        return original(self, x)

    monkeypatch.setattr(FrozenTeacher, "forward", counted)
    return calls


def _weights(run):
    return load_file(str(run / "checkpoints" / "last.safetensors"))


def test_the_cache_is_computed_once_and_reused_by_a_resumed_run(tmp_path, digits_teacher, forwards):
    cfg = load_config(KD, [f"teacher.checkpoint={digits_teacher}", "epochs=3", *FEW, *CKD])
    full, part = tmp_path / "full", tmp_path / "part"
    make_engine(cfg, full, quiet=True).fit()
    assert forwards["n"] == 3  # ceil(120 / 40): every training image once, never again while training
    cache = load_file(str(full / "teacher_cache.safetensors"))
    assert cache["logits"].shape == (120, 10) and set(cache) == {"logits"}
    _stop_after_epochs(make_engine(cfg, part, quiet=True), 1)
    assert forwards["n"] == 6
    make_engine(cfg, part, resume=True, quiet=True).fit()
    assert forwards["n"] == 6  # the resume read the cache
    a, b = _weights(full), _weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)  # and resumed exactly (groups, order, mixing)
    assert torch.equal(load_file(str(part / "groups.safetensors"))["groups"],
                       load_file(str(full / "groups.safetensors"))["groups"])


def test_a_shared_cache_dir_keeps_one_cache_per_teacher_images_and_seed(tmp_path, digits_teacher, forwards):
    shared = tmp_path / "cache"
    lines = []
    base = [f"teacher.checkpoint={digits_teacher}", "epochs=1", *FEW, *CKD, f"teacher.cache_dir={shared}"]
    make_engine(load_config(KD, base), tmp_path / "a", quiet=True, log=lines.append).fit()
    make_engine(load_config(KD, base), tmp_path / "b", quiet=True, log=lines.append).fit()  # a repeat: reused
    assert forwards["n"] == 3 and sum("reusing" in line for line in lines) == 1
    make_engine(load_config(KD, [*base, "dataset.subset_seed=5"]), tmp_path / "c", quiet=True).fit()
    assert forwards["n"] == 6  # other images: another cache beside the first
    make_engine(load_config(KD, base), tmp_path / "d", quiet=True).fit()
    assert forwards["n"] == 6 and len(list(shared.glob("teacher_cache-*.safetensors"))) == 2
    make_engine(load_config(KD, [*base, "seed=1"]), tmp_path / "e", quiet=True).fit()
    assert forwards["n"] == 9  # another seed: other images (CKD's fresh subset per seed) and augmentations


def test_a_retrained_teacher_invalidates_the_run_folder_cache_with_one_line(tmp_path, digits_teacher, forwards):
    from kdzoo.checkpoints.format import load_weights, save_weights
    from kdzoo.checkpoints.store import resolve_checkpoint

    teacher = tmp_path / "teacher.safetensors"
    state, meta = load_weights(resolve_checkpoint(digits_teacher, "best"))
    save_weights(teacher, state, meta)
    cfg = load_config(KD, [f"teacher.checkpoint={teacher}", "epochs=2", *FEW, *CKD])
    run = tmp_path / "r"
    _stop_after_epochs(make_engine(cfg, run, quiet=True), 1)
    assert forwards["n"] == 3
    save_weights(teacher, {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, meta)
    lines = []
    make_engine(cfg, run, resume=True, quiet=True, log=lines.append).fit()
    assert forwards["n"] == 6 and sum("the teacher changed" in line for line in lines) == 1


def test_cached_logits_are_the_teachers_on_one_training_augmentation(tmp_path, digits_teacher):
    cfg = load_config(KD, [f"teacher.checkpoint={digits_teacher}", "epochs=1", *FEW, "teacher.cache=true",
                           "dataset.augment=false"])
    engine = make_engine(cfg, tmp_path / "r", quiet=True)
    cached = engine.program.models["teacher"].features
    images = engine.program.data["train"].dataset
    x = torch.stack([images[i][0] for i in range(5)])
    live = engine.program.models["teacher"].module.eval()(x)
    assert torch.allclose(cached.outputs["logits"][:5], live.float(), atol=1e-4)
    engine.close()


@pytest.mark.parametrize("loss, extra", [
    ("{ckd_cls: 1, ckd_rel: 1, ckd_kd: 0.5}", ["methods.ckd.pos_and_neg=3"]),
    ("{ckd_add_cls: 1, ckd_add_rel: 1}", []),
    ("{ckd_mixup_cls: 1, ckd_mixup_rel: 1}", []),
    ("{mixup_cls: 1, mixup_rel: 1}", []),
    ("{mixup3_cls: 1, mixup3_rel: 1, mixup3_kd: 0.1}", []),
    ("{ce: 1, kd: 1}", []),
    ("{ce: 1, dist: 2}", []),
    ("{ce: 1, crd: 0.8}", []),
    ("{ce: 1, rkd: 1}", []),
])
def test_each_few_sample_method_trains_on_the_cache_through_the_cli(tmp_path, digits_teacher, loss, extra):
    run = tmp_path / "r"
    assert run_cli("distill", "-c", KD, "--out", run, f"teacher.checkpoint={digits_teacher}", "epochs=2", *FEW,
                   "teacher.cache=true", f"loss={loss}", *extra) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["teacher_cached"] is True and summary["result"]["metric"] == "test_top1"


def test_ckd_inter_with_hint_runs_on_a_live_teacher(tmp_path, digits_teacher):
    run = tmp_path / "inter"
    assert run_cli("distill", "-c", KD, "--out", run, f"teacher.checkpoint={digits_teacher}", "epochs=1", *FEW,
                   "loss={ckd_inter_cls: 1, ckd_inter_rel: 1, ckd_inter_feat: 100}") == 0
    assert not (run / "teacher_cache.safetensors").exists()


@pytest.mark.parametrize("overrides, says", [
    (["loss={ce: 1, fitnet: 100}", "teacher.cache=true"], "needs the teacher's stages features"),
    (["loss={ckd_inter_cls: 1, ckd_inter_feat: 100}", "teacher.cache=true"], "needs the teacher's stages"),
    (["loss={ckd_cls: 1}", "methods.ckd.pos_and_neg=1"], "pos_and_neg"),
    (["loss={ce: 1}", "teacher.cache=true"], "no loss term uses a teacher"),
    (["loss={ckd_cls: 1, mixup_cls: 1}"], "different groups"),
])
def test_bad_few_sample_input_is_a_one_line_usage_error(tmp_path, capsys, digits_teacher, overrides, says):
    assert run_cli("distill", "-c", KD, "--out", tmp_path / "r", f"teacher.checkpoint={digits_teacher}", *FEW,
                   *overrides) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "r" / "checkpoints").exists()
