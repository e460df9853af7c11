"""One run over R processes (torch.distributed, started by torchrun or `trainer.devices`): this process's rank,
its slice of every batch, and the collectives the step and the loop use. R = 1 when alone, and then there are
none at all: a lone process runs exactly what it ran before.

The maths of R ranks is that of one process with the same global batch: every rank draws the whole step's
random numbers from each member's generator and keeps its slice along BATCH_AXIS, so the inputs do not depend
on R; each network's gradients are averaged over the ranks at every update, in one all-reduce of one flat
buffer that the parameters' .grad are views of (GradientBuffer), as StyleGAN3 does it (no DDP wrapper). Flags
ride in the same all-reduce: which members' losses were not finite (on_nan=skip) and which stop signal a rank
caught, so every rank makes the same decision at the same step and none enters a collective alone.
"""
import json
import os
import signal
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

BATCH_AXIS = 2  # of every step input: (K members, the step's updates, B, ...) -- real, z, labels, every draw
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)  # a stop flag slot each (loop.STOP_SIGNALS, submitit's)


@dataclass(frozen=True)
class Ranks:
    """This process among the R processes of one run: its rank (0 writes every file), R, its rank on this machine."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def alone(self) -> bool:
        return self.world == 1

    @property
    def writes(self) -> bool:
        """Rank 0 writes log lines, metrics, samples, checkpoints, status and tracker runs; the others none."""
        return self.rank == 0

    def part(self, n: int) -> slice:
        """This rank's rows of a batch of n (n divides by R: checked with the config)."""
        size = n // self.world
        return slice(self.rank * size, (self.rank + 1) * size)

    def mean_(self, t: torch.Tensor) -> torch.Tensor:
        """t averaged over the ranks, in place (t contiguous)."""
        if not self.alone:
            dist.all_reduce(t)
            t.div_(self.world)
        return t

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's t (the same shape on each), concatenated along dim 0 in rank order, on every rank."""
        if self.alone:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def broadcast_(self, tensors) -> None:
        """Rank 0's values of these tensors on every rank (in place)."""
        for t in tensors if not self.alone else ():
            dist.broadcast(t, 0)

    def first(self, fn):
        """fn() on rank 0, then on the others: what rank 0 computes once and caches (a prepared folder, a feature
        network) the others then find."""
        if self.alone:
            return fn()
        out = fn() if self.writes else None
        dist.barrier()
        return out if self.writes else fn()

    def share(self, obj):
        """Rank 0's obj (plain JSON values) on every rank; the others pass None. As JSON bytes, never a pickle."""
        if self.alone:
            return obj
        payload = torch.tensor(bytearray(json.dumps(obj).encode()) if self.writes else bytearray(), dtype=torch.uint8)
        size = torch.tensor([len(payload)], dtype=torch.long)
        dist.broadcast(size, 0)
        payload = payload if self.writes else torch.empty(int(size), dtype=torch.uint8)
        dist.broadcast(payload, 0)
        return json.loads(bytes(payload.tolist()).decode())


ALONE = Ranks()


def current() -> Ranks:
    """This process's place: torch.distributed's default group when one is initialised, else alone."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return ALONE


class GradientBuffer:
    """One network's gradients for K members as views of one preallocated buffer, set as the parameters' .grad
    (with the parameters' own strides), so backward accumulates into it, the all-reduce sums it in one call and
    the optimizers read it as it is: no concatenation or split per update. After the (K, N) gradients, (K, FLAGS)
    flags: whether member k's loss was not finite (column 0), and the stop signals a rank caught (row 0, one
    column each)."""

    FLAGS = 1 + len(SIGNALS)

    def __init__(self, params: list[torch.Tensor], split, rows: int, ranks: Ranks):
        """split: (rows, N) -> one view per parameter, laid out as that parameter is."""
        n = sum(p[0].numel() if rows > 1 else p.numel() for p in params) if params else 0
        self.ranks = ranks
        self.whole = torch.zeros(rows * (n + self.FLAGS), dtype=params[0].dtype, device=params[0].device)
        self.grad, self.flags = self.whole[:rows * n].view(rows, n), self.whole[rows * n:].view(rows, self.FLAGS)
        for p, view in zip(params, split(self.grad)):
            p.grad = view

    def backward(self, loss: torch.Tensor, params: list[torch.Tensor], check_finite: bool, stop: int = 0):
        """The gradients of loss.sum() (loss: (K,)) for `params`, averaged over the ranks; returns which members'
        losses were not finite on any rank ((K,) bool) when check_finite, else None. stop: the signal this rank
        caught (0: none), which every rank then reads from agreed_stop()."""
        self.whole.zero_()
        with warnings.catch_warnings():  # a stack's leaves are strided views of its (K, N) parameters, and so are
            warnings.filterwarnings("ignore", message="grad and param do not obey")  # their grads: by design
            loss.sum().backward(inputs=params)
        bad = ~torch.isfinite(loss.detach()) if check_finite else None
        if self.ranks.alone:
            return bad
        if bad is not None:
            self.flags[:, 0] = bad.to(self.flags.dtype)
        if stop:
            self.flags[0, 1 + SIGNALS.index(stop)] = 1
        dist.all_reduce(self.whole)
        self.grad.div_(self.ranks.world)
        return None if bad is None else self.flags[:, 0] > 0

    def agreed_stop(self) -> int:
        """The stop signal any rank caught (0: none), the same on every rank: from the last update on a CPU; on
        CUDA from the update before, copied to the host without waiting, so no host sync is added to a step
        (a stop lands one step later, on every rank alike)."""
        if self.flags.device.type != "cuda":
            return first_signal(self.flags[0, 1:].tolist())
        caught = 0
        if getattr(self, "copied", None) is not None:
            self.copied.synchronize()  # the previous step's copy: done by now, or nearly
            caught = first_signal(self.host.tolist())
        else:
            self.host = torch.empty(len(SIGNALS), dtype=self.flags.dtype, pin_memory=True)
        self.host.copy_(self.flags[0, 1:], non_blocking=True)
        self.copied = torch.cuda.Event()
        self.copied.record()
        return caught


def first_signal(flags: list[float]) -> int:
    return next((int(s) for s, n in zip(SIGNALS, flags) if n > 0), 0)
