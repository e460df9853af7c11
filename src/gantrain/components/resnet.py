"""The residual G and D of SNGAN (Miyato et al. 2018, the CIFAR-10 architecture of its Table 4): G upsamples
a 4x4 (or 7x7) feature map through residual blocks with BatchNorm; D downsamples through residual blocks,
every layer spectrally normalised, then sums its features over space. For 28x28 and 32x32 images with 1 or 3
channels; `channels` is the width of every block (SNGAN: 256 in G, 128 in D).
"""
import torch
import torch.nn.functional as F
from torch import nn

from gantrain.components.layers import SNConv2d, SNLinear
from gantrain.components.registry import register
from gantrain.errors import UserError


class GBlock(nn.Module):
    """BN-ReLU-upsample-conv-BN-ReLU-conv, plus an upsampled 1x1 conv of the input: (B, c, h, w) -> (B, c, 2h, 2w).

    No conv here has a bias: each feeds a BatchNorm (this block's, or the next block's or the output's after
    the sum), which removes it, so its gradient is zero and Adam would step it along float noise."""

    def __init__(self, channels: int):
        super().__init__()
        conv = lambda k: nn.Conv2d(channels, channels, k, 1, k // 2, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(channels), nn.BatchNorm2d(channels)
        self.conv1, self.conv2, self.skip = conv(3), conv(3), conv(1)

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


class ResNetGenerator(nn.Module):
    """z (B, latent) [+ label embedding] -> (B, C, H, W): Linear to (c, H/2^n, W/2^n), n up-blocks, BN-ReLU-conv-Tanh."""

    def __init__(self, latent_size: int, channels: int, image_shape: tuple[int, int, int], ups: int, num_classes: int = 0):
        super().__init__()
        c_out, h, w = image_shape
        self.start = (channels, h >> ups, w >> ups)
        self.embed = nn.Embedding(num_classes, num_classes) if num_classes else None
        self.project = nn.Linear(latent_size + num_classes, channels * (h >> ups) * (w >> ups))
        self.blocks = nn.Sequential(*[GBlock(channels) for _ in range(ups)])
        self.out = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, c_out, 3, 1, 1), nn.Tanh())

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(y)], dim=1)
        return self.out(self.blocks(self.project(z).view(z.shape[0], *self.start)))


class ResNetDiscriminator(nn.Module):
    """(B, C, H, W) -> logits (B,): a first block and down-blocks to H/2^n, two blocks without pooling, ReLU,
    a sum over space, a spectrally normalised Linear; conditional: plus a projection of the label (Miyato &
    Koyama 2018)."""

    def __init__(self, channels: int, image_shape: tuple[int, int, int], downs: int, num_classes: int = 0):
        super().__init__()
        c_in = image_shape[0]
        blocks = [DBlock(c_in, channels, first=True)] + [DBlock(channels, channels) for _ in range(downs - 1)]
        self.blocks = nn.Sequential(*blocks, DBlock(channels, channels, down=False), DBlock(channels, channels, down=False))
        self.linear = SNLinear(channels, 1)
        self.embed = nn.Embedding(num_classes, channels) if num_classes else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))  # (B, channels)
        out = self.linear(h).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(1)
        return out


@register("model", "resnet")
def resnet(data_shape: tuple[int, ...], latent_size: int, hidden_size: int, num_classes: int = 0):
    """SNGAN's residual G (BatchNorm) and D (spectral norm); 28x28 or 32x32 (any side divisible by 8 or 4)."""
    if len(data_shape) != 3 or data_shape[1] != data_shape[2] or data_shape[1] % 4:
        raise UserError(f"model=resnet needs square images whose side is divisible by 4 (28, 32, 64), got shape "
                        f"{tuple(data_shape)}; use model=mlp for this data")
    ups = 3 if data_shape[1] % 8 == 0 else 2  # 32 -> 4x4 (SNGAN's CIFAR start), 28 -> 7x7
    channels = max(hidden_size // 2, 8)  # hidden_size=256 -> 128 channels, SNGAN's D width
    return (ResNetGenerator(latent_size, channels, data_shape, ups, num_classes),
            ResNetDiscriminator(channels, data_shape, ups, num_classes))
