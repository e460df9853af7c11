"""The convolutional encoder behind both feature networks (the classifier for labelled data, the contrastive
one for unlabelled images): images (B, C, H, W) in [-1, 1] -> features (B, 128)."""
import torch
from torch import nn

NUM_FEATURES = 128


def encoder(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(7), nn.Flatten(),  # 28x28 and 32x32 inputs both end as (32, 7, 7)
        nn.Linear(32 * 7 * 7, NUM_FEATURES), nn.ReLU(),
    )


class EncoderNet(nn.Module):
    """Base of both feature networks: the encoder as `body` (its state dict keys), images -> features."""

    num_features = NUM_FEATURES  # torchmetrics reads this to size its statistics

    def __init__(self, channels: int):
        super().__init__()
        self.body = encoder(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last: oneDNN's convolutions and max-pooling run about twice as fast on a CPU in it
        return self.body(x.float().contiguous(memory_format=torch.channels_last))
