"""What a run leaves for people to look at: image grids and scatter plots, and metrics.csv (curves.py draws it).
Saving a grid or a scatter touches no global state, so the loop writes its members' files from threads."""
from pathlib import Path

import torch


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
    from matplotlib.figure import Figure  # not pyplot: its global figure list is not thread-safe, and Agg is the default

    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    if real is not None:
        ax.scatter(*real.detach().float().cpu().T, s=2, c="0.75", label="real")
    ax.scatter(*points.detach().float().cpu().T, s=2, c="tab:blue", label="generated" if real is not None else None)
    ax.set_aspect("equal")
    ax.set_title(title)
    if real is not None:
        ax.legend(loc="upper right", markerscale=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def save_examples(x: torch.Tensor, path: Path, nrow: int = 8, real: torch.Tensor | None = None) -> None:
    """Images (N, C, H, W) in [-1, 1] as a grid; 2D points (N, 2) as a scatter plot."""
    if x.dim() == 2:
        save_scatter(x, path, real, title=path.stem)
    else:
        save_grid(x, path, nrow)


def save_real_images(data, path: Path) -> None:
    """The first training examples (64 images or 2,500 points), to compare samples against."""
    save_examples(data.x[:2500] if data.x.dim() == 2 else data.x[:64], path)


def open_metrics(path: Path, columns: tuple[str, ...]):
    """metrics.csv opened for appending, with a header when new."""
    new = not path.exists()
    f = open(path, "a", buffering=1)
    if new:
        f.write(",".join(columns) + "\n")
    return f
