"""Checkpoints: tensors and plain Python values only, written atomically, loaded with weights_only=True."""
import errno
import os
import pickle
import random
import re
import secrets
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from gantrain.errors import UserError

FORMAT = "gantrain-checkpoint"
VERSION = 2  # 2: model=dcgan at square powers of two from 32 px and model=resnet at 48-128 px grew with the image
REQUIRED_KEYS = ("format", "version", "config", "data_shape", "epoch", "step", "G", "D", "opt_g", "opt_d", "rng")


def atomic_save(path: Path, obj) -> None:
    """torch.save `obj` to `path` atomically: a temp file in the same folder, fsync, then rename over. The
    file gets the mode any file the user creates gets (0666 less the umask; mkstemp would make it 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never half of one
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a failed write (a full disk) as a RuntimeError
        Path(tmp).unlink(missing_ok=True)
        full = shutil.disk_usage(path.parent).free < 2**20
        why = "no space left on the device" if full or getattr(e, "errno", None) == errno.ENOSPC else (
            getattr(e, "strerror", None) or f"the write failed: {str(e).splitlines()[0][:80]}")
        raise OSError(errno.ENOSPC if full else getattr(e, "errno", None) or errno.EIO,
                      f"{why} (the previous {path.name}, if any, is intact)", str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, state: dict) -> None:
    """Write a checkpoint (state plus the format marker and version) atomically."""
    atomic_save(path, {"format": FORMAT, "version": VERSION, **state})


def load_safely(path: Path, kind: str, refused: str, corrupt: str):
    """torch.load with weights_only=True: tensors and plain values only. A file with anything else (code), or
    one that is truncated or corrupt, is a one-line UserError ending with what to do instead."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any global that is not a tensor or plain value, so no code ever runs
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f"it references {found.group(1)}" if found else "it holds objects other than tensors and plain values"
        raise UserError(f"{path} was refused: {what}, which gantrain never unpickles; {refused}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a readable {kind} (truncated or corrupt: {type(e).__name__}); {corrupt}") from None


def load_checkpoint(path: str | Path) -> dict:
    """Load and validate a gantrain checkpoint; any problem is a one-line UserError. Never unpickles code."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}; pass the path of a checkpoints/last.pt written by gantrain train")
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a checkpoint; pass the file, e.g. {path / 'checkpoints' / 'last.pt'}")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # a torch zip archive, or a legacy pickle
        raise UserError(f"{path} is not a checkpoint (neither a torch archive nor a pickle); "
                        f"pass a checkpoints/last.pt written by gantrain train")
    ckpt = load_safely(path, "checkpoint", refused="only load checkpoints written by gantrain train",
                       corrupt="use another checkpoint, e.g. the run's checkpoints/last.pt")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is a torch file but not a gantrain checkpoint (no '{FORMAT}' marker); "
                        f"pass a checkpoint written by gantrain train")
    version = ckpt.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise UserError(f"{path} has checkpoint format version {version!r}, this gantrain reads up to {VERSION}; "
                        f"upgrade gantrain (pip install -U gantrain)")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"{path} is an incomplete gantrain checkpoint (missing {', '.join(missing)}); "
                        f"use another checkpoint")
    return ckpt


def rng_state(generator: torch.Generator) -> dict:
    """Every random state a run depends on, as tensors and plain values."""
    np_state = np.random.get_state()
    return {
        "data": generator.get_state(),  # data order and noise: the one that matters for the maths
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }


def set_rng_state(generator: torch.Generator, state: dict) -> None:
    """Inverse of rng_state. CUDA states are restored only when this machine has as many GPUs."""
    generator.set_state(state["data"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))


def weights_mismatch(error: Exception, version: int) -> UserError:
    """The one line for weights that do not fit the networks a checkpoint's own config builds."""
    if version < 2:
        return UserError("checkpoint written by gantrain 0.1, whose model=dcgan at 32 px and above (and model=resnet "
                         "at 48-128 px) had another layout than today's, which grows with the image; train it "
                         "again, or sample it with gantrain 0.1 (pip install gantrain==0.1.0)")
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = next((line for line in lines if "mismatch" in line or "Missing" in line or "Unexpected" in line), lines[0] if lines else "")
    return UserError(f"checkpoint does not match the networks it names ({detail[:140]}); "
                     f"use a checkpoint as gantrain train wrote it")


def load_weights(net: torch.nn.Module, state: dict, version: int = VERSION) -> None:
    """load_state_dict, with a mismatch reported as a one-line UserError. version: the checkpoint's format."""
    try:
        net.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise weights_mismatch(e, version) from None
