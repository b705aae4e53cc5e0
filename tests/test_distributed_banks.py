"""CRD's memory banks and RRD's queue under DDP: every rank applies every rank's updates (gathered in rank order),
so all ranks hold the same banks, equal to one process's over the global batch; DDP leaves them out of its
per-forward broadcast of rank 0's buffers while BN-style buffers keep it.

The file is also the worker script: `python -m torch.distributed.run ... tests/test_distributed_banks.py OUT`.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from kdzoo.core import dist as distributed
from kdzoo.core.batch import Batch, StepInfo
from kdzoo.core.dist import DistInfo, all_gather_cat, synced_buffer_names
from kdzoo.distillers.base import SetupContext
from kdzoo.distillers.crd import CRD, CRDParams
from kdzoo.distillers.rrd import RRD, RRDParams
from kdzoo.engine.distributed import wrap_ddp
from kdzoo.models.features import Features

REPO = Path(__file__).resolve().parents[1]
N_DATA, CLASSES, IN_DIM, S_DIM, T_DIM, NCE_K = 24, 4, 6, 5, 7, 5
SPLITS = [(4, 4), (4, 4), (4, 2)]  # per step: rank 0's and rank 1's batch sizes (the last step unequal)
BANKS = ("methods.crd.memory_s", "methods.crd.memory_t", "methods.crd.z_s", "methods.crd.z_t",
         "methods.rrd.queue", "methods.rrd.queue_ptr")
STEP = StepInfo(epoch=0, epochs=1, step=0, steps_per_epoch=1)


def fixed_negatives(index: torch.Tensor) -> torch.Tensor:
    """Negatives as a function of the sample (CRD draws them per process, which no single run reproduces)."""
    return (index.unsqueeze(1) + 1 + torch.arange(NCE_K)) % N_DATA


class Bundle(nn.Module):
    """StudentBundle in miniature: a linear 'student', a BN whose buffers DDP broadcasts, CRD and RRD."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)  # ranks start from different banks: wrap_ddp must hand out rank 0's
        shapes = dict(student_shapes=Features(pooled=torch.Size([2, S_DIM])),
                      teacher_shapes=Features(pooled=torch.Size([2, T_DIM])))
        ctx = SetupContext(student=nn.Identity(), teacher=nn.Identity(),
                           train_targets=torch.arange(N_DATA) % CLASSES, batch_size=4, **shapes)
        self.student = nn.Linear(IN_DIM, S_DIM)
        self.bn = nn.BatchNorm1d(IN_DIM, affine=False)
        self.methods = nn.ModuleDict({"crd": CRD(CRDParams(feat_dim=8, nce_k=NCE_K, nce_t=0.1, nce_m=0.5), ctx),
                                      "rrd": RRD(RRDParams(feat_dim=8, nce_k=10), ctx)})
        self.methods["crd"].negatives = fixed_negatives
        self.teacher_proj = torch.randn(IN_DIM, T_DIM, generator=torch.Generator().manual_seed(7))
        self.seen: dict[str, torch.Tensor] = {}

    def forward(self, batch: Batch) -> dict:
        # What the module holds once DDP's pre-forward buffer broadcast has run.
        self.seen = {"bn": self.bn.running_mean.clone(), "memory_s": self.methods["crd"].memory_s.clone(),
                     "queue": self.methods["rrd"].queue.clone()}
        self.bn(batch.inputs)
        s = Features(pooled=self.student(batch.inputs))
        t = Features(pooled=torch.tanh(batch.inputs @ self.teacher_proj))
        terms = {}
        for method in self.methods.values():
            terms.update(method.losses(batch, s, t, STEP))
        return terms


def global_batches() -> list[tuple[tuple[int, int], Batch]]:
    g = torch.Generator().manual_seed(123)
    out = []
    for sizes in SPLITS:
        index = torch.randperm(N_DATA, generator=g)[:sum(sizes)]
        out.append((sizes, Batch(inputs=torch.randn(sum(sizes), IN_DIM, generator=g),
                                 targets=index % CLASSES, index=index)))
    return out


def rows(batch: Batch, start: int, stop: int) -> Batch:
    return Batch(inputs=batch.inputs[start:stop], targets=batch.targets[start:stop], index=batch.index[start:stop])


def train(model: nn.Module, bundle: Bundle, batches: list[Batch]) -> None:
    optimizer = torch.optim.SGD([p for p in bundle.parameters() if p.requires_grad], lr=0.5)
    for batch in batches:
        optimizer.zero_grad()
        sum(model(batch).values()).backward()
        optimizer.step()
        for method in bundle.methods.values():
            method.after_step()


def banks(bundle: Bundle) -> dict[str, torch.Tensor]:
    return {name: bundle.get_buffer(name).clone() for name in BANKS}


def worker(out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    bundle = Bundle(seed=rank)
    model = wrap_ddp(bundle, DistInfo(rank=rank, world_size=world), torch.device("cpu"))
    assert isinstance(model, nn.parallel.DistributedDataParallel)
    mine = [rows(b, sum(sizes[:rank]), sum(sizes[:rank + 1])) for sizes, b in global_batches()]
    train(model, bundle, mine)
    result = {"banks": banks(bundle),
              "gather_float": all_gather_cat(torch.full((rank + 2, 3), float(rank))),
              "gather_long": all_gather_cat(torch.arange(3 - rank) + 10 * rank)}
    # Mark rank 1's copies, then one more forward: DDP must restore rank 0's BN statistics, not the banks.
    if rank == 1:
        with torch.no_grad():
            for buffer in (bundle.bn.running_mean, bundle.methods["crd"].memory_s, bundle.methods["rrd"].queue):
                buffer[0] += 100.0
    with torch.no_grad():
        model(mine[-1])
    result["seen"] = bundle.seen
    torch.save(result, out / f"rank{rank}.pt")
    del model  # the DDP reducer goes before its process group (else gloo may abort at exit under load)
    dist.barrier()
    dist.destroy_process_group()


# Tests ----------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_hold_the_single_process_banks(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), str(Path(__file__).resolve()), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))

    reference = Bundle(seed=0)  # one process over the global batches (rank 0's rows, then rank 1's)
    start = banks(reference)
    train(reference, reference, [b for _, b in global_batches()])
    expected = banks(reference)
    for name in BANKS:
        assert torch.equal(r0["banks"][name], r1["banks"][name]), name
        torch.testing.assert_close(r0["banks"][name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    touched = torch.unique(torch.cat([b.index for _, b in global_batches()]))
    untouched = torch.ones(N_DATA, dtype=torch.bool)
    untouched[touched] = False
    for name in ("methods.crd.memory_s", "methods.crd.memory_t"):
        assert not torch.isclose(expected[name][touched], start[name][touched]).all(dim=1).any(), name
        assert torch.equal(expected[name][untouched], start[name][untouched]), name
    assert int(expected["methods.rrd.queue_ptr"]) == sum(map(sum, SPLITS)) % 10

    for r in (r0, r1):  # unequal sizes (2 and 3 rows, then 3 and 2), in rank order
        assert torch.equal(r["gather_float"], torch.cat([torch.zeros(2, 3), torch.ones(3, 3)]))
        assert torch.equal(r["gather_long"], torch.tensor([0, 1, 2, 10, 11]))

    # The marked copies on rank 1: BN statistics came back from rank 0, the banks were left alone.
    assert torch.equal(r1["seen"]["bn"], r0["seen"]["bn"])
    for key in ("memory_s", "queue"):
        assert torch.equal(r1["seen"][key][0], r0["seen"][key][0] + 100.0), key
        assert torch.equal(r1["seen"][key][1:], r0["seen"][key][1:]), key


def test_all_gather_cat_is_identity_in_one_process():
    x = torch.randn(3, 2)
    assert not dist.is_initialized()
    assert all_gather_cat(x) is x


def test_all_gather_cat_pads_unequal_sizes(monkeypatch):
    """Two simulated ranks (this one rank 0 with 3 rows, the other with 1): padded to 3, trimmed, rank order."""
    mine, other = torch.arange(6.0).view(3, 2), torch.tensor([[-1.0, -2.0]])
    calls = []

    def fake_all_gather(out, tensor):
        calls.append(tensor.shape)
        if len(calls) == 1:  # the sizes
            out[0].copy_(tensor)
            out[1].fill_(other.shape[0])
        else:
            assert tensor.shape == (3, 2)  # padded to the largest
            out[0].copy_(tensor)
            out[1].zero_()[:1].copy_(other)

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "all_gather", fake_all_gather)
    assert torch.equal(all_gather_cat(mine), torch.cat([mine, other]))
    assert len(calls) == 2


def test_synced_buffers_named_from_the_wrapped_module():
    bundle = Bundle(seed=0)
    names = synced_buffer_names(bundle)
    assert set(BANKS) <= set(names)
    assert not any(name.startswith("bn.") for name in names)
    assert wrap_ddp(bundle, DistInfo(), torch.device("cpu")) is bundle  # one process: untouched
    assert not hasattr(bundle, "_ddp_params_and_buffers_to_ignore")


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
