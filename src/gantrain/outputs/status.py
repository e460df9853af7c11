"""A job dir's record of itself: status.json (state: running | done | failed | interrupted, with the one-line
reason), kept up to date by job_status while jobs train, and the overrides that made the job (.hydra/).
No torch here: gantrain report reads these."""
import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from gantrain.errors import error_line, show_tracebacks

log = logging.getLogger("gantrain")
STATUS = "status.json"


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


@contextmanager
def job_status(run_dirs: list[Path], keep_going: bool, what: str):
    """status.json of jobs while they train: `running` on entry. A signal marks each job still running
    `interrupted` (its checkpoint resumes) and an error marks it `failed` with the error's one line. With
    keep_going (jobs of a sweep) the error is logged and the sweep goes on; else it is raised. Jobs that
    ended on their own inside (done, or failed alone) keep their status."""

    def mark(state: str, reason: str) -> None:
        for d in run_dirs:
            if read_status(d).get("state") == "running":
                write_status(d, state, reason=reason)

    for d in run_dirs:
        write_status(d, "running")
    try:
        yield
    except (SystemExit, KeyboardInterrupt) as e:  # a signal: the checkpoint is saved, the job can resume
        mark("interrupted", type(e).__name__)
        raise
    except Exception as e:
        line = error_line(e)
        mark("failed", line or f"{type(e).__name__}: {e}")
        if not keep_going or show_tracebacks():
            raise
        log.error(f"{what} failed: {line or repr(e)}", exc_info=line is None)
