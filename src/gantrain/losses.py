"""GAN losses on discriminator outputs (logits / critic values). d_loss trains D, g_loss trains G.

Every loss can add penalties on D's input gradients: R1 on real data (loss.r1_gamma, any loss) and
WGAN-GP's gradient penalty. penalty() runs its own forward passes, so it costs nothing when off.
R1 can be lazy (loss.r1_every=N, StyleGAN2's lazy regularisation): applied on one step in N with
gamma x N, the same strength on average for 1/N of its cost (a double backward, a third of a step).
"""
import torch
import torch.nn.functional as F

from gantrain.registry import register


def input_gradients(D, x: torch.Tensor, y) -> torch.Tensor:
    """dD(x)/dx per example (B, ...), kept in the graph so the penalty itself can be differentiated."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x, y).sum(), x, create_graph=True)
    return grad


class Loss:
    """Base: no penalty unless r1_gamma > 0."""

    def __init__(self, r1_gamma: float = 0.0, r1_every: int = 1):
        self.r1_gamma, self.r1_every = r1_gamma, r1_every

    def r1_due(self, step: int) -> bool:
        """Whether global step `step` (counted from 0) takes R1: one step in r1_every. Always true with R1 off,
        so a run without R1 never switches its step (or its CUDA graph) for nothing."""
        return not self.r1_gamma or step % self.r1_every == 0

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def g_loss(self, fake: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def penalty(self, D, real, fake, y_real=None, y_fake=None, r1: bool = True) -> torch.Tensor | None:
        """R1 (Mescheder et al. 2018): gamma/2 * E ||grad_x D(x)||^2 on real data, times r1_every (lazy R1:
        the caller passes r1=False on the steps in between)."""
        if not self.r1_gamma or not r1:
            return None
        grad = input_gradients(D, real, y_real)
        return self.r1_gamma * self.r1_every / 2 * grad.pow(2).flatten(1).sum(1).mean()


class BCELoss(Loss):
    """BCE on logits written as softplus: -log sigmoid(x) = softplus(-x), -log(1 - sigmoid(x)) = softplus(x).
    The same function as BCEWithLogits, just as stable; vmap has a rule for softplus, while BCEWithLogits
    breaks into about 35 small kernels a call inside a vectorized sweep."""

    def d_loss(self, real, fake):
        # -log D(x) - log(1 - D(G(z))), each averaged over its half of the batch, as the reference does
        return F.softplus(-real).mean() + F.softplus(fake).mean()

    def g_loss(self, fake):
        # -log D(G(z)): the non-saturating form, strong gradients while D still wins
        return F.softplus(-fake).mean()


class LSGANLoss(Loss):
    def d_loss(self, real, fake):
        return 0.5 * ((real - 1).pow(2).mean() + fake.pow(2).mean())

    def g_loss(self, fake):
        return 0.5 * (fake - 1).pow(2).mean()


class HingeLoss(Loss):
    def d_loss(self, real, fake):
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()

    def g_loss(self, fake):
        return -fake.mean()


class WGANGPLoss(Loss):
    def __init__(self, gp_weight: float = 10.0, r1_gamma: float = 0.0, r1_every: int = 1):
        super().__init__(r1_gamma, r1_every)
        self.gp_weight = gp_weight

    def d_loss(self, real, fake):
        return fake.mean() - real.mean()

    def g_loss(self, fake):
        return -fake.mean()

    def penalty(self, D, real, fake, y_real=None, y_fake=None, r1: bool = True):
        """gp_weight * E (||grad D(x_hat)|| - 1)^2 on random points between real and fake (Gulrajani et al. 2017)."""
        eps = torch.rand(real.shape[0], *[1] * (real.dim() - 1), device=real.device, dtype=real.dtype)
        x_hat = eps * real + (1 - eps) * fake.to(real.dtype)
        grad = input_gradients(D, x_hat, y_real)
        gp = self.gp_weight * (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()
        r1_term = super().penalty(D, real, fake, y_real, y_fake, r1)  # the GP itself is never lazy
        return gp if r1_term is None else gp + r1_term


@register("loss", "bce")
def bce(r1_gamma: float = 0.0, r1_every: int = 1) -> Loss:
    """Minimax D, non-saturating G, on logits (BCEWithLogits): the reference loss."""
    return BCELoss(r1_gamma, r1_every)


@register("loss", "lsgan")
def lsgan(r1_gamma: float = 0.0, r1_every: int = 1) -> Loss:
    """Least squares (Mao et al. 2017): D regresses real to 1 and fake to 0, G pulls fake to 1."""
    return LSGANLoss(r1_gamma, r1_every)


@register("loss", "hinge")
def hinge(r1_gamma: float = 0.0, r1_every: int = 1) -> Loss:
    """Hinge loss (SAGAN, BigGAN): D margins at +-1, G maximises D(G(z))."""
    return HingeLoss(r1_gamma, r1_every)


@register("loss", "wgan_gp")
def wgan_gp(gp_weight: float = 10.0, r1_gamma: float = 0.0, r1_every: int = 1) -> Loss:
    """Wasserstein critic with gradient penalty (Gulrajani et al. 2017), weight 10 by default."""
    return WGANGPLoss(gp_weight, r1_gamma, r1_every)
