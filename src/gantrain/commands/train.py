"""gantrain train: one job, or one job of a multirun that a Hydra launcher runs (basic, joblib, submitit).
Either way it trains as a stack of one member through the one loop (engine/).

One run on several devices (torch.distributed): started by torchrun, or by srun (one task per GPU, Slurm's
variables exported as submitit's TorchDistributedEnvironment does), every process is a rank, and only rank 0
runs Hydra: it composes the config, claims the run dir and shares the prepared job with the others
(run_as_rank, engine/jobs.follow). `trainer.devices=N` starts the N ranks itself: this process composes and
prepares the job, spawns N processes with torch.multiprocessing that meet through torch's env:// rendezvous on
this machine, and waits for them, forwarding a stop signal.
"""
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tqdm import tqdm

from gantrain.config import check_sweeper, devices_of
from gantrain.engine.jobs import Job, follow, job_shared, prepare, train, train_group
from gantrain.ranks import RankLost, Ranks, current, export_slurm_environment, join
from gantrain.errors import UserError, error_line
from gantrain.outputs.status import job_status, read_status
from gantrain.processes import console_logging, log_file

log = logging.getLogger("gantrain")


def train_command(cfg, run_dir, overrides: list[str], hydra_cfg, multirun: bool) -> float | None:
    """Train this job; its status.json follows it. In a multirun a failing job is logged and the sweep goes
    on; alone, its error ends the command (one line, exit 1)."""
    devices = devices_of(cfg, multirun)
    if multirun:
        check_sweeper(str(hydra_cfg.sweeper.get("_target_", "")), cfg)
        launcher_settings(cfg, hydra_cfg)
    ranks = current()
    if not ranks.alone and devices not in (1, ranks.world):
        raise UserError(f"trainer.devices={cfg.trainer.devices}, and torchrun started {ranks.world} ranks; drop "
                        f"trainer.devices (torchrun's --nproc_per_node decides)")
    with job_status([run_dir], keep_going=multirun, what=f"job {hydra_cfg.job.get('num')}"):
        if ranks.alone and devices > 1:
            return train_on_devices(cfg, run_dir, overrides, devices)
        return train(cfg, run_dir, overrides, multirun)


def launcher_settings(cfg, hydra_cfg) -> None:
    """Under a parallel launcher, share the cores among the jobs and spread jobs over the GPUs."""
    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    if "joblib" in launcher and cfg.trainer.threads == 0:
        n_jobs = hydra_cfg.launcher.get("n_jobs", -1)
        cores = os.cpu_count() or 1
        n_jobs = cores if n_jobs is None or n_jobs < 1 else n_jobs
        cfg.trainer.threads = max(1, cores // n_jobs)
    if cfg.device == "auto" and torch.cuda.device_count() > 1 and hydra_cfg.job.get("num") is not None:
        cfg.device = f"cuda:{hydra_cfg.job.num % torch.cuda.device_count()}"


# ---- started by torchrun: every process is a rank -------------------------------------------------------

def run_as_rank(argv: list[str], run_app) -> int:
    """`gantrain train ...` as one of R ranks (torchrun, srun): rank 0 runs the command (run_app, Hydra and all),
    the others follow the job it shares. Returns the exit status."""
    if {"-m", "--multirun"} & set(argv):
        if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0:
            print("gantrain train: error: -m under torchrun (or srun) would run the sweep on every rank; start the "
                  "sweep without it (its jobs train as stacks), or train one run so", file=sys.stderr)
        return 1
    if "SLURM_STEP_ID" in os.environ:
        export_slurm_environment()
    ranks = join()
    if ranks.writes:
        code = run_app("train", argv)
        if not job_shared():
            ranks.share(None)  # refused before its job was shared (an override, the run dir): the others stop too
    else:
        try:
            follow(ranks)
            code = 0
        except UserError as e:
            if isinstance(e, RankLost):  # rank 0 may be the one that is gone: say it here too
                print(f"gantrain train: error (rank {ranks.rank}): {e}", file=sys.stderr)
                return 1
            code = 1  # rank 0 says why
    leave(ranks)
    return code


def leave(ranks: Ranks) -> None:
    """Every rank at the end together, then the process group taken down (gloo aborts a process that leaves
    while another is still working). After a rank was lost there is no together: this one just goes."""
    try:
        ranks.wait()
    except RankLost:
        return
    dist.destroy_process_group()


# ---- trainer.devices=N: this process starts the ranks ---------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_on_devices(cfg, run_dir, overrides: list[str], devices: int) -> float | None:
    """The job prepared here, trained by `devices` spawned ranks on this machine (each its own GPU, or a share
    of the CPU's cores: trainer.threads, else cores / devices); their metric or their one-line error back here.
    A stop signal to this process goes to every rank once (they run in their own process group, so a
    terminal's Ctrl-C reaches them through here, not twice)."""
    job = Job(cfg, run_dir, overrides)
    if not prepare(job, False):
        return read_status(run_dir).get("metric")
    threads = cfg.trainer.threads or max(1, (os.cpu_count() or 1) // devices)
    handle, results = tempfile.mkstemp(prefix="gantrain-ranks-", suffix=".json")  # rank 0's outcome (no queue: a
    os.close(handle)  # killed rank would leave its semaphore to multiprocessing's resource tracker, which says so)
    environment = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(devices)}
    log.info(f"trainer.devices={devices}: starting {devices} ranks on this machine")
    workers = mp.start_processes(rank_worker, args=(environment, job.described(), threads, results), nprocs=devices,
                                 join=False, start_method="spawn")
    forwarded = {}

    def forward(signum, frame):  # once per signal to each rank: a second Ctrl-C is theirs to decide
        if signum not in forwarded:
            forwarded[signum] = True
            for p in workers.processes:
                if p.is_alive():
                    os.kill(p.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for p in workers.processes:
            p.join()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    result = json.loads(Path(results).read_text() or "{}")
    Path(results).unlink(missing_ok=True)
    codes = [p.exitcode for p in workers.processes]
    killed = [(r, c) for r, c in enumerate(codes) if c is not None and c < 0]
    if "error" in result:
        raise UserError(result["error"])
    if killed:  # rank 0 itself, or one that died before rank 0 could say so
        r, c = killed[0]
        raise UserError(f"rank {r} of {devices} was killed ({signal.Signals(-c).name}); nothing was saved after the last "
                        f"checkpoint; continue from it with resume=auto (or resume=<run dir>/checkpoints/last.pt)")
    stopped = next((c for c in codes if c and c > 128), None)
    if stopped:
        raise SystemExit(stopped)  # every rank saved what a resume needs: the command's usual stop
    if any(codes):
        raise UserError(f"a rank of the run ended with exit status {next(c for c in codes if c)} without saying why; "
                        f"its output is above")
    if result.get("failure"):
        raise UserError(result["failure"])
    return result.get("metric")


def rank_worker(index: int, environment: dict, described: dict, threads: int, results: str) -> None:
    """One of the ranks trainer.devices started (spawned: a parent holding CUDA must not fork)."""
    os.setpgrp()  # a terminal's Ctrl-C reaches the parent, which forwards it once
    try:  # and if the parent dies without a word, this rank stops as on SIGTERM (Linux)
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    os.environ.update(environment, RANK=str(index), LOCAL_RANK=str(index))
    tqdm.set_lock(threading.RLock())  # not its default multiprocessing lock: a killed rank would leak its semaphore
    ranks = join()
    torch.set_num_threads(threads)
    job = Job.from_description(described)
    if ranks.writes:  # the lines and train.log a lone run's Hydra job logging writes
        console_logging()
        logging.getLogger().addHandler(log_file(job.run_dir / "train.log"))
    try:
        member = train_group([job])[0]
        if ranks.writes:
            Path(results).write_text(json.dumps({"metric": member.score, "failure": member.failure}))
    except Exception as e:  # noqa: BLE001  (a user's mistake goes back as its one line; a bug keeps its traceback)
        line = error_line(e)
        if line is None:
            raise
        if ranks.writes:
            Path(results).write_text(json.dumps({"error": line}))
        raise SystemExit(1) from None
    leave(ranks)
