"""What a run leaves for people to look at: image grids and scatter plots, and metrics.csv (curves.py draws it).

A picture is made in two halves: `pixels` (torch, on the caller's thread: the training loop's) turns
examples into a numpy array, and `write_picture` (numpy, PIL and matplotlib's Figure only: no torch, no
global state) writes it, so the loop hands the writing to threads. A torch op on another thread would start
a second OpenMP team beside the loop's; with more OpenMP threads than cores libgomp stops spinning, and
every parallel region of the step then waits on a wake-up (2x slower on 2 cores: benchmarks/RESULTS.md)."""
from pathlib import Path

import numpy as np
import torch

from gantrain.errors import naming


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] for saving: the inverse of Normalize(0.5, 0.5), clamped."""
    return x.add(1).div(2).clamp(0, 1)


def pixels(x: torch.Tensor, nrow: int = 8) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] -> one grid as uint8 (H', W', C) pixels, as torchvision's save_image
    makes it; 2D points (N, 2) -> a float (N, 2) array."""
    from torchvision.utils import make_grid

    x = x.detach().float().cpu()
    if x.dim() == 2:
        return x.numpy()
    grid = make_grid(to_unit(x), nrow=nrow, padding=2)
    return grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()


def save_scatter(points: np.ndarray, path: Path, real: np.ndarray | None = None, title: str = "") -> None:
    """Save (N, 2) points as a scatter plot PNG, over real points in grey when given."""
    from matplotlib.figure import Figure  # not pyplot: its global figure list is not thread-safe, and Agg is the default

    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    if real is not None:
        ax.scatter(*real.T, s=2, c="0.75", label="real")
    ax.scatter(*points.T, s=2, c="tab:blue", label="generated" if real is not None else None)
    ax.set_aspect("equal")
    ax.set_title(title)
    if real is not None:
        ax.legend(loc="upper right", markerscale=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def write_picture(picture: np.ndarray, path: Path, real: np.ndarray | None = None) -> None:
    """A `pixels` array as a PNG: a grid as it is, points as a scatter plot (over `real` points). A failed write
    (a full disk) names the file."""
    from PIL import Image

    with naming(path):
        if picture.ndim == 2:
            save_scatter(picture, path, real, title=path.stem)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture.squeeze(2) if picture.shape[2] == 1 else picture).save(path)


def save_examples(x: torch.Tensor, path: Path, nrow: int = 8, real: torch.Tensor | None = None) -> None:
    """Images (N, C, H, W) in [-1, 1] as a grid; 2D points (N, 2) as a scatter plot."""
    write_picture(pixels(x, nrow), path, None if real is None else pixels(real))


def real_examples(data) -> torch.Tensor:
    """The first training examples (64 images or 2,500 points), to compare samples against."""
    return data.floats(torch.arange(min(len(data), 2500 if data.x.dim() == 2 else 64)))


def save_real_images(data, path: Path) -> None:
    save_examples(real_examples(data), path)


def open_metrics(path: Path, columns: tuple[str, ...]):
    """metrics.csv opened for appending, with a header when new."""
    new = not path.exists()
    f = open(path, "a", buffering=1)
    if new:
        f.write(",".join(columns) + "\n")
    return f
