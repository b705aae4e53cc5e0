"""`logging.wandb`: metrics go to W&B when wandb and a key are present; otherwise one line says what is missing."""
from __future__ import annotations

import sys
import types

import pytest

from kdzoo.config import load_config
from kdzoo.engine.trainer import make_engine
from kdzoo.errors import ConfigError
from tests.conftest import CONFIGS, FAST

STUDENT = CONFIGS / "digits" / "student.yaml"
RUN = ["epochs=2", "dataset.subset=200", "logging.wandb={project: kd-test}", *FAST]


class FakeRun:
    def __init__(self, **kwargs):
        self.kwargs, self.logged, self.finished = kwargs, [], False

    def log(self, values, step):
        self.logged.append((step, values))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    module = types.ModuleType("wandb")
    module.runs = []
    module.api = types.SimpleNamespace(api_key=None)

    def init(**kwargs):
        module.runs.append(FakeRun(**kwargs))
        return module.runs[-1]

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def test_metrics_go_to_wandb_and_a_resume_continues_the_same_run(tmp_path, fake_wandb, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    cfg = load_config(STUDENT, RUN)
    make_engine(cfg, tmp_path / "r", quiet=True).fit()
    (run,) = fake_wandb.runs
    assert run.kwargs["project"] == "kd-test" and run.finished
    assert [step for step, _ in run.logged] == [1, 2] and "test_top1" in run.logged[-1][1]
    assert "train_loss" in run.logged[0][1] and "time" not in run.logged[0][1]
    make_engine(load_config(STUDENT, [*RUN, "epochs=3", "schedule.name=constant"]), tmp_path / "r2", quiet=True).fit()
    assert fake_wandb.runs[1].kwargs["id"] != run.kwargs["id"]  # another folder, another run
    make_engine(cfg, tmp_path / "r", resume=True, quiet=True).fit()  # a finished run resumed: same W&B run
    assert fake_wandb.runs[2].kwargs["id"] == run.kwargs["id"] and fake_wandb.runs[2].kwargs["resume"] == "allow"


def test_without_a_key_one_line_says_so_and_the_run_logs_as_always(tmp_path, fake_wandb, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    lines = []
    make_engine(load_config(STUDENT, RUN), tmp_path / "r", quiet=True, log=lines.append).fit()
    assert fake_wandb.runs == [] and sum("no W&B API key" in line for line in lines) == 1
    assert (tmp_path / "r" / "metrics.jsonl").read_text().count("\n") == 2


def test_without_wandb_installed_one_line_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    lines = []
    make_engine(load_config(STUDENT, RUN), tmp_path / "r", quiet=True, log=lines.append).fit()
    assert sum("wandb is not installed" in line for line in lines) == 1


def test_a_wandb_section_without_a_project_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="project"):
        make_engine(load_config(STUDENT, ["logging.wandb={entity: me}", *FAST]), tmp_path / "r", quiet=True)
