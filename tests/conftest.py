"""Shared fixtures: tiny MNIST-format data written by the tests, and the real configs composed once and shrunk."""
import contextlib
import copy
import gzip
import importlib
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

# Tests run in 2 xdist workers on 2 cores: one thread each (OpenMP threads that outnumber the cores spin
# and slow everything down many times). Set before torch is imported; CLI subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

N_TINY = 120  # images in the tiny IDX data set
# under CI (.ci/run sets CI=true) what the install steps put there must be there: a test that would skip for a
# missing package or browser fails instead, so a broken install step cannot turn the suite green by skipping
IN_CI = os.environ.get("CI") == "true"
# device of the tests that name one: cpu here and in CI; GANTRAIN_TEST_DEVICE=cuda reruns them on a GPU
DEVICE = os.environ.get("GANTRAIN_TEST_DEVICE", "cpu")


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write a uint8 array in the IDX format MNIST uses (magic 0x00000800 | ndim, big-endian dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def tiny_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n 28x28 'digits': a bright bar whose position is the label, plus noise. Learnable, not trivial."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 40, (n, 28, 28))
    for i, label in enumerate(labels):
        images[i, 4:24, 2 + 2 * label: 5 + 2 * label] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_mnist(root: Path, n: int = N_TINY, gz: bool = False) -> Path:
    images, labels = tiny_images(n)
    raw = root / "MNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte", images, gz)
    write_idx(raw / "train-labels-idx1-ubyte", labels, gz)
    return root


def write_photo_folder(root: Path, n: int, side: int = 40) -> Path:
    """n real colour photographs: random square crops of the three photos that installed packages ship
    (matplotlib's Grace Hopper, scikit-learn's China and flower), resized to side x side PNGs."""
    import matplotlib
    import sklearn.datasets
    from PIL import Image

    images = Path(sklearn.datasets.__file__).parent / "images"
    sources = [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg", images / "china.jpg",
               images / "flower.jpg"]
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        with Image.open(sources[i % 3]) as photo:
            w, h = photo.size
            size = int(rng.integers(48, min(w, h) // 2))
            x, y = int(rng.integers(0, w - size)), int(rng.integers(0, h - size))
            photo.convert("RGB").crop((x, y, x + size, y + size)).resize((side, side), Image.BICUBIC).save(root / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session", autouse=True)
def feature_cache(tmp_path_factory):
    """Cached feature networks go to a temp dir (CLI subprocesses inherit it), never to ~/.cache."""
    os.environ["GANTRAIN_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("data"))


TINY = [f"device={DEVICE}", "epochs=2", "batch_size=20", "latent_size=8", "hidden_size=32", "log_every=3", "eval.n=60",
        "trainer.threads=1"]


@pytest.fixture(scope="session")
def base_cfg(mnist_root):
    """conf/train.yaml composed once, shrunk to tiny CPU runs on the tiny IDX data."""
    with initialize_config_module("gantrain.conf", version_base=None):
        return compose("train", overrides=[*TINY, "data=mnist", f"data.root={mnist_root}"])


@pytest.fixture(scope="module")  # per module: some modules write beside it
def one_epoch_ckpt(base_cfg, tmp_path_factory) -> Path:
    """checkpoints/last.pt of a tiny one-epoch run (in-process), shared by a test module."""
    from gantrain.engine.jobs import train

    cfg = copy.deepcopy(base_cfg)
    cfg.epochs = 1
    run_dir = tmp_path_factory.mktemp("run")
    train(cfg, run_dir, [])
    return run_dir / "checkpoints" / "last.pt"


@pytest.fixture
def cfg(base_cfg):
    """A private copy of the tiny config that a test may change."""
    return copy.deepcopy(base_cfg)


def compose_train(overrides: list[str]):
    with initialize_config_module("gantrain.conf", version_base=None):
        return compose("train", overrides=overrides)


def run_process(*args: str, cwd: Path, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run the real `gantrain` command (as `python -m gantrain`) in a process of its own: for what only a
    process shows (its exit status after a signal, runs that start together)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "gantrain", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run the real `gantrain` command (gantrain.cli.main, what `gantrain` and `python -m gantrain` call) in
    this process, as a subprocess would see it: its stdout, stderr and exit status, in `cwd` with `env` set;
    everything it changes (cwd, argv, environment, logging) is put back. A new process would spend ~2 s
    importing torch before doing anything; here that is paid once per test worker."""
    from gantrain.cli import main

    out, err, saved = io.StringIO(), io.StringIO(), (os.getcwd(), sys.argv[:], dict(os.environ))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    os.chdir(cwd)
    os.environ.update(env or {})
    os.environ.pop("HYDRA_FULL_ERROR", None)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(saved[0])
        sys.argv[:] = saved[1]
        os.environ.clear()
        os.environ.update(saved[2])
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:], root.level = handlers, level
    return subprocess.CompletedProcess(["gantrain", *args], code, out.getvalue(), err.getvalue())


def assert_same_state(a: dict, b: dict) -> None:
    """Two checkpoints hold the same training state bit for bit: G, D, G's average and both optimizers' state."""
    import torch

    for net in ("G", "D", "G_ema"):
        assert (a[net] is None) == (b[net] is None), net
        for key, value in (b[net] or {}).items():
            assert torch.equal(a[net][key], value), (net, key)
    for opt in ("opt_g", "opt_d"):
        assert a[opt]["state"].keys() == b[opt]["state"].keys() and b[opt]["state"], opt
        for j, state in b[opt]["state"].items():
            for name, value in state.items():
                assert torch.equal(torch.as_tensor(a[opt]["state"][j][name]), torch.as_tensor(value)), (opt, j, name)


def only_run_dir(root: Path, command: str = "train") -> Path:
    """The single run dir under root/outputs/<command>/<date>/<time>."""
    dirs = sorted((root / "outputs" / command).glob("*/*"))
    assert len(dirs) == 1, dirs
    return dirs[0]


def require(module: str, extra: str):
    """The module, or the test skips saying which extra installs it; under CI a missing one fails."""
    if IN_CI:
        return importlib.import_module(module)  # ImportError: the test (or its module) fails
    return pytest.importorskip(module, reason=f"{module} (pip install 'gantrain[{extra}]') is not installed")


def missing(what: str) -> None:
    """Skip, saying what is missing; under CI, fail: the install step should have put it there."""
    (pytest.fail if IN_CI else pytest.skip)(what)


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False):
    """A real small file system at `path` (a tmpfs, which root can mount): a real full disk, or a real read-only
    folder. Skips, saying why, where it cannot be mounted (the mocked faults cover those machines)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount_read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)


class Evil:
    """A pickle payload: unpickling it runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def to_plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)
