"""DDP for kd, crd, mutual, the double student, the cached / replayed teacher, loader: device and DOT under
torchrun with 2 gloo processes: every rank ends with the same weights and the same method state (CRD's banks:
gathered updates in rank order; the peers of mutual learning; the EMA teacher; proto's clusters; DOT's hand-averaged
distillation gradients), and a two-node launch (--nnodes 2 --nproc_per_node 1, --node_rank, one rendezvous
endpoint) equals the one-node launch (--nnodes 1 --nproc_per_node 2) within float tolerance."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import CONFIGS, FAST
from tests.test_distributed_banks import free_port

REPO = Path(__file__).resolve().parents[1]
WORKER = str(Path(__file__).with_name("ddp_worker.py"))
COMMON = ["epochs=1", "dataset.subset=256", "engine.precision=fp32", *FAST]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}


def one_node(out: Path, args: list[str]) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_port", str(free_port()), WORKER, str(out), *args]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def two_nodes(out: Path, args: list[str]) -> None:
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node",
                               "1", "--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port", port,
                               WORKER, str(out), *args], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for node in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]


RECIPES = {
    "kd": (CONFIGS / "digits" / "kd.yaml", []),
    "crd": (CONFIGS / "digits" / "crd.yaml", ["methods.crd.nce_k=64"]),
    "mutual": (CONFIGS / "digits" / "mutual" / "dml.yaml", []),
    # the double student (EMA teacher, proto's k-means broadcast from rank 0, CRD), the cached and the replayed teacher
    "double_student": (CONFIGS / "digits" / "dssrd" / "dssrd.yaml", ["methods.crd.nce_k=64"]),
    "kd_cached": (CONFIGS / "digits" / "kd.yaml", ["teacher.cache=true"]),
    "kd_replay": (CONFIGS / "digits" / "kd.yaml", ["teacher.cache=replay"]),
    # each rank's shard and draws from loader: device (data/device_loader.py)
    "kd_device_loader": (CONFIGS / "digits" / "kd.yaml", ["dataset.loader=device"]),
    # DOT's own optimizer step: the distillation group's gradient averaged over the ranks by hand
    "dot": (CONFIGS / "digits" / "dot.yaml", []),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_ranks_agree_and_two_nodes_equal_one(tmp_path, digits_teacher, name):
    recipe, extra = RECIPES[name]
    args = [str(recipe), *COMMON, *extra] + ([f"teacher.checkpoint={digits_teacher}"] if name != "mutual" else [])
    one_node(tmp_path / "one", args)
    two_nodes(tmp_path / "two", args)
    states = {launch: [torch.load(tmp_path / launch / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
              for launch in ("one", "two")}
    for launch, (r0, r1) in states.items():
        assert r0.keys() == r1.keys() and r0
        different = [k for k in r0 if not torch.equal(r0[k], r1[k])]
        assert not different, f"{launch}: ranks differ in {different[:5]}"
    if name == "crd":
        banks = [k for k in states["one"][0] if k.endswith(("memory_s", "memory_t"))]
        assert len(banks) == 2
    one, two = states["one"][0], states["two"][0]
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-5, atol=1e-6, msg=key)
    assert (tmp_path / "one" / "run" / "checkpoints" / "last.safetensors").is_file()


def test_sync_bn_converts_in_place_and_is_refused_on_the_cpu(tmp_path, capsys):
    from torch import nn

    from kdzoo.engine.distributed import convert_sync_batchnorm
    from kdzoo.models import create_model
    from tests.conftest import run_cli

    model = create_model("resnet8", num_classes=10)
    bundle = nn.ModuleDict({"student": model})
    weight = model.bn1.weight
    convert_sync_batchnorm(bundle)
    assert bundle["student"] is model and isinstance(model.bn1, nn.SyncBatchNorm) and model.bn1.weight is weight
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
    code = run_cli("train", "-c", CONFIGS / "digits" / "student.yaml", "--out", tmp_path / "r", "engine.sync_bn=true",
                   *FAST)
    assert code == 2 and "engine.sync_bn: SyncBatchNorm runs on CUDA" in capsys.readouterr().err
