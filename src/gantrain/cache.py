"""Where gantrain keeps what it computes once and reuses ($GANTRAIN_CACHE_DIR): prepared data (prepared/),
feature networks (features/) and real-side statistics (references/); what it holds, when each entry was
last used, who is still writing a temporary folder, and what may go. No torch here: prepare's worker
processes and `gantrain cache` import it.
"""
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("gantrain")
KINDS = {"prepared": "prepared data", "features": "feature networks", "references": "real-side statistics"}
WRITER = ".writer.json"  # in a temporary folder: who writes it (host, pid, the process's start time)
LAST_USE = ".last_use"  # in a prepared folder: touched at every use (atime is often off, or lies on NFS)
# file systems whose files other machines may have open: a superseded copy there is left to `gantrain cache prune`
NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs", "afs",
              "9p", "panfs", "wekafs", "orangefs", "pvfs2", "davfs"}
OTHER_HOST_STALE_S = 24 * 3600  # a temporary folder of another machine's writer, untouched this long, is dead


def human(n: float) -> str:
    """A size in bytes as people read it: 512 KiB, 3.2 MiB, 9.3 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} bytes"


def cache_dir() -> Path:
    """$GANTRAIN_CACHE_DIR, else $XDG_CACHE_HOME/gantrain, else ~/.cache/gantrain."""
    if os.environ.get("GANTRAIN_CACHE_DIR"):
        return Path(os.environ["GANTRAIN_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "gantrain"


_read_only_said: set[str] = set()


def writable(kind: str) -> bool:
    """Whether new entries of `kind` can be kept in the cache. A cache that cannot be written (a read-only
    mount, a shared folder without permission) is used as it is, and says so once per process."""
    folder = cache_dir() / kind
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe.{os.getpid()}"
        probe.touch()
        probe.unlink()
        return True
    except OSError as e:
        if str(cache_dir()) not in _read_only_said:
            _read_only_said.add(str(cache_dir()))
            log.warning(f"cache: {cache_dir()} cannot be written ({e.strerror or e}): what it holds is used, nothing "
                        f"new is kept there (set GANTRAIN_CACHE_DIR to a writable folder to keep it)")
        return False


def touch(path: Path) -> None:
    """Record a use of a cache entry (a file's mtime, a prepared folder's .last_use); nothing on a read-only cache."""
    try:
        path.touch()
    except OSError:
        pass


# ---- who writes a temporary folder ----------------------------------------------------------------------

def start_time(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), which tells a live writer from a later
    process that got its pid; None where /proc cannot say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()[19]  # field 22, counted after the command name
    except (OSError, ValueError, IndexError):
        return None


def mark_writer(folder: Path) -> None:
    """Say in `folder` who is writing it: this host, this process and its start time."""
    (folder / WRITER).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                             "started": start_time(os.getpid()), "time": time.time()}))


def writer_gone(folder: Path) -> bool:
    """Whether a temporary folder's writer is gone: on this host, its process has ended (or its pid now
    belongs to a later process); on another host (shared storage), nothing was written there for a day."""
    try:
        writer = json.loads((folder / WRITER).read_text())
    except (OSError, ValueError):
        writer = {}
    if writer.get("host") == socket.gethostname():
        try:
            os.kill(int(writer["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError, TypeError):
            pass
        return writer.get("started") is not None and start_time(int(writer["pid"])) != writer.get("started")
    return time.time() - newest_mtime(folder) > OTHER_HOST_STALE_S


def newest_mtime(folder: Path) -> float:
    """The last time anything in `folder` (or the folder) was written."""
    try:
        return max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.iterdir())])
    except OSError:
        return 0.0


def remove_dead_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary folders (.<name>.<hex>.tmp) in `folder` whose writer is gone (a killed preparation);
    returns those this process removed (each is first renamed to *.gone, which only one process can do)."""
    removed = []
    for p in sorted(folder.glob(".*.tmp")) if folder.is_dir() else ():
        if p.is_dir() and writer_gone(p):
            try:
                os.rename(p, p.with_name(p.name + ".gone"))
            except OSError:  # another process took it first
                continue
            removed.append(p)
    for gone in folder.glob(".*.gone") if folder.is_dir() else ():  # this process's, and any a killed remover left
        shutil.rmtree(gone, ignore_errors=True)
    return removed


# ---- local or shared storage --------------------------------------------------------------------------------

def file_system(path: Path) -> str | None:
    """The type of the file system holding `path` (ext4, tmpfs, nfs4, ...), from /proc/mounts; None unknown."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return None
    path = str(path.resolve())
    best = max((m for m in mounts if path == m[0] or path.startswith(m[0].rstrip("/") + "/")),
               key=lambda m: len(m[0]), default=None)
    return None if best is None else best[1].replace("\\040", " ")


def is_local(path: Path) -> bool:
    """Whether only this machine can have `path`'s files open: then a file removed while another process maps
    it keeps its pages until that process lets go, and removing a superseded copy is safe."""
    kind = file_system(path)
    return kind is not None and kind not in NETWORK_FS and not kind.startswith("fuse")


def remove_superseded(folder: Path, meta: dict) -> None:
    """The copies `folder` replaces (the same folder before it changed, or an older format) are removed where
    that is safe (a local file system: a run still mapping one keeps its pages); on shared storage another
    machine may be reading one, so they are left to `gantrain cache prune`."""
    old = [f for f in folder.parent.glob("*") if f != folder and (m := read_meta(f)) and supersedes(meta, m)]
    if not old:
        return
    if not is_local(folder):
        log.info(f"data: {len(old)} superseded prepared cop{'y' if len(old) == 1 else 'ies'} of {meta['root']} kept: "
                 f"{folder.parent} is on {file_system(folder) or 'a file system'} that other machines may read "
                 f"(gantrain cache prune removes them)")
        return
    freed = sum(size_on_disk(f) for f in old)
    for f in old:
        shutil.rmtree(f, ignore_errors=True)
    log.info(f"data: removed {len(old)} superseded prepared cop{'y' if len(old) == 1 else 'ies'} of {meta['root']} "
             f"({human(freed)})")


# ---- what the cache holds -----------------------------------------------------------------------------------

@dataclass
class Entry:
    kind: str  # prepared | features | references
    path: Path
    what: str  # in words: a prepared folder's root, size and images; a file's name
    bytes: int
    last_use: float  # seconds since the epoch
    superseded: bool = False  # a prepared copy of a folder that has a newer one (same root, size, channels)
    temporary: str | None = None  # a preparation's temporary folder: "under way", or "its writer is gone"


def size_on_disk(path: Path) -> int:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    total = 0
    for f in files:
        try:
            total += f.stat().st_blocks * 512
        except OSError:
            pass
    return total


def read_meta(folder: Path) -> dict | None:
    """A prepared folder's meta.json, or None where it is missing or not whole."""
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def prepared_what(meta: dict) -> str:
    size = "x".join(str(s) for s in meta.get("size", [meta.get("side"), meta.get("side")]))
    return f"{meta.get('root')} at {size}x{meta.get('channels')}, {meta.get('n')} images"


def supersedes(new: dict, old: dict) -> bool:
    """Whether the prepared copy `new` replaces `old` (their meta.json): a later copy of the same folder at the
    same size and channels, with the same labels setting or made by an older format (never read again)."""
    source = lambda m: (m.get("root"), tuple(m.get("size") or [m.get("side")] * 2), m.get("channels"))
    return (source(new) == source(old) and new.get("created", 0) > old.get("created", 0)
            and (new.get("labels") == old.get("labels") or old.get("format", 1) < new.get("format", 1)))


def entries() -> list[Entry]:
    """Everything the cache holds, newest use first within each kind."""
    out = []
    home = cache_dir()
    prepared = []
    for folder in sorted((home / "prepared").glob("*")) if (home / "prepared").is_dir() else ():
        if folder.name.startswith("."):
            if folder.is_dir() and folder.name.endswith((".tmp", ".gone")):
                state = "its writer is gone" if folder.name.endswith(".gone") or writer_gone(folder) else "under way"
                out.append(Entry("prepared", folder, f"a preparation's temporary folder ({state})",
                                 size_on_disk(folder), newest_mtime(folder), temporary=state))
            continue
        meta = read_meta(folder) or {}
        used = (folder / LAST_USE).stat().st_mtime if (folder / LAST_USE).exists() else newest_mtime(folder)
        prepared.append((Entry("prepared", folder, prepared_what(meta) if meta else "an incomplete prepared copy",
                               size_on_disk(folder), used), meta))
    for entry, meta in prepared:
        entry.superseded = bool(meta) and any(m and supersedes(m, meta) for _, m in prepared)
        out.append(entry)
    for kind in ("features", "references"):
        for f in sorted((home / kind).glob("*.pt")) if (home / kind).is_dir() else ():
            out.append(Entry(kind, f, f.name, size_on_disk(f), f.stat().st_mtime))
    return out


def remove(entry: Entry) -> None:
    if entry.path.is_dir():
        shutil.rmtree(entry.path)
    else:
        entry.path.unlink()
