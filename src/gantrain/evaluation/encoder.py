"""The convolutional encoder behind both feature networks (the classifier for labelled data, the contrastive
one for unlabelled images): images (B, C, H, W) in [-1, 1] -> features (B, 128)."""
from torch import nn

NUM_FEATURES = 128


def encoder(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(7), nn.Flatten(),  # 28x28 and 32x32 inputs both end as (32, 7, 7)
        nn.Linear(32 * 7 * 7, NUM_FEATURES), nn.ReLU(),
    )
