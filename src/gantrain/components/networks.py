"""Generator and discriminator networks. Builders take plain keyword arguments, never a config.

Every network takes an optional label tensor y (B,) as its second argument; it is used only when the
network was built with num_classes > 0 (a conditional GAN), and ignored otherwise.
Data shapes: images (C, H, W) in [-1, 1]; 2D points (2,) unbounded.
Every network here also trains as K stacked members (engine/stacked.py): BatchNorm statistics and
spectral-norm vectors are buffers, one set per member.
"""
import math

import torch
from torch import nn

from gantrain.components.layers import Heads, SNConv2d, SNLinear, hidden_layers
from gantrain.components.registry import register
from gantrain.errors import UserError


def is_image(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3


def not_images(model: str, shape: tuple[int, ...]) -> UserError:
    """The line for an image network given 2D points."""
    return UserError(f"model={model} takes images (C, H, W), and this data set holds points of shape {tuple(shape)}; "
                     f"use model=mlp")


def check_image_shape(model: str, shape: tuple[int, ...], takes, what: str) -> None:
    """An image network's refusal of points, or of a (C, H, W) whose (H, W) takes(H, W) rejects: one line saying
    `what` it takes, the three nearest shapes it does take, and the way out."""
    if not is_image(shape):
        raise not_images(model, shape)
    if not takes(*shape[1:]):
        got = "x".join(map(str, shape[1:]))
        raise UserError(f"model={model} takes {what}; got {got}; nearest it takes: {nearest_shapes(shape, takes)} "
                        f"(data.image_size=[H,W]), or use model=mlp")


def nearest_shapes(shape: tuple[int, ...], takes, count: int = 3) -> str:
    """The `count` image sizes nearest to shape's (C, H, W) that takes(H, W) accepts, as '64x48, 64x64, ...'
    (for a one-line refusal)."""
    height, width = shape[1:]
    near = lambda side: range(max(4, side - 64), side + 65)
    found = sorted(((abs(h - height) + abs(w - width), h, w) for h in near(height) for w in near(width) if takes(h, w)))
    return ", ".join(f"{h}x{w}" for _, h, w in found[:count]) or "none near it"


class MLPGenerator(nn.Module):
    """z (B, latent) [+ label embedding] -> x (B, *out_shape): (Linear-ReLU) x depth - Linear, Tanh for images.

    heads > 1 replaces the last Linear with that many (see Heads), one per sample picked by z[:, 0].
    """

    def __init__(self, latent_size: int, hidden_size: int, out_shape: tuple[int, ...], num_classes: int = 0,
                 depth: int = 2, heads: int = 1):
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.embed = nn.Embedding(num_classes, num_classes) if num_classes else None
        trunk = hidden_layers(latent_size + num_classes, hidden_size, depth, nn.ReLU)
        squash = nn.Tanh() if is_image(out_shape) else nn.Identity()  # points are not bounded to [-1, 1]
        if heads == 1:  # the reference's layout, and its checkpoints' keys
            self.net, self.heads = nn.Sequential(*trunk, nn.Linear(hidden_size, math.prod(out_shape)), squash), None
        else:
            self.net, self.heads = nn.Sequential(*trunk), Heads(hidden_size, math.prod(out_shape), heads)
            self.squash = squash

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.net(z if self.embed is None else torch.cat([z, self.embed(y)], dim=1))
        if self.heads is not None:
            h = self.squash(self.heads(h, self.heads.choose(z)))
        return h.view(z.shape[0], *self.out_shape)


class MLPDiscriminator(nn.Module):
    """x (B, *in_shape) [+ label embedding] -> logits (B / pack,): (Linear-LeakyReLU(0.2)) x depth - Linear. No Sigmoid.

    pack > 1 is PacGAN (Lin et al. 2018): D judges `pack` samples of one kind at once, concatenated, which
    lets it see a batch's lack of diversity and so penalise mode collapse. B must be a multiple of pack.
    """

    def __init__(self, in_shape: tuple[int, ...], hidden_size: int, num_classes: int = 0, depth: int = 2, pack: int = 1):
        super().__init__()
        self.pack = pack
        self.embed = nn.Embedding(num_classes, num_classes) if num_classes else None
        self.net = nn.Sequential(
            *hidden_layers(pack * (math.prod(in_shape) + num_classes), hidden_size, depth, lambda: nn.LeakyReLU(0.2)),
            nn.Linear(hidden_size, 1),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = x.flatten(1)
        if self.embed is not None:
            x = torch.cat([x, self.embed(y)], dim=1)
        return self.net(x.reshape(-1, self.pack * x.shape[1])).squeeze(1)  # consecutive samples form a pack


@register("model", "mlp")
def mlp(data_shape: tuple[int, ...], latent_size: int, hidden_size: int, num_classes: int = 0, depth: int = 2,
        pack: int = 1, heads: int = 1):
    """The reference MLP pair (G: z-h-h-x, ReLU/Tanh; D: x-h-h-1, LeakyReLU 0.2); also for 2D points."""
    return (MLPGenerator(latent_size, hidden_size, data_shape, num_classes, depth, heads),
            MLPDiscriminator(data_shape, hidden_size, num_classes, depth, pack))


def has_batch_statistics(net: nn.Module) -> bool:
    """True if the net normalises over the batch, so real and fake must not share one forward pass."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
