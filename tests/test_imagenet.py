"""ImageNet: the loader on a tiny ILSVRC-style tree (train/ and val/ of wnid folders, JPEG files), its one-line
errors, `kdzoo imagenet-valprep` for each label-file format, torchvision-format weight files imported as teachers
(hash and arch checked), and the ResNet34 -> ResNet18 recipes with their published numbers."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
import torchvision
import yaml

from kdzoo.bench.anchors import IMAGENET
from kdzoo.checkpoints.format import read_meta
from kdzoo.checkpoints.store import resolve_checkpoint
from kdzoo.config import load_config
from kdzoo.data import build_dataset
from kdzoo.data.imagenet_valprep import lay_out_val
from kdzoo.distillers import METHODS
from kdzoo.errors import DatasetError
from tests.conftest import CONFIGS, FAST, run_cli
from tests.test_data import save_image

WNIDS = ["n01440764", "n01443537"]


def write_tree(root, val_sorted: bool = True) -> list[str]:
    """2 classes: 3 + 2 training JPEGs, 2 val JPEGs each (sorted, or flat as the val archive unpacks)."""
    names = []
    for c, wnid in enumerate(WNIDS):
        for i in range(3 - c):
            save_image(root / "train" / wnid / f"{wnid}_{i}.JPEG", size=(50, 40), fmt="JPEG")
        for i in range(2):
            name = f"ILSVRC2012_val_{c * 2 + i + 1:08d}.JPEG"
            save_image(root / "val" / (wnid if val_sorted else "") / name, size=(40, 60), fmt="JPEG")
            names.append((name, wnid))
    return names


def test_loader_shapes_classes_and_transforms(tmp_path):
    write_tree(tmp_path)
    train = build_dataset("imagenet", "train", root=str(tmp_path))
    test = build_dataset("imagenet", "test", root=str(tmp_path))
    assert train.info.num_classes == 2 and train.info.image_size == 224 and train.info.name == "imagenet"
    assert len(train) == 5 and len(test) == 4 and train.targets.tolist() == [0, 0, 0, 1, 1]
    assert test.targets.tolist() == [0, 0, 1, 1]
    image, label = test[3]
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32 and label == 1
    assert train[0][0].shape == (3, 224, 224)
    assert build_dataset("imagenet", "test", root=str(tmp_path), image_size=64)[0][0].shape == (3, 64, 64)


def test_missing_splits_and_a_flat_val_are_one_line_errors(tmp_path, capsys):
    save_image(tmp_path / "train" / WNIDS[0] / "a.JPEG", fmt="JPEG")
    with pytest.raises(DatasetError, match=r"val is missing"):
        build_dataset("imagenet", "train", root=str(tmp_path))
    save_image(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG", fmt="JPEG")
    with pytest.raises(DatasetError, match="kdzoo imagenet-valprep"):
        build_dataset("imagenet", "test", root=str(tmp_path))
    shutil.rmtree(tmp_path / "train")
    code = run_cli("train", "-c", CONFIGS / "digits" / "student.yaml", "--out", tmp_path / "r", "dataset.name=imagenet",
                   f"dataset.root={tmp_path}", *FAST)
    err = capsys.readouterr().err
    assert code == 2 and "train is missing" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("form", ["valprep", "kaggle", "plain"])
def test_valprep_sorts_the_flat_val_folder_and_reruns(tmp_path, form, capsys):
    names = write_tree(tmp_path, val_sorted=False)
    if form == "valprep":
        text = "".join(f"mkdir -p {w}\n" for w in WNIDS) + "".join(f"mv {n} {w}/\n" for n, w in names)
    elif form == "kaggle":
        text = "ImageId,PredictionString\n" + "".join(f"{n[:-5]},{w} 10 20 30 40 {w} 1 2 3 4\n" for n, w in names)
    else:
        text = "".join(f"{n}\t{w}\n" for n, w in names)
    labels = tmp_path / "labels.txt"
    labels.write_text(text)
    assert run_cli("imagenet-valprep", str(tmp_path), "--labels", str(labels)) == 0
    assert "moved 4 images into 2 class folders" in capsys.readouterr().out
    assert sorted(p.relative_to(tmp_path / "val").as_posix() for p in (tmp_path / "val").rglob("*.JPEG")) == \
        sorted(f"{w}/{n}" for n, w in names)
    assert build_dataset("imagenet", "test", root=str(tmp_path)).targets.tolist() == [0, 0, 1, 1]
    assert lay_out_val(tmp_path, labels) == (0, 4, 2)  # run again: everything is in place


def test_valprep_bad_label_files_name_the_line(tmp_path):
    write_tree(tmp_path, val_sorted=False)
    bad = tmp_path / "bad.txt"
    bad.write_text("ILSVRC2012_val_00000001.JPEG n01440764\nILSVRC2012_val_00000002.JPEG n09999999\n")
    with pytest.raises(DatasetError, match=r"bad.txt:2: n09999999 is not a class folder"):
        lay_out_val(tmp_path, bad)
    bad.write_text("65\n970\n")
    with pytest.raises(DatasetError, match="bad.txt:1: class numbers"):
        lay_out_val(tmp_path, bad)
    bad.write_text("ILSVRC2012_val_00000099.JPEG n01440764\n")
    with pytest.raises(DatasetError, match="ILSVRC2012_val_00000099.JPEG .*is missing"):
        lay_out_val(tmp_path, bad)


def torchvision_file(folder, arch: str, num_classes: int, seed: int = 0):
    """A weight file as torchvision releases them: a bare state_dict named <arch>-<sha256 prefix>.pth."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / "staging.pth"
    torch.save(model.state_dict(), staging)
    path = folder / f"{arch}-{hashlib.sha256(staging.read_bytes()).hexdigest()[:8]}.pth"
    staging.rename(path)
    return path, model


def test_torchvision_weights_import_as_a_teacher(tmp_path, capsys):
    path, model = torchvision_file(tmp_path / "w", "resnet18", 1000)
    out = tmp_path / "teacher"
    assert run_cli("import-checkpoint", "--format", "torchvision", str(path), "--out", str(out)) == 0
    meta = read_meta(resolve_checkpoint(out))
    assert (meta["arch"], meta["num_classes"], meta["dataset"]) == ("tv:resnet18", 1000, "imagenet")
    from safetensors.torch import load_file

    saved = load_file(str(resolve_checkpoint(out)))
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    capsys.readouterr()
    wrong = tmp_path / "w" / path.name.replace("resnet18", "resnet34")
    shutil.copy(path, wrong)
    assert run_cli("import-checkpoint", "--format", "torchvision", str(wrong), "--out", str(tmp_path / "x")) == 2
    err = capsys.readouterr().err
    assert "does not fit tv:resnet34" in err and len(err.strip().splitlines()) == 1
    corrupt = tmp_path / "w" / "resnet18-00000000.pth"
    shutil.copy(path, corrupt)
    assert run_cli("import-checkpoint", "--format", "torchvision", str(corrupt), "--out", str(tmp_path / "y")) == 2
    assert "SHA-256" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize("row", sorted(IMAGENET.keys() - {"student", "hsakd"}))
def test_imagenet_recipes_cite_their_published_number(row):
    alone = not (CONFIGS / "imagenet" / row / "resnet34-resnet18.yaml").exists()  # a teacher-free method (USKD)
    path = CONFIGS / "imagenet" / row / ("resnet18.yaml" if alone else "resnet34-resnet18.yaml")
    text = path.read_text()
    assert f"published top-1 {IMAGENET[row][0]:.2f}" in text
    cfg = load_config(path)
    assert cfg.dataset.name == "imagenet" and cfg.student.arch == "tv:resnet18" and cfg.epochs == 100
    assert cfg.schedule.milestones == [30, 60, 90] and cfg.optim.weight_decay == 1.0e-4
    if alone:
        assert "teacher" not in yaml.safe_load(text) and not METHODS.get(row).needs_teacher()
    else:
        assert yaml.safe_load(text)["teacher"]["checkpoint"] == "runs/imagenet/teachers/resnet34"


def imported_resnet34(tmp_path):
    """A tiny ImageNet tree and a 2-class torchvision ResNet34 imported from its released-format file."""
    write_tree(tmp_path / "data")
    path, model = torchvision_file(tmp_path / "w", "resnet34", 2)
    run = tmp_path / "resnet34"
    assert run_cli("import-checkpoint", "--format", "torchvision", str(path), "--num-classes", "2",
                   "--out", str(run)) == 0
    return run, model


TINY = ["epochs=1", "dataset.batch_size=4", "dataset.num_workers=0", "dataset.image_size=64", *FAST]


def test_kd_recipe_runs_on_a_tiny_tree_with_an_imported_torchvision_teacher(tmp_path):
    teacher, _ = imported_resnet34(tmp_path)
    out = tmp_path / "kd"
    code = run_cli("distill", "-c", CONFIGS / "imagenet" / "kd" / "resnet34-resnet18.yaml", "--out", out,
                   f"dataset.root={tmp_path / 'data'}", f"teacher.checkpoint={teacher}", *TINY)
    assert code == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_kd"] >= 0 and 0 <= record["test_top1"] <= 100


def test_dali_loader_falls_back_in_one_line_or_refuses_what_it_cannot_read(tmp_path, capsys):
    write_tree(tmp_path / "data")
    common = ["dataset.name=imagenet", f"dataset.root={tmp_path / 'data'}", "dataset.loader=dali",
              "dataset.image_size=32", "dataset.batch_size=4", "epochs=1", "student.arch=resnet8", *FAST]
    out = tmp_path / "ok"
    assert run_cli("train", "-c", CONFIGS / "digits" / "student.yaml", "--out", out, *common) == 0
    said = capsys.readouterr()
    lines = [line for line in (said.out + said.err).splitlines() if "dataset.loader: dali" in line]
    assert lines == ["dataset.loader: dali is unavailable (nvidia.dali is not installed (pip install "
                     "nvidia-dali-cuda120)); using the PyTorch loader"]
    assert (out / "summary.json").is_file()
    for extra, expected in ((["dataset.name=digits", "dataset.root=null"], "dali reads image files"),
                            (["dataset.views={x: train, x2: plain}"], "dataset.views: not with loader: dali"),
                            (["dataset.subset=4"], "dataset.subset.size: not with loader: dali")):
        code = run_cli("train", "-c", CONFIGS / "digits" / "student.yaml", "--out", tmp_path / "bad", *common, *extra)
        err = capsys.readouterr().err
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    from kdzoo.data.dali import check_dali_recipe
    from kdzoo.errors import ConfigError

    with pytest.raises(ConfigError, match="yields no dataset indices"):  # CRD's bank
        check_dali_recipe(load_config(None, common[:3]).dataset, needs_index=True)


def test_hsakd_option_1_teacher_starts_from_imported_torchvision_weights(tmp_path):
    backbone, model = imported_resnet34(tmp_path)
    out = tmp_path / "opt1"
    code = run_cli("train", "-c", CONFIGS / "imagenet" / "hsakd" / "teacher-resnet34_opt1.yaml", "--out", out,
                   f"dataset.root={tmp_path / 'data'}", f"student.checkpoint={backbone}", *TINY)
    assert code == 0
    from safetensors.torch import load_file

    saved = load_file(str(resolve_checkpoint(out, "last")))
    conv = [k for k in saved if k.endswith("conv1.weight")][0]
    assert torch.equal(saved[conv], model.state_dict()["conv1.weight"])  # the frozen backbone is torchvision's


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_teacher_from_scratch_recipes_use_distillers_settings(arch):
    """giakoumoglou/distillers run_vanilla.sh: 120 epochs, lr 0.1 x0.1 at 30/60/90, weight decay 1e-4, batch 256."""
    cfg = load_config(CONFIGS / "imagenet" / "teachers" / f"{arch}.yaml")
    assert (cfg.student.arch, cfg.epochs, cfg.optim.lr, cfg.optim.weight_decay, cfg.dataset.batch_size) == \
        (f"tv:{arch}", 120, 0.1, 1.0e-4, 256)
    assert cfg.schedule.milestones == [30, 60, 90] and cfg.teacher.checkpoint is None and set(cfg.loss) == {"ce"}


def test_the_resnet18_teacher_recipe_trains_on_a_tiny_tree(tmp_path):
    write_tree(tmp_path / "data")
    out = tmp_path / "teacher"
    assert run_cli("train", "-c", CONFIGS / "imagenet" / "teachers" / "resnet18.yaml", "--out", out,
                   f"dataset.root={tmp_path / 'data'}", *TINY) == 0
    assert read_meta(resolve_checkpoint(out))["arch"] == "tv:resnet18"


@pytest.fixture(scope="module")
def imported_resnet50(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("r50")
    write_tree(tmp / "data")
    path, _ = torchvision_file(tmp / "w", "resnet50", 2)
    run = tmp / "resnet50"
    assert run_cli("import-checkpoint", "--format", "torchvision", str(path), "--num-classes", "2",
                   "--out", str(run)) == 0
    return tmp / "data", run


@pytest.mark.parametrize("row, loss", [("simkd", {"simkd": 1.0}), ("rrd", {"ce": 1.0, "rrd": 1.0}),
                                       ("dcd", {"ce": 1.0, "dcd": 1.0})])
def test_distillers_imagenet_students_run_from_a_resnet50_teacher(tmp_path, imported_resnet50, row, loss):
    """run_distill.sh: ResNet50 -> ResNet18, `-c 0 -d 0 -b 1` for SimKD, 120 epochs."""
    path = CONFIGS / "imagenet" / row / "resnet50-resnet18.yaml"
    cfg = load_config(path)
    assert cfg.loss == loss and cfg.epochs == 120 and cfg.student.arch == "tv:resnet18"
    data, teacher = imported_resnet50
    out = tmp_path / row
    assert run_cli("distill", "-c", path, "--out", out, f"dataset.root={data}", f"teacher.checkpoint={teacher}",
                   *TINY) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record[f"train_{row}"] >= 0


def test_hsakd_option_2_teacher_trains_jointly_and_imagenet_hsakd_has_no_nesterov(tmp_path):
    """HSAKD's ImageNet scripts use plain SGD (train_teacher_imagenet.py, train_student_imagenet.py,
    train_online_kd_imagenet.py), unlike its CIFAR ones."""
    for path in [*(CONFIGS / "imagenet" / "hsakd").glob("*.yaml"), CONFIGS / "imagenet" / "mutual" / "hsakd-resnet18.yaml"]:
        assert load_config(path).optim.nesterov is False, path
    recipe = CONFIGS / "imagenet" / "hsakd" / "teacher-resnet34.yaml"
    cfg = load_config(recipe)
    assert cfg.student.checkpoint is None and not cfg.student.freeze and "opt1" not in cfg.name
    write_tree(tmp_path / "data")
    out = tmp_path / "opt2"
    assert run_cli("train", "-c", recipe, "--out", out, f"dataset.root={tmp_path / 'data'}", *TINY) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_aux_ce"] > 0 and read_meta(resolve_checkpoint(out))["arch"] == "tv:resnet34_aux"


def test_the_imagenet_dkd_recipe_holds_mdistillers_r34_r18_settings():
    """mdistiller configs/imagenet/r34_r18/dkd.yaml: CE_WEIGHT 1.0, BETA 0.5, T 1.0, WARMUP 1; ALPHA is not set
    there, so cfg.py's default 1.0 produced the published 71.70."""
    from kdzoo.config import load_config

    cfg = load_config(CONFIGS / "imagenet" / "dkd" / "resnet34-resnet18.yaml")
    assert cfg.loss == {"ce": 1.0, "dkd": 1.0}
    assert cfg.methods["dkd"] == {"alpha": 1.0, "beta": 0.5, "T": 1.0, "warmup": 1.0}
