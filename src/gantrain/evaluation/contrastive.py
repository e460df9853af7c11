"""A feature network for images without labels, trained by self-supervision on the data's own images
(SimCLR, Chen et al. 2020): two random views of each image (a random resized crop, a flip, colour jitter,
sometimes grey), and a contrastive loss that pulls each image's two views together and pushes the other
images' views away. Its encoder's features (before the projection head) feed FD, KID and precision/recall,
as the classifier's do for labelled data. Trained once per data set and cached (features.py).
"""
import logging

import torch
import torch.nn.functional as F
from torch import nn

from gantrain.evaluation.encoder import NUM_FEATURES, EncoderNet

log = logging.getLogger("gantrain")
# A short training, on purpose: contrastive training makes the features invariant to colour and crop, and
# trained longer this small encoder also places uniform noise as close to the photographs as one repeated
# photograph, which turns the metrics' sanity ladder upside down; 100 steps keep the convolutions' sense of
# pixel statistics and learn the data's structure (held-out view matching far above chance: RESULTS).
STEPS, BATCH, LR, TEMPERATURE = 100, 256, 1e-3, 0.2  # SimCLR's temperature for small batches


class ContrastiveNet(EncoderNet):
    """(B, C, H, W) in [-1, 1] -> features (B, 128); project() -> the contrastive loss's embedding (B, 64)."""

    def __init__(self, channels: int):
        super().__init__(channels)
        self.projection = nn.Sequential(nn.Linear(NUM_FEATURES, NUM_FEATURES), nn.ReLU(), nn.Linear(NUM_FEATURES, 64))

    def logits(self, feats: torch.Tensor) -> None:
        return None  # no classes: no class coverage

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(self(x)), dim=1)


def view(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random view of each image (B, C, H, W): SimCLR's augmentations, on the device, from `gen`."""
    B, C = x.shape[:2]
    rand = lambda *shape: torch.rand(*shape, generator=gen, device=x.device)
    # random resized crop: 35-100% of the area, aspect 3/4..4/3, anywhere; and a horizontal flip half the time
    scale = (0.35 + 0.65 * rand(B)).sqrt()
    aspect = torch.exp((rand(B) - 0.5) * 2 * 0.2877)  # log(4/3) = 0.2877
    sx, sy = (scale * aspect.sqrt()).clamp(max=1), (scale / aspect.sqrt()).clamp(max=1)
    flip = torch.where(rand(B) < 0.5, -1.0, 1.0)
    theta = torch.zeros(B, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1] = sx * flip, sy
    theta[:, 0, 2], theta[:, 1, 2] = (1 - sx) * (2 * rand(B) - 1), (1 - sy) * (2 * rand(B) - 1)
    x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False,
                      padding_mode="reflection")
    # colour jitter (80% of views): brightness, contrast, saturation; then grey (20%, colour images)
    jitter = (rand(B) < 0.8).view(B, 1, 1, 1)
    per_image = lambda v: v.view(B, 1, 1, 1)
    y = x + per_image(0.8 * (rand(B) - 0.5))
    y = y + (y - y.mean(dim=(1, 2, 3), keepdim=True)) * per_image(0.8 * (rand(B) - 0.5))
    if C > 1:
        y = y + (y - y.mean(dim=1, keepdim=True)) * per_image(0.8 * (rand(B) - 0.5))
    x = torch.where(jitter, y, x)
    if C > 1:
        x = torch.where((rand(B) < 0.2).view(B, 1, 1, 1), x.mean(dim=1, keepdim=True).expand_as(x), x)
    return x.clamp(-1, 1)


def nt_xent(z: torch.Tensor) -> torch.Tensor:
    """SimCLR's loss over 2B embeddings (both views of B images, in that order): each view's partner is the
    positive, the other 2B - 2 views the negatives."""
    n = len(z) // 2
    sim = z @ z.T / TEMPERATURE
    sim.fill_diagonal_(float("-inf"))
    partners = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, partners)


@torch.no_grad()
def view_matching(net: ContrastiveNet, x: torch.Tensor, gen: torch.Generator) -> float:
    """How often an image's second view is the nearest to its first among all the second views (held out)."""
    a, b = net.project(view(x, gen)), net.project(view(x, gen))
    return (a @ b.T).argmax(1).eq(torch.arange(len(x), device=x.device)).float().mean().item()


def train_contrastive(x: torch.Tensor, held: torch.Tensor, steps: int = STEPS) -> tuple[ContrastiveNet, float]:
    """Train on the images x (N, C, H, W); returns the net and its view matching on the held-out images."""
    gen = torch.Generator(x.device).manual_seed(0)
    torch.manual_seed(0)
    net = ContrastiveNet(x.shape[1]).to(x.device)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    batch = min(BATCH, len(x))
    for _ in range(steps):
        idx = torch.randint(len(x), (batch,), generator=gen, device=x.device)
        loss = nt_xent(net.project(torch.cat([view(x[idx], gen), view(x[idx], gen)])))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    return net, view_matching(net, held[:1024], gen)
