"""The `gantrain` command: pops the command word, then hands the rest of argv to that command's Hydra app.

Each command is one @hydra.main app, so overrides, -m, --cfg, --help, --hydra-help and shell
completion all work as in any Hydra program. Bad input is reported as one line, without a traceback.
"""
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gantrain.errors import UserError

CONF = "pkg://gantrain.conf"
COMMANDS = {
    "train": "train a GAN configured by conf/train.yaml (overrides: key=value, -m for sweeps)",
    "sample": "generate images from a checkpoint alone (ckpt=PATH)",
    "eval": "metrics of a checkpoint: FD, KID, precision/recall, class coverage; modes for 2D (ckpt=PATH)",
    "report": "a table of a run or sweep dir's jobs, sorted by a metric; report.csv, report.png (PATH)",
    "sweep": "a sweep (Hydra override syntax) trained as one batched model where members allow it",
    "list": "list every model, loss, optimizer, data set and experiment preset",
}
USAGE = "usage: gantrain COMMAND [key=value ...] [-m] [--cfg job] [--help]\n\ncommands:\n" + "".join(
    f"  {name:<8} {text}\n" for name, text in COMMANDS.items()
) + "\n`gantrain COMMAND --help` shows that command's options."


def run_dir_and_overrides() -> tuple[Path, list[str]]:
    """This job's output dir and its command-line overrides, from Hydra's runtime config."""
    hc = HydraConfig.get()
    return Path(hc.runtime.output_dir), list(hc.overrides.task)


SHOW_TRACEBACKS = False  # set from HYDRA_FULL_ERROR by main()


def os_error_line(e: OSError) -> str:
    """A full disk, a read-only or missing folder: say which file and what to do."""
    where = f" {e.filename}" if e.filename else ""
    return (f"file system error on{where}: {e.strerror or e}; free some space, fix the permissions or choose "
            f"another folder (hydra.run.dir=DIR); files already written are kept")


def print_error(cmd: str, e: Exception) -> bool:
    """Print a user's mistake as one line on stderr; False for a bug or under HYDRA_FULL_ERROR=1, which the
    caller then re-raises so its traceback shows."""
    line = error_line(e)
    if SHOW_TRACEBACKS or line is None:
        return False
    print(f"gantrain {cmd}: error: " + line.replace("{cmd}", cmd), file=sys.stderr)
    return True


def one_line_errors(task):
    """Run a command's task; a user's mistake becomes one line on stderr and exit status 1, not a traceback."""
    try:
        return task()
    except Exception as e:
        if not print_error(HydraConfig.get().job.name, e):
            raise
        raise SystemExit(1) from None


@contextmanager
def job_status(run_dirs: list[Path], keep_going: bool, what: str):
    """status.json of jobs while they train: `running` on entry. A signal marks each job still running
    `interrupted` (its checkpoint resumes) and an error marks it `failed` with the error's one line. With
    keep_going (jobs of a sweep) the error is logged and the sweep goes on; else it ends the command
    (see one_line_errors). Jobs that have ended on their own (done, or failed alone) keep their status."""
    import logging

    from gantrain.runs import read_status, write_status

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
        if not keep_going or SHOW_TRACEBACKS:
            raise
        logging.getLogger("gantrain").error(f"{what} failed: {line or repr(e)}", exc_info=line is None)


def run_job(task, run_dir: Path, keep_going: bool, name: str):
    """A training job with its status.json kept up to date (see job_status); returns its metric, or None."""
    from gantrain.runs import write_status

    result = None
    with job_status([run_dir], keep_going, f"job {name}"):
        result = task()
        write_status(run_dir, "done", **({} if result is None else {"metric": result}))
    return result


@hydra.main(config_path=CONF, config_name="train", version_base=None)
def train_app(cfg: DictConfig):
    from hydra.types import RunMode

    from gantrain.runs import launcher_settings
    from gantrain.train import train

    hc = HydraConfig.get()
    run_dir, overrides = run_dir_and_overrides()
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun:
        launcher_settings(cfg, hc)
    return one_line_errors(lambda: run_job(lambda: train(cfg, run_dir, overrides, multirun), run_dir,
                                           keep_going=multirun, name=str(hc.job.get("num"))))


@hydra.main(config_path=CONF, config_name="sample", version_base=None)
def sample_app(cfg: DictConfig):
    from gantrain.sample import sample

    return one_line_errors(lambda: sample(cfg, run_dir_and_overrides()[0]))


@hydra.main(config_path=CONF, config_name="eval", version_base=None)
def eval_app(cfg: DictConfig):
    from gantrain.evaluate import eval_command

    return one_line_errors(lambda: eval_command(cfg, run_dir_and_overrides()[0]))


APPS = {"train": train_app, "sample": sample_app, "eval": eval_app}


def describe_config_error(e: Exception) -> str:
    """One line for an error Hydra or OmegaConf raised while composing the config from overrides."""
    from hydra.errors import MissingConfigException

    cause = e.__cause__ or e.__context__
    if isinstance(e, MissingConfigException) and e.options is not None and e.missing_cfg_file:
        group, _, name = e.missing_cfg_file.rpartition("/")
        valid = ", ".join(sorted(e.options))
        return f"unknown {group} '{name}': valid names are {valid} (e.g. {group}={sorted(e.options)[0]})"
    text = str(e).strip()
    m = re.match(r"Could not override '([^']+)'", text)
    if m and "not in struct" in str(cause):
        key = m.group(1)
        return f"unknown config key '{key}': `gantrain {{cmd}} --cfg job` lists the keys (to add one on purpose: +{key}=VALUE)"
    first = text.splitlines()[0] if text else type(e).__name__
    detail = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else ""
    if detail and detail not in first:
        first += f" ({detail})"
    return f"{first}; overrides look like key=value, e.g. epochs=10 (see `gantrain {{cmd}} --help`)"


def error_line(e: Exception) -> str | None:
    """The one line for a user's mistake, or None for a bug (which keeps its traceback)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(e, (HydraException, OmegaConfBaseException)):  # before OSError: some of Hydra's are IOErrors
        return describe_config_error(e)
    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, OSError):
        return os_error_line(e)
    return None


def strip_command_from_comp_line() -> str | None:
    """Shell completion calls `gantrain -sc query=...` with COMP_LINE='gantrain train ...': take the command out."""
    words = os.environ.get("COMP_LINE", "").split()
    if len(words) < 2 or words[1] not in COMMANDS:
        return None
    os.environ["COMP_LINE"] = re.sub(rf"^(\s*\S+)\s+{words[1]}\b", r"\1", os.environ["COMP_LINE"], count=1)
    return words[1]


def setup_console_logging() -> None:
    """Bare log lines on stdout, as the Hydra commands print them (each run dir also gets its train.log)."""
    import logging

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def plain_command(cmd: str, argv: list[str]) -> int:
    """Commands without a Hydra config (argparse or no options); a UserError is one line, exit 1."""
    if cmd == "list":
        from gantrain.listing import list_command as run
    elif cmd == "sweep":
        from gantrain.sweep import sweep_command as run

        setup_console_logging()
    else:
        from gantrain.report import report_command as run
    try:
        return run(argv)
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
    elif argv[0] in ("list", "report", "sweep"):  # these compose configs themselves, or need none
        return plain_command(argv[0], argv[1:])
    else:
        cmd, rest = argv[0], argv[1:]

    # Hydra prints its own multi-line reports unless HYDRA_FULL_ERROR is set; we set it so errors reach us,
    # and show a traceback only when the user asked for one.
    global SHOW_TRACEBACKS
    SHOW_TRACEBACKS = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.argv = [f"gantrain {cmd}", *rest]
    try:
        APPS[cmd]()
    except KeyboardInterrupt:  # a second Ctrl-C during training: the user wants out now
        print(f"gantrain {cmd}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # raised while Hydra composes the config or makes the run dir, before a task runs
        if not print_error(cmd, e):
            raise
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
