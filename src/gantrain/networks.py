"""Generator and discriminator networks. Builders take plain keyword arguments, never a config."""
import math

import torch
from torch import nn

from gantrain.registry import register


class MLPGenerator(nn.Module):
    """z (B, latent_size) -> x (B, *out_shape) in [-1, 1]: Linear-ReLU-Linear-ReLU-Linear-Tanh."""

    def __init__(self, latent_size: int, hidden_size: int, out_shape: tuple[int, ...]):
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.net = nn.Sequential(
            nn.Linear(latent_size, hidden_size), nn.ReLU(),
            nn.Linear(hidden_size, hidden_size), nn.ReLU(),
            nn.Linear(hidden_size, math.prod(out_shape)), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.out_shape)


class MLPDiscriminator(nn.Module):
    """x (B, *in_shape) -> logits (B,): Linear-LeakyReLU(0.2) x2 - Linear. No Sigmoid: losses take logits."""

    def __init__(self, in_shape: tuple[int, ...], hidden_size: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(math.prod(in_shape), hidden_size), nn.LeakyReLU(0.2),
            nn.Linear(hidden_size, hidden_size), nn.LeakyReLU(0.2),
            nn.Linear(hidden_size, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)).squeeze(1)


@register("model", "mlp")
def mlp(data_shape: tuple[int, ...], latent_size: int, hidden_size: int) -> tuple[nn.Module, nn.Module]:
    """The reference MLP pair (G: z-h-h-x with ReLU/Tanh; D: x-h-h-1 with LeakyReLU 0.2)."""
    return MLPGenerator(latent_size, hidden_size, data_shape), MLPDiscriminator(data_shape, hidden_size)
