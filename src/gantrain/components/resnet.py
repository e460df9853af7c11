"""The residual G and D of SNGAN (Miyato et al. 2018): G upsamples a small feature map through residual
blocks with BatchNorm, one per doubling; D downsamples through residual blocks, every layer spectrally
normalised, then sums its features over space. LAYOUTS holds the paper's networks for each image side: the
CIFAR-10 one (every block as wide, used for 28 and 32 px and any smaller side), the STL-10 one at 48 px and
the ImageNet ones at 64 and 128 px (SNGAN's code, sngan_projection), whose channels shrink as G's image grows.
A non-square image takes the layout of its longer side, where the shorter side halves as often (64x128:
ImageNet 128's network from a 2x4 map).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gantrain.components.layers import SNConv2d, SNLinear
from gantrain.components.networks import check_image_shape
from gantrain.components.registry import register


@dataclass(frozen=True)
class Layout:
    """One of SNGAN's networks, its widths in multiples of a base width (hidden_size / divisor)."""
    start: int          # side of G's first feature map: 4 (7 for 28 px, 6 for STL-10's 48 px); a rectangle scales it
    g: tuple            # G's widths: its first map's, then each up-block's output
    d: tuple            # D's blocks' widths
    downs: int          # D's first blocks that halve the image (the rest keep its size)
    divisor: int        # base width = hidden_size / divisor


LAYOUTS = {  # sides up to 32 take CIFAR-10's (SNGAN Table 4): layout_for
    48: Layout(6, (8, 4, 2, 1), (1, 2, 4, 8, 16), 4, 4),           # STL-10 (Table 5): 512-256-128-64 in G
    64: Layout(4, (16, 8, 4, 2, 1), (1, 2, 4, 8, 16), 5, 4),       # ImageNet 64 (sngan_projection's snresnet_64)
    128: Layout(4, (16, 16, 8, 4, 2, 1), (1, 2, 4, 8, 16, 16), 5, 4),  # ImageNet 128 (its snresnet)
}


def layout_for(side: int) -> Layout:
    """The layout of a side in LAYOUTS; a side up to 32 that divides by 4 takes CIFAR-10's: G from 4x4 (32 px;
    7x7 at 28), every block hidden_size/2 wide, D's first blocks halving to G's start, then two more."""
    if side in LAYOUTS:
        return LAYOUTS[side]
    ups = 3 if side % 8 == 0 else 2
    return Layout(side >> ups, (1,) * (ups + 1), (1,) * (ups + 2), ups, 2)


class GBlock(nn.Module):
    """BN-ReLU-upsample-conv-BN-ReLU-conv, plus an upsampled 1x1 conv of the input:
    (B, c_in, h, w) -> (B, c_out, 2h, 2w).

    No conv here has a bias: each feeds a BatchNorm (this block's, or the next block's or the output's after
    the sum), which removes it, so its gradient is zero and Adam would step it along float noise."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(c_in), nn.BatchNorm2d(c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.skip = nn.Conv2d(c_in, c_out, 1, 1, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")
        h = self.conv1(up(F.relu(self.bn1(x))))
        return self.conv2(F.relu(self.bn2(h))) + self.skip(up(x))


class DBlock(nn.Module):
    """(ReLU)-conv-ReLU-conv-avgpool, plus a 1x1 conv of the (pooled) input; the first block of D takes the
    image itself, so it has no ReLU in front (SNGAN's 'optimized' block). (B, c_in, h, w) -> (B, c, h/2, w/2)."""

    def __init__(self, c_in: int, channels: int, first: bool = False, down: bool = True):
        super().__init__()
        self.first, self.down = first, down
        self.conv1, self.conv2 = SNConv2d(c_in, channels, 3, 1, 1), SNConv2d(channels, channels, 3, 1, 1)
        self.skip = SNConv2d(c_in, channels, 1) if c_in != channels or down else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = (lambda t: F.avg_pool2d(t, 2)) if self.down else (lambda t: t)
        h = self.conv2(F.relu(self.conv1(x if self.first else F.relu(x))))
        if self.skip is None:
            return pool(h) + x
        skip = self.skip(pool(x)) if self.first else pool(self.skip(x))  # the first block pools before its 1x1 conv
        return pool(h) + skip


def halvings(plan: Layout) -> int:
    """How often each side of the image is halved in G (up-blocks) or in D (its halving blocks), at most."""
    return max(len(plan.g) - 1, plan.downs)


def takes(height: int, width: int) -> bool:
    """model=resnet takes (H, W) when the longer side has a layout and both sides halve as often as it does."""
    longest = max(height, width)
    if longest % 4 or not (8 <= longest <= 32 or longest in LAYOUTS):
        return False
    step = 2 ** halvings(layout_for(longest))
    return height % step == 0 and width % step == 0


class ResNetGenerator(nn.Module):
    """z (B, latent) [+ label embedding] -> (B, C, H, W): Linear to (widths[0], *start), one up-block per
    later width, BN-ReLU-conv-Tanh."""

    def __init__(self, latent_size: int, widths: list[int], start: tuple[int, int], c_out: int, num_classes: int = 0):
        super().__init__()
        self.start = (widths[0], *start)
        self.embed = nn.Embedding(num_classes, num_classes) if num_classes else None
        self.project = nn.Linear(latent_size + num_classes, widths[0] * start[0] * start[1])
        self.blocks = nn.Sequential(*[GBlock(c_in, c_out) for c_in, c_out in zip(widths, widths[1:])])
        self.out = nn.Sequential(nn.BatchNorm2d(widths[-1]), nn.ReLU(), nn.Conv2d(widths[-1], c_out, 3, 1, 1), nn.Tanh())

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(y)], dim=1)
        return self.out(self.blocks(self.project(z).view(z.shape[0], *self.start)))


class ResNetDiscriminator(nn.Module):
    """(B, C, H, W) -> logits (B,): a first block, then one block per later width, the first `downs` of all
    halving the image; ReLU, a sum over space, a spectrally normalised Linear; conditional: plus a projection
    of the label (Miyato & Koyama 2018)."""

    def __init__(self, c_in: int, widths: list[int], downs: int, num_classes: int = 0):
        super().__init__()
        blocks = [DBlock(c_in, widths[0], first=True)]
        blocks += [DBlock(w_in, w_out, down=i < downs) for i, (w_in, w_out) in enumerate(zip(widths, widths[1:]), 1)]
        self.blocks = nn.Sequential(*blocks)
        self.linear = SNLinear(widths[-1], 1)
        self.embed = nn.Embedding(num_classes, widths[-1]) if num_classes else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))  # (B, widths[-1])
        out = self.linear(h).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(1)
        return out


@register("model", "resnet")
def resnet(data_shape: tuple[int, ...], latent_size: int, hidden_size: int, num_classes: int = 0):
    """SNGAN's residual G (BatchNorm) and D (spectral norm): CIFAR-10's at 28 and 32 px, STL-10's at 48, ImageNet's at 64 and 128."""
    check_image_shape("resnet", data_shape, takes, "images whose longer side is 28 or 32 (CIFAR-10's layout, or any "
                      "side from 8 to 32 divisible by 4), 48 (STL-10's), 64 or 128 (ImageNet's), the shorter side "
                      "halving as often")
    height, width = data_shape[1:]
    plan = layout_for(max(height, width))
    ups = len(plan.g) - 1
    base = max(hidden_size // plan.divisor, 8)  # hidden_size=256: 128 in every CIFAR block, SNGAN's ch=64 at 48+ px
    return (ResNetGenerator(latent_size, [base * m for m in plan.g], (height >> ups, width >> ups), data_shape[0], num_classes),
            ResNetDiscriminator(data_shape[0], [base * m for m in plan.d], plan.downs, num_classes))
