"""The installed package's version, read from its metadata: never a second copy kept in step by hand."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gantrain")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
