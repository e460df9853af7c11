"""Work in worker processes: many small independent pieces of pure-Python work (composing configs, drawing
plots) in a pool, and the logging a worker (or a stack's members) sets up for itself.

Spawned, not forked (a parent holding CUDA or threads must not fork); the workers import only the module of
the function they run, so that module must not import torch if they are to start in under a second.
"""
import logging
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

log = logging.getLogger("gantrain")


def map_in_processes(fn, *iterables, per_worker: int, what: str) -> list:
    """[fn(*args) for args in zip(*iterables)], in up to 8 worker processes when there are at least
    `per_worker` items for each (and cores for them), else here. An error raised by fn comes back as is;
    a pool that cannot start or dies only costs the speed-up (one line in the log, then one by one)."""
    items = list(zip(*iterables))
    workers = min(len(items) // per_worker, os.cpu_count() or 1, 8)
    if workers > 1:
        try:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                return list(pool.map(fn, *zip(*items), chunksize=-(-len(items) // workers)))
        except (BrokenProcessPool, OSError) as e:
            log.warning(f"{what} in {workers} processes failed ({type(e).__name__}: {e}); {what} one by one")
    return [fn(*args) for args in items]


def console_logging() -> None:
    """Bare log lines on stdout, as the commands print them (a command's or a worker process's own)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


class LogFile(logging.FileHandler):
    """A log file (train.log, sweep.log) that a full disk cannot turn into a traceback per line (logging's
    default): the first write that fails is one warning on stderr, and its lines go on to the console only.
    Hydra's job logging writes a lone run's train.log through it too (conf/hydra/job_logging)."""

    broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.broken = True
        error = sys.exc_info()[1]
        sys.stderr.write(f"gantrain: warning: could not write {self.baseFilename} "
                         f"({getattr(error, 'strerror', None) or error}); its lines go on to the console only\n")

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # what was left to flush did not fit either: said already
            self.broken = True


def log_file(path) -> logging.FileHandler:
    """A handler writing timestamped lines to `path` (a stack member's train.log, a sweep's sweep.log)."""
    handler = LogFile(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s"))
    return handler
