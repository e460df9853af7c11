"""gantrain train: one job, or one job of a multirun that a Hydra launcher runs (basic, joblib, submitit).
Either way it trains as a stack of one member through the one loop (engine/)."""
import os
from pathlib import Path

import torch

from gantrain.config import check_sweeper
from gantrain.engine.jobs import train
from gantrain.outputs.status import job_status


def train_command(cfg, run_dir: Path, overrides: list[str], hydra_cfg, multirun: bool) -> float | None:
    """Train this job; its status.json follows it. In a multirun a failing job is logged and the sweep goes
    on; alone, its error ends the command (one line, exit 1)."""
    if multirun:
        check_sweeper(str(hydra_cfg.sweeper.get("_target_", "")), cfg)
        launcher_settings(cfg, hydra_cfg)
    with job_status([run_dir], keep_going=multirun, what=f"job {hydra_cfg.job.get('num')}"):
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
