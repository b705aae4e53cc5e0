"""`dataset.subset`, the one block for training subsets and held-out splits, and the flat keys of older recipes,
run folders, overrides and sweep grids that still load into it (each draws exactly the images it drew before)."""
from __future__ import annotations

import pytest
import torch

from kdzoo.config import config_from_data, config_to_yaml, load_config
from kdzoo.config.schema import SubsetConfig
from kdzoo.data.recipe_streams import recipe_streams
from kdzoo.errors import ConfigError
from tests.conftest import CONFIGS

STUDENT = CONFIGS / "digits" / "student.yaml"
CPU = torch.device("cpu")


@pytest.mark.parametrize("flat, block", [
    ({"subset": 300}, SubsetConfig(size=300)),
    ({"fraction": 0.25}, SubsetConfig(size=0.25)),  # HSAKD's few-shot ratio
    ({"subset": 0.5, "subset_seed": 4}, SubsetConfig(size=0.5, seed=4)),
    ({"val_fraction": 0.1}, SubsetConfig(val=0.1)),
    ({"val_fraction": 0.1, "subset": 200}, SubsetConfig(size=200, val=0.1)),
    ({"subset_size": 500}, SubsetConfig(size=500, val=0.2, few_sample=True)),  # CKD's 80/20 split
    ({"subset_size": 500, "subset_val_fraction": 0.3, "subset_seed": 2},
     SubsetConfig(size=500, val=0.3, seed=2, few_sample=True)),
    # a run folder's config.yaml of the flat era: every key, most null
    ({"subset": None, "subset_seed": 0, "fraction": None, "subset_size": None, "subset_val_fraction": 0.2,
      "val_fraction": None}, SubsetConfig()),
])
def test_flat_keys_of_older_recipes_load_into_the_block(flat, block):
    assert config_from_data({"dataset": {"name": "digits", **flat}}).dataset.subset == block


@pytest.mark.parametrize("overrides, block", [
    (["dataset.subset=300"], SubsetConfig(size=300)),
    (["dataset.subset_size=120", "dataset.subset_seed=1"], SubsetConfig(size=120, seed=1, few_sample=True)),
    (["dataset.val_fraction=0.1"], SubsetConfig(val=0.1)),
    (["dataset.subset.size=40", "dataset.subset.val=0.5"], SubsetConfig(size=40, val=0.5)),
    (["dataset.subset={size: 40, seed: 3}"], SubsetConfig(size=40, seed=3)),
])
def test_overrides_old_and_new_reach_the_block(overrides, block):
    assert load_config(STUDENT, overrides).dataset.subset == block


def test_a_block_override_applies_over_a_recipe_in_the_flat_form(tmp_path):
    recipe = tmp_path / "flat.yaml"
    recipe.write_text("dataset: {name: digits, subset: 300, subset_seed: 5}\nstudent: {arch: resnet8}\n")
    assert load_config(recipe, ["dataset.subset.size=100"]).dataset.subset == SubsetConfig(size=100, seed=5)


def _indices(stream) -> list[int]:
    dataset = stream.dataset
    return dataset.indices.tolist() if hasattr(dataset.indices, "tolist") else list(dataset.indices)


@pytest.mark.parametrize("flat, block", [
    (["dataset.subset_size=150", "dataset.subset_seed=2"],
     ["dataset.subset.size=150", "dataset.subset.seed=2", "dataset.subset.few_sample=true"]),
    (["dataset.val_fraction=0.2", "dataset.subset=300", "dataset.subset_seed=7"],
     ["dataset.subset.val=0.2", "dataset.subset.size=300", "dataset.subset.seed=7"]),
    (["dataset.fraction=0.1"], ["dataset.subset.size=0.1"]),
])
def test_the_block_draws_the_images_the_flat_keys_drew(flat, block):
    old, _ = recipe_streams(load_config(STUDENT, flat).dataset, seed=3, device=CPU)
    new, _ = recipe_streams(load_config(STUDENT, block).dataset, seed=3, device=CPU)
    assert old.keys() == new.keys()
    for name in old:
        if name != "test":
            assert _indices(old[name]) == _indices(new[name])


def test_few_sample_draws_afresh_per_run_seed_and_the_seed_key_shifts_every_draw():
    cfg = load_config(STUDENT, ["dataset.subset.size=100", "dataset.subset.few_sample=true"])
    draws = [_indices(recipe_streams(cfg.dataset, seed=s, device=CPU)[0]["train"]) for s in (0, 1)]
    assert draws[0] != draws[1]
    plain = load_config(STUDENT, ["dataset.subset.size=100"])  # not few-sample: one draw for every run seed
    same = [_indices(recipe_streams(plain.dataset, seed=s, device=CPU)[0]["train"]) for s in (0, 1)]
    assert same[0] == same[1]


def test_run_folders_keep_the_block_and_read_it_back():
    cfg = load_config(STUDENT, ["dataset.subset_size=120"])
    text = config_to_yaml(cfg)
    assert "subset_size" not in text and "few_sample: true" in text
    import yaml

    assert config_from_data(yaml.safe_load(text)).dataset.subset == cfg.dataset.subset


@pytest.mark.parametrize("dataset, message", [
    ({"subset": 300, "fraction": 0.5}, "dataset.fraction: give either subset or fraction"),
    ({"subset_size": 100, "subset": 50}, "dataset.subset: give either subset_size"),
    ({"subset": {"size": 0.5}, "val_fraction": 0.1, "subset_seed": 1}, None),  # no clash: different keys
    ({"subset": {"size": -1}}, "dataset.subset.size"),
    ({"subset": {"val": 1.5}}, "dataset.subset.val"),
])
def test_contradictions_and_bad_values_are_one_line_errors(dataset, message):
    data = {"dataset": {"name": "digits", **dataset}}
    if message is None:
        assert config_from_data(data).dataset.subset == SubsetConfig(size=0.5, val=0.1, seed=1)
        return
    with pytest.raises(ConfigError, match=message) as err:
        config_from_data(data)
    assert "\n" not in str(err.value)
