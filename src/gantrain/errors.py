"""The one exception type for mistakes a user can fix, and the one line any mistake is shown as."""
import os
import re
from contextlib import contextmanager


class UserError(Exception):
    """Bad input: the message says what is wrong and how to fix it (the one line the commands print)."""


class Interrupted(Exception):
    """Training stopped by a signal (Ctrl-C, SIGTERM) when run from Python (gantrain.train): it saved a
    checkpoint to resume from, as the command does before exiting with 128 + the signal."""


@contextmanager
def naming(path):
    """A file system error while writing `path` names it (a write() on a full disk says only ENOSPC)."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise


def show_tracebacks() -> bool:
    """The user asked for tracebacks (HYDRA_FULL_ERROR=1 when gantrain started; the CLI records it here,
    in the environment, so that launcher worker processes see it too)."""
    return os.environ.get("GANTRAIN_TRACEBACKS") == "1"


def os_error_line(e: OSError, folder_option: str = "hydra.run.dir=DIR") -> str:
    """A full disk, a read-only or missing folder: say which file and what to do (folder_option: the setting
    that picks where the command writes)."""
    where = f" {e.filename}" if e.filename else ""
    return (f"file system error on{where}: {e.strerror or e}; free some space, fix the permissions or choose "
            f"another folder ({folder_option}); files already written are kept")


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


def error_line(e: Exception, folder_option: str = "hydra.run.dir=DIR") -> str | None:
    """The one line for a user's mistake, or None for a bug (which keeps its traceback)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(e, (HydraException, OmegaConfBaseException)):  # before OSError: some of Hydra's are IOErrors
        return describe_config_error(e)
    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, OSError):
        return os_error_line(e, folder_option)
    return None
