"""resume=auto: find the newest earlier run of the same job beside this one, adopt its results if it
finished, or continue it from its checkpoint (its metrics.csv rows carried over)."""
import json
import logging
import os
import shutil
from pathlib import Path

from gantrain.evaluation.evaluate import headline
from gantrain.outputs.checkpoint import load_checkpoint
from gantrain.outputs.status import job_overrides, read_status

log = logging.getLogger("gantrain")


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


def logged_up_to(run_dir: Path) -> dict[str, int]:
    """The last step a run logged, of training rows (metrics.csv) and of evaluations (metrics.json), which
    its trackers have too."""
    out = {"train": 0, "eval": 0}
    try:
        lines = (run_dir / "metrics.csv").read_text().splitlines()
        column = lines[0].split(",").index("step")
        out["train"] = max([int(float(line.split(",")[column])) for line in lines[1:] if line], default=0)
    except (OSError, ValueError, IndexError):
        pass
    try:
        out["eval"] = int(json.loads((run_dir / "metrics.json").read_text()).get("step", 0))
    except (OSError, ValueError, AttributeError):
        pass
    return out


def carry_metrics(previous: Path, run_dir: Path, up_to_step: int) -> None:
    """Start this job's metrics.csv with the earlier run's rows up to the checkpoint it resumes from."""
    src = previous / "metrics.csv"
    if not src.exists():
        return
    lines = src.read_text().splitlines()
    step_col = lines[0].split(",").index("step") if lines else 0
    kept = [lines[0]] + [l for l in lines[1:] if l and int(float(l.split(",")[step_col])) <= up_to_step]
    (run_dir / "metrics.csv").write_text("\n".join(kept) + "\n")


def auto_resume(cfg, run_dir: Path, overrides: list[str], multirun: bool) -> tuple[bool, float | None, dict | None]:
    """resume=auto: find the newest earlier run of this job. Finished: adopt its results (returns True and its
    metric). Interrupted with a checkpoint: set cfg.resume to it (returns the checkpoint, read once). Otherwise
    start fresh."""
    previous = previous_run(run_dir, overrides, multirun)
    last = previous / "checkpoints" / "last.pt" if previous else None
    ckpt = load_checkpoint(last) if last and last.exists() else None
    finished = ckpt is not None and ckpt["epoch"] >= cfg.epochs and not ckpt.get("position")
    if previous and (read_status(previous).get("state") == "done" or finished):
        adopt(previous, run_dir)
        log.info(f"resume=auto: this job already finished in {previous}; its results are linked here")
        metrics_json = previous / "metrics.json"
        results = json.loads(metrics_json.read_text())["metrics"] if metrics_json.exists() else {}
        return True, headline(results, cfg.eval.metric), None
    if ckpt is not None:
        carry_metrics(previous, run_dir, ckpt["step"])
        cfg.resume = str(last)
        return False, None, ckpt
    log.info(f"resume=auto: the earlier run {previous} of this job left no checkpoint; starting fresh" if previous
             else "resume=auto: no earlier run of this job; starting fresh")
    cfg.resume = None
    return False, None, None
