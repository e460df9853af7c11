"""gantrain sweep: a Hydra-syntax sweep whose members are trained together as one batched model.

    gantrain sweep optim.lr=1e-4,2e-4,4e-4,8e-4 seed=0,1,2,3 epochs=200

The overrides expand as `gantrain train -m` expands them (Hydra's own parser and basic sweeper). Members
that differ only in values that do not change tensor shapes are trained together (vectorized.py); the
rest run one by one as `gantrain train` would. Either way each member gets the multirun layout:
outputs/train-multirun/<date>/<time>/<num>/ with .hydra/, metrics.csv, samples, checkpoints, status.json,
and the sweep's own log, timestamped, in outputs/train-multirun/<date>/<time>/sweep.log.
"""
import json
import logging
import math
import re
import time
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from gantrain.processes import map_in_processes
from gantrain.runs import read_status


log = logging.getLogger("gantrain")
# values that may differ inside one batched model: they change no tensor shape and no code path
VECTOR_KEYS = ("seed", "optim.lr", "optim.betas", "optim.eps", "optim.weight_decay", "ema_decay", "resume",
               "log_every", "sample_every", "ckpt_every")


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
    """Every job's config. Hydra takes ~70-90 ms of Python a job, so a large sweep composes in worker
    processes (this module imports no torch: they start in under a second). A bad override fails there
    with Hydra's own error, as it would here."""
    return map_in_processes(compose_job, jobs, per_worker=8, what="composing")


def why_not_vectorized(cfg) -> str | None:
    """None if a job can be a member of a batched model, else the reason it trains alone."""
    if cfg.model.name != "mlp" or cfg.model.get("conditional"):
        return f"model={cfg.model.name}{' (conditional)' if cfg.model.get('conditional') else ''} is not batched"
    if cfg.loss.name == "wgan_gp" or cfg.loss.get("r1_gamma", 0):
        return "gradient penalties are not batched"
    if cfg.optim.name != "adam":
        return f"optim={cfg.optim.name} (only adam is batched)"
    if cfg.n_critic != 1 or cfg.on_nan != "stop" or cfg.trainer.precision == "bf16":
        return "n_critic, on_nan=skip and bf16 are not batched"
    return None


def group_key(cfg) -> str:
    plain = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
             for k, v in cfg.items() if k != "hydra"}
    for key in VECTOR_KEYS:
        parent, _, leaf = key.rpartition(".")
        (plain.get(parent, {}) if parent else plain).pop(leaf, None)
    return json.dumps(plain, sort_keys=True)


def plan(configs) -> list[tuple[list[int], str | None]]:
    """Groups of job indices to batch together, and jobs that train alone (with the reason)."""
    groups: dict[str, list[int]] = {}
    alone = []
    for i, cfg in enumerate(configs):
        reason = why_not_vectorized(cfg)
        if reason:
            alone.append(([i], reason))
        else:
            groups.setdefault(group_key(cfg), []).append(i)
    return [(members, None if len(members) > 1 else "the only job of its kind") for members in groups.values()] + alone


def member_bytes(cfg, data_shape, n_params: int) -> int:
    """A member's memory: parameters, gradients and two Adam moments, plus a step's activations (rough)."""
    widths = 2 * (cfg.model.get("depth", 2) * cfg.hidden_size + math.prod(data_shape) + cfg.latent_size)
    return 4 * (4 * n_params + 6 * 2 * cfg.batch_size * widths)


def free_bytes(device) -> int:
    if device.type == "cuda":
        import torch

        return torch.cuda.mem_get_info(device)[0]
    try:
        meminfo = Path("/proc/meminfo").read_text()
        return int(re.search(r"MemAvailable:\s+(\d+) kB", meminfo).group(1)) * 1024
    except (OSError, AttributeError):
        return 8 * 2**30


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
    """The sweep's log, timestamped, beside its members (a standalone run keeps train.log in its run dir)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s"))
    logging.getLogger().addHandler(handler)


def sweep_command(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    sweep_dir = next((a.split("=", 1)[1] for a in argv if a.startswith("hydra.sweep.dir=")), None)
    overrides = [a for a in argv if not a.startswith("hydra.sweep.dir=")]
    jobs = expand(overrides)
    configs = compose_jobs(jobs)
    root = Path(sweep_dir or f"outputs/train-multirun/{time.strftime('%Y-%m-%d')}/{time.strftime('%H-%M-%S')}")
    dirs = [root / str(i) for i in range(len(jobs))]
    for run_dir, cfg, job in zip(dirs, configs, jobs):
        write_job_dir(run_dir, cfg, job)
    log_to_file(root / "sweep.log")
    groups = plan(configs)
    log.info(f"sweep: {len(jobs)} jobs in {root}")
    for members, reason in groups:
        log.info(f"  jobs {','.join(map(str, members))}: " + (f"one at a time ({reason})" if reason else
                                                           f"batched together (K={len(members)})"))
    for members, reason in groups:
        if reason:
            for i in members:
                run_alone(configs[i], dirs[i], jobs[i])
        else:
            from gantrain.cli import job_status
            from gantrain.vectorized_train import train_batched

            batch = [i for i in members if not previous_result(configs[i], dirs[i], jobs[i])]
            if batch:  # an error stops this batch only: its members are marked failed, as a lone job would be
                with job_status([dirs[i] for i in batch], keep_going=True, what=f"jobs {','.join(map(str, batch))}"):
                    train_batched([configs[i] for i in batch], [dirs[i] for i in batch])
    states = [read_status(d).get("state") for d in dirs]
    log.info(f"sweep done: {states.count('done')} done, {states.count('failed')} failed; "
             f"gantrain report {root}")
    return 0 if "done" in states else 1  # every job failed: most likely bad input, which exits non-zero


def previous_result(cfg, run_dir: Path, overrides: list[str]) -> bool:
    """resume=auto for a batched member, as `gantrain train` does it (train.auto_resume): True if an earlier
    run of it finished (its results are adopted); else cfg.resume becomes its checkpoint, if it has one."""
    from gantrain.runs import write_status
    from gantrain.train import auto_resume

    if cfg.resume != "auto":
        return False
    done, score = auto_resume(cfg, run_dir, overrides, multirun=True)
    if done:
        write_status(run_dir, "done", **({} if score is None else {"metric": score}))
    return done


def run_alone(cfg, run_dir: Path, overrides: list[str]) -> None:
    """A job that trains by itself, exactly as one job of `gantrain train -m` does."""
    from gantrain.cli import run_job
    from gantrain.train import train

    run_job(lambda: train(cfg, run_dir, overrides, multirun=True), run_dir, keep_going=True, name=run_dir.name)
