"""The zoo: every network x loss trains, penalties and EMA match their formulas, every loader reads its format."""
import pickle
from importlib.resources import files

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from PIL import Image
from torch import nn

from conftest import Evil, tiny_images, write_idx, write_photo_folder
from gantrain.outputs.checkpoint import load_checkpoint
from gantrain.commands.listing import experiment_presets
from gantrain.components.data import load_data
from gantrain.data.tensors import TensorData
from gantrain.errors import UserError
from gantrain.components.layers import SNConv2d, SNLinear, SpectralNorm
from gantrain.components.losses import BCELoss, WGANGPLoss
from gantrain.components.registry import REGISTRIES, lookup, register
from gantrain.engine.jobs import train
from gantrain.engine.plain import PlainMembers
from gantrain.engine.step import make_step

for kind in ("model", "loss", "data"):
    lookup(kind, "mlp" if kind == "model" else "bce" if kind == "loss" else "mnist")  # fill the registries
MODELS, LOSSES = sorted(REGISTRIES["model"]), sorted(REGISTRIES["loss"])


def finite_weights(run_dir) -> bool:
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    return all(torch.isfinite(v).all() for net in ("G", "D") for v in ckpt[net].values())


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("model", MODELS)
def test_every_network_and_loss_trains_two_steps(cfg, tmp_path, model, loss):
    with open_dict(cfg):
        cfg.model = {"name": model, "conditional": False}
        cfg.loss = {"name": loss}
    cfg.batch_size, cfg.epochs = 60, 1  # 120 images: 2 steps
    train(cfg, tmp_path, [])
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["step"] == 2 and finite_weights(tmp_path)


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_on_2d_points_with_a_scatter_plot(cfg, tmp_path, loss):
    with open_dict(cfg):
        cfg.data = {"name": "ring8", "n": 400, "seed": 0}
        cfg.loss = {"name": loss}
    cfg.epochs, cfg.batch_size = 1, 100
    train(cfg, tmp_path, [])
    assert finite_weights(tmp_path)
    assert Image.open(tmp_path / "samples" / "epoch_0001.png").size == (500, 500)  # the scatter plot


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 32, 32), (3, 28, 28), (3, 48, 48), (3, 64, 64), (3, 128, 128),
                                   (3, 64, 48), (3, 48, 64), (3, 64, 128), (1, 28, 20)])
@pytest.mark.parametrize("spectral_norm", [False, True])
def test_dcgan_sizes_itself_from_the_image_shape(shape, spectral_norm):
    G, D = lookup("model", "dcgan")(data_shape=shape, latent_size=8, hidden_size=32, spectral_norm=spectral_norm)
    x = G(torch.randn(3, 8))
    assert x.shape == (3, *shape) and D(x).shape == (3,)
    has_sn = any(isinstance(m, SpectralNorm) for m in D.modules())
    assert has_sn == spectral_norm


@pytest.mark.numerical
@pytest.mark.parametrize("layer", [lambda: SNLinear(12, 7), lambda: SNConv2d(3, 5, 3)])
def test_spectral_norm_divides_by_the_largest_singular_value(layer):
    """Like torch's parametrization: after its power iterations the weight's spectral norm is 1, in eval
    mode the vectors stay, and the gradient flows through the weight only."""
    torch.manual_seed(0)
    sn = layer()
    for _ in range(30):  # training forward passes each take one power iteration
        sn.normalised_weight()
    assert torch.linalg.matrix_norm(sn.normalised_weight().detach().flatten(1), ord=2).item() == pytest.approx(1.0, abs=1e-3)
    u = sn.u.clone()
    sn.eval()
    sn.normalised_weight()
    assert torch.equal(u, sn.u)
    sn.normalised_weight().sum().backward()
    assert sn.weight.grad is not None and not sn.u.requires_grad


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 48, 48), (3, 64, 64), (3, 128, 128), (3, 64, 128),
                                   (3, 128, 64), (3, 32, 48), (1, 16, 32)])
@pytest.mark.parametrize("classes", [0, 10])
def test_resnet_sizes_itself_from_the_image_shape(shape, classes):
    from gantrain.components.layers import SpectralNorm

    G, D = lookup("model", "resnet")(data_shape=shape, latent_size=8, hidden_size=32, num_classes=classes)
    y = torch.arange(3) if classes else None
    x = G(torch.randn(3, 8), y)
    assert x.shape == (3, *shape) and D(x, y).shape == (3,) and x.abs().max() <= 1
    assert all(isinstance(m, SpectralNorm) for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert any(isinstance(m, nn.BatchNorm2d) for m in G.modules()) and not any(
        isinstance(m, nn.BatchNorm2d) for m in D.modules())


def test_dcgan_refuses_shapes_it_cannot_build_naming_the_nearest_it_takes():
    with pytest.raises(UserError, match=r"divisible by 4 .*got 30x30; nearest it takes: 28x28, 28x32, 32x28 "
                                        r"\(data.image_size=\[H,W\]\), or use model=mlp"):
        lookup("model", "dcgan")(data_shape=(1, 30, 30), latent_size=8, hidden_size=32)
    with pytest.raises(UserError, match=r"got 218x178; nearest it takes: 216x176, 216x180, 220x176"):
        lookup("model", "dcgan")(data_shape=(3, 218, 178), latent_size=8, hidden_size=32)


@pytest.mark.parametrize("shape, nearest", [((3, 30, 30), "28x28, 32x32, 24x28"), ((3, 96, 96), "96x128, 128x96, 64x64"),
                                            ((3, 64, 48), "48x48, 64x32, 64x64"), ((3, 4, 4), "4x12, 8x8, 12x4")])
def test_resnet_refuses_shapes_it_has_no_layout_for_naming_the_nearest_it_takes(shape, nearest):
    with pytest.raises(UserError, match=rf"28 or 32 .*48 .*64 or 128 .*got .*; nearest it takes: {nearest} "):
        lookup("model", "resnet")(data_shape=shape, latent_size=8, hidden_size=32)


@pytest.mark.parametrize("model", ["dcgan", "resnet"])
def test_image_networks_refuse_points(model):
    with pytest.raises(UserError, match=rf"model={model} takes images \(C, H, W\), and this data set holds points of "
                                        r"shape \(2,\); use model=mlp"):
        lookup("model", model)(data_shape=(2,), latent_size=8, hidden_size=32)


def test_dcgan_at_a_rectangle_starts_from_a_map_of_its_aspect():
    """64x48: G's first map is 4x3 (the paper's 4x4, shaped like the image), doubled four times; D's last conv
    judges a 4x3 map with a 4x3 kernel. Square sides keep the paper's 4x4 (the 64-px counts below)."""
    G, D = lookup("model", "dcgan")(data_shape=(3, 64, 48), latent_size=100, hidden_size=256)
    convs = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert convs[0].kernel_size == (4, 3) and [m.out_channels for m in convs] == [512, 256, 128, 64, 3]
    assert [m for m in D.modules() if isinstance(m, nn.Conv2d)][-1].kernel_size == (4, 3)
    G, _ = lookup("model", "dcgan")(data_shape=(3, 64, 128), latent_size=8, hidden_size=32)
    assert next(m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)).kernel_size == (2, 4)


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_dcgan_at_64_px_is_pytorch_examples_dcgan():
    """pytorch/examples' dcgan (nz=100, ngf=ndf=64, 3 channels): G 3,576,704 and D 2,765,568 parameters, G from
    a 4x4 map of 512 channels doubling to 64x64, D mirrored; and the paper's N(0, 0.02) initial weights."""
    torch.manual_seed(0)
    G, D = lookup("model", "dcgan")(data_shape=(3, 64, 64), latent_size=100, hidden_size=256)
    assert (n_params(G), n_params(D)) == (3_576_704, 2_765_568)
    convs = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels, m.stride[0]) for m in convs] == [
        (100, 512, 1), (512, 256, 2), (256, 128, 2), (128, 64, 2), (64, 3, 2)]
    assert [m.out_channels for m in D.modules() if isinstance(m, nn.Conv2d)] == [64, 128, 256, 512, 1]
    assert all(abs(float(m.weight.detach().std()) - 0.02) < 0.002 for m in convs[:4])
    # 128 px: one more doubling, from 1024 channels
    G, D = lookup("model", "dcgan")(data_shape=(3, 128, 128), latent_size=100, hidden_size=256)
    assert [m.out_channels for m in G.modules() if isinstance(m, nn.ConvTranspose2d)] == [1024, 512, 256, 128, 64, 3]


@pytest.mark.parametrize("side, g_widths, d_widths, start", [
    (48, [512, 256, 128, 64], [64, 128, 256, 512, 1024], 6),          # SNGAN's STL-10 networks (Table 5)
    (64, [1024, 512, 256, 128, 64], [64, 128, 256, 512, 1024], 4),    # sngan_projection's 64 px
    (128, [1024, 1024, 512, 256, 128, 64], [64, 128, 256, 512, 1024, 1024], 4),  # its ImageNet 128 px
])
def test_resnet_at_photo_sizes_has_sngans_layouts(side, g_widths, d_widths, start):
    """One up-block per doubling from G's first map, channels halving as the image grows (SNGAN's ch=64 from
    hidden_size=256); D's blocks widen to 1024, and the image is halved down to 4x4 (3x3 at 48, 2x2 at 64)."""
    G, D = lookup("model", "resnet")(data_shape=(3, side, side), latent_size=128, hidden_size=256)
    assert G.start == (g_widths[0], start, start)
    assert [b.conv2.out_channels for b in G.blocks] == g_widths[1:]
    assert [b.conv2.out_channels for b in D.blocks] == d_widths
    h = D.blocks(torch.zeros(1, 3, side, side))
    assert h.shape[2] == {48: 3, 64: 2, 128: 4}[side]


class Linear2D(nn.Module):
    """D(x) = w . x + b on (K, B, 2) points: its input gradient is w everywhere, so the penalties have closed forms."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, x, y=None):
        return x.flatten(2) @ self.w + 1.0


@pytest.mark.numerical
def test_gradient_penalty_matches_the_closed_form():
    D = Linear2D([3.0, 4.0])  # ||grad|| = 5 at every x_hat
    real, fake, eps = torch.randn(1, 6, 2), torch.randn(1, 6, 2), {"gp_eps": torch.rand(1, 6)}  # one member
    assert WGANGPLoss(gp_weight=10).penalty(D, real, fake, draws=eps).item() == pytest.approx(10 * (5 - 1) ** 2)
    assert WGANGPLoss(gp_weight=10, r1_gamma=2).penalty(D, real, fake, draws=eps).item() == pytest.approx(160 + 25)


class Square(nn.Module):  # D(x) = sum x^2: grad = 2x, on (K, B, ...)
    def forward(self, x, y=None):
        return x.pow(2).flatten(2).sum(2)


@pytest.mark.numerical
def test_r1_matches_a_hand_computed_value():
    real = torch.tensor([[[1.0, 2.0], [0.0, 3.0]]])  # one member, two points
    # gamma/2 * mean ||2x||^2 = 0.5 * mean(4*5, 4*9) = 0.5 * 28 = 14 for gamma = 1
    assert BCELoss(r1_gamma=1.0).penalty(Square(), real, real).item() == pytest.approx(14.0)
    assert BCELoss().penalty(Square(), real, real) is None  # off: no extra forward pass at all


@pytest.mark.numerical
def test_lazy_r1_is_the_same_strength_on_one_step_in_n():
    # D = sum x^2 on the points above: R1 with gamma 1 is 14
    real, lazy = torch.tensor([[[1.0, 2.0], [0.0, 3.0]]]), BCELoss(r1_gamma=1.0, r1_every=4)
    assert lazy.penalty(Square(), real, real).item() == pytest.approx(4 * 14.0)  # gamma x N on its step
    assert lazy.penalty(Square(), real, real, r1=False) is None
    assert [lazy.r1_due(step) for step in range(6)] == [True, False, False, False, True, False]
    assert all(BCELoss(r1_every=4).r1_due(step) for step in range(4))  # no R1 at all: nothing to switch off
    D, x = Linear2D([3.0, 4.0]), torch.randn(1, 6, 2)  # WGAN-GP keeps its own penalty on every step
    eps = {"gp_eps": torch.rand(1, 6)}
    assert WGANGPLoss(r1_gamma=2, r1_every=3).penalty(D, x, x, draws=eps, r1=False).item() == pytest.approx(160)


def test_training_applies_a_lazy_r1_on_one_step_in_n(cfg, tmp_path, monkeypatch):
    import gantrain.components.losses

    calls, real_input_gradients = [], gantrain.components.losses.input_gradients
    monkeypatch.setattr(gantrain.components.losses, "input_gradients", lambda *a: calls.append(1) or real_input_gradients(*a))
    with open_dict(cfg):
        cfg.data = {"name": "ring8", "n": 1000, "seed": 0}
        cfg.loss.r1_gamma, cfg.loss.r1_every = 1.0, 3
    cfg.epochs, cfg.batch_size = 1, 100  # 10 steps: R1 on steps 0, 3, 6, 9
    train(cfg, tmp_path, [])
    assert len(calls) == 4 and finite_weights(tmp_path)


def test_penalty_gradients_reach_d():
    D = Linear2D([3.0, 4.0])
    WGANGPLoss().penalty(D, torch.randn(1, 4, 2), torch.randn(1, 4, 2), draws={"gp_eps": torch.rand(1, 4)}).backward()
    # d/dw 10 (||w|| - 1)^2 = 20 (||w|| - 1) w / ||w|| = 20 * 4 * w / 5
    assert torch.allclose(D.w.grad, 16 * torch.tensor([3.0, 4.0]))


def tiny_gan(seed=0, ema_decay=0.0):
    """A lone member of a tiny 2D GAN: G, D, their optimizers and the members' view of them."""
    torch.manual_seed(seed)
    G, D = lookup("model", "mlp")(data_shape=(2,), latent_size=4, hidden_size=8)
    opt_g, opt_d = torch.optim.Adam(G.parameters(), 1e-2), torch.optim.Adam(D.parameters(), 1e-2)
    return G, D, opt_g, opt_d, PlainMembers(G, D, opt_g, opt_d, ema_decay)


@pytest.mark.numerical
def test_ema_follows_its_formula():
    G, D, opt_g, opt_d, nets = tiny_gan(ema_decay=0.9)
    before = [p.clone() for p in nets.G_ema.parameters()]
    step = make_step(nets, BCELoss())
    step({"real": torch.randn(1, 1, 5, 2), "z": torch.randn(1, 2, 5, 4)})
    for ema, old, new in zip(nets.G_ema.parameters(), before, G.parameters()):
        assert not torch.equal(new, old)  # G moved
        assert torch.allclose(ema, 0.9 * old + 0.1 * new, atol=1e-7)


def test_n_critic_updates_d_that_many_times_per_g_update():
    G, D, opt_g, opt_d, nets = tiny_gan()
    step = make_step(nets, BCELoss(), n_critic=3)
    step({"real": torch.randn(1, 3, 5, 2), "z": torch.randn(1, 4, 5, 4)})
    step_count = lambda opt: int(next(iter(opt.state.values()))["step"])
    assert step_count(opt_d) == 3 and step_count(opt_g) == 1


@pytest.mark.parametrize("name,folder", [("fashion_mnist", "FashionMNIST"), ("kmnist", "KMNIST")])
def test_idx_loaders(tmp_path, name, folder):
    images, labels = tiny_images(20)
    write_idx(tmp_path / folder / "raw" / "train-images-idx3-ubyte", images, gz=True)
    write_idx(tmp_path / folder / "raw" / "train-labels-idx1-ubyte", labels, gz=True)
    data = load_data(name, root=str(tmp_path))
    assert data.x.shape == (20, 1, 28, 28) and torch.equal(data.y, torch.tensor(labels).long())
    with pytest.raises(UserError, match=f"{folder} not found"):
        load_data(name, root=str(tmp_path / "elsewhere"))


def write_cifar(root, per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    all_images = []
    for i in range(1, 6):
        images = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        all_images.append(images)
        batch = {b"data": images, b"labels": [int(v) for v in rng.integers(0, 10, per_batch)], b"batch_label": b"x"}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    return folder, np.concatenate(all_images)


def test_cifar10_loader_reads_the_pickled_batches(tmp_path):
    folder, images = write_cifar(tmp_path)
    data = load_data("cifar10", root=str(tmp_path))
    assert data.x.shape == (20, 3, 32, 32) and data.y.shape == (20,)
    assert torch.equal(data.x, torch.tensor(images.reshape(-1, 3, 32, 32)))
    assert torch.equal(data.floats(), torch.tensor(images.reshape(-1, 3, 32, 32)).float().div(127.5).sub(1))


def test_cifar10_loader_never_runs_code_from_a_batch(tmp_path):
    folder, _ = write_cifar(tmp_path)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil(tmp_path / "PWNED")}, protocol=2))
    with pytest.raises(UserError, match="data_batch_3 is not a CIFAR-10 batch .*refused to load posix.system"):
        load_data("cifar10", root=str(tmp_path))
    assert not (tmp_path / "PWNED").exists()


def test_folder_loader_resizes_crops_and_skips_broken_files(tmp_path, caplog):
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "wide.png")
    Image.new("L", (16, 16), 128).save(tmp_path / "sub" / "small.jpg")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("ignored")
    with caplog.at_level("WARNING", logger="gantrain"):
        data = load_data("folder", root=str(tmp_path), image_size=8, channels=3)
    assert data.x.shape == (2, 3, 8, 8) and data.y is None
    assert "skipped 1 unreadable image file" in caplog.text
    x = data.floats()
    red = x[0] if x[0, 0].mean() > 0.9 else x[1]
    assert torch.allclose(red[0], torch.ones(8, 8)) and torch.allclose(red[1], -torch.ones(8, 8))
    assert load_data("folder", root=str(tmp_path), image_size=8, channels=1).x.shape == (2, 1, 8, 8)


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"broken")
    with pytest.raises(UserError, match="no readable images"):
        load_data("folder", root=str(tmp_path), image_size=8, channels=1)


@pytest.mark.parametrize("name,modes,std,extent", [("ring8", 8, 0.01, 1.0), ("grid25", 25, 0.05, 4.0)])
def test_2d_mixtures(name, modes, std, extent):
    data = load_data(name, n=20_000)
    assert data.x.shape == (20_000, 2) and data.y.unique().numel() == modes
    assert data.x.abs().max() < extent + 6 * std
    for k in (0, modes - 1):  # points scatter around their mode with the stated std
        assert data.x[data.y == k].std(0).mean().item() == pytest.approx(std, rel=0.1)
    assert torch.equal(load_data(name, n=100).x, load_data(name, n=100).x)  # a fixed data set


@pytest.fixture
def two_blobs():
    """A labelled toy set: class 0 around (-2, 0), class 1 around (2, 0)."""

    def build(n: int = 2000) -> TensorData:
        y = torch.arange(n) % 2
        x = torch.stack([4.0 * y - 2, torch.zeros(n)], 1) + 0.1 * torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
        return TensorData(x, y)

    register("data", "two_blobs")(build)
    yield
    del REGISTRIES["data"]["two_blobs"]


def test_conditional_sampling_gives_the_requested_class(cfg, tmp_path, two_blobs):
    from gantrain.engine.generator import generator_from_checkpoint

    with open_dict(cfg):
        cfg.data = {"name": "two_blobs"}
        cfg.model = {"name": "mlp", "conditional": True}
    cfg.epochs, cfg.batch_size, cfg.hidden_size, cfg.latent_size, cfg.optim.lr = 25, 50, 32, 4, 1e-3  # 1,000 steps
    train(cfg, tmp_path, [])
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    G, saved = generator_from_checkpoint(ckpt, "last.pt", "auto", torch.device("cpu"))
    latent = saved.latent_size
    with torch.no_grad():
        for label, side in ((0, -1), (1, 1)):
            x = G(torch.randn(500, latent), torch.full((500,), label))
            assert (torch.sign(x[:, 0]) == side).float().mean() > 0.95, (label, x.mean(0))


PRESETS = list(experiment_presets())  # every preset shipped (as gantrain list finds them): none goes untested


@pytest.mark.parametrize("preset", PRESETS)
def test_experiment_presets_compose_and_train(mnist_root, tmp_path, preset):
    from conftest import TINY, compose_train

    text = files("gantrain.conf").joinpath("experiment", f"{preset}.yaml").read_text()
    assert text.startswith("# @package _global_") and len(text.splitlines()) <= 25
    as_shipped = compose_train([f"experiment={preset}"])
    if preset != "reference_mnist":
        assert as_shipped != compose_train([])  # the preset changes something
    is_2d = as_shipped.data.name in ("ring8", "grid25")
    data = ["data.n=600"] if is_2d else ["data=mnist", f"data.root={mnist_root}"]  # image presets: tiny MNIST
    if as_shipped.data.name == "folder":  # photo presets: 40 photos at the preset's own size, its own networks
        data = [f"data.root={write_photo_folder(tmp_path / 'photos', 40, side=as_shipped.data.image_size)}",
                "batch_size=4", "eval.enabled=false"]  # (folder evaluation: test_eval)
    cfg = compose_train([f"experiment={preset}", *TINY, "epochs=1", *data])
    train(cfg, tmp_path, [])
    assert finite_weights(tmp_path)
    if as_shipped.data.name == "folder":  # trained at the preset's size, which gantrain list shows
        side = as_shipped.data.image_size
        assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["data_shape"] == [3, side, side]


def test_reference_preset_is_exactly_the_defaults():
    from conftest import compose_train

    assert compose_train(["experiment=reference_mnist"]) == compose_train([])
