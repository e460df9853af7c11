"""gantrain: a command-line experiment runner for training GANs with PyTorch and Hydra; from Python:
gantrain.train, gantrain.evaluate, gantrain.export, gantrain.load_generator (api.py)."""
from gantrain.version import __version__

__all__ = ["__version__", "train", "evaluate", "export", "load_generator", "Generator", "Run", "UserError", "Interrupted"]


def __getattr__(name: str):
    """The Python API, imported when first used: `import gantrain` (and the command's start) stays free of torch."""
    if name in __all__:
        from gantrain import api

        return getattr(api, name)
    raise AttributeError(f"module 'gantrain' has no attribute {name!r}")
