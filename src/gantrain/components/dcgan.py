"""DCGAN (Radford et al. 2016), laid out for the image's size.

Where the longer side is a power of two from 32 and the shorter one shares its doublings (64x64, 64x48,
128x64, ...) it is the paper's network as pytorch/examples' dcgan builds it: G turns z into a map of the
image's aspect whose longer side is 4 (4x4 for a square, 4x3 for 64x48) with one transposed conv and doubles
it per layer while the channels halve down to `channels` (64 px, 64 channels: 512-256-128-64, then the
image); D mirrors it with stride-2 convs and judges the last map with one conv of its shape. At the other
shapes whose sides divide by 4 (28 px digits, 48 px) it is gantrain's small DCGAN: a Linear projects z to
(4c, H/4, W/4), two transposed convs double it, a 3x3 conv makes the image; D has two stride-2 convs and a
Linear.

A conditional G gets a label embedding beside z; a conditional D gets the label as one extra input channel
(a learned H x W map per class).
"""
import math

import torch
from torch import nn

from gantrain.components.layers import SNConv2d, SNLinear, SpectralNorm
from gantrain.components.networks import check_image_shape
from gantrain.components.registry import register


def paper_start(height: int, width: int) -> tuple[int, int] | None:
    """G's first map where the paper's doubling layout applies, else None: the longer side a power of two of
    at least 32, shrunk to 4 by halving, and the shorter side halving as often to a whole number."""
    longest = max(height, width)
    if longest < 32 or longest & (longest - 1):
        return None
    doublings = longest.bit_length() - 3  # 64 -> 4: 4, 8, 16, 32, 64
    if height % 2 ** doublings or width % 2 ** doublings:
        return None
    return height >> doublings, width >> doublings


def takes(height: int, width: int) -> bool:
    """model=dcgan takes any image whose sides divide by 4 (the paper's layout or the small one)."""
    return height % 4 == 0 and width % 4 == 0 and min(height, width) >= 4


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
    """z (B, latent) -> (B, C, H, W): transposed conv to (c * 2^(k-1), h0, w0), the start map (4x4 for a square),
    then one stride-2 transposed conv per doubling with BatchNorm and ReLU, halving the channels, the k-th
    one making the image (Tanh)."""

    def __init__(self, latent_size: int, channels: int, image_shape: tuple[int, int, int], num_classes: int = 0):
        super().__init__()
        c_out, height, width = image_shape
        start = paper_start(height, width)
        doublings = int(math.log2(height // start[0]))
        widths = [channels * 2 ** i for i in reversed(range(doublings))]  # 64 px: 8c, 4c, 2c, c
        self.embed = nn.Embedding(num_classes, num_classes) if num_classes else None
        layers = [nn.ConvTranspose2d(latent_size + num_classes, widths[0], start, 1, 0, bias=False),  # 1x1 -> start
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
    """(B, C, H, W) -> logits (B,): one stride-2 conv per halving, LeakyReLU(0.2), BatchNorm after all but the
    first (or spectral norm on every layer), channels doubling from c; a conv of the last map's shape (4x4 for a
    square) over it."""

    def __init__(self, channels: int, image_shape: tuple[int, int, int], num_classes: int = 0,
                 spectral_norm: bool = False):
        super().__init__()
        c_in, height, width = image_shape
        end = paper_start(height, width)
        widths = [channels * 2 ** i for i in range(int(math.log2(height // end[0])))]  # 64 px: c, 2c, 4c, 8c
        conv = SNConv2d if spectral_norm else nn.Conv2d
        self.embed = nn.Embedding(num_classes, height * width) if num_classes else None
        # no bias before BatchNorm (as in the paper): BatchNorm removes it, so its gradient is zero and Adam
        # would step it by ~lr in the direction of float noise; pytorch/examples has none on the first either
        layers = [conv(c_in + (1 if num_classes else 0), widths[0], 4, 2, 1, bias=spectral_norm), nn.LeakyReLU(0.2)]
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [conv(w_in, w_out, 4, 2, 1, bias=spectral_norm),
                       nn.Identity() if spectral_norm else nn.BatchNorm2d(w_out), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers, conv(widths[-1], 1, end, 1, 0, bias=spectral_norm))  # end map -> 1x1
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
    """DCGAN: the paper's doubling pair at 32, 64, 128, ... (and 64x48, 128x64, ...); a small pair at other sides divisible by 4."""
    check_image_shape("dcgan", data_shape, takes, "images whose height and width are divisible by 4 (the paper's "
                      "layout where the longer side is 32, 64, 128, ...)")
    channels = max(hidden_size // 4, 1)  # hidden_size=256 -> 64 base channels, as in the DCGAN paper
    paper = paper_start(*data_shape[1:]) is not None
    G, D = (DCGANGenerator, DCGANDiscriminator) if paper else (SmallDCGANGenerator, SmallDCGANDiscriminator)
    return G(latent_size, channels, data_shape, num_classes), D(channels, data_shape, num_classes, spectral_norm)
