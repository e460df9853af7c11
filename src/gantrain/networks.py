"""Generator and discriminator networks. Builders take plain keyword arguments, never a config.

Every network takes an optional label tensor y (B,) as its second argument; it is used only when the
network was built with num_classes > 0 (a conditional GAN), and ignored otherwise.
Data shapes: images (C, H, W) in [-1, 1]; 2D points (2,) unbounded.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as sn

from gantrain.registry import register


def is_image(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3


def hidden_layers(width_in: int, width: int, depth: int, activation) -> list[nn.Module]:
    """depth x (Linear, activation), the first taking width_in features."""
    return [m for i in range(depth) for m in (nn.Linear(width_in if i == 0 else width, width), activation())]


class Heads(nn.Module):
    """K output layers over one trunk: sample b goes through head k[b]. h (B, in), k (B,) -> (B, out).

    A mixture of K generators that share all but the last layer (as MAD-GAN's, Ghosh et al. 2018). One
    continuous G maps a connected latent space onto the data, so on disconnected data (separate modes) it
    must leave some samples on the way between modes (Khayatkhoei et al. 2018); a head can sit whole on one.
    """

    def __init__(self, width_in: int, width_out: int, heads: int):
        super().__init__()
        bound = width_in ** -0.5  # nn.Linear's default initialisation, drawn for each head
        self.weight = nn.Parameter(torch.empty(heads, width_out * width_in).uniform_(-bound, bound))  # row k: (out, in)
        self.bias = nn.Parameter(torch.empty(heads, width_out).uniform_(-bound, bound))

    @torch.no_grad()
    def seed_(self, points: torch.Tensor, generator: torch.Generator) -> None:
        """Start each head at a data point, chosen by k-means++ seeding (Arthur & Vassilvitskii 2007) among
        `points` (N, out): each next one drawn with probability proportional to its squared distance from
        those chosen so far, so the heads start spread over the data, not all at G's first output."""
        chosen = [int(torch.randint(len(points), (1,), generator=generator))]
        d2 = (points - points[chosen[0]]).square().sum(1)  # (N,) to the nearest chosen point
        while len(chosen) < self.bias.shape[0]:
            chosen.append(int(torch.multinomial(d2, 1, generator=generator)))
            d2 = torch.minimum(d2, (points - points[chosen[-1]]).square().sum(1))
        self.bias.copy_(points[chosen])

    def choose(self, z: torch.Tensor) -> torch.Tensor:
        """Head of each latent (B,): z's first coordinate cut into K bins of equal probability (its normal CDF)."""
        k = torch.special.ndtr(z[:, 0]) * self.bias.shape[0]
        return k.long().clamp(max=self.bias.shape[0] - 1)

    def forward(self, h: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        # each sample's own weight rows, gathered (B, out, in): cheaper than running every head on every sample
        weight = F.embedding(k, self.weight).view(h.shape[0], -1, h.shape[1])
        return F.embedding(k, self.bias) + (weight * h.unsqueeze(1)).sum(2)


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


class DCGANGenerator(nn.Module):
    """z (B, latent) -> (B, C, H, W): Linear to (4c, H/4, W/4), two stride-2 transposed convs with BatchNorm, Tanh."""

    def __init__(self, latent_size: int, channels: int, image_shape: tuple[int, int, int], num_classes: int = 0):
        super().__init__()
        c_out, h, w = image_shape
        self.start = (4 * channels, h // 4, w // 4)
        self.embed = nn.Embedding(num_classes, num_classes) if num_classes else None
        self.project = nn.Sequential(nn.Linear(latent_size + num_classes, math.prod(self.start), bias=False),
                                     nn.BatchNorm1d(math.prod(self.start)), nn.ReLU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(4 * channels, 2 * channels, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * channels), nn.ReLU(),
            nn.ConvTranspose2d(2 * channels, channels, 4, 2, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, c_out, 3, 1, 1), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(y)], dim=1)
        return self.net(self.project(z).view(z.shape[0], *self.start))


class DCGANDiscriminator(nn.Module):
    """(B, C, H, W) -> logits (B,): two stride-2 convs (BatchNorm, or spectral norm on every layer), Linear.

    A conditional D gets the label as one extra input channel (a learned H x W map per class).
    """

    def __init__(self, channels: int, image_shape: tuple[int, int, int], num_classes: int = 0,
                 spectral_norm: bool = False):
        super().__init__()
        c_in, h, w = image_shape
        norm = (lambda layer: sn(layer)) if spectral_norm else (lambda layer: layer)
        self.hw = (h, w)
        self.embed = nn.Embedding(num_classes, h * w) if num_classes else None
        self.net = nn.Sequential(
            norm(nn.Conv2d(c_in + (1 if num_classes else 0), channels, 4, 2, 1)), nn.LeakyReLU(0.2),
            norm(nn.Conv2d(channels, 2 * channels, 4, 2, 1)),
            nn.Identity() if spectral_norm else nn.BatchNorm2d(2 * channels), nn.LeakyReLU(0.2),
            nn.Flatten(), norm(nn.Linear(2 * channels * (h // 4) * (w // 4), 1)),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            x = torch.cat([x, self.embed(y).view(-1, 1, *self.hw)], dim=1)
        return self.net(x).squeeze(1)


@register("model", "dcgan")
def dcgan(data_shape: tuple[int, ...], latent_size: int, hidden_size: int, num_classes: int = 0,
          spectral_norm: bool = False):
    """DCGAN: transposed-conv G with BatchNorm, conv D (optional spectral norm); images with H, W divisible by 4."""
    from gantrain.errors import UserError

    if not is_image(data_shape) or data_shape[1] % 4 or data_shape[2] % 4:
        raise UserError(f"model=dcgan needs images whose height and width are divisible by 4, got shape "
                        f"{tuple(data_shape)}; use model=mlp for this data")
    channels = max(hidden_size // 4, 1)  # hidden_size=256 -> 64 base channels, as in the DCGAN paper
    return (DCGANGenerator(latent_size, channels, data_shape, num_classes),
            DCGANDiscriminator(channels, data_shape, num_classes, spectral_norm))
