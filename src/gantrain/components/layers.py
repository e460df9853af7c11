"""Layers the networks share: G's output heads and spectrally normalised Conv2d / Linear.

Both keep everything in parameters and buffers and update buffers in place only, so the same modules run
alone and as K stacked members under torch.func (functional_call + vmap), each member with its own state.
"""
import torch
import torch.nn.functional as F
from torch import nn


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


class SpectralNorm:
    """Mixin: the layer's weight divided by its largest singular value (Miyato et al. 2018), estimated by one
    power iteration per training forward pass, as torch.nn.utils.parametrizations.spectral_norm does (15 at
    the start). Written out, not taken from torch, because torch's power iteration writes its vectors with
    out= arguments, which vmap cannot batch; here they are buffers updated in place, one pair per member."""

    eps = 1e-12

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)  # the layer's own (Conv2d, Linear)
        matrix = self.weight.detach().flatten(1)  # (out, in * kernel)
        self.register_buffer("u", F.normalize(matrix.new_empty(matrix.shape[0]).normal_(), dim=0, eps=self.eps))
        self.register_buffer("v", F.normalize(matrix.new_empty(matrix.shape[1]).normal_(), dim=0, eps=self.eps))
        self.power_iteration(matrix, 15)

    @torch.no_grad()
    def power_iteration(self, matrix: torch.Tensor, steps: int) -> None:
        for _ in range(steps):
            self.u.copy_(F.normalize(matrix @ self.v, dim=0, eps=self.eps))
            self.v.copy_(F.normalize(matrix.T @ self.u, dim=0, eps=self.eps))

    def normalised_weight(self) -> torch.Tensor:
        matrix = self.weight.flatten(1)
        if self.training:
            self.power_iteration(matrix.detach(), 1)
        # clones: a later forward pass (the G step, R1) updates u and v in place before this one's backward
        sigma = torch.dot(self.u.clone(), matrix @ self.v.clone())  # constants: gradients reach the weight only
        return self.weight / sigma


class SNConv2d(SpectralNorm, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.normalised_weight(), self.bias)


class SNLinear(SpectralNorm, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.normalised_weight(), self.bias)
