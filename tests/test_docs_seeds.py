"""docs/seeds.md: every `kdzoo` line of its bash blocks runs as written, in order, in a fresh folder holding
`configs/` and tiny data in the real on-disk formats under ./data, plus the published-format checkpoint files its
import lines name. Training runs get a tiny-scale tail (1 epoch, small batches; the clusters, subset and image
sizes that tiny data allows); nothing else is changed, so a documented seed command that breaks fails here."""
from __future__ import annotations

import pickle
import re
import shlex

import numpy as np
import torch
import yaml

from kdzoo.models import create_model
from tests.conftest import REPO, run_cli
from tests.fixtures.hsakd_reference import deterministic_state, load_reference
from tests.test_data import write_cifar10, write_stl10, write_tiny_imagenet_tree
from tests.test_imagenet import write_tree

DOC = REPO / "docs" / "seeds.md"
TINY = ["epochs=1", "optim.lr=0.001", "dataset.batch_size=16", "dataset.num_workers=0", "dataset.download=false",
        "engine.progress=false", "engine.tensorboard=false", "engine.precision=fp32"]
PROBE = ["epochs=1", "dataset.batch_size=16", "engine.progress=false", "engine.tensorboard=false"]


def doc_commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    return [shlex.split(line) for block in blocks for line in block.splitlines() if line.startswith("kdzoo ")]


def tiny_tail(argv: list[str]) -> list[str]:
    """What shortens a training run to tiny data; every other command runs unchanged."""
    if argv[1] == "linear-eval":
        return PROBE
    if argv[1] not in ("train", "distill", "pretrain") or "-c" not in argv:
        return []
    recipe = yaml.safe_load((REPO / argv[argv.index("-c") + 1]).read_text())
    tail = list(TINY)
    for term in (t for t in recipe["loss"] if t.split(".")[-1] == "proto"):  # proto or a namespaced weak.proto
        tail += [f"methods.{term}.clusters=[2,3]", f"methods.{term}.warmup_epochs=1"]
    if recipe["dataset"].get("subset", {}).get("few_sample"):
        tail.append("dataset.subset.size=60")
    if recipe["dataset"]["name"] == "imagenet":
        tail += ["dataset.image_size=64", "dataset.batch_size=4"]
    return tail


def write_cifar100_tiny(root, n_train: int = 120, n_test: int = 40) -> None:
    """cifar-100-python/ with labels from 10 of the 100 classes, so that tiny subsets stay stratified."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = [i % 10 for i in range(n)]
        entry = {"filenames": [f"{i}.png" for i in range(n)], "batch_label": name, "fine_labels": fine,
                 "coarse_labels": [f // 5 for f in fine], "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))


def workspace(folder) -> None:
    (folder / "configs").symlink_to(REPO / "configs", target_is_directory=True)
    data = folder / "data"
    write_cifar100_tiny(data)
    write_cifar10(data, per_batch=24)
    write_stl10(data, n_train=10, n_test=6)
    write_tiny_imagenet_tree(data / "tiny-imagenet-200")
    write_tree(data / "imagenet")
    torch.save({"model": create_model("resnet32x4", num_classes=100).state_dict(), "epoch": 240},
               folder / "ckpt_epoch_240.pth")  # RepDistiller's format
    state = deterministic_state(load_reference()["resnet20_aux"]["layout"])
    torch.save({"net": state, "acc": 70.0, "epoch": 239}, folder / "resnet20_aux.pth.tar")  # HSAKD's format


def test_the_page_covers_every_seed():
    text = DOC.read_text()
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    for seed in ("giakoumoglou/distillers", "winycg/HSAKD", "alextxu/ckd", "AiXia520/DS-SRD"):
        assert any(seed in h for h in headings), seed
    verbs = {argv[1] for argv in doc_commands()}
    assert {"train", "distill", "eval", "import-checkpoint", "linear-eval", "pretrain"} <= verbs


def test_every_documented_seed_command_runs_in_order(tmp_path, monkeypatch, capsys):
    workspace(tmp_path)
    monkeypatch.chdir(tmp_path)
    for argv in doc_commands():
        code = run_cli(*argv[1:], *tiny_tail(argv))
        said = capsys.readouterr()
        assert code == 0, f"docs/seeds.md: `{shlex.join(argv)}` exited {code}\n{said.err[-2000:]}"
        if "--out" in argv and argv[1] != "import-checkpoint":
            assert (tmp_path / argv[argv.index("--out") + 1] / "summary.json").is_file(), shlex.join(argv)
