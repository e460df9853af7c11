"""gantrain from Python: what a notebook or another project calls (and gantrain/__init__.py exports).

    import gantrain
    run = gantrain.train(["epochs=5", "model=dcgan"])            # one run, as `gantrain train epochs=5 ...`
    G = gantrain.load_generator(run.checkpoint)                    # a torch.nn.Module
    images = G.sample(16, seed=0)                                  # (16, 1, 28, 28) in [-1, 1]
    metrics = gantrain.evaluate(run.checkpoint, ["n=2000"])        # as `gantrain eval`
    gantrain.export(run.checkpoint, "torchscript", "g.pt")         # as `gantrain export`

train, evaluate and export run the command's own Hydra app in this process (the same run dir, .hydra/,
train.log and dir claim as the command), and leave no process-wide state behind: Hydra's, the logging and
signal handlers, torch's thread count, its TF32 and dtype flags and random states, sys.argv and the
environment are as they were, so they can be called again. They never exit the process: bad input raises
gantrain.UserError (its message is the command's one line), an interrupt (Ctrl-C, SIGTERM) gantrain.Interrupted.
"""
import json
import logging
import os
import random
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from hydra.core.global_hydra import GlobalHydra

from gantrain.cli import command_environment, invoke
from gantrain.commands.export import FORMATS
from gantrain.engine.generator import Generator, load_generator
from gantrain.errors import Interrupted, UserError
from gantrain.outputs.rundirs import Refused, new_dir

__all__ = ["train", "evaluate", "export", "load_generator", "Generator", "Run", "UserError", "Interrupted"]


@dataclass
class Run:
    """What gantrain.train returns: its run dir, its last checkpoint, and metrics.json's metrics (name -> value,
    n_real, n_fake, features, ...; empty with eval.enabled=false)."""

    run_dir: Path
    checkpoint: Path
    metrics: dict = field(default_factory=dict)


def quoted(value) -> str:
    """A path or string as one Hydra override value (quoted: spaces, '=' and commas stay in it)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


@contextmanager
def as_a_command():
    """Run a command's Hydra app here as `gantrain` would, and put every process-wide thing it touches back."""
    argv, cwd, root = sys.argv[:], os.getcwd(), logging.getLogger()
    loggers = {name: (lg.handlers[:], lg.level, lg.propagate) for name, lg in
               [("", root), *((n, logging.getLogger(n)) for n in ("hydra", "gantrain"))]}
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    states = (torch.get_rng_state(), np.random.get_state(), random.getstate(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        with command_environment():
            yield
    except Refused as e:  # the run dir holds another run
        raise UserError(str(e)) from None
    except KeyboardInterrupt:
        raise Interrupted("interrupted (a second Ctrl-C): stopped at once, saving nothing") from None
    except SystemExit as e:  # a signal stopped training after every member saved a mid-epoch checkpoint
        code = e.code if isinstance(e.code, int) else 1
        name = signal.Signals(code - 128).name if code > 128 else f"exit status {code}"
        raise Interrupted(f"{name}: training stopped and saved its checkpoint; resume with resume=<run dir>/"
                          f"checkpoints/last.pt") from None
    finally:
        sys.argv[:] = argv
        os.chdir(cwd)
        for name, (kept, level, propagate) in loggers.items():
            logger = logging.getLogger(name or None)
            for handler in logger.handlers:
                if handler not in kept:
                    handler.close()
            logger.handlers[:], logger.level, logger.propagate = kept, level, propagate
        for s, handler in handlers.items():
            signal.signal(s, handler)
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags[:2]
        torch.set_float32_matmul_precision(flags[2])
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])
        GlobalHydra.instance().clear()


def run_in(command: str, run_dir) -> Path:
    """The run dir a command writes to: run_dir, or a new outputs/<command>/<date>/<time> as the command makes it."""
    if run_dir is not None:
        return Path(run_dir).expanduser().absolute()
    return Path(new_dir(time.strftime(f"outputs/{command}/%Y-%m-%d/%H-%M-%S"))).absolute()


def train(overrides: list[str] | None = None, run_dir=None) -> Run:
    """One training run, as `gantrain train OVERRIDES` (no -m: a sweep is the command's job), into run_dir (or a
    new outputs/train/<date>/<time>). Returns its Run: run dir, last checkpoint, metrics."""
    overrides = list(overrides or [])
    if {"-m", "--multirun"} & set(overrides):
        raise UserError("gantrain.train runs one run; sweep with the command: gantrain train -m ...")
    where = run_in("train", run_dir)
    with as_a_command():
        invoke("train", [*overrides, f"hydra.run.dir={quoted(where)}"])
    saved = where / "metrics.json"
    metrics = json.loads(saved.read_text()).get("metrics", {}) if saved.exists() else {}
    return Run(where, where / "checkpoints" / "last.pt", metrics)


def evaluate(ckpt, overrides: list[str] | None = None, out=None) -> dict:
    """Metrics of one checkpoint (or a list of them, or a run or sweep dir), as `gantrain eval ckpt=... OVERRIDES`
    (n=, seed=, features=, ...); written to out (or a new outputs/eval/<date>/<time>) as metrics.json, whose
    content this returns."""
    where = run_in("eval", out)
    paths = ",".join(quoted(Path(p).expanduser().absolute()) for p in (ckpt if isinstance(ckpt, (list, tuple)) else [ckpt]))
    with as_a_command():
        invoke("eval", [f"ckpt=[{paths}]" if isinstance(ckpt, (list, tuple)) else f"ckpt={paths}", *(overrides or []),
                        f"out={quoted(where)}", f"hydra.run.dir={quoted(where)}"])
    return json.loads((where / "metrics.json").read_text())


def export(ckpt, format: str = "torchscript", out=None, overwrite: bool = False) -> Path:
    """The checkpoint's generator as one file for plain torch or onnxruntime, as `gantrain export`; its path."""
    where = run_in("export", None)
    target = Path(out).expanduser().absolute() if out else where / f"generator{FORMATS.get(format, '.pt')}"
    with as_a_command():
        invoke("export", [f"ckpt={quoted(Path(ckpt).expanduser().absolute())}", f"format={format}",
                          f"out={quoted(target)}", f"overwrite={str(overwrite).lower()}", f"hydra.run.dir={quoted(where)}"])
    return target
