"""Data-parallel training across processes (torchrun): one process per GPU, or gloo processes on CPUs.

Every rank holds the whole model and sees its slice of each global batch; after each backward the
gradients are averaged over ranks (one flattened all-reduce per network) before the optimizer
step, so all ranks keep identical weights, exactly as DistributedDataParallel does. The reduction
is done here rather than by wrapping the networks in DDP because the gradient penalties
(WGAN-GP, MA-GP) differentiate through D twice and the models call D several times per step,
which DDP's bucketed hooks do not support. Rank 0 alone writes the run directory.
"""

from __future__ import annotations

import functools
import os
import re
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from ganforge.errors import GanforgeError, TrainingError


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


# How long a rank waits in a collective for the others before the run stops: a process that hangs,
# or a node gone from the network without closing its connections, is noticed after this long (a
# process that dies closes them: noticed at once). Rank 0 writing a snapshot, or a rank that drew
# one more block of an evaluation (--metrics), keeps the others waiting that long: raise it for slow
# disks or a folder of millions of images that rank 0 lists at the start.
TIMEOUT_ENV, TIMEOUT_MINUTES = "GANFORGE_COLLECTIVE_TIMEOUT", 10.0


def collective_timeout() -> timedelta:
    """GANFORGE_COLLECTIVE_TIMEOUT (minutes), by default TIMEOUT_MINUTES."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        minutes = float(text) if text else TIMEOUT_MINUTES
    except ValueError:
        minutes = -1.0
    if not 0 < minutes < 1e6:
        raise TrainingError(f"{TIMEOUT_ENV}={text!r}: give the minutes a rank waits for the others in a collective "
                            f"(a number > 0; by default {TIMEOUT_MINUTES:g})")
    return timedelta(minutes=minutes)


def init_from_env(device_name: str) -> tuple[Dist, str]:
    """Join the process group torchrun describes in the environment; returns it and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device_name
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        timeout = collective_timeout()
        joined = {"store": attempt_store(timeout), "rank": rank, "world_size": world} if job_id() else {}
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout, **joined)
    if use_cuda:
        torch.cuda.set_device(local)
        return Dist(rank, world, local), f"cuda:{local}"
    return Dist(rank, world, local), "cpu"


# What gloo and NCCL say when a peer is gone or silent (a timeout, a closed or refused connection).
PEER_LOST = re.compile(r"timed out|connection (closed|reset|refused)|connectFullMesh|NCCL (error|communicator)", re.I)


def peer_lost(e: BaseException) -> bool:
    """Whether an error is a collective's whose peer died, hangs or cannot be reached."""
    said = str(e)
    return (dist.is_initialized() and not isinstance(e, GanforgeError) and PEER_LOST.search(said) is not None
            and (isinstance(e, dist.DistError) or re.search(r"gloo|nccl|c10d", said, re.I) is not None))


def naming_the_rank(train):
    """`train`, whose failed collectives (a peer died, hangs or cannot be reached) stop this rank with
    one line naming it and its node, rather than gloo's or NCCL's traceback."""

    @functools.wraps(train)
    def wrapper(*args, **kwargs):
        try:
            return train(*args, **kwargs)
        except RuntimeError as e:  # torch.distributed's errors are RuntimeErrors
            if not peer_lost(e):
                raise
            said = str(e).strip().splitlines()[0][:300]
            raise TrainingError(f"rank {os.environ.get('RANK', '?')} (node {os.environ.get('GROUP_RANK', '?')}, host "
                                f"{socket.gethostname()}): another process of the run stopped answering ({said}); "
                                f"a rank waits {collective_timeout().total_seconds() / 60:g} min for the others "
                                f"({TIMEOUT_ENV}); the run's latest.pt, if any, is intact") from e

    return wrapper


def attempt_store(timeout: timedelta) -> dist.Store:
    """torchrun's store, with a prefix of this attempt's own. torchrun keeps one store for every
    attempt of a job (since PyTorch 2.5), so workers it restarts (--max-restarts) would read the
    addresses their predecessors published there and fail to connect, now and then (PyTorch issue
    135712). The restart count tells attempts apart on one node; across nodes it does not (each
    node's agent counts its own restarts), so there torchrun must give each attempt a new store
    (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: rank 0's worker serves it), which needs no prefix."""
    shared = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    several_nodes = os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]) != os.environ["WORLD_SIZE"]
    if shared and max_restarts() > 0 and several_nodes:
        raise TrainingError("torchrun --max-restarts on several nodes: set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in "
                            "torchrun's environment on every node, so that restarted workers get a store of their own "
                            "(in the store torchrun shares they find their predecessors' addresses)")
    store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
    return dist.PrefixStore(f"ganforge-attempt-{restart_count() if shared else 'own-store'}/", store)


def restart_count() -> int:
    """How many times torchrun's agent on this node restarted the workers (0: the first attempt, or no torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)


def max_restarts() -> int:
    return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS") or 0)


def job_id() -> str | None:
    """torchrun's id of the job (its --rdzv-id; a new one for each launch with --standalone)."""
    return os.environ.get("TORCHELASTIC_RUN_ID") or None


def average_gradients(module: torch.nn.Module, world_size: int) -> None:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads or world_size <= 1:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world_size
    for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


def rank_slice(batch: torch.Tensor, ddp: Dist) -> torch.Tensor:
    """This rank's share of a global batch (noise drawn for all ranks: the numbers one process would use)."""
    n = batch.shape[0] // ddp.world_size
    return batch[ddp.rank * n:(ddp.rank + 1) * n]


def reduce_mean(t: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size <= 1:
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / world_size


def all_true(flag: bool, world_size: int, device) -> bool:
    if world_size <= 1:
        return flag
    t = torch.tensor(int(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def broadcast_object(obj, world_size: int):
    if world_size <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_object(obj, world_size: int) -> list:
    """Every rank's object, in rank order, on every rank."""
    if world_size <= 1:
        return [obj]
    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_parameters(module: torch.nn.Module, world_size: int) -> None:
    if world_size <= 1:
        return
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src=0)


def barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()
