"""gantrain cache: what gantrain keeps under $GANTRAIN_CACHE_DIR (prepared data, feature networks, real-side
statistics), and removing it, as `pip cache` and `huggingface-cli delete-cache` do. Everything there is made
again when needed."""
import argparse
import re
import time

from gantrain import cache
from gantrain.commands.tables import as_table, console
from gantrain.errors import UserError

AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def age_seconds(text: str) -> float:
    """'30d', '12h', '2w', '90m' -> seconds."""
    m = AGE.fullmatch(text.strip())
    if not m:
        raise UserError(f"--older-than takes an age like 30d, 12h, 2w or 90m, got {text!r}")
    return float(m.group(1)) * SECONDS[m.group(2)]


def when(t: float) -> str:
    days = (time.time() - t) / 86400
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) + (f" ({days:.0f} days ago)" if days >= 1 else "")


def list_entries() -> int:
    found = cache.entries()
    if not found:
        print(f"the cache {cache.cache_dir()} is empty")
        return 0
    rows = [{"kind": e.kind, "what": e.what + (" (superseded)" if e.superseded else ""), "size": cache.human(e.bytes),
             "last use": when(e.last_use), "path": str(e.path)} for e in found]
    total = ", ".join(f"{cache.KINDS[k]} {cache.human(sum(e.bytes for e in found if e.kind == k))}"
                      for k in cache.KINDS if any(e.kind == k for e in found))
    console().print(as_table(rows, f"{cache.cache_dir()}: {total}"))
    return 0


def remove(chosen: list, why: str) -> int:
    for entry in chosen:
        cache.remove(entry)
    freed = sum(e.bytes for e in chosen)
    print(f"removed {len(chosen)} cache entr{'y' if len(chosen) == 1 else 'ies'} ({why}), {cache.human(freed)} freed"
          if chosen else f"nothing to remove ({why})")
    return 0


def cache_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gantrain cache", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action")
    sub.add_parser("list", help="what the cache holds (the default)")
    clear = sub.add_parser("clear", help="remove everything of a kind")
    clear.add_argument("kind", nargs="?", default="all", choices=[*cache.KINDS, "all"])
    prune = sub.add_parser("prune", help="remove what was not used lately, superseded copies, dead temporary folders")
    prune.add_argument("--older-than", default="30d", help="last use before this age (default 30d)")
    args = parser.parse_args(argv)
    if args.action in (None, "list"):
        return list_entries()
    found = [e for e in cache.entries() if e.temporary != "under way"]  # never a live preparation's folder
    if args.action == "clear":
        return remove([e for e in found if args.kind in ("all", e.kind)],
                      "all of it" if args.kind == "all" else cache.KINDS[args.kind])
    cutoff = time.time() - age_seconds(args.older_than)
    stale = [e for e in found if e.last_use < cutoff or e.superseded or e.temporary is not None]
    return remove(stale, f"unused for {args.older_than}, superseded, or left by a killed preparation")
