"""DiffAugment (components/augment.py): differentiable, in range, the identity at strength 0, its draws from
the member's generator; each op does what the paper's does."""
import math
import pytest
import torch

from gantrain.components.augment import DiffAugment, cutout, translation
from gantrain.errors import UserError


def images(K=2, B=6, C=3, H=12, W=12, seed=0):
    return torch.rand(K, B, C, H, W, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def draws(augment, K=2, B=6, seed=0):
    u = augment.draw(1, B, torch.Generator().manual_seed(seed))["augment"]  # (3, B, width): real, fake, G's fake
    return u[0].expand(K, *u[0].shape)


@pytest.mark.parametrize("policy", [["color"], ["translation"], ["cutout"], ["color", "translation", "cutout"]])
def test_the_ops_keep_gradients_and_the_image_range(policy):
    augment = DiffAugment(policy, strength=1.0)
    x = images().requires_grad_()
    out = augment(x, draws(augment))
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_translation_and_cutout_pass_the_gradient_to_exactly_the_pixels_they_keep():
    x = images(K=1, B=4, C=2).flatten(0, 1).requires_grad_()
    u = torch.rand(4, 2, generator=torch.Generator().manual_seed(3))
    for op in (translation, cutout):
        x.grad = None
        out = op(x, u, torch.ones(4))
        out.sum().backward()
        kept = (out != 0).sum()  # zeros: padding or the cut square (the test's images have no exact zeros)
        assert x.grad.sum() == kept and set(x.grad.unique().tolist()) <= {0.0, 1.0}


def test_strength_zero_is_the_identity():
    augment = DiffAugment(strength=0.0)
    x = images()
    assert torch.equal(augment(x, draws(augment)), x)


def test_strength_is_per_member():
    """A stack's members: strength (K,), member 0 at 0 (untouched), member 1 at 1 (changed)."""
    augment = DiffAugment(["translation", "cutout"], strength=torch.tensor([0.0, 1.0]))
    x = images()
    out = augment(x, draws(augment))
    assert torch.equal(out[0], x[0]) and not torch.equal(out[1], x[1])


def test_the_same_seed_gives_the_same_draws():
    augment = DiffAugment()
    same = [augment.draw(2, 5, torch.Generator().manual_seed(7))["augment"] for _ in range(2)]
    other = augment.draw(2, 5, torch.Generator().manual_seed(8))["augment"]
    assert torch.equal(*same) and not torch.equal(same[0], other)
    assert same[0].shape == (5, 5, 7)  # real and fake of 2 D updates, and G's fake; 3 + 2 + 2 draws an image


def test_translation_moves_an_image_by_a_whole_number_of_pixels_within_an_eighth():
    x = torch.full((1, 1, 16, 16), -1.0)
    x[0, 0, 8, 8] = 1.0
    seen = set()
    for v in torch.linspace(0, 0.999, 7).tolist():
        out = translation(x, torch.tensor([[v, 1 - v]]), torch.ones(1))
        (row, col), = (out[0, 0] == 1).nonzero().tolist()
        # reach round(16 / 8) = 2: a draw v in [0, 1) picks one of the 5 shifts -2..2 (output pixel r shows r + shift)
        shift = lambda w: min(math.floor(5 * w), 4) - 2  # w = 1 (a draw never makes it) clamps to the last shift
        assert (row, col) == (8 - shift(v), 8 - shift(1 - v)), v
        seen.add(row - 8)
    assert seen == {-2, -1, 0, 1, 2}  # every shift, both ways, is drawn: not the identity


def test_cutout_zeros_a_square_of_half_the_side():
    x = torch.ones(1, 1, 16, 16)
    out = cutout(x, torch.tensor([[0.5, 0.5]]), torch.ones(1))
    assert (out == 0).sum() == 8 * 8  # side round(16 / 2) = 8, away from the borders


def test_an_unknown_op_is_one_clear_line():
    with pytest.raises(UserError, match=r"augment.policy: unknown op 'flip'; use a list of color, translation, cutout"):
        DiffAugment(["color", "flip"])
