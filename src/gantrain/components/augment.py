"""Augmentations of what D sees. DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for
Data-Efficient GAN Training"): the same kind of random colour, translation and cutout is applied to the real
and the fake images before D, in the D step and in the G step, and each op is differentiable, so G's
gradient passes through it and G is not taught to produce augmented images. On a small data set it keeps D
from memorising the real images.

Random numbers are drawn by draw() from the member's own generator, as step inputs (like the noise), so a
member's augmentations are its lone run's, and the step draws nothing inside (CUDA graphs). `strength`
scales every op's magnitude (1 = the paper's; 0 = the identity); it is a member key.
Images are (K, B, C, H, W) in [-1, 1]; colour ops are clamped back to that range.
"""
import torch

from gantrain.components.registry import register
from gantrain.errors import UserError

class Augment:
    """Base: what every augmentation says of itself to the stacked engine."""

    member_keys: tuple[str, ...] = ()  # may differ between the members of a stack
    active = False

    @classmethod
    def stack_key(cls, kwargs: dict) -> dict:
        return {k: v for k, v in kwargs.items() if k not in cls.member_keys}

    def draw(self, n_critic: int, batch_size: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        return {}

    def __call__(self, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        return x


@register("augment", "none")
class NoAugment(Augment):
    """No augmentation: D sees the images as they are (the reference)."""


@register("augment", "diffaugment")
class DiffAugment(Augment):
    """DiffAugment (Zhao et al. 2020): colour, translation and cutout on real and fake, before D."""

    member_keys = ("strength",)
    active = True

    def __init__(self, policy=("color", "translation", "cutout"), strength=1.0):
        self.ops = list(policy)
        unknown = [op for op in self.ops if op not in OPS]
        if unknown or not self.ops:
            raise UserError(f"augment.policy: unknown op {unknown[0] if unknown else '(none)'!r}; use a list of "
                            f"{', '.join(OPS)}, e.g. augment.policy=[color,translation,cutout]")
        self.strength = strength  # a number, or (K,) for a stack
        self.width = sum(OPS[op][1] for op in self.ops)

    def draw(self, n_critic: int, batch_size: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Uniform draws for every image D sees in one step: real and fake in each D update, fake in the G
        update: (2 n_critic + 1, B, draws per image)."""
        return {"augment": torch.rand(2 * n_critic + 1, batch_size, self.width, generator=gen, device=gen.device)}

    def __call__(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """x (K, B, C, H, W), u (K, B, width) -> augmented x."""
        K, B = x.shape[:2]
        s = torch.as_tensor(self.strength, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(K, B).reshape(-1)
        x, u = x.flatten(0, 1), u.flatten(0, 1)  # (K B, C, H, W), (K B, width); s (K B,)
        column = 0
        for op in self.ops:
            fn, draws = OPS[op]
            x = fn(x, u[:, column:column + draws], s)
            column += draws
        return x.view(K, B, *x.shape[1:])


def color(x, u, s):
    """Brightness +-0.5 s, saturation x (1 +- s), contrast x (1 +- 0.5 s), as the paper's rand_brightness,
    rand_saturation and rand_contrast at s = 1; clamped to [-1, 1]."""
    per_image = lambda v: v.view(-1, 1, 1, 1)
    # (x - mean) * f + mean written as x + (x - mean) * (f - 1): the same, and exactly x at s = 0
    x = x + per_image((u[:, 0] - 0.5) * s)
    x = x + (x - x.mean(dim=1, keepdim=True)) * per_image((2 * u[:, 1] - 1) * s)
    x = x + (x - x.mean(dim=(1, 2, 3), keepdim=True)) * per_image((u[:, 2] - 0.5) * s)
    return x.clamp(-1, 1)


def translation(x, u, s, ratio: float = 0.125):
    """Shift each image by up to ratio x its size (rounded; at s = 1 the paper's 1/8), padding with zeros."""
    H, W = x.shape[2:]
    shifts = []
    for size, v in ((H, u[:, 0]), (W, u[:, 1])):
        reach = torch.floor(size * ratio * s + 0.5)  # the paper's int(size * ratio + 0.5), per image
        shifts.append(torch.floor(v * (2 * reach + 1)).clamp(max=2 * reach) - reach)  # uniform in -reach..reach
    rows = torch.arange(H, device=x.device).view(1, H, 1) + shifts[0].view(-1, 1, 1).long()  # (N, H, 1)
    cols = torch.arange(W, device=x.device).view(1, 1, W) + shifts[1].view(-1, 1, 1).long()  # (N, 1, W)
    inside = ((rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)).unsqueeze(1)  # (N, 1, H, W)
    flat = (rows.clamp(0, H - 1) * W + cols.clamp(0, W - 1)).view(len(x), 1, H * W).expand(-1, x.shape[1], -1)
    return torch.where(inside, x.flatten(2).gather(2, flat).view_as(x), torch.zeros_like(x))


def cutout(x, u, s, ratio: float = 0.5):
    """Zero a square of ratio x the image's size (rounded; at s = 1 the paper's half) at a random place."""
    H, W = x.shape[2:]
    masks = []
    for size, v, view in ((H, u[:, 0], (-1, 1, H, 1)), (W, u[:, 1], (-1, 1, 1, W))):
        side = torch.floor(size * ratio * s + 0.5)
        start = torch.floor(v * (size + 1 - side.remainder(2))) - torch.div(side, 2, rounding_mode="floor")
        at = torch.arange(size, device=x.device).view(1, -1)
        masks.append(((at >= start.view(-1, 1)) & (at < (start + side).view(-1, 1))).view(view))
    return x * ~(masks[0] & masks[1])


OPS = {"color": (color, 3), "translation": (translation, 2), "cutout": (cutout, 2)}  # op: (fn, uniform draws per image)
