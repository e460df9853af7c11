"""DCGAN (Radford et al. 2016), laid out for the image's size.

At square power-of-two sides from 32 it is the paper's network as pytorch/examples' dcgan builds it: G turns
z into a 4x4 map with one transposed conv and doubles it per layer while the channels halve down to
`channels` (64 px, 64 channels: 512-256-128-64, then the image); D mirrors it with stride-2 convs and judges
the last 4x4 map with one 4x4 conv. At the other sides divisible by 4 (28 px digits) it is gantrain's small
DCGAN: a Linear projects z to (4c, H/4, W/4), two transposed convs double it, a 3x3 conv makes the image; D
has two stride-2 convs and a Linear.

A conditional G gets a label embedding beside z; a conditional D gets the label as one extra input channel
(a learned H x W map per class).
"""
import math

import torch
from torch import nn

from gantrain.components.layers import SNConv2d, SNLinear, SpectralNorm
from gantrain.components.networks import is_image
from gantrain.components.registry import register
from gantrain.errors import UserError


def paper_layout(side_h: int, side_w: int) -> bool:
    """True where the 4x4-doubling layout applies: square, a power of two, at least 32."""
    return side_h == side_w and side_h >= 32 and side_h & (side_h - 1) == 0


def init_dcgan_(net: nn.Module) -> None:
    """The paper's initialisation (pytorch/examples' weights_init): conv weights N(0, 0.02), BatchNorm scales
    N(1, 0.02) and shifts 0. Spectrally normalised layers keep torch's default, which their power iteration
    (run on it at construction) describes."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and not isinstance(m, SpectralNorm):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def with_label_channel(x: torch.Tensor, embed: nn.Embedding | None, y: torch.Tensor | None) -> torch.Tensor:
    """A conditional D's input: (B, C, H, W) and labels (B,) -> (B, C + 1, H, W), the label's learned map beside
    the image; x itself when unconditional."""
    if embed is None:
        return x
    return torch.cat([x, embed(y).view(-1, 1, *x.shape[2:])], dim=1)


class DCGANGenerator(nn.Module):
    """z (B, latent) -> (B, C, S, S): transposed conv to (c * S/8, 4, 4), then one stride-2 transposed conv per
    doubling with BatchNorm and ReLU, halving the channels, the last one making the image (Tanh)."""

    def __init__(self, latent_size: int, channels: int, image_shape: tuple[int, int, int], num_classes: int = 0):
        super().__init__()
        c_out, side, _ = image_shape
        widths = [channels * 2 ** i for i in reversed(range(int(math.log2(side)) - 2))]  # 64 px: 8c, 4c, 2c, c
        self.embed = nn.Embedding(num_classes, num_classes) if num_classes else None
        layers = [nn.ConvTranspose2d(latent_size + num_classes, widths[0], 4, 1, 0, bias=False),  # 1x1 -> 4x4
                  nn.BatchNorm2d(widths[0]), nn.ReLU()]
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.ConvTranspose2d(widths[-1], c_out, 4, 2, 1, bias=False), nn.Tanh())
        init_dcgan_(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(y)], dim=1)
        return self.net(z[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    """(B, C, S, S) -> logits (B,): one stride-2 conv per halving, LeakyReLU(0.2), BatchNorm after all but the
    first (or spectral norm on every layer), channels doubling from c; a 4x4 conv over the last 4x4 map."""

    def __init__(self, channels: int, image_shape: tuple[int, int, int], num_classes: int = 0,
                 spectral_norm: bool = False):
        super().__init__()
        c_in, side, _ = image_shape
        widths = [channels * 2 ** i for i in range(int(math.log2(side)) - 2)]  # 64 px: c, 2c, 4c, 8c
        conv = SNConv2d if spectral_norm else nn.Conv2d
        self.embed = nn.Embedding(num_classes, side * side) if num_classes else None
        # no bias before BatchNorm (as in the paper): BatchNorm removes it, so its gradient is zero and Adam
        # would step it by ~lr in the direction of float noise; pytorch/examples has none on the first either
        layers = [conv(c_in + (1 if num_classes else 0), widths[0], 4, 2, 1, bias=spectral_norm), nn.LeakyReLU(0.2)]
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [conv(w_in, w_out, 4, 2, 1, bias=spectral_norm),
                       nn.Identity() if spectral_norm else nn.BatchNorm2d(w_out), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers, conv(widths[-1], 1, 4, 1, 0, bias=spectral_norm))  # 4x4 -> 1x1
        init_dcgan_(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(with_label_channel(x, self.embed, y)).flatten()


class SmallDCGANGenerator(nn.Module):
    """z (B, latent) -> (B, C, H, W): Linear to (4c, H/4, W/4), two stride-2 transposed convs with BatchNorm,
    a 3x3 conv, Tanh."""

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


class SmallDCGANDiscriminator(nn.Module):
    """(B, C, H, W) -> logits (B,): two stride-2 convs (BatchNorm, or spectral norm on every layer), Linear."""

    def __init__(self, channels: int, image_shape: tuple[int, int, int], num_classes: int = 0,
                 spectral_norm: bool = False):
        super().__init__()
        c_in, h, w = image_shape
        conv, linear = (SNConv2d, SNLinear) if spectral_norm else (nn.Conv2d, nn.Linear)
        self.embed = nn.Embedding(num_classes, h * w) if num_classes else None
        self.net = nn.Sequential(
            conv(c_in + (1 if num_classes else 0), channels, 4, 2, 1), nn.LeakyReLU(0.2),
            conv(channels, 2 * channels, 4, 2, 1, bias=spectral_norm),  # no bias before BatchNorm (see above)
            nn.Identity() if spectral_norm else nn.BatchNorm2d(2 * channels), nn.LeakyReLU(0.2),
            nn.Flatten(), linear(2 * channels * (h // 4) * (w // 4), 1),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(with_label_channel(x, self.embed, y)).squeeze(1)


@register("model", "dcgan")
def dcgan(data_shape: tuple[int, ...], latent_size: int, hidden_size: int, num_classes: int = 0,
          spectral_norm: bool = False):
    """DCGAN: the paper's 4x4-doubling pair at square sides 32, 64, 128, ...; a small pair at other sides divisible by 4."""
    if not is_image(data_shape) or data_shape[1] % 4 or data_shape[2] % 4:
        raise UserError(f"model=dcgan takes images whose height and width are divisible by 4 (28, 32, 48, 64, 128, "
                        f"...; the paper's layout at square powers of two from 32), got shape {tuple(data_shape)}; "
                        f"resize them (data.image_size=64) or use model=mlp")
    channels = max(hidden_size // 4, 1)  # hidden_size=256 -> 64 base channels, as in the DCGAN paper
    G, D = (DCGANGenerator, DCGANDiscriminator) if paper_layout(*data_shape[1:]) else (SmallDCGANGenerator, SmallDCGANDiscriminator)
    return G(latent_size, channels, data_shape, num_classes), D(channels, data_shape, num_classes, spectral_norm)
