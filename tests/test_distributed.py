"""MoCo v2 under ``torchrun`` with two CPU processes (gloo): a shared queue in rank order, and DDP training.

One ``torchrun`` launch runs a worker script (written into ``tmp_path``) that checks, in each process:

- :func:`utils.core.distributed.gather` concatenates in rank order;
- one MoCo forward on rank-specific data (same seeded initial weights) enqueues the keys of both processes,
  rank 0's batch first, so that both processes hold the same queue;
- :func:`utils.core.engine.fit` for a few steps under DistributedDataParallel ends with the same weights on both
  ranks;
- :func:`utils.core.runs.run` (supervised, BYOL) writes one record, which both processes read back, and leaves
  the same weights in both (the second part of the script, ``RUN_WORKER``).

Each rank saves what it saw; the tests compare them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

WORKER = r"""
import sys

import torch

from utils.core import distributed as dist_utils
from utils.core.engine import TrainConfig, fit
from utils.core.loader import FaceTensors
from utils.methods import InputSpec
from utils.methods.moco import MoCo, MoCoConfig

out = sys.argv[1]
assert dist_utils.init_from_env("cpu"), "not launched by torchrun?"
rank, world = dist_utils.rank(), dist_utils.world_size()
config = MoCoConfig(backbone="resnet18", width=32, stem_stride=4, queue_size=32, hidden=32, dim=8, key_bn_splits=2)
spec = InputSpec(1, 1, ("a", "b"), 48, 96)
batch = 8

gathered = dist_utils.gather(torch.arange(3) + 10 * rank)

torch.manual_seed(0)  # the same initial weights (and initial queue) in every process
method = MoCo(config, spec)
initial = {name: p.detach().clone() for name, p in method.encoder.named_parameters()}
seen = {}
encode_keys = method.keys


def keys(x, generator):
    seen["keys"] = encode_keys(x, generator)
    return seen["keys"]


method.keys = keys
x = torch.rand(batch, 1, 48, 48, generator=torch.Generator().manual_seed(100 + rank))  # different data per rank
rows = torch.arange(batch) + rank * batch
loss, _ = method(x, None, rows, torch.Generator().manual_seed(rank))
loss.backward()

# DDP training: each process takes its half of every global batch, gradients are averaged
torch.manual_seed(0)
trained = MoCo(config, spec)
images = torch.randint(0, 256, (96, 1, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
data = FaceTensors(images, torch.zeros(96, dtype=torch.long))
trained.check_sizes(len(data), batch * world)
result = fit(trained, data, TrainConfig(epochs=1, batch_size=batch, lr=0.05, amp=False), None, progress=False,
             steps_per_epoch=3)

torch.save(
    {
        "world": world,
        "gathered": gathered,
        "initial": initial,
        "keys": seen["keys"],
        "rows": rows,
        "loss": loss.detach(),
        "queue": method.queue,
        "queue_rows": method.queue_rows,
        "queue_ptr": method.queue_ptr,
        "trained_params": {name: p.detach() for name, p in trained.named_parameters()},
        "trained_queue": trained.queue,
        "trained_queue_rows": trained.queue_rows,
        "history": result.history,
    },
    f"{out}/rank{rank}.pt",
)
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def launched(tmp_path_factory, sample_cache, sample):
    """One ``torchrun`` launch of both worker scripts (each launch starts three Python processes that import
    torch): the folder their processes wrote to. ``sample`` prepares the cache the runs read the faces from."""
    folder = tmp_path_factory.mktemp("ddp")
    script = folder / "worker.py"
    script.write_text(WORKER + RUN_WORKER)
    port = free_port()
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(port), str(script), str(folder), str(sample_cache),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return folder


@pytest.fixture(scope="module")
def ranks(launched):
    return [torch.load(launched / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.slow
def test_gather_concatenates_in_rank_order(ranks):
    for r in ranks:
        assert r["world"] == 2
        assert r["gathered"].tolist() == [0, 1, 2, 10, 11, 12]


@pytest.mark.slow
def test_both_processes_hold_the_same_queue_in_rank_order(ranks):
    zero, one = ranks
    for name, p in zero["initial"].items():  # same seeded initial weights
        assert torch.equal(p, one["initial"][name]), name
    assert not torch.allclose(zero["keys"], one["keys"])  # different data, different keys
    assert not torch.isclose(zero["loss"], one["loss"])
    assert torch.equal(zero["queue"], one["queue"])
    assert torch.equal(zero["queue_rows"], one["queue_rows"])
    batch = len(zero["keys"])
    assert int(zero["queue_ptr"]) == int(one["queue_ptr"]) == 2 * batch
    assert zero["queue_rows"][: 2 * batch].tolist() == list(range(2 * batch))  # rank 0's rows, then rank 1's
    assert torch.equal(zero["queue"][:batch], zero["keys"])
    assert torch.equal(zero["queue"][batch : 2 * batch], one["keys"])
    assert (zero["queue_rows"][2 * batch :] == -1).all()


@pytest.mark.slow
def test_ddp_training_keeps_the_processes_in_step(ranks):
    zero, one = ranks
    assert len(zero["history"]) == len(one["history"]) == 1
    for name, p in zero["trained_params"].items():
        assert torch.equal(p, one["trained_params"][name]), name  # query and key encoders, heads, predictor
    trained = zero["trained_params"]
    assert any(not torch.equal(trained[f"encoder.{name}"], p) for name, p in zero["initial"].items())  # it trained
    assert torch.equal(zero["trained_queue"], one["trained_queue"])
    assert torch.equal(zero["trained_queue_rows"], one["trained_queue_rows"])
    rows = zero["trained_queue_rows"]
    assert (rows >= 0).all()  # 3 global batches of 16 keys went through a queue of 32
    assert len(set(rows.tolist())) == len(rows)  # one pass over the data: no image twice


# ------------------------------------------------------------------------------ runs.run for every method

RUN_WORKER = r"""
import json, sys

import torch

from utils.core import distributed as dist_utils
from utils.core import runs
from utils.data import load_dataset_or_sample
from utils.core.engine import TrainConfig
from utils.data.faces import FaceConfig, prepare
from utils.methods.byol import BYOLConfig
from utils.methods.supervised import SupervisedConfig

out, cache = sys.argv[1], sys.argv[2]
assert dist_utils.init_from_env("cpu"), "not launched by torchrun?"
rank = dist_utils.rank()
ds, _ = load_dataset_or_sample("fer2013", "x", quick=True)
prepared = prepare(ds, FaceConfig(), cache_dir=cache, workers=1, progress=False)
train = TrainConfig(epochs=2, batch_size=16, lr=0.05, warmup_epochs=0, seed=0, amp=False)
configs = {
    "supervised": SupervisedConfig(width=32, stem_stride=4, tta=None),
    "byol": BYOLConfig(width=32, stem_stride=4, projector_hidden=32, projector_dim=16, predictor_hidden=32),
}
seen = {}
for name, config in configs.items():
    run = runs.run(config, prepared, train, checkpoint_dir=f"{out}/checkpoints", device="cpu", progress=False,
                   steps_per_epoch=3)
    seen[name] = {
        "run_dir": str(run.run_dir),
        "record": run.record,
        "params": {k: v.detach().clone() for k, v in run.method.named_parameters()},
    }
torch.save(seen, f"{out}/runs{rank}.pt")
"""


@pytest.fixture(scope="module")
def run_ranks(launched):
    return [torch.load(launched / f"runs{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["supervised", "byol"])
def test_runs_under_torchrun_write_one_record_and_agree(run_ranks, name):
    zero, one = run_ranks[0][name], run_ranks[1][name]
    assert zero["run_dir"] == one["run_dir"]  # the same configuration, the same folder
    assert zero["record"]["status"] == one["record"]["status"] == "finished"  # rank 1 read what rank 0 wrote
    assert zero["record"] == one["record"]
    assert zero["record"]["epochs_run"] == 2 and zero["record"]["evaluations"]
    for key, value in zero["params"].items():
        assert torch.equal(value, one["params"][key]), key  # the processes stayed in step (weights; each
        # process keeps the batch-norm statistics of its own last shard, and the first one's are written)
