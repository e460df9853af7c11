"""Run dirs that never collide. A time-named dir (outputs/train/<date>/<time>) is created by the
`gantrain.new_dir` resolver, exclusively: when another run took that name in the same second, it takes
<time>_2, <time>_3, ... . Every run then claims its dir with a marker file created exclusively, before
Hydra writes anything into it (the ClaimRunDir callback), so a dir named with hydra.run.dir= that holds
another run is refused with one line, and nothing of that run is touched. No torch here.
"""
import json
import os
import socket
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback

from gantrain.errors import UserError, os_error_line
from gantrain.outputs.status import pid_alive

CLAIM = ".gantrain-claim"  # who claimed the dir: pid, host, time, command line


def new_dir(path: str) -> str:
    """`path` made exclusively for this run, or the first of path_2, path_3, ... that does not exist yet.
    Registered as the resolver `${gantrain.new_dir:...}` (cached, so one run resolves to one dir)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = path if n == 1 else f"{path}_{n}"
        try:
            os.mkdir(candidate)  # atomic: exactly one process creates it
            return candidate
        except FileExistsError:
            continue
    raise UserError(f"could not make a new run dir beside {path}; clean out {Path(path).parent}")


def holder(run_dir: Path) -> str:
    """Who holds run_dir, in words, from its claim (or its files, for runs from before claims)."""
    try:
        claim = json.loads((run_dir / CLAIM).read_text())
    except (OSError, ValueError):
        return "an earlier run"
    alive = claim.get("host") == socket.gethostname() and pid_alive(claim.get("pid", -1))
    return f"a run started {claim.get('time')} by pid {claim.get('pid')} on {claim.get('host')}" + (
        " (still running)" if alive else "")


def claim(run_dir: Path, what: str = "hydra.run.dir") -> None:
    """Make run_dir this run's, atomically; a dir that holds another run (its claim, or the .hydra/ of a run
    from before claims) is refused with one line and left as it is. (A checkpoint without either is refused
    later, by engine/jobs.prepare.)"""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        if (run_dir / ".hydra").exists() and not (run_dir / CLAIM).exists():
            raise FileExistsError  # held, by a run that made no claim
        fd = os.open(run_dir / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        raise UserError(f"{run_dir} already holds {holder(run_dir)}; choose another {what} or delete that "
                        f"folder") from None
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                   "command": " ".join(sys.argv)}, f)


def release(run_dir: Path, job_name: str) -> None:
    """A command refused for bad input writes nothing: the run dir this process claimed, holding only what Hydra,
    the claim and the job's status wrote before the refusal, is removed (with its date folder, if now empty).
    A dir holding anything else is left as it is."""
    try:
        if json.loads((run_dir / CLAIM).read_text()).get("pid") != os.getpid():
            return
        ours = {CLAIM, ".hydra", f"{job_name}.log", "status.json"}
        if not all(p.name in ours for p in run_dir.iterdir()):
            return
        for p in run_dir.iterdir():
            if p.is_dir():
                for f in p.iterdir():  # .hydra/: config.yaml, hydra.yaml, overrides.yaml
                    f.unlink()
                p.rmdir()
            else:
                p.unlink()
        run_dir.rmdir()
        run_dir.parent.rmdir()  # outputs/<command>/<date>, when this was its only run
    except (OSError, ValueError):
        pass


class Refused(BaseException):
    """A dir another run holds. Hydra turns an Exception raised in a callback into a warning and goes on
    (writing into the dir); a BaseException stops it. The CLI prints it as the usual one line."""


class ClaimRunDir(Callback):
    """Hydra callback (conf/*.yaml): claims the run dir, or a multirun's sweep dir, before Hydra writes its
    .hydra/ files there."""

    def on_run_start(self, config, **kwargs) -> None:
        self.claim(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        self.claim(Path(config.hydra.sweep.dir), "hydra.sweep.dir")

    @staticmethod
    def claim(run_dir: Path, what: str) -> None:
        try:
            claim(run_dir, what)
        except UserError as e:
            raise Refused(str(e)) from None
        except OSError as e:  # a folder that cannot be made (a file in the way, no permission)
            raise Refused(os_error_line(e)) from None
