"""gantrain: a command-line experiment runner for training GANs with PyTorch and Hydra."""

__version__ = "0.1.0"
