"""Two processes (DDP, gloo, CPU) equal one process with the combined batch.

First the batch-wide losses on their own. Each case runs a small linear model on two views of
a batch split unevenly over the ranks (3 and 5 examples, so the padding in the all-gather is
exercised too), lets DDP average the gradients, and compares the ranks' mean loss and the
averaged gradient with the same model on the whole batch in this process. Without the
all-gather (or with the wrong gradient scaling) the losses or gradients differ by far more
than the tolerance.

MoCo v2 next, over several steps (its queue carries keys from one step into the next): with
the same split, the ranks' mean loss and averaged gradients follow the 1-process run at every
step, and both ranks end with the 1-process queue and pointer (every rank enqueues the keys of
the whole global batch, as MoCo's official ``concat_all_gather`` does).

Then a real 2-process pre-training through the engine (tests/ddp_pretrain_script.py): the
ranks end with identical weights (and MoCo v2 queues), and losses and weights follow the
1-process run with the same global batch, which needs the data split over the ranks as one
process would batch it.
"""

import csv
import datetime
import os
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from selfsup import distributed
from selfsup.config import PretrainConfig
from selfsup.engine import check_processes
from selfsup.errors import SelfsupError
from selfsup.methods.base import DataInfo
from selfsup.methods.dino import update_center
from selfsup.methods.losses import barlow_twins_loss, dino_loss, info_nce, nt_xent, vicreg_loss
from selfsup.methods.mocov2 import MoCoV2
from selfsup.models import ImageEncoder

SPLIT = (3, 5)  # examples per rank; the single process holds all 8
IN_DIM, OUT_DIM = 6, 4


def _dino(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Update a centre from the (detached) teacher scores, then score the student against it:
    the loss only matches if the centre is the global batch's."""
    center = torch.full((1, OUT_DIM), 0.3)
    teacher = torch.stack([z1, z2]).detach() * 3
    update_center(center, teacher, 0.5)
    student = torch.stack([z1, z2, z1 * z2])
    return dino_loss(student, teacher, center, 0.1, 0.05)


CASES = {
    "nt_xent": lambda z1, z2: nt_xent(z1, z2, 0.5),
    "info_nce": lambda z1, z2: info_nce(z1, z2, 0.2) + info_nce(z2, z1.detach(), 0.2),
    "barlow_twins": lambda z1, z2: barlow_twins_loss(z1, z2, 5e-3),
    "vicreg": lambda z1, z2: vicreg_loss(z1, z2),
    "dino": _dino,
}


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, sum(SPLIT), IN_DIM, generator=generator).unbind()


def _model() -> torch.nn.Linear:
    torch.manual_seed(1)
    return torch.nn.Linear(IN_DIM, OUT_DIM)


def _step(model: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor, case: str):
    """One forward (both views in one call, as the methods do) and backward."""
    z1, z2 = model(torch.cat([x1, x2])).chunk(2)
    loss = CASES[case](z1, z2)
    loss.backward()
    return loss.detach()


class _TinyEncoder(ImageEncoder):
    """(B, 1, 2, 3) images, flattened, through one linear layer."""

    def __init__(self) -> None:
        super().__init__(1, None, None)
        self.embed_dim = OUT_DIM
        self.net = torch.nn.Linear(IN_DIM, OUT_DIM)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.flatten(1))


class _MirrorMoCoV2(MoCoV2):
    """MoCo v2 whose views are each image and its mirror image, so no randomness is involved."""

    def views(self, images: torch.Tensor, count: int, generator, augment=None) -> torch.Tensor:
        return torch.cat([images, images.flip(-1)])


MOCO_STEPS = 3


def _moco() -> MoCoV2:
    """Queue clamped to 10 by the 20 samples: the 8 keys of a step wrap around its end."""
    torch.manual_seed(1)
    options = {"queue_size": 4096, "hidden_dim": 8, "projection_dim": OUT_DIM, "momentum": 0.9}
    return _MirrorMoCoV2(_TinyEncoder(), DataInfo(num_images=20), options=options)


def _moco_batches() -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    return torch.randn(MOCO_STEPS, sum(SPLIT), 1, 2, 3, generator=generator)


def _moco_steps(method: MoCoV2, batches: torch.Tensor):
    """SGD steps; per step the (rank-mean) loss and the (rank-averaged, as DDP's) gradients;
    then the final queue and pointer."""
    optimiser = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    steps = []
    for images in batches:
        optimiser.zero_grad()
        loss = method.training_step({"images": images}, torch.Generator()).loss
        loss.backward()
        loss = loss.detach()
        grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
        if distributed.world_size() > 1:
            for value in (loss, *grads.values()):
                dist.all_reduce(value)
                value /= distributed.world_size()
            for name, p in method.named_parameters():  # the step uses the averaged gradient
                if name in grads:
                    p.grad.copy_(grads[name])
        steps.append((float(loss), grads))
        optimiser.step()
        method.on_train_step_end(0.0)
    return steps, method.queue.clone(), int(method.queue_ptr)


def _worker(rank: int, init_method: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=init_method,
        rank=rank,
        world_size=len(SPLIT),
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        x1, x2 = _inputs()
        start = sum(SPLIT[:rank])
        mine = slice(start, start + SPLIT[rank])
        results = {}
        for case in CASES:
            model = DistributedDataParallel(_model())
            loss = _step(model, x1[mine], x2[mine], case)
            dist.all_reduce(loss)  # the mean over ranks is what must equal the 1-process loss
            grads = {name: p.grad.clone() for name, p in model.module.named_parameters()}
            results[case] = (float(loss) / len(SPLIT), grads)
        results["mocov2"] = _moco_steps(_moco(), _moco_batches()[:, mine])
        path = os.path.join(out_dir, f"rank{rank}.pt")
        torch.save(results, path + ".partial")
        os.replace(path + ".partial", path)
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        os._exit(1)
    _leave_when_every_rank_is_done(out_dir)


def _leave_when_every_rank_is_done(out_dir: str) -> None:
    """Exit once every rank has written its results, without tearing gloo down.

    A rank whose file exists has finished its last collective, so nobody needs the process
    group any more. Tearing it down is what hung once in CI: rank 0 (which hosts the store)
    stuck in a gloo destructor after rank 1 had left, with all results already computed.
    ``os._exit`` skips those destructors.
    """
    files = [os.path.join(out_dir, f"rank{r}.pt") for r in range(len(SPLIT))]
    deadline = time.monotonic() + 60
    while not all(os.path.exists(f) for f in files) and time.monotonic() < deadline:
        time.sleep(0.05)
    sys.stdout.flush()
    os._exit(0 if all(os.path.exists(f) for f in files) else 1)


# Each rank runs in a fresh interpreter that imports this module and calls _worker. Neither
# fork nor multiprocessing's spawn stayed reliable inside a long pytest process: a forked rank
# hung once in OpenMP (a full local `make test`), and spawned ranks with a file:// rendezvous
# hung in CI. Plain subprocesses meeting over TCP on loopback are what the engine's own
# 2-process test does; a rank that still hangs prints its stacks. A rank leaves by os._exit once
# both have saved their results (see _leave_when_every_rank_is_done).
_RANK_COMMAND = """
import faulthandler, sys
faulthandler.dump_traceback_later({limit}, exit=True)
sys.path.insert(0, {tests!r})
import test_ddp
test_ddp._worker(int(sys.argv[1]), sys.argv[2], sys.argv[3])
"""
RANK_LIMIT_S = 150


def _repo_env() -> dict[str, str]:
    """This environment with the repository importable, for a child interpreter."""
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    tests = str(Path(__file__).parent)
    command = _RANK_COMMAND.format(limit=RANK_LIMIT_S, tests=tests)
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", command, str(rank), init_method, str(tmp)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_repo_env(),
        )
        for rank in range(len(SPLIT))
    ]
    outputs = []
    for rank in ranks:
        try:
            outputs.append(rank.communicate(timeout=RANK_LIMIT_S + 30)[0])
        except subprocess.TimeoutExpired:
            rank.kill()
            outputs.append(rank.communicate()[0])
    if any(rank.returncode != 0 for rank in ranks):
        report = "\n".join(
            f"--- rank {r} (exit {p.returncode}):\n{out[-4000:]}"
            for r, (p, out) in enumerate(zip(ranks, outputs, strict=True))
        )
        pytest.fail(f"the 2-process run failed or hung:\n{report}")
    return [torch.load(tmp / f"rank{r}.pt") for r in range(len(SPLIT))]


@pytest.mark.parametrize("case", list(CASES))
def test_two_process_loss_and_gradients_equal_one_process(ddp_results, case):
    assert distributed.world_size() == 1  # the reference runs without torch.distributed
    model = _model()
    x1, x2 = _inputs()
    loss = float(_step(model, x1, x2, case))
    for rank, results in enumerate(ddp_results):
        rank_loss, grads = results[case]
        assert rank_loss == pytest.approx(loss, rel=1e-5), (case, rank)
        for name, p in model.named_parameters():
            assert torch.allclose(grads[name], p.grad, rtol=1e-4, atol=1e-6), (case, rank, name)


def test_two_process_mocov2_steps_and_queues_equal_one_process(ddp_results):
    steps, queue, ptr = _moco_steps(_moco(), _moco_batches())
    assert len(queue) == 10 and ptr == (MOCO_STEPS * sum(SPLIT)) % 10
    for rank, results in enumerate(ddp_results):
        rank_steps, rank_queue, rank_ptr = results["mocov2"]
        pairs = zip(steps, rank_steps, strict=True)
        for step, ((loss, grads), (rank_loss, rank_grads)) in enumerate(pairs):
            assert rank_loss == pytest.approx(loss, rel=1e-5), (rank, step)
            assert grads.keys() == rank_grads.keys()
            for name, grad in grads.items():
                assert torch.allclose(rank_grads[name], grad, rtol=1e-4, atol=1e-6), (rank, name)
        assert rank_ptr == ptr, rank
        assert torch.allclose(rank_queue, queue, rtol=1e-4, atol=1e-6), rank
    assert torch.equal(ddp_results[0]["mocov2"][1], ddp_results[1]["mocov2"][1])


def test_without_torch_distributed_the_collectives_are_identities():
    x = torch.randn(5, 3, requires_grad=True)
    gathered, offset = distributed.all_gather(x)
    assert gathered is x and offset == 0
    assert distributed.total_count(5) == 5
    assert torch.allclose(distributed.global_mean(x), x.mean(dim=0))


def _losses(run: Path) -> list[float]:
    with open(run / "metrics.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("train/loss")]
    return [float(row["train/loss"]) for row in sorted(rows, key=lambda r: int(r["step"]))]


# MoCo v2 through the engine as well (about a minute more; its steps and queue are checked
# above without the engine, in the default run).
@pytest.mark.parametrize(
    "method", ["ddp_test_mirror", pytest.param("ddp_test_mocov2", marks=pytest.mark.slow)]
)
def test_two_process_pretraining_matches_one_process(tmp_path, method):
    script = Path(__file__).with_name("ddp_pretrain_script.py")
    runs = {"two": ("2", "8"), "one": ("1", "16")}  # the same global batch of 16
    # Both at once; each in its own interpreter, so its test method stays out of this one.
    started = {
        name: subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / name), devices, batch, method],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_repo_env(),
        )
        for name, (devices, batch) in runs.items()
    }
    for name, process in started.items():
        try:
            output, _ = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail(f"the {name}-process pre-training did not finish within 300 s")
        assert process.returncode == 0, output[-4000:]

    two, one = tmp_path / "two", tmp_path / "one"
    rank0, rank1 = (torch.load(two / f"weights-rank{r}.pt") for r in (0, 1))
    single = torch.load(one / "weights-rank0.pt")
    for name, value in rank0.items():
        # DDP keeps the replicas identical; MoCo's queue (a buffer) too, by enqueueing every
        # rank's keys
        assert torch.equal(value, rank1[name]), name
        assert torch.allclose(value, single[name], rtol=1e-4, atol=1e-5), name
    if method == "ddp_test_mocov2":
        assert rank0["queue"].shape == (20, 8) and int(rank0["queue_ptr"]) == (4 * 16) % 20
    losses_two, losses_one = _losses(two), _losses(one)
    assert len(losses_two) == len(losses_one) == 4
    assert losses_two == pytest.approx(losses_one, rel=1e-5)
    summary = (two / "pretrain.json").read_text()
    assert '"processes": 2' in summary and '"global_batch_size": 16' in summary


def test_inconsistent_process_settings_are_refused_with_reasons(monkeypatch):
    with pytest.raises(SelfsupError, match="fsdp.*needs GPUs"):
        PretrainConfig(strategy="fsdp", accelerator="cpu")
    with pytest.raises(SelfsupError, match="one run directory.*--out"):
        PretrainConfig(devices=2)
    with pytest.raises(SelfsupError, match="strategy must be one of"):
        PretrainConfig(strategy="deepspeed")
    with pytest.raises(SelfsupError, match="devices must be at least 1"):
        PretrainConfig(devices=0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(SelfsupError, match="no CUDA GPU"):
        check_processes(PretrainConfig(accelerator="gpu"))
    with pytest.raises(SelfsupError, match="fsdp.*none is visible"):
        check_processes(PretrainConfig(accelerator="auto", strategy="fsdp"))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with pytest.raises(SelfsupError, match="3 CPU processes but this node has 2"):
        check_processes(PretrainConfig(devices=3, out="runs/x"))
    check_processes(PretrainConfig(devices=2, out="runs/x", strategy="ddp"))  # fine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with pytest.raises(SelfsupError, match="this node has 4 GPU"):
        check_processes(PretrainConfig(accelerator="gpu", devices=8, out="runs/x"))
