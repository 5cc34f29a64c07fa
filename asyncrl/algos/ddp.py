"""Data-parallel learners: N processes train one model with torch.distributed (NCCL between GPUs,
gloo on the CPU), as rlpyt's synchronous multi-GPU optimization does.

Every learner holds the same model, optimizer and (off-policy) replay, is handed every sampler
batch, and runs the same ``optimize`` on it. The only places where the learners differ are the
minibatches: each computes its loss on its share (``shard``), and the gradients are averaged
(``reduce_gradients``) before clipping and the optimizer step, so every learner takes the same
step and the models never drift apart. Whatever the loss normalises over a whole minibatch
(PPO's advantage standardisation, a masked mean's step count, the KL that stops the epochs
early) is reduced over the learners, and off-policy learners exchange their shares' new
priorities so that the replicas stay equal. Two learners on halves of a minibatch therefore
take the step one learner takes on all of it (float tolerance; tests/algos/test_ddp.py).

Owns the process group of this process (``init_group``, module state like torch.distributed's
own), those hooks (identity without a group, so the algorithms call them unconditionally), and
the command stream from learner 0 to the others (``DataParallel``, ``serve``). Starting the
processes is the runners' (runners/learners.py); this module never starts one.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class LearnerGroup:
    rank: int
    world: int
    device: torch.device
    objects: Any  # a gloo group for commands and batches (pickled: only between our learners)


_group: LearnerGroup | None = None


def init_group(
    rank: int, world: int, init_method: str, device: str | torch.device, timeout_s: float = 1800.0
) -> LearnerGroup:
    """Join the learners' process group as ``rank`` of ``world``: NCCL for CUDA devices (one
    per learner), gloo otherwise; commands always travel over a gloo group."""
    global _group
    device = torch.device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=world, timeout=timeout
    )
    objects = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    _group = LearnerGroup(rank, world, device, objects)
    return _group


def active() -> LearnerGroup | None:
    """This process's learner group, or None (one learner)."""
    return _group


def shutdown() -> None:
    global _group
    if _group is not None:
        _group = None
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a peer already gone: nothing left to tear down
            pass


# -- the hooks the algorithms call --------------------------------------------------------
def shard(x: Any) -> Any:
    """This learner's share of a minibatch: the rank-th of ``world`` equal parts along the
    leading dim of every leaf (a tensor, an index vector or a namedarraytuple). Identity with
    one learner."""
    g = _group
    if g is None or x is None:
        return x
    n = _leading(x)
    if n % g.world:
        raise ValueError(
            f"a minibatch of {n} does not split evenly over {g.world} learners; choose a "
            f"batch or minibatch size divisible by the number of learners"
        )
    return x[g.rank * (n // g.world) : (g.rank + 1) * (n // g.world)]


def normal_share(shape: tuple[int, ...], device: torch.device) -> torch.Tensor | None:
    """Standard normal noise for this learner's share of a minibatch whose share has
    ``shape``: the whole minibatch's draw (from the torch RNG, which learner 0 hands to the
    others with every batch), then sharded, so that it matches one learner's draw. None with
    one learner (the caller draws as it always did)."""
    g = _group
    if g is None:
        return None
    return shard(torch.randn((shape[0] * g.world, *shape[1:]), device=device))


def shard_chunks(index: torch.Tensor) -> torch.Tensor:
    """This learner's share of a minibatch of whole sequences (an index vector of chunks): as
    even as they split. The masked means (``global_count``) make an uneven split exact."""
    g = _group
    if g is None:
        return index
    if index.numel() < g.world:
        raise ValueError(
            f"a minibatch of {index.numel()} sequences cannot be shared by {g.world} learners; "
            f"use fewer minibatches or more envs"
        )
    return torch.tensor_split(index, g.world)[g.rank]


def reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over the learners (one all-reduce of them all,
    flattened), before clipping and the step. Parameters without a gradient are left out (the
    same on every learner: they run the same code)."""
    g = _group
    if g is None:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([x.reshape(-1) for x in grads])
    dist.all_reduce(flat)
    flat /= g.world
    offset = 0
    for x in grads:
        n = x.numel()
        x.copy_(flat[offset : offset + n].view_as(x))
        offset += n


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over the learners (a new tensor; ``x`` itself with one learner)."""
    if _group is None:
        return x
    out = x.detach().clone()
    dist.all_reduce(out)
    return out


def all_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over the learners."""
    if _group is None:
        return x
    return all_sum(x) / _group.world


def standardize(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(x - mean) / (std + 1e-8) over the whole minibatch, all learners' shares together
    (unbiased std, as ``Tensor.std``); with ``mask`` over its real steps only, padding 0."""
    m = torch.ones_like(x) if mask is None else mask
    sums = all_sum(torch.stack([(x * m).sum(), m.sum()]))
    mu = sums[0] / sums[1].clamp_min(1.0)
    var = all_sum(((x - mu).pow(2) * m).sum()) / (sums[1] - 1).clamp_min(1.0)
    out = (x - mu) / (var.sqrt() + 1e-8)
    return out if mask is None else out * mask


def global_count(mask: torch.Tensor) -> torch.Tensor:
    """Real steps of a masked minibatch over all learners, scaled so that a local
    ``(x * mask).sum() / global_count(mask)`` averaged over the learners is the whole
    minibatch's masked mean."""
    if _group is None:
        return mask.sum().clamp_min(1.0)
    return all_sum(mask.sum()).clamp_min(1.0) / _group.world


def gather(x: torch.Tensor) -> torch.Tensor:
    """Every learner's ``x`` (same shape) concatenated in rank order along dim 0."""
    g = _group
    if g is None:
        return x
    parts = [torch.empty_like(x) for _ in range(g.world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def _leading(x: Any) -> int:
    if torch.is_tensor(x):
        return int(x.shape[0])
    from asyncrl.data import tree_leaves

    return int(next(iter(tree_leaves(x))).shape[0])


# -- learner 0 -> the others --------------------------------------------------------------
def broadcast(obj: Any = None) -> Any:
    """Learner 0's ``obj`` on every learner (pickled over the gloo group: only our own
    learners are in it)."""
    g = _group
    box = [obj if g.rank == 0 else None]
    dist.broadcast_object_list(box, src=0, group=g.objects)
    return box[0]


class DataParallel:
    """Learner 0's algorithm: each ``optimize`` first hands the batch (and the torch RNG state,
    so that random draws inside the update agree) to the other learners, which run the same
    update (``serve``); everything else is the algorithm's.

    ``check(wait_s)``: raises a clear error if another learner has exited (waiting up to
    ``wait_s`` for one to be seen gone); called before each batch, and after a failed
    collective, whose own message ("connection closed by peer") does not say which."""

    def __init__(self, algo: Any, check=None):
        self.algo = algo
        self._check = check

    def optimize(self, batch, progress: float) -> dict[str, float]:
        if self._check is not None:
            self._check(0.0)
        try:
            broadcast(("optimize", batch, progress, _rng_state()))
            return self.algo.optimize(batch, progress)
        except RuntimeError:
            if self._check is not None:
                self._check(5.0)
            raise

    def stop(self) -> None:
        """Tell the other learners to exit (best effort: they also exit when this one does)."""
        try:
            broadcast(("stop", None, None, None))
        except Exception:  # noqa: BLE001 - a learner already gone
            pass

    def __getattr__(self, name: str) -> Any:  # updates, replay, state_dict, close, ...
        return getattr(self.__dict__["algo"], name)


def _rng_state() -> tuple:
    g = _group
    cuda = torch.cuda.get_rng_state(g.device) if g.device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, _group.device)


def share_state(agent: Any, algo: Any) -> None:
    """Learner 0's parameters, normaliser statistics and algorithm state (a resume's too) on
    every learner, so that they start equal."""
    g = _group
    state = None
    if g.rank == 0:  # on the CPU: unpickled, a CUDA tensor would land on learner 0's GPU
        state = _to_cpu((agent.state_tensors(), agent.policy_version, algo.state_dict()))
    tensors, version, algo_state = broadcast(state)
    if g.rank != 0:
        agent.load_state_tensors(tensors, version)
        algo.load_state_dict(algo_state)


def _to_cpu(x: Any) -> Any:
    if torch.is_tensor(x):
        return x.detach().cpu()
    if isinstance(x, dict):
        return type(x)((k, _to_cpu(v)) for k, v in x.items())
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return type(x)(_to_cpu(v) for v in x)
    return x


def serve(algo: Any) -> int:
    """The loop of learners 1..N-1: run every batch learner 0 hands out until it says stop.
    Returns the number of batches learned."""
    done = 0
    while True:
        command, batch, progress, rng = broadcast()
        if command == "stop":
            return done
        _set_rng_state(rng)
        algo.optimize(batch, progress)
        done += 1
