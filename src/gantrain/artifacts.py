"""What a run leaves for people to look at: image grids, metrics.csv and curves.png."""
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

log = logging.getLogger("gantrain")


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed), imported only when a plot is made."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] for saving: the inverse of Normalize(0.5, 0.5), clamped."""
    return x.add(1).div(2).clamp(0, 1)


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    """Save (N, C, H, W) images in [-1, 1] as one PNG grid."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(to_unit(images.detach().float().cpu()), path, nrow=nrow, padding=2)


def save_scatter(points: torch.Tensor, path: Path, real: torch.Tensor | None = None, title: str = "") -> None:
    """Save (N, 2) points as a scatter plot PNG, over real points in grey when given."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    if real is not None:
        ax.scatter(*real.detach().float().cpu().T, s=2, c="0.75", label="real")
    ax.scatter(*points.detach().float().cpu().T, s=2, c="tab:blue", label="generated" if real is not None else None)
    ax.set_aspect("equal")
    ax.set_title(title)
    if real is not None:
        ax.legend(loc="upper right", markerscale=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_examples(x: torch.Tensor, path: Path, nrow: int = 8, real: torch.Tensor | None = None) -> None:
    """Images (N, C, H, W) in [-1, 1] as a grid; 2D points (N, 2) as a scatter plot."""
    if x.dim() == 2:
        save_scatter(x, path, real, title=path.stem)
    else:
        save_grid(x, path, nrow)


def save_real_images(data, path: Path) -> None:
    """The first training examples (64 images or 2,500 points), to compare samples against."""
    save_examples(data.x[:2500] if data.x.dim() == 2 else data.x[:64], path)


@torch.no_grad()
def save_samples(G: torch.nn.Module, z: torch.Tensor, y: torch.Tensor | None, path: Path, real=None) -> None:
    """G(z, y) for a fixed z as a grid or scatter, with G in eval mode (BatchNorm uses its running statistics)."""
    was_training = G.training
    G.eval()
    save_examples(G(z, y), path, real=real)
    G.train(was_training)


def open_metrics(path: Path, columns: tuple[str, ...]):
    """metrics.csv opened for appending, with a header when new."""
    new = not path.exists()
    f = open(path, "a", buffering=1)
    if new:
        f.write(",".join(columns) + "\n")
    return f


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
