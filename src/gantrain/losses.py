"""GAN losses on discriminator logits. d_loss trains D, g_loss trains G."""
import torch
import torch.nn.functional as F

from gantrain.registry import register


class BCELoss:
    """Minimax D loss and non-saturating G loss, on logits (the reference's Sigmoid + BCELoss, done stably)."""

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        # -log D(x) - log(1 - D(G(z))), averaged over each half of the batch as the reference does
        real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
        fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        return real + fake

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        # -log D(G(z)): the non-saturating form, strong gradients while D still wins
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


@register("loss", "bce")
def bce() -> BCELoss:
    """Minimax D, non-saturating G, on logits (BCEWithLogits): the reference loss."""
    return BCELoss()
