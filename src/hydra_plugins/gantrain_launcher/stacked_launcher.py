"""hydra/launcher=stacked, the default of `gantrain train -m`: the jobs a sweeper hands over (the basic grid,
Optuna's trials, ...) train as stacks of members, here (one process per GPU when there are several) or on
Slurm (one Slurm job per stack). Each job still gets Hydra's own job dir, .hydra/ files and job number, and
returns its metric to the sweeper.

Hydra finds plugins by scanning the hydra_plugins namespace, which a wheel install of gantrain exposes and
an editable one does not (hydra issue 3252), so the gantrain command also registers this class itself
(register()), and its config is stored in Hydra's ConfigStore when gantrain.conf is imported.
"""
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict


@dataclass
class StackedLauncherConf:
    _target_: str = "hydra_plugins.gantrain_launcher.stacked_launcher.StackedLauncher"
    executor: str = "local"  # local: here, one process per GPU | slurm: one Slurm job per stack (submitit)
    max_members: Optional[int] = None  # members per stack at most (null: as many as fit the device; Slurm: 64)
    nodes: int = 1  # executor=slurm: machines per Slurm job, and
    tasks_per_node: int = 1  # tasks (ranks, one per GPU) on each: each stack is one run over nodes x tasks ranks
    # executor=slurm: submitit's folder and its Slurm settings (submitit's AutoExecutor parameters)
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"
    partition: Optional[str] = None
    timeout_min: int = 60
    gpus_per_node: Optional[int] = None
    gpus_per_task: Optional[int] = None
    cpus_per_task: Optional[int] = None
    mem_gb: Optional[int] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    signal_delay_s: int = 120  # SIGUSR2 this long before the time limit: every member checkpoints, then requeue
    max_num_timeout: int = 3  # requeues after time-outs
    additional_parameters: dict = field(default_factory=dict)  # any other sbatch option, e.g. {exclusive: true}
    setup: list = field(default_factory=list)  # shell lines before the job starts (module load, source venv)


ConfigStore.instance().store(group="hydra/launcher", name="stacked", node=StackedLauncherConf, provider="gantrain")
SLURM_KEYS = ("partition", "timeout_min", "gpus_per_node", "gpus_per_task", "cpus_per_task", "mem_gb", "account",
              "qos", "constraint", "signal_delay_s", "additional_parameters", "setup")
SUBMITIT_GENERIC = ("timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb")  # the rest take a slurm_ prefix


def register() -> None:
    """Make Hydra able to instantiate this launcher whatever the install (see the module's docstring)."""
    Plugins.instance().register(StackedLauncher)


def job_of(cfg: DictConfig):
    """The task function the launcher gives Hydra's run_job: Hydra makes the job dir and writes .hydra/,
    then this records the job (it trains later, in a stack)."""
    from gantrain.engine.jobs import Job

    hc = HydraConfig.get()
    return Job(cfg, Path(hc.runtime.output_dir), list(hc.overrides.task), str(hc.job.num), own_log=True)


class StackedLauncher(Launcher):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context  # task_function unused: jobs train in stacks

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from gantrain.engine.executors import launch_stacks  # torch: only once a sweep launches
        from gantrain.config import check_sweeper
        from gantrain.errors import UserError
        from gantrain.outputs.status import read_status
        from gantrain.processes import console_logging, log_file

        setup_globals()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        returns = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = sweep_config.hydra.job.num = idx
            returns.append(run_job(hydra_context=self.hydra_context, task_function=job_of, config=sweep_config,
                                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
        console_logging()  # the members write their own train.log; the console and sweep.log show them all
        sweep_log = log_file(sweep_dir / "sweep.log")
        logging.getLogger().addHandler(sweep_log)
        try:
            jobs = [ret.return_value for ret in returns]
            for job in jobs:  # before anything trains: an Optuna study needs every job's metric
                check_sweeper(str(self.config.hydra.sweeper.get("_target_", "")), job.cfg)
            logging.getLogger("gantrain").info(f"sweep: {len(jobs)} jobs in {sweep_dir}")
            settings = OmegaConf.to_container(self.config.hydra.launcher, resolve=True)
            slurm = {(k if k in SUBMITIT_GENERIC else f"slurm_{k}"): v for k, v in settings.items()
                     if k in SLURM_KEYS and v not in (None, {}, [])}
            launch_stacks(jobs, settings["executor"], settings["max_members"], slurm, settings["submitit_folder"],
                          settings["max_num_timeout"], settings["nodes"], settings["tasks_per_node"])
        finally:
            logging.getLogger().removeHandler(sweep_log)
            sweep_log.close()
        statuses = [read_status(job.run_dir) for job in jobs]
        for ret, status in zip(returns, statuses):  # a failed job returns None, as `gantrain train` does in a sweep
            ret.return_value, ret.status = status.get("metric"), JobStatus.COMPLETED
        states = [status.get("state") for status in statuses]
        logging.getLogger("gantrain").info(f"sweep done: {states.count('done')} done, {states.count('failed')} failed; "
                                           f"gantrain report {sweep_dir}")
        if initial_job_idx == 0 and "done" not in states:  # nothing trained at all: most likely bad input
            reason = next((s.get("reason") for s in statuses if s.get("reason")), "see their status.json")
            raise UserError(f"every job of the sweep failed ({len(jobs)} of {len(jobs)}), e.g. {reason}; "
                            f"fix that and run it again (gantrain report {sweep_dir} lists them)")
        return returns
