"""Every regime crossed with every method, on digits: the assembler either builds a program whose main phase takes
one step (forward and backward), or refuses in one line with a ConfigError before anything runs. Nothing else:
no KeyError at step 1, no traceback of another kind."""
from __future__ import annotations

import pytest
import torch

from kdzoo.config import load_config
from kdzoo.core.batch import StepInfo
from kdzoo.core.dist import DistInfo
from kdzoo.distillers import METHODS
from kdzoo.engine.step import weighted_total
from kdzoo.errors import ConfigError
from kdzoo.program import BuildContext
from kdzoo.regimes import REGIMES
from tests.conftest import CONFIGS, FAST
from tests.method_harness import EpochRuntime, teacher_file

RECIPES = {"offline": CONFIGS / "digits" / "kd.yaml", "mutual": CONFIGS / "digits" / "mutual" / "dml.yaml",
           "double_student": CONFIGS / "digits" / "dssrd" / "dssrd.yaml",
           "self_supervised": CONFIGS / "digits" / "self_supervised" / "byol.yaml",
           "linear_probe": CONFIGS / "digits" / "student.yaml"}
# Pairs each regime exists for: these must train, not be refused.
MUST_TRAIN = {("offline", "kd"), ("offline", "crd"), ("offline", "ckd"), ("offline", "ab"), ("mutual", "kd"),
              ("double_student", "kd"), ("double_student", "proto"), ("self_supervised", "byol"),
              ("linear_probe", "ce")}
TINY = [*FAST, "epochs=1", "dataset.subset=200", "dataset.batch_size=16", "engine.precision=fp32", "seed=0"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nets")
    return {"teacher": teacher_file(folder, "resnet8", num_classes=10, in_channels=1),
            "encoder": teacher_file(folder, "resnet8", num_classes=10, in_channels=1)}


def recipe(regime: str, method: str, checkpoints) -> list[str]:
    terms = {t: 1.0 for t in METHODS.get(method).term_names()}
    if method in ("ab", "fsp"):  # they act in their init stage only: the main stage trains with ce
        terms["ce"] = 1.0
    if regime == "double_student":
        terms["strong.mixup_ce"] = 1.0
    overrides = [*TINY, f"loss={terms}", "methods={}", f"teacher.checkpoint={checkpoints['teacher']}"]
    if regime == "linear_probe":
        overrides += ["regime=linear_probe", f"student.checkpoint={checkpoints['encoder']}", "teacher.checkpoint=null"]
    if regime == "mutual":
        overrides.remove(f"teacher.checkpoint={checkpoints['teacher']}")
    if method == "proto":
        overrides.append("methods.proto={clusters: [2, 3], warmup_epochs: 1}")
    return overrides


@pytest.mark.parametrize("regime", sorted(REGIMES.names()))
@pytest.mark.parametrize("method", sorted(METHODS.names()))
def test_each_pair_takes_a_step_or_refuses_in_one_line(regime, method, checkpoints):
    cfg = load_config(RECIPES[regime], recipe(regime, method, checkpoints))
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    try:
        program = REGIMES.get(regime).build(BuildContext(cfg=cfg, device=cpu, dist=DistInfo(), log=lambda _: None))
    except ConfigError as err:
        assert "\n" not in str(err) and str(err), (regime, method)
        assert (regime, method) not in MUST_TRAIN, f"{regime} refused {method}: {err}"
        return
    main = program.phases[-1]
    if main.on_epoch_start is not None:
        main.on_epoch_start(0, EpochRuntime(program))
    program.train(True)
    stream = program.data[main.stream]
    batch = stream.batch(next(iter(stream.loader(DistInfo()))))
    terms = main.step(batch, StepInfo(epoch=0, epochs=1, step=0, steps_per_epoch=1))
    total = weighted_total(terms, main.weights)
    assert torch.isfinite(total), (regime, method, terms)
    total.backward()
    assert any(p.grad is not None for p in main.params)


def test_the_issues_mutual_ckd_case_is_one_line_and_writes_nothing(tmp_path, capsys):
    from tests.conftest import run_cli

    out = tmp_path / "run"
    code = run_cli("train", "-c", RECIPES["mutual"], "--out", out, "epochs=1", "loss={ce: 1.0, ckd_cls: 1.0}",
                   "methods={}", *FAST)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "grouped batches" in err
    assert not out.exists()
