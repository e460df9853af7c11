"""gantrain sweep: a Hydra-syntax sweep whose members train together as stacks.

    gantrain sweep optim.lr=1e-4,2e-4,4e-4,8e-4 seed=0,1,2,3 epochs=200

The overrides expand as `gantrain train -m` expands them (Hydra's own parser and basic sweeper). Jobs that
differ only in member keys (seed, optim.lr, ...: see engine/plan.py) train as one stack; the rest split
into stacks of their own. Either way each member gets the multirun layout:
outputs/train-multirun/<date>/<time>/<num>/ with .hydra/, train.log, metrics.csv, samples, checkpoints,
status.json, and the sweep's own log, timestamped, in outputs/train-multirun/<date>/<time>/sweep.log.
"""
import logging
import time
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from gantrain.outputs.status import read_status
from gantrain.processes import map_in_processes

log = logging.getLogger("gantrain")


def expand(overrides: list[str]) -> list[list[str]]:
    """Every job's overrides, in `gantrain train -m` order."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def compose_job(overrides: list[str]):
    from hydra import compose, initialize_config_module

    with initialize_config_module("gantrain.conf", version_base=None):
        return compose("train", overrides=overrides, return_hydra_config=True)


def compose_jobs(jobs: list[list[str]]) -> list:
    """Every job's config. Composing is pure Python and slow enough that a large sweep composes in worker
    processes (this module imports no torch: they start in under a second). A bad override fails there
    with Hydra's own error, as it would here."""
    return map_in_processes(compose_job, jobs, per_worker=8, what="composing")


def write_job_dir(run_dir: Path, cfg, overrides: list[str]) -> None:
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    hydra_node = cfg.hydra
    with open_dict(cfg):
        del cfg["hydra"]
    OmegaConf.save(cfg, hydra_dir / "config.yaml")
    OmegaConf.save(hydra_node, hydra_dir / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(overrides), hydra_dir / "overrides.yaml")


def log_to_file(path: Path) -> None:
    """The sweep's log, timestamped, beside its members (each member keeps its own train.log)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s"))
    logging.getLogger().addHandler(handler)


def sweep_command(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    from gantrain.engine.jobs import Job, train_jobs  # torch: only once there is something to train

    sweep_dir = next((a.split("=", 1)[1] for a in argv if a.startswith("hydra.sweep.dir=")), None)
    overrides = [a for a in argv if not a.startswith("hydra.sweep.dir=")]
    job_overrides = expand(overrides)
    configs = compose_jobs(job_overrides)
    root = Path(sweep_dir or f"outputs/train-multirun/{time.strftime('%Y-%m-%d')}/{time.strftime('%H-%M-%S')}")
    jobs = [Job(cfg, root / str(i), o, str(i)) for i, (cfg, o) in enumerate(zip(configs, job_overrides))]
    for job in jobs:
        write_job_dir(job.run_dir, job.cfg, job.overrides)
    log_to_file(root / "sweep.log")
    log.info(f"sweep: {len(jobs)} jobs in {root}")
    train_jobs(jobs)
    states = [read_status(j.run_dir).get("state") for j in jobs]
    log.info(f"sweep done: {states.count('done')} done, {states.count('failed')} failed; gantrain report {root}")
    return 0 if "done" in states else 1  # every job failed: most likely bad input, which exits non-zero
