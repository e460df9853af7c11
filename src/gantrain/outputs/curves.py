"""curves.png from metrics.csv, with matplotlib only: no torch here, so `gantrain report` and the worker
processes that draw a stack's curves start without importing torch."""
from pathlib import Path

from gantrain.errors import naming
from gantrain.processes import map_in_processes


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
    with naming(path):
        fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves_of(run_dirs: list[Path]) -> None:
    """curves.png for many runs at once (a stack's members), in worker processes where there are cores to
    spare: matplotlib is slow enough that a large stack's plots would otherwise hold up its end."""
    map_in_processes(plot_curves, [d / "metrics.csv" for d in run_dirs], [d / "curves.png" for d in run_dirs],
                     per_worker=4, what="plotting")
