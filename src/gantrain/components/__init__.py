"""The building blocks a config names: networks, losses, optimizers, data sets (and augmentations).

Importing this package fills every registry (registry.py), so `lookup(kind, name)` sees every entry.
"""
from gantrain.components import augment, data, dcgan, losses, networks, optimizers, resnet  # noqa: F401  (they register)
from gantrain.components.registry import describe, lookup, register  # noqa: F401
