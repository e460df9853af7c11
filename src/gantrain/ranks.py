"""One run over R processes (torch.distributed, started by torchrun or `trainer.devices`): this process's rank,
its slice of every batch, and the collectives the step and the loop use. R = 1 when alone, and then there are
none at all: a lone process runs exactly what it ran before.

The maths of R ranks is that of one process with the same global batch: every rank draws the whole step's
random numbers from each member's generator and keeps its slice along BATCH_AXIS, so the inputs do not depend
on R; each network's gradients are averaged over the ranks at every update, in one all-reduce of one flat
buffer that the parameters' .grad are views of (GradientBuffer), as StyleGAN3 does it (no DDP wrapper). Flags
ride in the same all-reduce: which members' losses were not finite (on_nan=skip) and which stop signal a rank
caught, so every rank makes the same decision at the same step and none enters a collective alone.

Two clocks bound the waiting: the step's collectives (gradients, log lines, evaluation features) run in a group
with trainer.dist_timeout_s, so a rank that died or hangs ends the others within it; what rank 0 does alone
while the others wait (preparing data, training a feature network, the real side of an evaluation, writing a
checkpoint) is waited for in the default group, with LONG_PHASES_S. A collective that fails is one line naming
the rank that is gone (RankLost), and nothing is saved after it: the members' generators have advanced for a
step that never applied.
"""
import json
import os
import random
import re
import signal
import socket
import subprocess
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from gantrain.errors import UserError

BATCH_AXIS = 2  # of every step input: (K members, the step's updates, B, ...) -- real, z, labels, every draw
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)  # a stop flag slot each (loop.STOP_SIGNALS, submitit's)
LONG_PHASES_S = 4 * 3600  # rank 0 alone: decoding a photo folder, training a feature network, 50,000 Inception passes


class RankLost(UserError):
    """A collective of the run failed: a rank died (kill -9, out of memory, a lost node) or hung past the timeout."""


@dataclass(frozen=True)
class Ranks:
    """This process among the R processes of one run: its rank (0 writes every file), R, its rank on this machine,
    and the process group of the step's collectives (None: the default group)."""

    rank: int = 0
    world: int = 1
    local: int = 0
    group: object = None

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

    def collective(self, op, *args, **kwargs):
        """A torch.distributed call in the step's group; its failure is one line naming the rank that is gone."""
        try:
            return op(*args, **kwargs, group=self.group)
        except RuntimeError as e:  # gloo: "Connection closed by peer", NCCL: DistBackendError, a timeout
            raise self.lost(e) from None

    def mean_(self, t: torch.Tensor) -> torch.Tensor:
        """t averaged over the ranks, in place (t contiguous)."""
        if not self.alone:
            self.collective(dist.all_reduce, t)
            t.div_(self.world)
        return t

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's t (the same shape on each), concatenated along dim 0 in rank order, on every rank."""
        if self.alone:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        self.collective(dist.all_gather, parts, t.contiguous())
        return torch.cat(parts)

    def broadcast_(self, tensors) -> None:
        """Rank 0's values of these tensors on every rank (in place)."""
        for t in tensors if not self.alone else ():
            self.collective(dist.broadcast, t, 0)

    def wait(self) -> None:
        """Every rank here before any goes on, however long rank 0 worked alone before (LONG_PHASES_S)."""
        if not self.alone:
            try:
                dist.barrier()  # the default group, joined with the long timeout
            except RuntimeError as e:
                raise self.lost(e) from None

    def first(self, fn):
        """fn() on rank 0, then on the others: what rank 0 computes once and caches (a prepared folder, a feature
        network) the others then find."""
        if self.alone:
            return fn()
        out = fn() if self.writes else None
        self.wait()
        return out if self.writes else fn()

    def share(self, obj):
        """Rank 0's obj (plain JSON values) on every rank; the others pass None. As JSON bytes, never a pickle.
        In the default group: the others may wait for it as long as rank 0 takes to prepare a job."""
        if self.alone:
            return obj
        payload = torch.tensor(bytearray(json.dumps(obj).encode()) if self.writes else bytearray(), dtype=torch.uint8)
        size = torch.tensor([len(payload)], dtype=torch.long)
        try:
            dist.broadcast(size, 0)
            payload = payload if self.writes else torch.empty(int(size), dtype=torch.uint8)
            dist.broadcast(payload, 0)
        except RuntimeError as e:
            raise self.lost(e) from None
        return json.loads(bytes(payload.tolist()).decode())

    def differ(self, digest: bytes) -> list[int]:
        """The ranks whose digest (32 bytes) differs from rank 0's, on every rank."""
        if self.alone:
            return []
        mine = torch.tensor(list(digest), dtype=torch.uint8)
        every = [torch.empty_like(mine) for _ in range(self.world)]
        try:
            dist.all_gather(every, mine)
        except RuntimeError as e:
            raise self.lost(e) from None
        return [r for r, d in enumerate(every) if not torch.equal(d, every[0])]

    def with_timeout(self, seconds: float) -> "Ranks":
        """These ranks with a group of their own for the step's collectives, bounded by `seconds` (every rank
        calls this at the same point: making a group is itself collective)."""
        if self.alone:
            return self
        return Ranks(self.rank, self.world, self.local, dist.new_group(timeout=timedelta(seconds=seconds)))

    def lost(self, error: Exception) -> RankLost:
        """The one line for a failed collective: which rank is gone, where that can be told."""
        gone = [r for r, (host, pid) in where_ranks_are().items() if host == socket.gethostname() and not alive(pid)]
        who = (f"rank {', '.join(map(str, gone))} of {self.world} (on this machine) died" if gone else
               f"a rank of the {self.world} died or hung")
        detail = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        detail = re.sub(r"^\[[^\]]*\]\s*", "", detail).split(". This is typically")[0]  # gloo's source file and advice
        return RankLost(f"{who}: a collective of the run failed ({detail[:160]}); nothing was saved after the last "
                        f"checkpoint; continue from it with resume=auto (or resume=<run dir>/checkpoints/last.pt)")


ALONE = Ranks()


def current() -> Ranks:
    """This process's place: torch.distributed's default group when one is initialised, else alone."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return ALONE


def join() -> Ranks:
    """Join the ranks of the environment (env://: torchrun's, or trainer.devices' and Slurm's, exported as it):
    NCCL for CUDA tensors where there is a GPU, gloo for the CPU's. Each rank leaves its host and pid in the
    rendezvous store, so that a rank that dies can be named."""
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    backend = os.environ.get("GANTRAIN_DIST_BACKEND", backend)  # gloo: several ranks on one GPU (gpu_checks.sh)
    timeout = timedelta(seconds=LONG_PHASES_S)
    met, rank, world = next(dist.rendezvous("env://", timeout=timeout))
    # torchrun's agent keeps one store across the restarts of --max-restarts: without a prefix of its own, a
    # restarted rank can read a dead rank's address and fail to connect (seen here in 3 restarts of 9)
    met = dist.PrefixStore(f"gantrain/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", met)
    dist.init_process_group(backend, store=met, rank=rank, world_size=world, timeout=timeout)
    ranks = current()
    store().set(f"gantrain/rank/{ranks.rank}", f"{socket.gethostname()}:{os.getpid()}")
    return ranks


def launched_as_ranks() -> bool:
    """Whether torchrun (or another env:// launcher) started this process as one of several ranks, or srun as one
    of several tasks of a step (the batch script itself, one process, is not)."""
    torchrun = "RANK" in os.environ and (int(os.environ.get("WORLD_SIZE", "1")) > 1 or "TORCHELASTIC_RUN_ID" in os.environ)
    srun = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in os.environ and "SLURM_PROCID" in os.environ
    return torchrun or srun


def export_slurm_environment() -> None:
    """env:// from Slurm's variables, as submitit's helpers.TorchDistributedEnvironment().export() makes it: the
    rank and world from SLURM_PROCID / SLURM_NTASKS, the local rank from SLURM_LOCALID, the master the job's first
    node, the port drawn from the job id (every task draws the same); each task sees only its own GPU
    (CUDA_VISIBLE_DEVICES: of those Slurm gave the job, the local rank's), so its device is cuda:0."""
    if "RANK" in os.environ:
        return  # torchrun (or the user) said already
    nodes = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]], capture_output=True,
                           text=True, check=True).stdout.split()
    local = int(os.environ.get("SLURM_LOCALID", "0"))
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    os.environ.update(MASTER_ADDR=nodes[0], MASTER_PORT=os.environ.get("MASTER_PORT") or str(
        random.Random(os.environ["SLURM_JOB_ID"]).randint(20000, 60000)), RANK=os.environ["SLURM_PROCID"],
        WORLD_SIZE=os.environ["SLURM_NTASKS"], LOCAL_RANK=str(local))
    if torch.cuda.is_available() and len(visible) != 1:  # one GPU a task, unless Slurm bound it already
        os.environ["CUDA_VISIBLE_DEVICES"] = visible[local] if len(visible) > local else str(local)


def store():
    return dist.distributed_c10d._get_default_store()


def where_ranks_are() -> dict[int, tuple[str, int]]:
    """Each rank's (host, pid), from the rendezvous store (empty where the store went with rank 0)."""
    found = {}
    try:
        for r in range(dist.get_world_size()):
            host, pid = store().get(f"gantrain/rank/{r}").decode().rsplit(":", 1)
            found[r] = (host, int(pid))
    except Exception:  # noqa: BLE001  (rank 0 hosts the store: gone with it)
        pass
    return found


def alive(pid: int) -> bool:
    """Whether process pid of this host runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except OSError:
            return True


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
        self.ranks.collective(dist.all_reduce, self.whole)
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
