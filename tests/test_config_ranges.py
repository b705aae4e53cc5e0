"""Recipe values are range-checked (not only typed): one-line `<dotted.key>: <what is wrong>` errors, from
YAML files and dotted overrides alike; binary files given as recipes are refused in one line too."""
from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from kdzoo.cli import main
from kdzoo.config import Config, config_from_data, load_config
from kdzoo.config.schema import SEED_MAX
from kdzoo.config.validate import LIMIT_KEYS
from kdzoo.errors import ConfigError
from tests.conftest import CONFIGS

KD = CONFIGS / "digits" / "kd.yaml"

# (override, message start): every value the schema refuses, with the key it names.
BAD = [
    ("epochs=0", "epochs: must be >= 1, got 0"),
    ("epochs=-3", "epochs: must be >= 1, got -3"),
    ("seed=-1", "seed: must be in [0, 2**63 - 1], got -1"),
    (f"seed={SEED_MAX + 1}", f"seed: must be in [0, 2**63 - 1], got {SEED_MAX + 1}"),
    ("dataset.subset_seed=-1", "dataset.subset.seed: must be in [0, 2**63 - 1], got -1"),
    ("optim.lr=-0.1", "optim.lr: must be >= 0, got -0.1"),
    ("optim.lr=nan", "optim.lr: must be a finite number"),
    ("optim.lr=.nan", "optim.lr: must be a finite number"),
    ("optim.lr=.inf", "optim.lr: must be a finite number"),
    ("optim.lr=1e999", "optim.lr: must be a finite number"),
    ("optim.weight_decay=-5e-4", "optim.weight_decay: must be >= 0, got -0.0005"),
    ("optim.weight_decay=-.inf", "optim.weight_decay: must be a finite number"),
    ("optim.momentum=-0.9", "optim.momentum: must be in [0, 1], got -0.9"),
    ("optim.momentum=1.5", "optim.momentum: must be in [0, 1], got 1.5"),
    ("optim.grad_clip=0", "optim.grad_clip: must be > 0 (null turns clipping off), got 0.0"),
    ("optim.grad_clip=-1", "optim.grad_clip: must be > 0 (null turns clipping off), got -1.0"),
    ("optim.grad_clip=.nan", "optim.grad_clip: must be a finite number"),
    ("dataset.num_workers=-1", "dataset.num_workers: must be >= 0, got -1"),
    ("dataset.batch_size=0", "dataset.batch_size: must be >= 1, got 0"),
    ("dataset.eval_batch_size=0", "dataset.eval_batch_size: must be >= 1, got 0"),
    ("dataset.eval_batch_size=-8", "dataset.eval_batch_size: must be >= 1, got -8"),
    ("dataset.subset=0", "dataset.subset.size: must be > 0 (a fraction <= 1 or a count > 1), got 0.0"),
    ("dataset.subset.size=-0.5", "dataset.subset.size: must be > 0"),
    ("dataset.subset=.inf", "dataset.subset.size: must be a finite number"),
    ("dataset.image_size=0", "dataset.image_size: must be >= 1, got 0"),
    ("engine.threads=0", "engine.threads: must be >= 1 (null keeps torch's default), got 0"),
    ("engine.eval_every=0", "engine.eval_every: must be >= 1, got 0"),
    ("engine.log_every=0", "engine.log_every: must be >= 1, got 0"),
    ("engine.log_every=-5", "engine.log_every: must be >= 1, got -5"),
    ("schedule.gamma=0", "schedule.gamma: must be > 0, got 0.0"),
    ("schedule.gamma=-0.1", "schedule.gamma: must be > 0, got -0.1"),
    ("schedule.warmup_epochs=-1", "schedule.warmup_epochs: must be >= 0, got -1.0"),
    ("schedule.milestones=[5, -1]", "schedule.milestones[1]: must be >= 0, got -1"),
    ("schedule.min_lr=-1e-5", "schedule.min_lr: must be >= 0, got -1e-05"),
    ("schedule.min_lr=nan", "schedule.min_lr: must be a finite number"),
    ("loss.kd=-0.9", "loss.kd: must be >= 0 (a loss weight), got -0.9"),
    ("loss.ce=.nan", "loss.ce: must be a finite number"),
    ("loss.kd=nan", "loss.kd: must be a finite number"),
    ("loss.kd=.inf", "loss.kd: must be a finite number"),
    ("loss.kd=-.inf", "loss.kd: must be a finite number"),
]


@pytest.mark.parametrize("override, expected", BAD, ids=[b[0] for b in BAD])
def test_bad_override_is_refused_naming_the_key(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(KD, [override])
    message = str(info.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def _as_data(override: str) -> dict:
    """`a.b=v` as the nested YAML mapping a recipe file would hold."""
    key, _, raw = override.partition("=")
    data: dict = {}
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = yaml.safe_load(raw)
    return data


@pytest.mark.parametrize("override, expected", BAD, ids=[b[0] for b in BAD])
def test_bad_value_in_recipe_data_is_refused(override, expected):
    with pytest.raises(ConfigError) as info:
        config_from_data(_as_data(override))
    assert str(info.value).startswith(expected)


def _as_yaml(override: str) -> str:
    """`a.b=v` as recipe text, the value written as given (`.nan` stays YAML's NaN)."""
    key, _, raw = override.partition("=")
    *parents, leaf = key.split(".")
    lines = [f"{'  ' * depth}{part}:" for depth, part in enumerate(parents)]
    return "\n".join(lines + [f"{'  ' * len(parents)}{leaf}: {raw}"]) + "\n"


@pytest.mark.parametrize("override, expected", BAD, ids=[b[0] for b in BAD])
def test_bad_value_in_a_yaml_file_is_refused(tmp_path, override, expected):
    path = tmp_path / "recipe.yaml"
    path.write_text(_as_yaml(override))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(expected)


@pytest.mark.parametrize("override", [
    "epochs=1", "seed=0", f"seed={SEED_MAX}", "dataset.subset_seed=12345678901234", "optim.lr=0",
    "optim.momentum=0", "optim.momentum=1", "optim.weight_decay=0", "optim.grad_clip=5", "optim.grad_clip=null",
    "dataset.num_workers=0", "dataset.subset=0.25", "dataset.subset=300", "dataset.subset=null",
    "dataset.image_size=32", "engine.threads=1", "engine.threads=null", "schedule.gamma=2",
    "schedule.warmup_epochs=0.5", "schedule.milestones=[0, 3]", "schedule.milestones=[]", "schedule.min_lr=0",
    "loss.kd=0", "loss.ce=1e-3",
])
def test_edge_values_are_accepted(override):
    load_config(KD, [override])


def test_nan_in_a_yaml_file(tmp_path):
    path = tmp_path / "nan.yaml"
    path.write_text("optim:\n  lr: .nan\nloss:\n  ce: 1.0\n")
    with pytest.raises(ConfigError, match=r"^optim\.lr: must be a finite number"):
        load_config(path)
    path.write_text("loss:\n  ce: 1.0\n  kd: -.inf\n")
    with pytest.raises(ConfigError, match=r"^loss\.kd: must be a finite number"):
        load_config(path)


def test_max_seed_actually_seeds_everything():
    """The top of the seed range works where the seed is used: global seeding, the subset draw, the loaders'
    per-epoch and per-rank offsets."""
    import torch

    from kdzoo.data.loaders import (
        _RANK_SEED_STRIDE,
        make_loader,
        set_loader_epoch,
        worker_seed,
    )
    from kdzoo.data.splits import stratified_subset
    from kdzoo.engine.rng import seed_everything

    seed_everything(SEED_MAX + 7)  # + rank
    stratified_subset([0, 1] * 10, 4, seed=SEED_MAX)
    torch.Generator().manual_seed(worker_seed(SEED_MAX, 10_000, 1024))
    assert worker_seed(SEED_MAX, 10_000, 1024) < 2**32 and _RANK_SEED_STRIDE == 2**32
    # torch's CPU generator keeps a seed's low 32 bits: the ranks' worker seeds must differ there
    assert len({worker_seed(s, 0, r) for s in (0, 5, 2**40) for r in range(4)}) == 12
    assert worker_seed(7, 3, 0) == 10  # rank 0's small seeds unchanged
    loader = make_loader(torch.utils.data.TensorDataset(torch.arange(8)), batch_size=4, train=True,
                         seed=SEED_MAX)
    set_loader_epoch(loader, 239)
    assert sorted(torch.cat([b[0] for b in loader]).tolist()) == list(range(8))


def test_every_schema_limit_is_a_known_kind():
    """A typo in a field's metadata (`min` for `ge`) would silently check nothing."""
    def walk(cls):
        for f in dataclasses.fields(cls):
            assert set(f.metadata) <= LIMIT_KEYS, (cls.__name__, f.name, dict(f.metadata))
            assert set(f.metadata.get("each", {})) <= LIMIT_KEYS - {"each"}
            if isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
                walk(f.default_factory)
    walk(Config)


def test_recipe_defaults_are_within_the_limits():
    config_from_data({})


# Binary files given as a recipe ------------------------------------------------------------------------------
@pytest.mark.parametrize("name, data", [
    ("teacher.pt", b"PK\x03\x04\x00\x00\x08\x08\x00\x00archive/data.pkl\x80\x02}q\x00"),
    ("plot.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
    ("weights.yaml", bytes(range(256))),
    ("control.yaml", b"name: x\x07\x01\n"),
])
def test_binary_file_is_not_a_recipe(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a text YAML file"), message
    assert "\n" not in message


def test_utf8_recipe_with_bom_and_accents_loads(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes("\ufeffname: café\nepochs: 2\n".encode("utf-8"))
    cfg = load_config(path)
    assert cfg.name == "café" and cfg.epochs == 2


# Through the CLI ----------------------------------------------------------------------------------------------
def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_cli_epochs_0_exits_2(capsys, tmp_path):
    assert main(["train", "-c", str(CONFIGS / "digits" / "student.yaml"), "--out", str(tmp_path / "r"),
                 "epochs=0"]) == 2
    assert _one_line(capsys).startswith("kdzoo: error: epochs: must be >= 1")
    assert not (tmp_path / "r").exists()


def test_cli_bad_value_in_yaml_file_exits_2(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text((CONFIGS / "digits" / "student.yaml").read_text() + "\nloss:\n  ce: -1\n")
    assert main(["train", "-c", str(path), "--out", str(tmp_path / "r")]) == 2
    assert _one_line(capsys).startswith("kdzoo: error: loss.ce: must be >= 0")


def test_cli_lr_nan_exits_2(capsys, tmp_path):
    assert main(["distill", "-c", str(KD), "--out", str(tmp_path / "r"), "optim.lr=nan"]) == 2
    assert _one_line(capsys).startswith("kdzoo: error: optim.lr: must be a finite number")


def test_cli_binary_recipe_exits_2(capsys, tmp_path):
    path = tmp_path / "teacher.pt"
    path.write_bytes(b"\x80\x02}q\x00(X\x05\x00\x00\x00model\xff\xfe")
    assert main(["train", "-c", str(path)]) == 2
    assert re.match(r"kdzoo: error: .*teacher\.pt: not a text YAML file", _one_line(capsys))


def test_cli_resume_with_epochs_0_exits_2(capsys, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text((CONFIGS / "digits" / "student.yaml").read_text())
    assert main(["train", "--resume", str(run), "epochs=0"]) == 2
    assert _one_line(capsys).startswith("kdzoo: error: epochs: must be >= 1")
