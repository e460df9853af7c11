"""Jobs of a run or a sweep: their status file, launcher-aware settings, and finding an earlier run of
the same job for resume=auto."""
import json
import logging
import os
import shutil
import time
from pathlib import Path

import yaml

log = logging.getLogger("gantrain")
STATUS = "status.json"  # state: running | done | failed | interrupted, with the one-line reason


def write_status(run_dir: Path, state: str, **extra) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{STATUS}.tmp"
    tmp.write_text(json.dumps({"state": state, "time": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}) + "\n")
    os.replace(tmp, run_dir / STATUS)


def read_status(run_dir: Path) -> dict:
    """The job's status; a job that died without a word (kill -9, power loss) still says 'running'."""
    try:
        return json.loads((run_dir / STATUS).read_text())
    except (OSError, ValueError):
        return {"state": "unknown"}


def job_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides of the job in run_dir (Hydra's .hydra/overrides.yaml)."""
    try:
        return list(yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or [])
    except (OSError, yaml.YAMLError):
        return []


def identity(overrides: list[str]) -> list[str]:
    """What makes a job the same job: its overrides, less resume= and Hydra's own settings."""
    return sorted(o for o in overrides if not o.lstrip("+~").startswith(("resume=", "hydra.", "hydra/")))


def previous_run(run_dir: Path, overrides: list[str], multirun: bool) -> Path | None:
    """The newest earlier run dir of the same job beside this one: in the default layout
    (outputs/train*/<date>/<time>[/<num>]) or one level up (a hydra.sweep.dir / hydra.run.dir of one name)."""
    run_dir = run_dir.absolute()
    me, found = identity(overrides), set()
    for depth in ((2, 3) if multirun else (1, 2)):
        if len(run_dir.parents) < depth:
            continue
        pattern = "/".join(["*"] * depth) + "/.hydra/overrides.yaml"
        found |= {p.parent.parent.resolve() for p in run_dir.parents[depth - 1].glob(pattern)}
    same = [d for d in found if d != run_dir.resolve() and identity(job_overrides(d)) == me]
    return max(same, key=lambda d: (d / ".hydra").stat().st_mtime) if same else None


def adopt(previous: Path, run_dir: Path) -> None:
    """Make a finished earlier run's results this job's too: small files copied, checkpoints hard-linked."""
    for name in ("metrics.csv", "metrics.json", "curves.png", "real_images.png"):
        if (previous / name).exists():
            shutil.copy2(previous / name, run_dir / name)
    for sub in ("checkpoints", "samples"):
        for src in (previous / sub).glob("*") if (previous / sub).is_dir() else ():
            dst = run_dir / sub / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)  # no second copy on disk
            except OSError:
                shutil.copy2(src, dst)


def carry_metrics(previous: Path, run_dir: Path, up_to_step: int) -> None:
    """Start this job's metrics.csv with the earlier run's rows up to the checkpoint it resumes from."""
    src = previous / "metrics.csv"
    if not src.exists():
        return
    lines = src.read_text().splitlines()
    step_col = lines[0].split(",").index("step") if lines else 0
    kept = [lines[0]] + [l for l in lines[1:] if l and int(float(l.split(",")[step_col])) <= up_to_step]
    (run_dir / "metrics.csv").write_text("\n".join(kept) + "\n")


def launcher_settings(cfg, hydra_cfg) -> None:
    """Under a parallel launcher, share the cores among the jobs and spread jobs over the GPUs."""
    import torch

    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    if "joblib" in launcher and cfg.trainer.threads == 0:
        n_jobs = hydra_cfg.launcher.get("n_jobs", -1)
        cores = os.cpu_count() or 1
        n_jobs = cores if n_jobs is None or n_jobs < 1 else n_jobs
        cfg.trainer.threads = max(1, cores // n_jobs)
    if cfg.device == "auto" and torch.cuda.device_count() > 1 and hydra_cfg.job.get("num") is not None:
        cfg.device = f"cuda:{hydra_cfg.job.num % torch.cuda.device_count()}"
