"""A job dir's record of itself: status.json (state: running | done | failed | interrupted, with the one-line
reason), kept up to date by job_status while jobs train, and the overrides that made the job (.hydra/).

A running job's status names its process and host and carries a heartbeat, refreshed by a thread every
HEARTBEAT seconds, so a job whose process died without a word (kill -9, a lost node) reads as `died`
instead of `running` forever. No torch here: gantrain report reads these.
"""
import json
import logging
import os
import socket
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from gantrain.errors import error_line, show_tracebacks

log = logging.getLogger("gantrain")
STATUS = "status.json"
HEARTBEAT = 30  # seconds between heartbeats of a running job; 4 missed ones on another host read as died
_writing = threading.RLock()  # the heartbeat thread and the loop write the same files


_unwritable: set[Path] = set()  # status files that could not be written: said once each


def write_status(run_dir: Path, state: str, **extra) -> None:
    """status.json, written whole. One that cannot be written (a full disk) is a warning, once, and training
    goes on: the next change of state writes it again, and gantrain report reads a stale one as died."""
    now = time.time()
    record = {"state": state, "time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)), **extra}
    if state == "running":
        record |= {"pid": os.getpid(), "host": socket.gethostname(), "heartbeat": now}
    tmp = run_dir / f".{STATUS}.{os.getpid()}.tmp"
    with _writing:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(record) + "\n")
            os.replace(tmp, run_dir / STATUS)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if run_dir not in _unwritable:
                _unwritable.add(run_dir)
                log.warning(f"could not write {run_dir / STATUS} ({e.strerror or e}); training goes on, and the next "
                            f"change of state writes it again")


def read_status(run_dir: Path) -> dict:
    """The job's status; `running` becomes `died` when its process is gone (this host) or its heartbeat
    stopped (another host)."""
    try:
        status = json.loads((run_dir / STATUS).read_text())
    except (OSError, ValueError):
        return {"state": "unknown"}
    if status.get("state") == "running" and not alive(status):
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.get("heartbeat", 0)))
        status |= {"state": "died", "reason": f"its process ({status.get('pid')} on {status.get('host')}) ended "
                                              f"without a word; last heartbeat {since}"}
    return status


def pid_alive(pid) -> bool:
    """Whether process `pid` of this host still exists (one we may not signal, or an unreadable pid, counts)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        pass
    return True


def alive(status: dict) -> bool:
    if status.get("host") == socket.gethostname():
        return pid_alive(status.get("pid", -1))
    return time.time() - status.get("heartbeat", time.time()) < 4 * HEARTBEAT


@contextmanager
def heartbeat(run_dirs: list[Path]):
    """While inside, a thread refreshes the heartbeat of every job still `running` in run_dirs."""
    stop = threading.Event()

    def beat():
        while not stop.wait(HEARTBEAT):
            for d in run_dirs:
                with _writing:  # read and rewrite as one: the loop may be writing `done` meanwhile
                    status = read_status(d)
                    if status.get("state") == "running" and status.get("pid") == os.getpid():
                        write_status(d, "running", **{k: v for k, v in status.items()
                                                      if k not in ("state", "time", "pid", "host", "heartbeat")})

    thread = threading.Thread(target=beat, name="gantrain-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def job_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides of the job in run_dir (Hydra's .hydra/overrides.yaml)."""
    try:
        return list(yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or [])
    except (OSError, yaml.YAMLError):
        return []


@contextmanager
def job_status(run_dirs: list[Path], keep_going: bool, what: str):
    """status.json of jobs while they train: `running` on entry, with a heartbeat. A signal marks each job
    still running `interrupted` (its checkpoint resumes) and an error marks it `failed` with the error's one
    line. With keep_going (jobs of a sweep) the error is logged and the sweep goes on; else it is raised.
    Jobs that ended on their own inside (done, or failed alone) keep their status."""

    def mark(state: str, reason: str) -> None:
        for d in run_dirs:
            if read_status(d).get("state") == "running":
                write_status(d, state, reason=reason)

    for d in run_dirs:
        write_status(d, "running")
    try:
        with heartbeat(run_dirs):
            yield
    except (SystemExit, KeyboardInterrupt) as e:  # a signal: the checkpoint is saved, the job can resume
        code = e.code if isinstance(e, SystemExit) else 128 + signal.SIGINT
        mark("interrupted", signal.Signals(code - 128).name if isinstance(code, int) and code > 128 else type(e).__name__)
        raise
    except Exception as e:
        line = error_line(e)
        mark("failed", line or f"{type(e).__name__}: {e}")
        if not keep_going or show_tracebacks():
            raise
        log.error(f"{what} failed: {line or repr(e)}", exc_info=line is None)
