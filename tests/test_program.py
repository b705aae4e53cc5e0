"""Proof that the program interface fits the coming regimes: small programs that use each piece for real, run by
the engine (which knows none of them): two peers with namespaced terms, a val stream with a plateau controller,
a two-view batch, a frozen backbone, a tabular stream."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset

from kdzoo.config import load_config
from kdzoo.data.info import DatasetInfo
from kdzoo.data.recipe_streams import recipe_streams
from kdzoo.distillers import SetupContext
from kdzoo.engine.trainer import Engine, make_engine
from kdzoo.errors import ConfigError
from kdzoo.models import FeatureModel, Needs, create_model
from kdzoo.models.probe import probe_shapes
from kdzoo.program import Artifact, BuildContext, DataStream, ModelSlot, Phase, Program
from kdzoo.program.bundle import Bundle, main_body, method_step
from kdzoo.program.controllers import PlateauController, controller_for
from kdzoo.program.evaluators import ClassifierEvaluator, MetricEvaluator
from kdzoo.program.methods import build_methods, produced_terms
from kdzoo.regimes.offline import Offline, offline_program
from tests.conftest import CONFIGS, FAST, run_cli
from tests.method_harness import teacher_file

STUDENT = CONFIGS / "digits" / "student.yaml"
SMALL = [*FAST, "engine.precision=fp32", "dataset.subset=200", "dataset.batch_size=50", "seed=0"]


def _checkpoint(run: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"{name}.safetensors"))


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# Two peers ---------------------------------------------------------------------------------------------------
PEER_LOSS = {"peer0.ce": 1.0, "peer1.ce": 1.0, "peer0.kd": 1.0, "peer1.kd": 1.0}
PEER_METHODS = {"kd": {"T": 3.0}, "peer0.kd": {"teacher": "peer1", "detach_teacher": True},
                "peer1.kd": {"teacher": "peer0", "detach_teacher": True}}


def two_peers(ctx: BuildContext) -> Program:
    """Mutual learning in miniature: two trainable peers, each distilled from the other's detached logits."""
    cfg = ctx.cfg
    streams, info = recipe_streams(cfg.dataset, seed=cfg.seed, device=ctx.device)
    peers = {name: create_model("resnet8", info.num_classes, info.in_channels) for name in ("peer0", "peer1")}
    example = torch.stack([streams["test"].sample_input()] * 2)
    shapes = {name: probe_shapes(m, None, example) for name, m in peers.items()}

    def setup(binding) -> SetupContext:
        return SetupContext(student=peers[binding.student], teacher=peers.get(binding.teacher),
                            student_shapes=shapes[binding.student], teacher_shapes=shapes.get(binding.teacher),
                            train_targets=streams["train"].dataset.targets, batch_size=cfg.dataset.batch_size)

    methods = build_methods(cfg.loss, cfg.methods, setup, peers)
    bundle = Bundle({name: FeatureModel(m, Needs(logits=True)) for name, m in peers.items()}, methods)
    main = list(methods.values())
    phase = Phase(name="main", epochs=cfg.epochs, params=list(bundle.parameters()),
                  step=method_step(bundle, {}, lambda c: main_body(c, main)),
                  weights={t: w for t, w in cfg.loss.items() if t in produced_terms(main)},
                  controller=controller_for(cfg.schedule, cfg.epochs),
                  evaluators=[ClassifierEvaluator(lambda: peers["peer0"]),
                              ClassifierEvaluator(lambda: peers["peer1"], name="peer1")])
    meta = {"arch": "resnet8", "num_classes": info.num_classes, "in_channels": info.in_channels}
    return Program(models={n: ModelSlot(m, features=getattr(bundle, n)) for n, m in peers.items()},
                   data=streams, phases=[phase], trainable=bundle, info=info,
                   artifacts={n: Artifact((lambda m: lambda: m)(m), lambda: meta) for n, m in peers.items()})


def test_two_peers_with_namespaced_kd_train_and_save_both(tmp_path):
    cfg = load_config(STUDENT, [*SMALL, "epochs=2"])
    cfg.loss, cfg.methods = dict(PEER_LOSS), dict(PEER_METHODS)
    run = tmp_path / "peers"
    Engine(cfg, run, build=two_peers, quiet=True).fit()
    record = _metrics(run)[-1]
    assert {"train_peer0.kd", "train_peer1.kd", "train_peer0.ce", "train_peer1.ce"} <= set(record)
    assert "test_top1" in record and "test_peer1_top1" in record
    peer0, peer1 = _checkpoint(run), _checkpoint(run, "peer1.last")
    assert peer0.keys() == peer1.keys() and (run / "checkpoints" / "peer1.best.safetensors").is_file()
    assert any(not torch.equal(peer0[k], peer1[k]) for k in peer0)
    meta = json.loads((run / "checkpoints" / "peer1.last.json").read_text())
    assert meta["arch"] == "resnet8" and meta["epoch"] == 2


def test_namespaced_kd_gradient_reaches_only_its_own_peer(tmp_path):
    """peer0.kd trains peer0 alone: peer1's logits are detached targets; and the T of methods.kd is shared."""
    cfg = load_config(STUDENT, [*SMALL, "epochs=1"])
    cfg.loss, cfg.methods = dict(PEER_LOSS), dict(PEER_METHODS)
    from kdzoo.core.dist import DistInfo

    cpu = torch.device("cpu")
    program = two_peers(BuildContext(cfg=cfg, device=cpu, dist=DistInfo()))
    kd0 = program.trainable.methods["peer0:kd"]
    assert kd0.params.T == 3.0 and kd0.binding.student == "peer0" and kd0.binding.teacher == "peer1"
    stream = program.data["train"]
    batch = stream.batch(next(iter(stream.loader(DistInfo()))))
    from kdzoo.core.batch import StepInfo

    terms = program.phases[0].step(batch, StepInfo(0, 1, 0, 1))
    terms["peer0.kd"].backward()
    peer0, peer1 = program.models["peer0"].module, program.models["peer1"].module
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in peer0.parameters() if p.dim() > 1)
    assert all(p.grad is None for p in peer1.parameters())


def test_offline_refuses_namespaced_terms():
    cfg = load_config(STUDENT, ["loss={peer1.ce: 1.0}"])
    with pytest.raises(ConfigError, match="namespaced"):
        Offline.build(BuildContext(cfg=cfg, device=torch.device("cpu"), dist=None))


# Val stream + plateau controller ----------------------------------------------------------------------------
SCRIPT = [10.0, 20.0, 15.0, 12.0, 30.0, 5.0]  # best at epoch 2; epochs 3 and 4 bring none: cut + reload after 4


def scripted_validation(ctx: BuildContext) -> Program:
    """The offline program with a val stream, whose validation top-1 is scripted instead of measured."""
    program = Offline.build(ctx)
    main = program.phases[-1]

    def scripted(runtime) -> dict[str, float]:
        assert len(runtime.loader("val").dataset) > 0
        return {"val_top1": SCRIPT[runtime.epoch]}

    main.evaluators = [MetricEvaluator(scripted), ClassifierEvaluator(lambda: program.models["student"].module)]
    main.at_best = []  # the test stream runs every epoch here
    return program


PLATEAU = [*SMALL, "dataset.val_fraction=0.2", "schedule.name=plateau", "schedule.patience=2", "schedule.factor=0.1",
           "optim.lr=0.05"]


def test_plateau_controller_reloads_best_weights_on_a_scripted_validation_sequence(tmp_path):
    run = tmp_path / "plateau"
    summary = Engine(load_config(STUDENT, [*PLATEAU, "epochs=4"]), run, build=scripted_validation, quiet=True).fit()
    records = _metrics(run)
    assert [r["val_top1"] for r in records] == SCRIPT[:4]
    assert records[3]["reloaded_best"] == 2 and all("reloaded_best" not in r for r in records[:3])
    assert summary["best_value"] == 20.0 and summary["best_epoch"] == 2 and summary["selected_by"] == "val_top1"
    assert summary["best_metrics"]["test_top1"] == records[1]["test_top1"]  # reported on test, at the best val
    last, best = _checkpoint(run), _checkpoint(run, "best")
    for key in best:  # epoch 4 ended with the weights of epoch 2 put back
        assert torch.equal(last[key], best[key]), key
    state = torch.load(run / "checkpoints" / "last.state.pt", weights_only=True)
    assert state["controller"]["scale"] == pytest.approx(0.1) and state["controller"]["cuts"] == 1
    assert "best_state" in state


def test_a_plateau_run_killed_after_its_reload_resumes_exactly(tmp_path):
    """The controller's cut, its counters and the kept best state are in the resume state."""
    cfg = load_config(STUDENT, [*PLATEAU, "epochs=6"])
    full, part = tmp_path / "full", tmp_path / "part"
    Engine(cfg, full, build=scripted_validation, quiet=True).fit()
    engine = Engine(cfg, part, build=scripted_validation, quiet=True)
    from tests.test_engine import _stop_after_epochs

    _stop_after_epochs(engine, 4)  # killed right after the epoch-4 checkpoint (cut + reload)
    Engine(cfg, part, build=scripted_validation, resume=True, quiet=True).fit()
    a, b = _checkpoint(full), _checkpoint(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["lr"] for r in _metrics(full)] == [r["lr"] for r in _metrics(part)]
    assert _metrics(part)[4]["lr"] == pytest.approx(0.005)  # the cut survived the resume


def test_a_phase_stopped_by_its_controller_stays_stopped_on_resume(tmp_path):
    cfg = load_config(STUDENT, [*PLATEAU, "epochs=6", "schedule.max_cuts=0"])
    run = tmp_path / "stop"
    Engine(cfg, run, build=scripted_validation, quiet=True).fit()
    assert [r["epoch"] for r in _metrics(run)] == [1, 2, 3, 4]  # the first plateau (after epoch 4) ends it
    weights = _checkpoint(run)
    Engine(cfg, run, build=scripted_validation, resume=True, quiet=True).fit()
    assert [r["epoch"] for r in _metrics(run)] == [1, 2, 3, 4]
    assert all(torch.equal(weights[k], v) for k, v in _checkpoint(run).items())


def test_plateau_controller_counts_cuts_and_stops_after_max_cuts():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    from kdzoo.config.schema import ScheduleConfig

    plateau = PlateauController(optimizer, ScheduleConfig(name="constant"), 10, 1, patience=1, factor=0.5,
                                reload_best=False, max_cuts=1)
    assert plateau.after_eval({}, improved=True).stop is False
    first = plateau.after_eval({}, improved=False)
    assert not first.stop and optimizer.param_groups[0]["lr"] == 0.5
    optimizer.step()
    plateau.after_step()
    assert optimizer.param_groups[0]["lr"] == 0.5  # the schedule keeps the cut
    assert plateau.after_eval({}, improved=False).stop is True
    again = PlateauController(optimizer, ScheduleConfig(name="constant"), 10, 1, patience=1, factor=0.5)
    again.load_state_dict(plateau.state_dict())
    assert again.cuts == 1 and again.scale == 0.5


# Two views ---------------------------------------------------------------------------------------------------
def test_a_two_view_batch_reaches_a_method_bound_to_its_second_view(tmp_path, digits_teacher, monkeypatch):
    cfg = load_config(CONFIGS / "digits" / "kd.yaml", [*SMALL, f"teacher.checkpoint={digits_teacher}",
                                                      "dataset.views={x: train, plain: plain}",
                                                      "methods.kd.view=plain"])
    from kdzoo.core.dist import DistInfo

    cpu = torch.device("cpu")
    program = Offline.build(BuildContext(cfg=cfg, device=cpu, dist=DistInfo()))
    stream = program.data["train"]
    batch = stream.batch(next(iter(stream.loader(DistInfo()))))
    assert set(batch.views) == {"x", "plain"} and torch.equal(batch.inputs, batch.views["x"])
    assert not torch.equal(batch.views["x"], batch.views["plain"])  # augmented vs not
    seen = {"student": [], "teacher": []}
    for name in seen:
        source = program.models[name].features
        original = source.forward
        monkeypatch.setattr(source, "forward", (lambda o, n: lambda x: (seen[n].append(x), o(x))[1])(original, name))
    from kdzoo.core.batch import StepInfo

    terms = program.phases[-1].step(batch, StepInfo(0, 1, 0, 1))
    assert set(terms) == {"ce", "kd"}
    # ce reads x, kd reads plain: the student runs once per view, the teacher once, on plain only
    assert [v is batch.views["x"] for v in seen["student"]] == [True, False]
    assert seen["student"][1] is batch.views["plain"] and len(seen["teacher"]) == 1
    assert seen["teacher"][0] is batch.views["plain"]


def test_unknown_pipeline_is_a_one_line_error(tmp_path):
    code = run_cli("train", "-c", STUDENT, "--out", tmp_path / "r", *SMALL, "dataset.views={x: nope}")
    assert code == 2


# Frozen backbone and a backbone-only load --------------------------------------------------------------------
def test_frozen_backbone_stays_bit_identical_and_a_new_head_trains(tmp_path):
    source = teacher_file(tmp_path, "resnet8", num_classes=5, in_channels=1)  # another head: 5 classes
    before = load_file(str(source))
    run = tmp_path / "probe"
    backbone = ["conv1", "bn1", "layer1", "layer2", "layer3"]
    assert run_cli("train", "-c", STUDENT, "--out", run, *SMALL, "epochs=1", f"student.checkpoint={source}",
                   "student.checkpoint_strict=false", f"student.freeze=[{', '.join(backbone)}]") == 0
    after = _checkpoint(run)
    frozen = [k for k in after if k.split(".")[0] in backbone]
    assert frozen and all(torch.equal(after[k], before[k]) for k in frozen)  # incl. BN running statistics
    assert after["fc.weight"].shape[0] == 10 and before["fc.weight"].shape[0] == 5


def test_strict_load_of_another_head_still_fails(tmp_path):
    source = teacher_file(tmp_path, "resnet8", num_classes=5, in_channels=1)
    assert run_cli("train", "-c", STUDENT, "--out", tmp_path / "r", *SMALL, f"student.checkpoint={source}") == 2


# Tabular stream ------------------------------------------------------------------------------------------------
class RandomVectors(Dataset):
    def __init__(self, n: int, features: int, classes: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, features, generator=g)
        self.targets = torch.randint(0, classes, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.x[i], self.targets[i]


def tabular(ctx: BuildContext) -> Program:
    info = DatasetInfo("random-vectors", 3, (12,), (0.0,), (1.0,))
    streams = {"train": DataStream(RandomVectors(96, 12, 3, seed=1), 32, train=True, seed=ctx.cfg.seed),
               "test": DataStream(RandomVectors(40, 12, 3, seed=2), 64)}
    return offline_program(ctx, streams, info)


def test_a_tabular_stream_trains_an_mlp_for_one_epoch(tmp_path):
    cfg = load_config(STUDENT, [*FAST, "epochs=1", "student.arch=mlp_small", "dataset.batch_size=32",
                                "engine.channels_last=false"])
    run = tmp_path / "tabular"
    summary = Engine(cfg, run, build=tabular, quiet=True).fit()
    assert summary["dataset"] == "random-vectors" and 0.0 <= summary["last_top1"] <= 100.0
    meta = json.loads((run / "checkpoints" / "last.json").read_text())
    assert meta["input_shape"] == [12] and meta["in_channels"] == 12 and meta["arch"] == "mlp_small"
    assert _metrics(run)[0]["train_ce"] > 0


def test_make_engine_runs_the_recipes_regime(tmp_path):
    engine = make_engine(load_config(STUDENT, [*SMALL, "epochs=1"]), tmp_path / "r", quiet=True)
    assert isinstance(engine, Engine) and set(engine.program.data) == {"train", "test"}
    engine.close()


def test_a_recipe_val_split_selects_on_val_and_reports_test(tmp_path, capsys):
    run = tmp_path / "val"
    assert run_cli("train", "-c", STUDENT, "--out", run, *SMALL, "epochs=2", "dataset.val_fraction=0.25") == 0
    assert "best val_top1" in capsys.readouterr().out
    records = _metrics(run)
    epochs, final = [r for r in records if "at_best" not in r], records[-1]
    assert all("val_top1" in r and "test_top1" not in r for r in epochs) and final["at_best"]
    summary = json.loads((run / "summary.json").read_text())
    best = max(epochs, key=lambda r: (r["val_top1"], -r["epoch"]))
    assert summary["selected_by"] == "val_top1" and summary["best_value"] == best["val_top1"]
    assert summary["best_metrics"]["test_top1"] == final["test_top1"] == summary["result"]["value"]
    assert final["epoch"] == best["epoch"] and summary["last_top1"] is None  # test ran only at the best
    engine = make_engine(load_config(STUDENT, [*SMALL, "dataset.val_fraction=0.25"]), tmp_path / "x", quiet=True)
    train, val = engine.program.data["train"].dataset, engine.program.data["val"].dataset
    assert len(val) > 0 and not set(val.indices.tolist()) & set(train.dataset.indices[train.indices].tolist())
    engine.close()


# Review findings: early, one-line refusals; per-phase selection; metric lines past a phase boundary --------------
@pytest.mark.parametrize("overrides, says", [
    (["dataset.batch_size=500", "dataset.drop_last=true"], "dataset.batch_size"),
    (["methods.ce.view=plain"], "no view 'plain'"),
    (["methods.ce.teacher=student"], "binds every method"),
    (["methods.peer1.ce={label_smoothing: 0.1}"], "namespace peer1"),
])
def test_bad_recipes_fail_before_the_run_folder_is_written(tmp_path, capsys, overrides, says):
    run = tmp_path / "r"
    assert run_cli("train", "-c", STUDENT, "--out", run, *SMALL, "epochs=1", *overrides) == 2
    assert says in capsys.readouterr().err
    assert not (run / "config.yaml").exists()
    assert run_cli("train", "-c", STUDENT, "--out", run, *SMALL, "epochs=1") == 0  # the folder is still free


def test_nothing_to_train_and_a_checkpoint_that_does_not_fit(tmp_path, capsys):
    source = teacher_file(tmp_path, "resnet8", num_classes=10, in_channels=1)
    assert run_cli("train", "-c", STUDENT, "--out", tmp_path / "a", *SMALL, f"student.checkpoint={source}",
                   "student.freeze=['']") == 2
    assert "nothing to train" in capsys.readouterr().err
    other = teacher_file(tmp_path, "resnet32x4", num_classes=10, in_channels=1)  # no weight fits resnet8
    assert run_cli("train", "-c", STUDENT, "--out", tmp_path / "b", *SMALL, f"student.checkpoint={other}",
                   "student.checkpoint_strict=false") == 2
    assert "no tensor fits" in capsys.readouterr().err


def test_old_run_folders_with_any_wandb_value_still_load():
    from kdzoo.config import config_from_data

    for value in (True, False):
        assert config_from_data({"engine": {"wandb": value}, "regime_args": {}}).engine.progress


def two_evaluating_phases(ctx: BuildContext) -> Program:
    """Two phases over the same network, each with a plateau controller and a scripted validation: the second
    must select its own best, not reload the first's."""
    program = Offline.build(ctx)
    main = program.phases[-1]
    scripts = {"warm": [50.0, 60.0], "main": [10.0, 20.0, 15.0, 12.0]}

    def scripted(name):
        return lambda runtime: {"val_top1": scripts[name][runtime.epoch]}

    main.evaluators = [MetricEvaluator(scripted("main")), *main.evaluators[1:]]
    warm = Phase(name="warm", epochs=2, params=main.params, step=main.step, weights=main.weights,
                 controller=main.controller, evaluators=[MetricEvaluator(scripted("warm"))], select="val_top1")
    program.phases.insert(0, warm)
    return program


def test_each_evaluating_phase_selects_its_own_best(tmp_path):
    run = tmp_path / "two"
    summary = Engine(load_config(STUDENT, [*PLATEAU, "epochs=4"]), run, build=two_evaluating_phases,
                     quiet=True).fit()
    main = [r for r in _metrics(run) if r["phase"] == "main" and "at_best" not in r]
    assert [r.get("reloaded_best") for r in main] == [None, None, None, 2]  # main's own epoch 2, after 2 misses
    assert summary["best_value"] == 20.0 and summary["best_epoch"] == 2


def test_a_resume_drops_the_metric_lines_of_later_phases(tmp_path):
    from kdzoo.engine.run_log import RunLog

    run = RunLog(tmp_path, active=True, tensorboard=False)
    for phase, epoch in (("init:ab", 1), ("init:ab", 2), ("main", 1)):
        run.log({"phase": phase, "epoch": epoch}, step=epoch)
    run.truncate_metrics(2, "init:ab", later=("main",))  # checkpointed at the end of init:ab
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["epoch"]) for r in lines] == [("init:ab", 1), ("init:ab", 2)]
    run.close()
