"""Optimizers by name; every config key but `name` is passed to torch's constructor."""
import torch

from gantrain.registry import register


@register("optim", "adam")
def adam(params, **kwargs) -> torch.optim.Optimizer:
    """torch.optim.Adam (the reference: lr 2e-4, default betas)."""
    return torch.optim.Adam(params, **kwargs)


@register("optim", "adamw")
def adamw(params, **kwargs) -> torch.optim.Optimizer:
    """torch.optim.AdamW: Adam with decoupled weight decay."""
    return torch.optim.AdamW(params, **kwargs)


@register("optim", "sgd")
def sgd(params, **kwargs) -> torch.optim.Optimizer:
    """torch.optim.SGD, with momentum from the config."""
    return torch.optim.SGD(params, **kwargs)


@register("optim", "rmsprop")
def rmsprop(params, **kwargs) -> torch.optim.Optimizer:
    """torch.optim.RMSprop (as in the original WGAN)."""
    return torch.optim.RMSprop(params, **kwargs)
