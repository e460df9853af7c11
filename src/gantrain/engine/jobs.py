"""Jobs into stacks: each job is prepared (resume=auto, a checkpoint to continue from, its config checked),
the jobs that may share a stack are grouped (plan.py), and each group trains in chunks that fit the
device, through the one loop (loop.py). A lone `gantrain train` is one job in a stack of one."""
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from gantrain.components.data import load_data
from gantrain.data.tensors import TensorData
from gantrain.config import check_train_config, config_for_resume, devices_of, kwargs_of, pick_device, user_path
from gantrain.engine.build import build_stack, check_model_takes_data, classes_of, set_matmul_precision
from gantrain.ranks import ALONE, Ranks, current
from gantrain.engine.loop import STOP_SIGNALS, fit
from gantrain.engine.member import Member, Where
from gantrain.engine.plan import free_bytes, member_bytes, plan
from gantrain.engine.resume import auto_resume, carry_metrics, logged_up_to
from gantrain.errors import UserError
from gantrain.evaluation.cards import network_card
from gantrain.evaluation.evaluate import check_reference, evaluable, feature_space
from gantrain.evaluation.stats_files import read_stats
from gantrain.outputs.checkpoint import load_checkpoint
from gantrain.outputs.status import job_status, read_status, write_status

log = logging.getLogger("gantrain")


@dataclass
class Job:
    """One run: its config, its run dir, the command-line overrides that made it (what makes it the same
    job for resume=auto) and its name in a sweep; after prepare(), the checkpoint it resumes from."""

    cfg: DictConfig
    run_dir: Path
    overrides: list[str] = field(default_factory=list)
    name: str = ""
    own_log: bool = False  # write train.log itself, lines on the console prefixed by its name (a sweep's job)
    ckpt: dict | None = None
    logged_up_to: dict | None = None  # the last steps the run it resumes logged (resume.logged_up_to)

    @property
    def resumed_at(self) -> tuple | None:
        return None if self.ckpt is None else (self.ckpt["epoch"], self.ckpt["step"], self.ckpt.get("position", 0))

    def described(self) -> dict:
        """The prepared job as plain values, for the other ranks of a run on several devices (they never run Hydra)."""
        return {"cfg": OmegaConf.to_container(self.cfg, resolve=True), "run_dir": str(self.run_dir),
                "overrides": self.overrides, "name": self.name, "own_log": self.own_log, "logged_up_to": self.logged_up_to}

    @classmethod
    def from_description(cls, d: dict) -> "Job":
        job = cls(OmegaConf.create(d["cfg"]), Path(d["run_dir"]), d["overrides"], d["name"], d["own_log"],
                  logged_up_to=d["logged_up_to"])
        job.ckpt = load_checkpoint(user_path(job.cfg.resume)) if job.cfg.resume else None  # each rank reads it
        return job


def prepare(job: Job, multirun: bool) -> bool:
    """Resolve resume (auto or a path) and check the config; False when an earlier run of the job finished
    (resume=auto adopted its results and marked it done)."""
    if (job.run_dir / "checkpoints" / "last.pt").exists():
        raise UserError(f"{job.run_dir} already holds a run's checkpoint; choose another run dir (hydra.run.dir)")
    ckpt = None
    if job.cfg.resume == "auto":
        done, score, ckpt = auto_resume(job.cfg, job.run_dir, job.overrides, multirun)
        if done:
            write_status(job.run_dir, "done", **({} if score is None else {"metric": score}))
            return False
    if job.cfg.resume:
        resume_from(job, user_path(job.cfg.resume), ckpt)
    check_train_config(job.cfg)
    devices_of(job.cfg, multirun)
    check_model_takes_data(job.cfg)
    return True


def resume_from(job: Job, path: Path, ckpt: dict | None = None) -> None:
    """Continue the job from the checkpoint at `path` (`ckpt`: that file, when already read)."""
    job.ckpt = load_checkpoint(path) if ckpt is None else ckpt
    job.cfg = config_for_resume(job.ckpt, job.cfg, job.overrides, path)
    job.cfg.resume = str(path)  # what it continues from (the checkpoint's own config says where *it* started)
    job.logged_up_to = logged_up_to(path.parent.parent)  # before its metrics.csv is cut back to the checkpoint


def continue_in_place(job: Job) -> bool:
    """A job run again in its own dir (a requeued Slurm stack): False if it had ended; else it continues from
    its own last checkpoint, if it has one, and its metrics.csv keeps the rows up to that checkpoint."""
    if read_status(job.run_dir).get("state") in ("done", "failed"):
        return False
    last = job.run_dir / "checkpoints" / "last.pt"
    if last.exists():
        job.cfg.resume = str(last)
        resume_from(job, last)
        carry_metrics(job.run_dir, job.run_dir, job.ckpt["step"])
    check_train_config(job.cfg)
    return True


def plan_stacks(jobs: list[Job], multirun: bool = True, in_place: bool = False) -> list[list[Job]]:
    """A sweep's jobs prepared one by one (a bad one fails alone, with its status) and grouped into stacks
    (plan.py); the plan goes to the log. in_place: the jobs continue in their own dirs (continue_in_place)."""
    ready = []
    for job in jobs:
        with job_status([job.run_dir], keep_going=True, what=f"job {job.name}"):
            if continue_in_place(job) if in_place else prepare(job, multirun):
                ready.append(job)
    stacks = []
    for members, reason in plan([j.cfg for j in ready], [j.resumed_at for j in ready]):
        names = ",".join(ready[i].name for i in members)
        log.info(f"  jobs {names}: " + (f"one at a time ({reason})" if reason else f"one stack (K={len(members)})"))
        stacks += [[ready[i]] for i in members] if reason else [[ready[i] for i in members]]
    return stacks


_shared: list[bool] = []  # rank 0 under torchrun: whether it shared its job (or its refusal) with the others


def job_shared() -> bool:
    return bool(_shared)


def train(cfg: DictConfig, run_dir: Path, overrides: list[str], multirun: bool = False) -> float | None:
    """Train one job (resuming from cfg.resume if set); artifacts go to run_dir. Returns its metric; a
    member that diverged ends it with its one-line UserError. On several devices (torchrun) this is rank 0,
    which composed and prepares the job and shares it with the others (follow)."""
    job, ranks = Job(cfg, run_dir, overrides), current()
    try:
        ready = prepare(job, multirun)
    except BaseException:
        if not ranks.alone:
            _shared.append(True)
            ranks.share(None)  # the other ranks stop too; this one says why
        raise
    if not ranks.alone:
        _shared.append(True)
        ranks.share(job.described() if ready else None)
    if not ready:
        return read_status(run_dir).get("metric")  # an earlier run of this job finished: its metric
    return outcome(train_group([job])[0])


def outcome(member: Member) -> float | None:
    """A run's metric, or its one-line failure (a member that diverged) raised."""
    if member.failure:
        raise UserError(member.failure)
    return member.score


def follow(ranks: Ranks) -> float | None:
    """A rank other than 0: the job rank 0 composed and prepared (None: it was refused, and rank 0 says why),
    trained here over this rank's slice of every batch."""
    described = ranks.share(None)
    if described is None:
        raise SystemExit(1)
    return outcome(train_group([Job.from_description(described)])[0])


def train_jobs(jobs: list[Job], multirun: bool = True) -> None:
    """A sweep's jobs, planned into stacks and trained here, one stack after another; an error in one stack
    marks its members failed and the others go on. Each job's status.json says how it ended."""
    for stack in plan_stacks(jobs, multirun):
        train_with_status(stack)


def train_with_status(stack: list[Job], stop_signals: tuple = STOP_SIGNALS) -> None:
    """One stack, its members' status.json kept (an error marks them failed, and is logged)."""
    with job_status([j.run_dir for j in stack], keep_going=True, what=f"jobs {','.join(j.name for j in stack)}"):
        train_group(stack, stop_signals)


def train_group(jobs: list[Job], stop_signals: tuple = STOP_SIGNALS) -> list[Member]:
    """Jobs that may share a stack, trained in chunks that fit the device's free memory (members resuming
    mid-epoch share a position: plan.py grouped them by it). stop_signals: those that stop training with a
    checkpoint for every member (loop.py)."""
    cfg, ranks = jobs[0].cfg, current()
    device = rank_device(cfg.device, ranks)
    if cfg.trainer.threads > 0:
        torch.set_num_threads(cfg.trainer.threads)
    set_matmul_precision(cfg.trainer.precision)
    data = place(load_on_ranks(lambda: load_data(cfg.data.name, **kwargs_of(cfg.data, paths=("root",))), ranks), device)
    ranks = ranks.with_timeout(cfg.trainer.dist_timeout_s)  # the step's collectives: a rank gone ends the others
    if cfg.batch_size * cfg.n_critic > len(data):
        raise UserError(f"batch_size={cfg.batch_size} (x n_critic={cfg.n_critic}) is larger than the data set "
                        f"({len(data)} examples); use batch_size<={len(data) // cfg.n_critic}")
    num_classes = classes_of(cfg, data)
    for job in jobs:  # a missing or wrong Inception weights or statistics file fails now, not after training
        ev = job.cfg.eval
        net = feature_space(data, "inception", ev.inception_weights)[0] if ev.enabled and ev.features == "inception" else None
        if ev.enabled and ev.ref:
            stats = read_stats(user_path(ev.ref), 2048 if net else None, ev.ref_protocol)
            if net:
                check_reference(stats, network_card(net, "inception"))
    k_max = len(jobs)
    if len(jobs) > 1:
        per_member = member_bytes(cfg, data.shape, num_classes)
        free = free_bytes(device)
        k_max = max(1, int(0.5 * free / per_member))
        log.info(f"memory: {free / 2**30:.1f} GiB free on {device}, ~{per_member / 2**20:.1f} MiB per member: "
                 f"up to {k_max} members per stack")
    members = []
    for start in range(0, len(jobs), k_max):
        members += train_stack(jobs[start:start + k_max], data, num_classes, device, stop_signals, ranks)
    return members


def load_on_ranks(load, ranks: Ranks) -> TensorData:
    """The data set on every rank: rank 0 first (it prepares a folder, or finds the copy: a shared cache is then
    found by everyone), then the first rank of every other machine (a cache of its own: found or prepared there),
    then the others (found). Every rank must then hold the same examples: checked by a hash of their content."""
    if ranks.alone:
        return load()
    data = load() if ranks.rank == 0 else None
    ranks.wait()
    if data is None and ranks.local == 0:
        data = load()
    ranks.wait()
    data = load() if data is None else data
    differ = ranks.differ(sample_hash(data))
    if differ:
        raise UserError(f"rank {differ[0]} holds other data than rank 0 ({len(data)} examples here): data.root names "
                        f"another copy on its machine; give every machine the same files (or a shared data.root)")
    return data


def sample_hash(data: TensorData) -> bytes:
    """A hash of 1,000 examples spread over the set, its size and shape: equal where two ranks hold the same set."""
    rows = torch.linspace(0, len(data) - 1, min(len(data), 1000)).long()
    h = hashlib.sha256(f"{len(data)} {tuple(data.shape)}".encode())
    h.update(data.x[rows].cpu().contiguous().numpy().tobytes())
    return h.digest()


def rank_device(name: str, ranks: Ranks) -> torch.device:
    """The device this process trains on: device=..., or on several devices each rank its own GPU (cuda:LOCAL_RANK
    with device=auto or cuda), or the CPU."""
    if ranks.alone:
        return pick_device(name)
    if str(name) not in ("auto", "cuda", "cpu"):
        raise UserError(f"device={name} names one GPU, and this run spreads over {ranks.world} ranks, each on its "
                        f"own: use device=cuda (or auto)")
    if str(name) == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    index = ranks.local % torch.cuda.device_count()  # under srun each task sees its own GPU only: cuda:0
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def place(data: TensorData, device: torch.device) -> TensorData:
    """The data set in the device's memory, or streamed from its memory-mapped copy when it was asked to be
    (data.in_memory=false) or does not fit (auto: more than half the device's free memory)."""
    if data.in_memory == "auto" and data.mapped:
        free = free_bytes(device)
        if data.x.nbytes > 0.5 * free:
            log.info(f"data: {data.x.nbytes / 2**30:.1f} GiB of images, {free / 2**30:.1f} GiB free on {device}: "
                     f"streamed from the prepared copy (data.in_memory=true to insist)")
            return data.streamed_to(device)
    return data.streamed_to(device) if data.in_memory == "false" and data.mapped else data.to(device)


def train_stack(jobs: list[Job], data: TensorData, num_classes: int, device: torch.device,
                stop_signals: tuple = STOP_SIGNALS, ranks: Ranks = ALONE) -> list[Member]:
    K = len(jobs)
    stack = build_stack([j.cfg for j in jobs], data, num_classes, device, ranks)
    members = [Member(j.cfg, j.run_dir, device, evaluable(j.cfg, data), own_log=j.own_log,
                      prefix=f"[{j.name}] " if j.own_log else "", overrides=j.overrides, ckpt=j.ckpt,
                      logged_up_to=j.logged_up_to, ranks=ranks) for j in jobs]
    where, orders = Where(), None
    for k, job in enumerate(jobs):
        if job.ckpt is not None:  # every member of a stack resumes from the same point (plan.py)
            stack.nets.load_member(k, job.ckpt)
            where = Where(job.ckpt["epoch"], job.ckpt["step"], job.ckpt.get("position", 0))
            members[k].say(f"resumed from {user_path(job.cfg.resume)} at epoch {where.epoch}, step {where.step}"
                           + (f" ({where.position} steps into epoch {where.epoch + 1})" if where.position else ""))
            trained_on = job.ckpt.get("world_size", 1)
            if trained_on != ranks.world:
                members[k].say(f"resumed on {ranks.world} rank(s) a run trained on {trained_on}: the same global batch "
                               f"of {job.cfg.batch_size}, sliced otherwise, so it continues but not bit for bit")
    stack.nets.share()  # every rank starts from rank 0's weights
    if where.position:
        orders = torch.stack([job.ckpt["order"].to(device) for job in jobs])
    if K > 1:
        log.info(f"stack of {K} members: jobs {','.join(j.name for j in jobs)}")
    fit(stack, members, data, num_classes, where, orders, stop_signals)
    return members
