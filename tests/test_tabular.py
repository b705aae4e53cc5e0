"""covtype and HIGGS from tiny files in the real UCI formats (gzipped CSV): shapes, splits, training-set
standardisation, the .npy cache, malformed rows, missing files, the mlp5 models and a CLI teacher -> student run."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from kdzoo.data import build_dataset, tabular
from kdzoo.errors import DatasetError
from kdzoo.models import create_model
from tests.conftest import CONFIGS, FAST, run_cli

RNG = np.random.default_rng(0)


def write_covtype(root, n: int = tabular.COVTYPE_TRAIN + 60) -> np.ndarray:
    """covtype.data.gz: 10 integer continuous columns, 4 + 40 one-hot columns, the cover type 1..7 last."""
    cont = RNG.integers(0, 4000, size=(n, 10))
    area = np.eye(4, dtype=int)[RNG.integers(0, 4, n)]
    soil = np.eye(40, dtype=int)[RNG.integers(0, 40, n)]
    label = np.arange(n) % 7 + 1
    rows = np.concatenate([cont, area, soil, label[:, None]], axis=1)
    root.mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "covtype.data.gz", "wt") as f:
        f.writelines(",".join(map(str, r)) + "\n" for r in rows)
    return rows


def write_higgs(root, n: int) -> np.ndarray:
    """HIGGS.csv.gz: the label (1.0 / 0.0) first, then 28 float features in scientific notation."""
    rows = np.concatenate([(np.arange(n) % 2)[:, None].astype(float), RNG.normal(3, 2, size=(n, 28))], axis=1)
    root.mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "HIGGS.csv.gz", "wt") as f:
        f.writelines(",".join(f"{v:.18e}" for v in r) + "\n" for r in rows)
    return rows


@pytest.fixture(scope="module")
def covtype_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("covtype")
    write_covtype(root)
    return root


def test_covtype_splits_shapes_and_training_statistics(covtype_root):
    train = build_dataset("covtype", "train", root=str(covtype_root))
    test = build_dataset("covtype", "test", root=str(covtype_root))
    assert len(train) == 15_120 and len(test) == 60 and train.info.input_shape == (54,)
    x, y = train[0]
    assert x.shape == (54,) and x.dtype == torch.float32 and 0 <= y < 7
    assert set(train.targets.tolist()) == set(range(7))  # 1..7 -> 0..6
    cont = train.features[:, :10]
    assert torch.allclose(cont.mean(0), torch.zeros(10), atol=1e-4) and torch.allclose(cont.std(0, unbiased=False),
                                                                                    torch.ones(10), atol=1e-3)
    assert set(train.features[:, 10:].unique().tolist()) <= {0.0, 1.0}  # binary columns untouched
    assert not torch.allclose(test.features[:, :10].mean(0), torch.zeros(10), atol=1e-3)  # training statistics
    assert (covtype_root / "covtype.data.npy").is_file()  # parsed once


def test_higgs_last_rows_are_the_test_set_and_21_features(tmp_path, monkeypatch):
    monkeypatch.setattr(tabular, "HIGGS_TEST", 40)
    monkeypatch.setattr(tabular, "HIGGS_TRAIN", 50)
    rows = write_higgs(tmp_path, 120)
    train = build_dataset("higgs", "train", root=str(tmp_path))
    test = build_dataset("higgs", "test", root=str(tmp_path))
    assert len(train) == 50 and len(test) == 40 and train.info.input_shape == (21,)
    assert test.targets.tolist() == rows[-40:, 0].astype(int).tolist()
    raw = rows[:80, 1:22]
    chosen = np.sort(np.random.default_rng(1).choice(80, 50, replace=False))
    mean, std = raw[chosen].mean(0), raw[chosen].std(0) + 1e-7
    assert np.allclose(test.features.numpy(), (rows[-40:, 1:22] - mean) / std, atol=1e-4)


def test_malformed_row_names_its_line(tmp_path):
    rows = write_covtype(tmp_path / "bad", n=30)
    text = gzip.open(tmp_path / "bad" / "covtype.data.gz", "rt").read().splitlines()
    text[16] = text[16] + ",oops"
    with gzip.open(tmp_path / "bad" / "covtype.data.gz", "wt") as f:
        f.write("\n".join(text) + "\n")
    with pytest.raises(DatasetError, match="line 17 is malformed"):
        build_dataset("covtype", "train", root=str(tmp_path / "bad"))
    assert rows.shape == (30, 55)


def test_missing_file_says_which_and_where(tmp_path, capsys):
    code = run_cli("train", "-c", CONFIGS / "tabular" / "covtype_teacher.yaml", "--out", tmp_path / "r",
                   f"dataset.root={tmp_path}", *FAST)
    err = capsys.readouterr().err
    assert code == 2 and "covtype.data.gz" in err and str(tmp_path) in err


def test_mlp5_has_five_linear_layers_and_input_dropout():
    model = create_model("mlp5", num_classes=7, in_channels=54)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 5 and linears[0].in_features == 54 and linears[-1].out_features == 7
    assert model.input_dropout.p == 0.2
    model.eval()
    assert model(torch.randn(3, 54)).shape == (3, 7)


def test_cli_teacher_then_student_on_covtype(tmp_path, covtype_root):
    teacher, student = tmp_path / "t", tmp_path / "s"
    assert run_cli("train", "-c", CONFIGS / "tabular" / "covtype_teacher.yaml", "--out", teacher, "epochs=1",
                   f"dataset.root={covtype_root}", *FAST) == 0
    assert run_cli("distill", "-c", CONFIGS / "tabular" / "covtype_kd.yaml", "--out", student, "epochs=1",
                   f"dataset.root={covtype_root}", f"teacher.checkpoint={teacher}", *FAST) == 0
    record = json.loads((student / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_kd"] > 0 and "test_top1" in record


@pytest.mark.parametrize("content", [b"not gzip at all\n", "truncated"])
def test_broken_files_are_one_line_errors(tmp_path, content):
    folder = tmp_path / "broken"
    folder.mkdir()
    if content == "truncated":
        write_covtype(folder, n=200)
        data = (folder / "covtype.data.gz").read_bytes()
        (folder / "covtype.data.gz").write_bytes(data[: len(data) // 2])
    else:
        (folder / "covtype.data.gz").write_bytes(content)
    with pytest.raises(DatasetError, match="could not be read|malformed") as err:
        build_dataset("covtype", "train", root=str(folder))
    assert len(str(err.value).splitlines()) == 1


def test_byol_views_refuse_vectors(covtype_root):
    from kdzoo.config import load_config
    from kdzoo.engine.trainer import make_engine
    from kdzoo.errors import ConfigError
    from tests.conftest import CONFIGS as configs

    cfg = load_config(configs / "digits" / "self_supervised" / "byol.yaml",
                      [*FAST, "dataset.name=covtype", f"dataset.root={covtype_root}", "student.arch=mlp5_small"])
    with pytest.raises(ConfigError, match="square images"):
        make_engine(cfg, covtype_root / "ss_run", quiet=True)
