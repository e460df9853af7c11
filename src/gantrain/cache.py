"""Where gantrain keeps what it computes once and reuses: feature networks, real-side statistics, prepared data."""
import os
from pathlib import Path


def cache_dir() -> Path:
    """$GANTRAIN_CACHE_DIR, else $XDG_CACHE_HOME/gantrain, else ~/.cache/gantrain."""
    if os.environ.get("GANTRAIN_CACHE_DIR"):
        return Path(os.environ["GANTRAIN_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "gantrain"
