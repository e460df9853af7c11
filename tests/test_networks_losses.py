import math

import pytest
import torch
from torch import nn

from gantrain.components.losses import BCELoss
from gantrain.components.registry import REGISTRIES, lookup

lookup("model", "mlp")  # fill the registry before parametrizing over it
MODELS = sorted(REGISTRIES["model"])


@pytest.mark.parametrize("name", MODELS)
def test_generator_and_discriminator_shapes(name):
    G, D = lookup("model", name)(data_shape=(1, 28, 28), latent_size=16, hidden_size=32)
    x = G(torch.randn(5, 16))
    assert x.shape == (5, 1, 28, 28)
    assert x.min() >= -1 and x.max() <= 1  # Tanh output, the data's range
    assert D(x).shape == (5,)


def test_mlp_matches_the_reference_architecture():
    G, D = lookup("model", "mlp")(data_shape=(1, 28, 28), latent_size=64, hidden_size=256)
    linear_shapes = lambda m: [tuple(l.weight.shape) for l in m.modules() if isinstance(l, nn.Linear)]
    assert linear_shapes(G) == [(256, 64), (256, 256), (784, 256)]
    assert linear_shapes(D) == [(256, 784), (256, 256), (1, 256)]
    assert [type(m) for m in G.net if not isinstance(m, nn.Linear)] == [nn.ReLU, nn.ReLU, nn.Tanh]
    slopes = [m.negative_slope for m in D.net if isinstance(m, nn.LeakyReLU)]
    assert slopes == [0.2, 0.2]


def test_packed_discriminator_judges_consecutive_samples_together():
    """model.pack=2 (PacGAN): D sees (x0, x1), (x2, x3), ... as single inputs of twice the width."""
    G, D = lookup("model", "mlp")(data_shape=(2,), latent_size=4, hidden_size=8, pack=2)
    assert D.net[0].in_features == 4 and G.net[0].in_features == 4  # G is unchanged
    x = torch.randn(6, 2)
    logits = D(x)
    assert logits.shape == (3,)
    by_hand = D.net(torch.cat([x[0::2], x[1::2]], dim=1)).squeeze(1)  # pairs (x0|x1), (x2|x3), (x4|x5)
    assert torch.allclose(logits, by_hand)
    swapped = x[[2, 3, 0, 1, 4, 5]]  # moving a whole pack moves its logit, and nothing else
    assert torch.allclose(D(swapped), logits[[1, 0, 2]])


@pytest.mark.numerical
def test_heads_route_each_sample_through_its_own_output_layer():
    """model.heads=3: z[:, 0] in the lower, middle, upper third of its normal CDF picks head 0, 1, 2."""
    torch.manual_seed(0)
    G, _ = lookup("model", "mlp")(data_shape=(2,), latent_size=4, hidden_size=8, heads=3)
    z = torch.randn(6, 4)
    z[:, 0] = torch.tensor([-2.0, -0.5, -0.4, 0.0, 0.5, 2.0])  # Phi: 0.02, 0.31, 0.34, 0.5, 0.69, 0.98
    assert G.heads.choose(z).tolist() == [0, 0, 1, 1, 2, 2]
    h = G.net(z)  # the shared trunk (B, 8)
    weight, bias = G.heads.weight.view(3, 2, 8), G.heads.bias
    by_hand = torch.stack([weight[k] @ h[b] + bias[k] for b, k in enumerate([0, 0, 1, 1, 2, 2])])
    assert torch.allclose(G(z), by_hand, atol=1e-6)
    assert not torch.allclose(weight[0], weight[1])  # each head drawn on its own


def test_heads_are_picked_with_equal_probability_and_train_only_on_their_samples():
    torch.manual_seed(0)
    G, _ = lookup("model", "mlp")(data_shape=(2,), latent_size=4, hidden_size=8, heads=4)
    counts = torch.bincount(G.heads.choose(torch.randn(40_000, 4)), minlength=4)
    assert ((counts / 40_000 - 0.25).abs() < 0.01).all()
    z = torch.randn(64, 4)
    z[:, 0] = -3.0  # every sample in head 0
    G(z).sum().backward()
    grads = G.heads.weight.grad.abs().sum(1)
    assert grads[0] > 0 and (grads[1:] == 0).all()


def test_seeded_heads_start_one_on_each_separate_mode_and_the_seed_decides_which_points():
    """model.seed_heads: k-means++ seeding over 25 tight clusters picks one point of every cluster."""
    from gantrain.components.data import grid25

    points = grid25(n=5000, seed=1)
    G, _ = lookup("model", "mlp")(data_shape=(2,), latent_size=4, hidden_size=8, heads=25)
    G.heads.seed_(points.x, torch.Generator().manual_seed(0))
    nearest = torch.cdist(G.heads.bias.detach(), points.x).argmin(1)
    assert sorted(points.y[nearest].tolist()) == list(range(25))  # every mode holds exactly one head
    again, other = (lookup("model", "mlp")(data_shape=(2,), latent_size=4, hidden_size=8, heads=25)[0] for _ in range(2))
    again.heads.seed_(points.x, torch.Generator().manual_seed(0))
    other.heads.seed_(points.x, torch.Generator().manual_seed(1))
    assert torch.equal(again.heads.bias, G.heads.bias) and not torch.equal(other.heads.bias, G.heads.bias)


@pytest.mark.numerical
def test_bce_loss_values_on_known_logits():
    loss = BCELoss()
    zero = torch.zeros(4)
    # D(x) = D(G(z)) = 0.5: each half costs log 2
    assert loss.d_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert loss.g_loss(zero).item() == pytest.approx(math.log(2))
    # logit 2 for real (p = sigmoid(2)), logit -1 for fake
    p_real, p_fake = torch.sigmoid(torch.tensor(2.0)), torch.sigmoid(torch.tensor(-1.0))
    expected_d = -torch.log(p_real) - torch.log(1 - p_fake)
    assert loss.d_loss(torch.full((3,), 2.0), torch.full((3,), -1.0)).item() == pytest.approx(expected_d.item())
    assert loss.g_loss(torch.full((3,), -1.0)).item() == pytest.approx(-torch.log(p_fake).item())


@pytest.mark.numerical
def test_bce_on_logits_equals_the_references_sigmoid_plus_bceloss():
    torch.manual_seed(0)
    real, fake = torch.randn(50) * 3, torch.randn(50) * 3
    bce = nn.BCELoss()
    ref_d = bce(torch.sigmoid(real), torch.ones(50)) + bce(torch.sigmoid(fake), torch.zeros(50))
    ref_g = bce(torch.sigmoid(fake), torch.ones(50))
    assert torch.allclose(BCELoss().d_loss(real, fake), ref_d, atol=1e-5)
    assert torch.allclose(BCELoss().g_loss(fake), ref_g, atol=1e-5)


def test_bce_on_logits_stays_finite_where_sigmoid_saturates():
    huge = torch.full((2,), 200.0)
    assert torch.isfinite(BCELoss().d_loss(-huge, huge))  # sigmoid(-200) == 0 exactly in float32
