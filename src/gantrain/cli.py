"""The `gantrain` command: pops the command word, then hands the rest of argv to that command's Hydra app.

Each command is one @hydra.main app, so overrides, -m, --cfg, --help, --hydra-help and shell
completion all work as in any Hydra program. Bad input is reported as one line, without a traceback.
"""
import os
import re
import shlex
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gantrain.errors import UserError, error_line, show_tracebacks
from gantrain.outputs.rundirs import Refused, new_dir, release
from hydra_plugins.gantrain_launcher.stacked_launcher import register as register_launcher

OmegaConf.register_new_resolver("gantrain.new_dir", new_dir, use_cache=True)  # conf/*.yaml: hydra.run.dir

CONF = "pkg://gantrain.conf"
COMMANDS = {
    "train": "train a GAN configured by gantrain/conf/train.yaml (overrides: key=value, -m for sweeps)",
    "sample": "generate images from a checkpoint alone (ckpt=PATH)",
    "export": "the generator as one file plain torch or onnxruntime runs (ckpt=PATH format=torchscript|exported|onnx)",
    "eval": "metrics of a checkpoint: FD, KID, precision/recall, class coverage; modes for 2D (ckpt=PATH)",
    "stats": "a data set's feature statistics as pytorch-fid's npz, for eval ref= (data=... out=stats.npz)",
    "prepare": "decode a folder of images once, for every later run (data.root=DIR data.image_size=64)",
    "report": "a table of a run or sweep dir's jobs, sorted by a metric; report.csv, report.png (PATH)",
    "cache": "what gantrain keeps in its cache (prepared data, feature networks); clear or prune it",
    "sweep": "the same as train -m: a sweep whose jobs train together as stacks of members",
    "list": "list every model, loss, optimizer, data set and experiment preset",
}
USAGE = "usage: gantrain COMMAND [key=value ...] [-m] [--cfg job] [--help]\n\ncommands:\n" + "".join(
    f"  {name:<8} {text}\n" for name, text in COMMANDS.items()
) + "\n`gantrain COMMAND --help` shows that command's options."


def run_dir_and_overrides() -> tuple[Path, list[str]]:
    """This job's output dir and its command-line overrides, from Hydra's runtime config."""
    hc = HydraConfig.get()
    return Path(hc.runtime.output_dir), list(hc.overrides.task)


def print_error(cmd: str, e: Exception) -> bool:
    """Print a user's mistake as one line on stderr; False for a bug or under HYDRA_FULL_ERROR=1, which the
    caller then re-raises so its traceback shows."""
    line = error_line(e, "out=DIR" if cmd in ("sample", "eval") else "hydra.run.dir=DIR")  # where it writes
    if show_tracebacks() or line is None:
        return False
    print(f"gantrain {cmd}: error: " + line.replace("{cmd}", cmd), file=sys.stderr)
    return True


# An error leaving a task is written to stderr by Hydra ("Error executing job with overrides: ..."), so the
# task hands it over here instead, and invoke() raises it once Hydra has returned.
_raised: list[Exception] = []


def released_on_error(task):
    """Run a command's task; a single run refused for a user's mistake leaves no run dir behind (a sweep keeps its
    jobs' statuses). The error goes on up from invoke(): main() prints it as one line (exit 1), the Python API
    raises it."""
    try:
        return task()
    except Exception as e:
        hc = HydraConfig.get()
        if error_line(e) is not None and hc.mode == RunMode.RUN:
            release(Path(hc.runtime.output_dir), hc.job.name)
        _raised.append(e)


# The commands' modules import torch, so each app imports its own when it runs: --help and --cfg stay fast.
@hydra.main(config_path=CONF, config_name="train", version_base=None)
def train_app(cfg: DictConfig):
    from gantrain.commands.train import train_command

    hc = HydraConfig.get()
    run_dir, overrides = run_dir_and_overrides()
    return released_on_error(lambda: train_command(cfg, run_dir, overrides, hc, hc.mode == RunMode.MULTIRUN))


@hydra.main(config_path=CONF, config_name="sample", version_base=None)
def sample_app(cfg: DictConfig):
    from gantrain.commands.sample import sample

    return released_on_error(lambda: sample(cfg, run_dir_and_overrides()[0]))


@hydra.main(config_path=CONF, config_name="eval", version_base=None)
def eval_app(cfg: DictConfig):
    from gantrain.commands.evaluate import eval_command

    return released_on_error(lambda: eval_command(cfg, run_dir_and_overrides()[0]))


@hydra.main(config_path=CONF, config_name="prepare", version_base=None)
def prepare_app(cfg: DictConfig):
    from gantrain.commands.prepare import prepare_command

    return released_on_error(lambda: prepare_command(cfg))


@hydra.main(config_path=CONF, config_name="stats", version_base=None)
def stats_app(cfg: DictConfig):
    from gantrain.commands.stats import stats_command

    return released_on_error(lambda: stats_command(cfg))


@hydra.main(config_path=CONF, config_name="export", version_base=None)
def export_app(cfg: DictConfig):
    from gantrain.commands.export import export_command

    return released_on_error(lambda: export_command(cfg, run_dir_and_overrides()[0]))


APPS = {"train": train_app, "sample": sample_app, "eval": eval_app, "prepare": prepare_app, "export": export_app,
        "stats": stats_app}


def strip_command_from_comp_line() -> str | None:
    """Shell completion calls `gantrain -sc query=...` with COMP_LINE='gantrain train ...': take the command out."""
    words = os.environ.get("COMP_LINE", "").split()
    if len(words) < 2 or words[1] not in COMMANDS:
        return None
    os.environ["COMP_LINE"] = re.sub(rf"^(\s*\S+)\s+{words[1]}\b", r"\1", os.environ["COMP_LINE"], count=1)
    return words[1]


def plain_command(cmd: str, argv: list[str]) -> int:
    """Commands without a Hydra config (argparse or no options); a UserError is one line, exit 1."""
    if cmd == "list":
        from gantrain.commands.listing import list_command as run
    elif cmd == "cache":
        from gantrain.commands.cache import cache_command as run
    else:
        from gantrain.commands.report import report_command as run
    try:
        return run(argv)
    except BrokenPipeError:  # the reader went away (gantrain report ... | head): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail too
        return 0
    except Exception as e:
        if not print_error(cmd, e):
            raise
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and (argv[0] == "-sc" or argv[0].startswith("--shell-completion")):
        cmd = strip_command_from_comp_line()
        if cmd is None:  # completing the command word itself
            print(" ".join(COMMANDS))
            return 0
        rest = argv
    elif not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    elif argv[0] not in COMMANDS:
        print(f"gantrain: unknown command '{argv[0]}'\n{USAGE}", file=sys.stderr)
        return 2
    elif argv[0] in ("list", "report", "cache"):  # no Hydra config
        return plain_command(argv[0], argv[1:])
    elif argv[0] == "sweep":  # an alias: the default launcher of train -m trains jobs as stacks
        cmd, rest = "train", ["-m", *argv[1:]]
    else:
        cmd, rest = argv[0], argv[1:]

    with command_environment():
        if cmd == "train":
            from gantrain.commands.train import run_as_rank
            from gantrain.ranks import launched_as_ranks

            if launched_as_ranks():  # torchrun (or srun) started this process as one of several ranks
                return run_as_rank(rest, run_app)
        return run_app(cmd, rest)


def command_environment():
    """The environment a command runs in (and is put back after). Hydra prints its own multi-line reports unless
    HYDRA_FULL_ERROR is set; we set it (for this command only) so errors reach us, and show a traceback only
    when the user asked for one. Off a terminal the sweepers' coloured log lines (optuna's colorlog) would be raw
    escape codes: NO_COLOR turns them off."""
    plain = {} if sys.stdout.isatty() or "NO_COLOR" in os.environ else {"NO_COLOR": "1"}
    return environment(GANTRAIN_TRACEBACKS="1" if os.environ.get("HYDRA_FULL_ERROR") == "1" else "0",
                       HYDRA_FULL_ERROR="1", **plain)


@contextmanager
def environment(**values: str):
    """os.environ with `values` set, as it was afterwards."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def invoke(cmd: str, argv: list[str]) -> None:
    """One command's Hydra app on argv (overrides, -m, --cfg, ...), in this process: what `gantrain CMD ...` and
    the Python API (api.py) run. Errors are raised."""
    sys.argv = [f"gantrain {cmd}", *argv]
    register_launcher()  # hydra/launcher=stacked, whatever the install (stacked_launcher.py)
    _raised.clear()
    APPS[cmd]()
    if _raised:
        raise _raised.pop()


def run_app(cmd: str, rest: list[str]) -> int:
    """The command, its errors as one line and an exit status."""
    try:
        invoke(cmd, rest)
    except Refused as e:  # the run dir holds another run (outputs/rundirs.py): nothing was written
        print_error(cmd, UserError(str(e)))
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C during training: the user wants out now
        print(f"gantrain {cmd}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # a signal stopped a sweep after its jobs saved checkpoints: one command continues it
        if isinstance(e.code, int) and e.code > 128 and cmd == "train" and {"-m", "--multirun"} & set(rest):
            # resume=auto finds each job's run beside the new sweep dir, which must be a new one
            again = [f"{a}_resumed" if a.startswith("hydra.sweep.dir=") else a for a in rest if not a.startswith("resume=")]
            print(f"gantrain {cmd}: {signal.Signals(e.code - 128).name}: every job saved its checkpoint; continue the "
                  f"sweep with: gantrain train {shlex.join(again)} resume=auto", file=sys.stderr)
        raise
    except Exception as e:  # raised while Hydra composes the config or makes the run dir, before a task runs
        if not print_error(cmd, e):
            raise
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
