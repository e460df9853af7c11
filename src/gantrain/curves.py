"""curves.png from metrics.csv, with matplotlib only: no torch here, so `gantrain report` and the worker
processes that draw a batched sweep's curves start in a fraction of a second."""
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

log = logging.getLogger("gantrain")


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed), imported only when a plot is made."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: Path) -> dict[str, list[float]]:
    """metrics.csv as columns of floats."""
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    rows = [[float(v) for v in line.split(",")] for line in lines[1:] if line]
    return {name: [row[j] for row in rows] for j, name in enumerate(header)}


def plot_curves(metrics_csv: Path, path: Path) -> None:
    """curves.png: d_loss and g_loss, then D(x) and D(G(z)), against the optimizer step."""
    plt = pyplot()
    m = read_metrics(metrics_csv)
    fig, (ax_loss, ax_prob) = plt.subplots(1, 2, figsize=(11, 4))
    style = "o-" if len(m["step"]) < 50 else "-"  # short runs have few log rows: show each one
    ax_loss.plot(m["step"], m["d_loss"], style, label="d_loss")
    ax_loss.plot(m["step"], m["g_loss"], style, label="g_loss")
    ax_prob.plot(m["step"], m["d_x"], style, label="D(x)")
    ax_prob.plot(m["step"], m["d_g_z"], style, label="D(G(z))")
    ax_prob.set_ylim(0, 1)
    for ax, title in ((ax_loss, "losses"), (ax_prob, "discriminator outputs (probabilities)")):
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
    if not m["step"]:
        fig.suptitle("no log rows yet: fewer steps than log_every")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves_of(run_dirs: list[Path]) -> None:
    """curves.png for many runs at once (a batched sweep's members), in worker processes where there are
    cores to spare: a plot costs ~0.15 s of matplotlib, 64 of them ~10 s on one core. One by one when the
    machine has one core or the pool cannot start."""
    workers = min(len(run_dirs) // 4, os.cpu_count() or 1, 8)
    if workers > 1:
        try:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                list(pool.map(plot_curves, [d / "metrics.csv" for d in run_dirs], [d / "curves.png" for d in run_dirs]))
            return
        except Exception as e:  # a pool is a speed-up only
            log.warning(f"plotting in {workers} processes failed ({type(e).__name__}: {e}); plotting one by one")
    for d in run_dirs:
        plot_curves(d / "metrics.csv", d / "curves.png")
