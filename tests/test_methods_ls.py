"""Logit standardization (sunshangquan/logit-standardization-KD), an option of kd and dkd: equal to the original
code on held-out logits (tests/fixtures/ls_reference.json says how the numbers were made), invariant to a shift
and a scale of either network's logits, and written into the kd_ls / dkd_ls recipes as the code's README runs."""
from __future__ import annotations

import json

import pytest
import torch

from kdzoo.config import load_config
from kdzoo.distillers import METHODS
from kdzoo.distillers.dkd import DKD, DKDParams
from kdzoo.distillers.kd import KD, KDParams, kd_loss, standardize_logits
from kdzoo.models.features import Features
from tests.conftest import CONFIGS, REPO

REFERENCE = json.loads((REPO / "tests" / "fixtures" / "ls_reference.json").read_text())


def _inputs(case):
    g = torch.Generator().manual_seed(case["seed"])
    ys = torch.randn(case["n"], case["c"], generator=g, dtype=torch.float64) * case["scale"] + 3.0
    yt = torch.randn(case["n"], case["c"], generator=g, dtype=torch.float64) * case["scale"] - 1.0
    return ys, yt, torch.randint(0, case["c"], (case["n"],), generator=g)


class _Step:
    epoch = 100  # past DKD's warm-up


class _Batch:
    def __init__(self, targets):
        self.targets = targets


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=lambda c: f"seed{c['seed']}-c{c['c']}-T{c['T']}")
def test_kd_and_dkd_with_ls_equal_the_original_code(case):
    ys, yt, y = _inputs(case)
    kd = KD(KDParams(T=case["T"], standardize=True), None)
    got = kd.losses(_Batch(y), Features(logits=ys), Features(logits=yt), _Step())["kd"]
    assert got.item() == pytest.approx(case["kd_ls"], rel=1e-5)
    plain = KD(KDParams(T=case["T"]), None).losses(_Batch(y), Features(logits=ys), Features(logits=yt), _Step())
    assert plain["kd"].item() == pytest.approx(case["kd"], rel=1e-5)
    dkd = DKD(DKDParams(alpha=case["alpha"], beta=case["beta"], T=case["T"], standardize=True), None)
    got = dkd.losses(_Batch(y), Features(logits=ys), Features(logits=yt), _Step())["dkd"]
    assert got.item() == pytest.approx(case["dkd_ls"], rel=1e-5)


def test_standardized_logits_have_zero_mean_unit_std_and_ignore_shift_and_scale():
    z = torch.randn(4, 10) * 7 + 2
    s = standardize_logits(z)
    torch.testing.assert_close(s.mean(1), torch.zeros(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(s.std(1), torch.ones(4), atol=1e-5, rtol=0)
    z_t = torch.randn(4, 10)
    a = kd_loss(standardize_logits(z), standardize_logits(z_t), 2.0)
    b = kd_loss(standardize_logits(3 * z - 5), standardize_logits(0.5 * z_t + 9), 2.0)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_the_ls_recipes_follow_the_codes_readme():
    kd = load_config(CONFIGS / "cifar100" / "kd_ls" / "resnet32x4-resnet8x4.yaml")
    assert kd.loss == {"ce": 0.1, "kd": 9.0} and kd.methods["kd"] == {"T": 2.0, "standardize": True}
    dkd = load_config(CONFIGS / "cifar100" / "dkd_ls" / "resnet32x4-resnet8x4.yaml")
    assert dkd.loss == {"ce": 1.0, "dkd": 1.0}
    assert dkd.methods["dkd"] == {"alpha": 9.0, "beta": 72.0, "T": 2.0, "standardize": True}
    assert METHODS.get("kd").Params().standardize is False  # off by default: KD as Hinton's
