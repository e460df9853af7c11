"""GAN losses on discriminator outputs (logits or critic values), for K members at once.

D's outputs come as (K, B): K members (1 for a lone run), B samples each. Every loss and penalty returns
(K,), each member's value averaged over its own batch, so members never mix and the gradient of their sum
is each member's own gradient. A hyperparameter listed in `member_keys` may differ between the members of
one stack: it is then a (K,) tensor, one value each.

Every loss can add penalties on D's input gradients: R1 on real data (loss.r1_gamma, any loss) and
WGAN-GP's gradient penalty. penalty() runs its own forward passes, so it costs nothing when off.
R1 can be lazy (loss.r1_every=N, StyleGAN2's lazy regularisation): applied on one step in N with
gamma x N, the same strength on average for 1/N of its cost (a double backward, a third of a step).
"""
import torch
import torch.nn.functional as F

from gantrain.components.registry import register


def input_gradients(D, x: torch.Tensor, y) -> torch.Tensor:
    """dD(x)/dx per example (K, B, ...), kept in the graph so the penalty itself can be differentiated."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x, y).sum(), x, create_graph=True)
    return grad


def per_member(x: torch.Tensor) -> torch.Tensor:
    """(K, B, ...) -> (K, B, n): each example's values in one row."""
    return x.flatten(2)


class Loss:
    """Base: no penalty unless r1_gamma > 0."""

    member_keys = ("r1_gamma",)  # may differ between the members of a stack

    def __init__(self, r1_gamma=0.0, r1_every: int = 1):
        self.r1_gamma, self.r1_every = r1_gamma, r1_every
        self.r1 = bool((torch.as_tensor(r1_gamma) > 0).any())

    @classmethod
    def stack_key(cls, kwargs: dict) -> dict:
        """What members of one stack must share: every key but member_keys, and whether R1 is on at all
        (R1 adds a pass of D, which moves BatchNorm statistics: on or off is another computation)."""
        return {**{k: v for k, v in kwargs.items() if k not in cls.member_keys}, "r1": kwargs.get("r1_gamma", 0) > 0}

    def r1_due(self, step: int) -> bool:
        """Whether global step `step` (counted from 0) takes R1: one step in r1_every. Always true with R1 off,
        so a run without R1 never switches its step (or its CUDA graph) for nothing."""
        return not self.r1 or step % self.r1_every == 0

    def draw(self, n_critic: int, batch_size: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Random numbers a step's penalty needs, drawn from the member's own generator (none here)."""
        return {}

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def g_loss(self, fake: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def penalty(self, D, real, fake, y_real=None, y_fake=None, draws: dict | None = None,
                r1: bool = True) -> torch.Tensor | None:
        """R1 (Mescheder et al. 2018): gamma/2 * E ||grad_x D(x)||^2 on real data, times r1_every (lazy R1:
        the caller passes r1=False on the steps in between)."""
        if not self.r1 or not r1:
            return None
        grad = input_gradients(D, real, y_real)
        return self.r1_gamma * self.r1_every / 2 * per_member(grad).square().sum(2).mean(1)


@register("loss", "bce")
class BCELoss(Loss):
    """Minimax D, non-saturating G, on logits: the reference loss (Sigmoid + BCELoss, computed stably).

    -log sigmoid(x) = softplus(-x) and -log(1 - sigmoid(x)) = softplus(x): the same function as
    BCEWithLogits, just as stable, and batched by vmap (BCEWithLogits has no vmap rule)."""

    def d_loss(self, real, fake):
        # -log D(x) - log(1 - D(G(z))), each averaged over its half of the batch, as the reference does
        return F.softplus(-real).mean(-1) + F.softplus(fake).mean(-1)

    def g_loss(self, fake):
        # -log D(G(z)): the non-saturating form, strong gradients while D still wins
        return F.softplus(-fake).mean(-1)


@register("loss", "lsgan")
class LSGANLoss(Loss):
    """Least squares (Mao et al. 2017): D regresses real to 1 and fake to 0, G pulls fake to 1."""

    def d_loss(self, real, fake):
        return 0.5 * ((real - 1).square().mean(-1) + fake.square().mean(-1))

    def g_loss(self, fake):
        return 0.5 * (fake - 1).square().mean(-1)


@register("loss", "hinge")
class HingeLoss(Loss):
    """Hinge loss (SAGAN, BigGAN): D margins at +-1, G maximises D(G(z))."""

    def d_loss(self, real, fake):
        return F.relu(1 - real).mean(-1) + F.relu(1 + fake).mean(-1)

    def g_loss(self, fake):
        return -fake.mean(-1)


@register("loss", "wgan_gp")
class WGANGPLoss(Loss):
    """Wasserstein critic with gradient penalty (Gulrajani et al. 2017), weight 10 by default."""

    member_keys = ("gp_weight", "r1_gamma")

    def __init__(self, gp_weight=10.0, r1_gamma=0.0, r1_every: int = 1):
        super().__init__(r1_gamma, r1_every)
        self.gp_weight = gp_weight

    def d_loss(self, real, fake):
        return fake.mean(-1) - real.mean(-1)

    def g_loss(self, fake):
        return -fake.mean(-1)

    def draw(self, n_critic, batch_size, gen):
        # where each penalty point lies between its real and fake example, for each of the n_critic updates
        return {"gp_eps": torch.rand(n_critic, batch_size, generator=gen, device=gen.device)}

    def penalty(self, D, real, fake, y_real=None, y_fake=None, draws=None, r1=True):
        """gp_weight * E (||grad D(x_hat)|| - 1)^2 on random points x_hat between real and fake."""
        eps = draws["gp_eps"].view(*real.shape[:2], *[1] * (real.dim() - 2)).to(real.dtype)  # (K, B, 1, ...)
        x_hat = eps * real + (1 - eps) * fake.to(real.dtype)
        grad = input_gradients(D, x_hat, y_real)
        gp = self.gp_weight * (per_member(grad).norm(dim=2) - 1).square().mean(1)
        r1_term = super().penalty(D, real, fake, y_real, y_fake, draws, r1)  # the GP itself is never lazy
        return gp if r1_term is None else gp + r1_term
