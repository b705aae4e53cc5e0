"""CKD's few-sample data (`dataset.subset: {size: N, few_sample: true}`) and the plateau schedule's CKD names."""
from __future__ import annotations

import json

import pytest
import torch

from kdzoo.config import config_from_data, load_config
from kdzoo.config.schema import ScheduleConfig
from kdzoo.data.recipe_streams import recipe_streams
from kdzoo.data.splits import few_sample_split
from kdzoo.errors import ConfigError, DatasetError
from kdzoo.program.controllers import controller_for
from tests.conftest import CONFIGS, FAST, run_cli

STUDENT = CONFIGS / "digits" / "student.yaml"


def test_few_sample_split_is_80_20_stratified_disjoint_and_seeded():
    targets = torch.arange(1000) % 10
    train, val = few_sample_split(targets, 200, 0.2, seed=3)
    assert len(train) == 160 and len(val) == 40
    assert not set(train.tolist()) & set(val.tolist())
    assert torch.bincount(targets[val], minlength=10).tolist() == [4] * 10  # stratified
    assert torch.bincount(targets[train], minlength=10).tolist() == [16] * 10
    again = few_sample_split(targets, 200, 0.2, seed=3)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)
    other = few_sample_split(targets, 200, 0.2, seed=4)
    assert not torch.equal(other[0], train)


def test_few_sample_split_of_odd_sizes_follows_ckd_int_rule_and_falls_back_to_random():
    targets = torch.arange(1000) % 10
    train, val = few_sample_split(targets, 2001 // 2, 0.2, seed=0)  # 1000: int(0.8 * 1000) = 800 train
    assert (len(train), len(val)) == (800, 200)
    train, val = few_sample_split(targets, 7, 0.2, seed=0)  # fewer images than classes: random, 5 + 2
    assert (len(train), len(val)) == (5, 2)
    assert [len(part) for part in few_sample_split(targets, 2, 0.2, seed=0)] == [1, 1]  # int(1.6) = 1 train
    with pytest.raises(DatasetError, match="between 2 and"):
        few_sample_split(targets, 1, 0.2, seed=0)
    with pytest.raises(DatasetError, match="too small"):
        few_sample_split(targets, 2, 0.6, seed=0)  # int(0.8) = 0 train images


FEW = ["dataset.subset.few_sample=true"]


def test_few_sample_builds_train_and_val_streams_with_the_test_transform():
    cfg = load_config(STUDENT, [*FEW, "dataset.subset.size=100", "dataset.subset.seed=1"])
    streams, _ = recipe_streams(cfg.dataset, seed=0, device=torch.device("cpu"))
    assert len(streams["train"].dataset) == 80 and len(streams["val"].dataset) == 20
    val = streams["val"].dataset
    first, again = val[0][0], val[0][0]
    assert torch.equal(first, again)  # no augmentation on val


@pytest.mark.parametrize("override, message", [
    ("dataset.subset.size=100000", "larger than the"),
    ("dataset.subset.size=1", "dataset.subset.size: few_sample draws a count"),
    ("dataset.subset.size=0.5", "dataset.subset.size: few_sample draws a count"),
    ("dataset.subset.size=2 dataset.subset.val=0.6", "too small"),
    ("dataset.subset_size=100000", "larger than the"),  # the flat key of older recipes
])
def test_bad_subset_sizes_are_one_line_usage_errors(tmp_path, capsys, override, message):
    assert run_cli("train", "-c", STUDENT, "--out", tmp_path / "r", *FEW, *override.split(), *FAST) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_recipe_with_subset_size_and_a_second_flat_subset_key_is_refused():
    data = {"dataset": {"name": "digits", "subset_size": 100, "val_fraction": 0.2}}
    with pytest.raises(ConfigError, match="dataset.val_fraction: give either subset_size"):
        config_from_data(data)


def test_ckd_plateau_names_and_their_default_semantics():
    cfg = load_config(STUDENT, ["schedule.name=plateau", "schedule.patience=50", "schedule.factor=0.1",
                                "schedule.cuts=2"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    plateau = controller_for(cfg.schedule, 10)(optimizer, 5)
    assert (plateau.patience, plateau.factor, plateau.max_cuts) == (50, 0.1, 2)
    lrs = []
    plateau.after_eval({}, improved=True)
    for _ in range(150):  # 3 plateaus of 50 evaluations: lr0, lr0/10, lr0/100, then stop
        decision = plateau.after_eval({}, improved=False)
        lrs.append(optimizer.param_groups[0]["lr"])
        if decision.stop:
            break
    assert len(lrs) == 150 and decision.stop and decision.reload_best
    assert lrs[48] == pytest.approx(0.1) and lrs[49] == pytest.approx(0.01)  # the 50th non-improving one cuts
    assert lrs[99] == pytest.approx(0.001) and lrs[-1] == pytest.approx(0.001)
    with pytest.raises(ConfigError, match="disagree"):
        controller_for(ScheduleConfig(name="plateau", cuts=1, max_cuts=2), 10)


def test_a_few_sample_plateau_run_reports_test_at_the_best_validation_point(tmp_path):
    run = tmp_path / "few"
    assert run_cli("train", "-c", STUDENT, "--out", run, "epochs=6", "dataset.subset_size=120",
                   "schedule.name=plateau", "schedule.patience=2", "schedule.cuts=1", *FAST) == 0
    summary = json.loads((run / "summary.json").read_text())
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    records, (final,) = [r for r in lines if "at_best" not in r], [r for r in lines if "at_best" in r]
    assert summary["selected_by"] == "val_top1"
    best = max(records, key=lambda r: (r["val_top1"], -r["epoch"]))
    assert summary["result"] == {"metric": "test_top1", "value": final["test_top1"], "at": "the best val_top1",
                                 "epoch": best["epoch"]}
    assert final["epoch"] == best["epoch"] and final is lines[-1]  # once, on the best weights, at the end
    assert not any("test_top1" in r for r in records)
    from safetensors.torch import load_file

    from kdzoo.checkpoints.load import load_model
    from kdzoo.program.evaluators import evaluate

    model, _, _ = load_model(run, "best")  # the test number is the best checkpoint's
    engine_cfg = load_config(STUDENT, ["dataset.subset_size=120"])
    streams, _ = recipe_streams(engine_cfg.dataset, seed=0, device=torch.device("cpu"))
    from kdzoo.core.dist import DistInfo

    metrics = evaluate(model.eval(), streams["test"].loader(DistInfo()), torch.device("cpu"), DistInfo())
    assert metrics["top1"] == pytest.approx(final["test_top1"], abs=1e-6)
    assert load_file(str(run / "checkpoints" / "last.safetensors"))  # the last checkpoint stays readable
