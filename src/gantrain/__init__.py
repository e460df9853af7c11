"""gantrain: a command-line experiment runner for training GANs with PyTorch and Hydra."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gantrain")  # the installed package's own, never a second copy kept in step by hand
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
