"""Where a sweep's stacks train: here, one after another (a CPU, one GPU); in one process per GPU when a
machine has several (each GPU trains its share of the stacks); or on Slurm through submitit, one Slurm
job per stack, requeued after pre-emption or time-out with every member continuing from its checkpoint.
"""
import logging
import multiprocessing
import signal

import torch

from gantrain.engine.jobs import Job, plan_stacks, train_group, train_with_status
from gantrain.errors import UserError
from gantrain.outputs.status import read_status
from gantrain.processes import console_logging
from gantrain.ranks import RankLost, export_slurm_environment, join, launched_as_ranks

log = logging.getLogger("gantrain")


def stack_cost(stack: list[Job]) -> int:
    """A stack's work, for balancing devices: members x epochs x D updates per step (its data is shared)."""
    cfg = stack[0].cfg
    return len(stack) * cfg.epochs * cfg.n_critic


def assign_devices(stacks: list[list[Job]], n_devices: int) -> list[int]:
    """The device (0 .. n_devices - 1) each stack trains on: the largest stacks first, each to the device
    with the least work so far, so the devices finish close together."""
    load, device = [0] * n_devices, [0] * len(stacks)
    for i in sorted(range(len(stacks)), key=lambda i: -stack_cost(stacks[i])):
        device[i] = min(range(n_devices), key=load.__getitem__)
        load[device[i]] += stack_cost(stacks[i])
    return device


def gpus_for(stacks: list[list[Job]]) -> int:
    """How many GPUs the stacks may spread over: all visible ones, when every job says device=auto or cuda."""
    if all(str(j.cfg.device) in ("auto", "cuda") for stack in stacks for j in stack):
        return torch.cuda.device_count()
    return 0


def train_here(stacks: list[list[Job]]) -> None:
    """Stacks one after another in this process; with several GPUs, one process per GPU (spawned: a parent
    holding CUDA must not fork), each training the stacks assign_devices gave it on its own device."""
    n = gpus_for(stacks)
    if n <= 1 or len(stacks) == 1:
        for stack in stacks:
            train_with_status(stack)
        return
    devices = assign_devices(stacks, n)
    for stack, device in zip(stacks, devices):
        for job in stack:
            job.cfg.device = f"cuda:{device}"
    log.info(f"{len(stacks)} stacks over {n} GPUs: " + ", ".join(f"cuda:{d} {devices.count(d)}" for d in range(n)))
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=train_on_device, args=([s for s, d in zip(stacks, devices) if d == gpu],),
                               name=f"gantrain-cuda:{gpu}") for gpu in range(n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def train_on_device(stacks: list[list[Job]]) -> None:
    """A spawned worker: its stacks, one after another (their log lines to this console)."""
    console_logging()
    for stack in stacks:
        train_with_status(stack)


class StackJob:
    """One stack as a Slurm job (submitit calls it on the node: on every task of a multi-task job, each a rank
    of one run over several devices). Under submitit, SIGUSR2 means pre-emption or time-out (SIGTERM, which
    comes first on pre-emption, is left to submitit, which ignores it): every rank stops at the same step, rank 0
    saves a mid-epoch checkpoint for every member, and only then is submitit's own handler called, which asks
    checkpoint() for the resubmission and requeues the job (on global rank 0; the others just return). Run again,
    each member continues from its own checkpoint, in its own dir."""

    def __init__(self, jobs: list[Job]):
        self.jobs = jobs

    def __call__(self) -> dict:
        requeue = signal.getsignal(signal.SIGUSR2)  # submitit's: checkpoint() + scontrol requeue + exit
        ranks = None
        if launched_as_ranks():  # hydra.launcher.tasks_per_node / nodes > 1: this task is one rank
            export_slurm_environment()
            ranks = join()
        if ranks is None or ranks.writes:
            console_logging()
        try:
            for stack in self.stacks(ranks):
                if ranks is None or ranks.writes:
                    train_with_status(stack, stop_signals=(signal.SIGUSR2,))
                else:
                    try:
                        train_group(stack, stop_signals=(signal.SIGUSR2,))
                    except UserError as e:
                        if isinstance(e, RankLost):
                            raise
                        continue  # rank 0 marks the stack failed and says why; the sweep goes on
        except SystemExit as e:
            if e.code == 128 + signal.SIGUSR2 and callable(requeue):
                requeue(signal.SIGUSR2, None)
                if ranks is not None and not ranks.writes:
                    return {}  # as submitit wants of its other tasks: rank 0 requeues the job
            raise
        if ranks is not None:
            ranks.wait()
        return {str(j.run_dir): read_status(j.run_dir).get("state") for j in self.jobs}

    def stacks(self, ranks) -> list[list[Job]]:
        """The stacks to train: planned by rank 0 (it continues each job in its dir), shared with the others."""
        if ranks is None:
            return plan_stacks(self.jobs, in_place=True)
        planned = plan_stacks(self.jobs, in_place=True) if ranks.writes else None
        shared = ranks.share([[j.described() for j in stack] for stack in planned] if ranks.writes else None)
        return planned if ranks.writes else [[Job.from_description(d) for d in stack] for stack in shared]

    def checkpoint(self, *args, **kwargs):
        """What submitit resubmits after pre-emption: the same stack (its members resume in place)."""
        import submitit

        return submitit.helpers.DelayedSubmission(StackJob(self.jobs))


def submit_to_slurm(stacks: list[list[Job]], folder: str, parameters: dict, max_num_timeout: int,
                    nodes: int = 1, tasks_per_node: int = 1) -> None:
    """One Slurm job per stack (submitit), waited for; parameters go to submitit's AutoExecutor as they are
    (timeout_min, gpus_per_node, cpus_per_task, mem_gb, slurm_partition, ...). nodes x tasks_per_node > 1: each
    stack is one run over that many ranks (one task each, as srun starts them). Each member's status.json
    says how it ended; a Slurm job that ended without a result (cancelled, a lost node) is logged, and its
    members read as `died` (no heartbeat) until resume=auto finishes them."""
    try:
        import submitit
    except ImportError:
        raise UserError("hydra.launcher.executor=slurm needs submitit: pip install 'gantrain[sweep]'") from None
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=max_num_timeout)
    executor.update_parameters(name="gantrain-stack", nodes=nodes, tasks_per_node=tasks_per_node, **parameters)
    submitted = [executor.submit(StackJob(stack)) for stack in stacks]
    for stack, job in zip(stacks, submitted):
        log.info(f"Slurm job {job.job_id}: jobs {','.join(j.name for j in stack)} (K={len(stack)})")
    for stack, job in zip(stacks, submitted):
        try:
            job.results()  # every task's: a stack on several ranks is one task each
        except Exception as e:  # submitit's errors carry the remote traceback: one line of it here
            log.error(f"Slurm job {job.job_id} (jobs {','.join(j.name for j in stack)}) ended without a result: "
                      f"{str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__}")


def launch_stacks(jobs: list[Job], executor: str, max_members: int | None, slurm: dict, folder: str,
                  max_num_timeout: int, nodes: int = 1, tasks_per_node: int = 1) -> None:
    """A sweep's jobs into stacks of at most max_members (Slurm: 64 unless set), trained where `executor` says."""
    if executor not in ("local", "slurm"):
        raise UserError(f"hydra.launcher.executor must be local or slurm, got {executor!r}")
    if executor != "slurm" and nodes * tasks_per_node != 1:
        raise UserError(f"hydra.launcher.nodes={nodes} and tasks_per_node={tasks_per_node} are Slurm's: add "
                        f"hydra.launcher.executor=slurm (a run on several devices here: trainer.devices)")
    cap = max_members or (64 if executor == "slurm" else None)
    stacks = [s[i:i + cap] if cap else s for s in plan_stacks(jobs) for i in range(0, len(s), cap or len(s))]
    if executor == "slurm":
        submit_to_slurm(stacks, folder, slurm, max_num_timeout, nodes, tasks_per_node)
    else:
        train_here(stacks)
