"""teacher.cache: replay: a replaying run sees exactly the augmented images of the recording run (per image and
epoch) with the stored soft labels and never calls the teacher; the soft labels against a hand computation; a
cache of another teacher or pipeline is refused in one line; what cannot be replayed is refused."""
from __future__ import annotations

import json

import pytest
import torch
from torchvision.transforms import Compose, v2

from kdzoo.config import load_config
from kdzoo.data.replay import ReplayAugment
from kdzoo.data.transforms import Normalize, PadRandomCrop, RandomHorizontalFlip
from kdzoo.engine.trainer import make_engine
from kdzoo.errors import ConfigError
from kdzoo.program.teacher_replay import ReplayTeacher, soft_labels
from tests.conftest import CONFIGS, FAST, run_cli

KD = CONFIGS / "digits" / "kd.yaml"
SMALL = [*FAST, "dataset.subset=200", "engine.precision=fp32", "teacher.cache=replay"]


def test_soft_labels_and_their_logits_by_hand():
    values = torch.tensor([[0.5, 0.3]]).half()
    classes = torch.tensor([[2, 0]], dtype=torch.int16)
    p = soft_labels(values, classes, 4)
    assert torch.allclose(p, torch.tensor([[0.3, 0.1, 0.5, 0.1]]), atol=1e-3)
    logits = 4.0 * p.log()
    assert torch.allclose(torch.softmax(logits / 4.0, dim=1), p, atol=1e-6)  # softmax at T gives p back
    full = soft_labels(torch.tensor([[0.7, 0.2, 0.1]]), torch.tensor([[1, 0, 2]]), 3)
    assert torch.allclose(full, torch.tensor([[0.2, 0.7, 0.1]]))


def test_replay_augment_rows_reproduce_images_and_refuse_what_they_cannot():
    augment = ReplayAugment(Compose([PadRandomCrop(2), RandomHorizontalFlip(), Normalize((0.5,), (0.5,))]))
    assert augment.width == 3
    table = augment.sample(50, torch.Generator().manual_seed(0))
    assert table[:, :2].min() >= 0 and table[:, :2].max() <= 4 and set(table[:, 2].tolist()) == {0.0, 1.0}
    image = torch.arange(64, dtype=torch.uint8).view(1, 8, 8)
    row = torch.tensor([0.0, 4.0, 1.0])  # top 0, left 4: 2 padded rows above, columns 2.. of the image, flipped
    expected = (torch.nn.functional.pad(image, (2, 2, 2, 2))[..., 0:8, 4:12].flip(-1).float() / 255 - 0.5) / 0.5
    assert torch.allclose(augment.apply(image, row), expected)
    rrc = ReplayAugment(Compose([v2.RandomResizedCrop(16), v2.RandomHorizontalFlip()]))
    rows = rrc.sample(4, torch.Generator().manual_seed(1))
    picture = torch.rand(3, 40, 30)
    assert rrc.apply(picture, rows[0]).shape == (3, 16, 16)
    assert torch.equal(rrc.apply(picture, rows[1]), rrc.apply(picture, rows[1]))
    with pytest.raises(ConfigError, match="cannot record the random step ColorJitter"):
        ReplayAugment(Compose([v2.ColorJitter(0.4)]))


def _seen(engine) -> dict:
    """(epoch, dataset index) -> the image each training step gave the teacher slot."""
    source = engine.program.models["teacher"].features
    assert isinstance(source, ReplayTeacher)
    seen, original = {}, source.from_batch

    def spy(batch, view):
        for i, image in zip(batch.index_of(view).tolist(), batch.view(view)):
            seen[(source.epoch, i)] = image.clone()
        return original(batch, view)

    source.from_batch = spy
    return seen


def test_replay_reproduces_the_recorded_images_and_never_calls_the_teacher(tmp_path, digits_teacher):
    cache = tmp_path / "cache"
    common = [*SMALL, f"teacher.checkpoint={digits_teacher}", f"teacher.cache_dir={cache}", "epochs=2"]
    first = make_engine(load_config(KD, common), tmp_path / "record", quiet=True)
    recorded = _seen(first)
    first.fit()
    assert first.program.models["teacher"].features.calls > 0
    assert sorted(json.loads((cache / "replay.json").read_text())["epochs"]) == [0, 1]

    second = make_engine(load_config(KD, [*common, "seed=5", "student.arch=resnet14"]), tmp_path / "replay", quiet=True)
    live = second.program.models["teacher"].features.live
    forwards = []
    live.register_forward_hook(lambda *_: forwards.append(1))
    replayed = _seen(second)
    second.fit()
    assert second.program.models["teacher"].features.calls == 0 and not forwards  # the teacher never ran
    assert replayed.keys() == recorded.keys() and len(recorded) == 2 * 200
    assert all(torch.equal(replayed[k], recorded[k]) for k in recorded)
    # the two epochs augment differently: digits' 1-pixel pad-crop has 9 boxes, so about 1 image in 9 draws the
    # same one twice (which images follows the draw seed, hence the teacher's hash: it differs between CPUs)
    changed = [not torch.equal(recorded[(0, i)], recorded[(1, i)]) for (epoch, i) in recorded if epoch == 0]
    assert recorded[(0, 0)].shape == replayed[(1, 0)].shape and sum(changed) > 0.75 * len(changed)
    lines = [json.loads(line) for line in (tmp_path / "replay" / "metrics.jsonl").read_text().splitlines()]
    assert [r["teacher_replayed"] for r in lines] == [1.0, 1.0]
    third = tmp_path / "longer"  # one epoch more than recorded: that one is recorded with the live teacher
    assert run_cli("distill", "-c", KD, "--out", third, *common[:-1], "epochs=3") == 0
    lines = [json.loads(line) for line in (third / "metrics.jsonl").read_text().splitlines()]
    assert [r["teacher_replayed"] for r in lines] == [1.0, 1.0, 0.0]


def test_a_cache_of_another_teacher_or_pipeline_is_refused(tmp_path, digits_teacher, capsys):
    cache = tmp_path / "cache"
    common = [*SMALL, f"teacher.cache_dir={cache}", "epochs=1"]
    assert run_cli("distill", "-c", KD, "--out", tmp_path / "a", f"teacher.checkpoint={digits_teacher}", *common) == 0
    other = tmp_path / "other"
    assert run_cli("train", "-c", CONFIGS / "digits" / "teacher.yaml", "--out", other, "epochs=1", *FAST) == 0
    capsys.readouterr()
    for extra, what in (([f"teacher.checkpoint={other}"], "another teacher"),
                        ([f"teacher.checkpoint={digits_teacher}", "dataset.augment=false"], "another pipeline")):
        code = run_cli("distill", "-c", KD, "--out", tmp_path / "b", *common, *extra)
        err = capsys.readouterr().err
        assert code == 2 and what in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "b" / "checkpoints").exists()


def test_methods_needing_more_than_soft_labels_are_refused(tmp_path, digits_teacher, capsys):
    code = run_cli("distill", "-c", CONFIGS / "digits" / "crd.yaml", "--out", tmp_path / "r",
                   f"teacher.checkpoint={digits_teacher}", *SMALL)
    assert code == 2 and "method crd needs more of the teacher" in capsys.readouterr().err
    code = run_cli("distill", "-c", KD, "--out", tmp_path / "v", f"teacher.checkpoint={digits_teacher}", *SMALL,
                   "dataset.views={x: train, x2: train}", "methods.kd.teacher_view=x2")
    assert code == 2 and "teacher_view" in capsys.readouterr().err


def test_drop_last_and_batch_transforms_are_refused(tmp_path, digits_teacher, capsys):
    for extra, expected in ((["dataset.drop_last=true"], "dataset.drop_last"),
                            (["dataset.batch_transform=rotate4"], "batch transforms")):
        code = run_cli("distill", "-c", KD, "--out", tmp_path / "r", f"teacher.checkpoint={digits_teacher}", *SMALL,
                       *extra)
        err = capsys.readouterr().err
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
