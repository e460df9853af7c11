"""A trained generator as a module: G rebuilt from a checkpoint's own config with its (EMA) weights, in eval mode,
with what it takes and makes (latent size, classes, image shape) and how it samples: the latents drawn on the
CPU from a seed, G run 1,024 at a time. `gantrain sample`, `gantrain export` and `gantrain.load_generator` all
sample through it, so the same seed gives the same bytes whichever way."""
import os
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from gantrain.config import pick_device, stored_config
from gantrain.engine.build import build_networks
from gantrain.errors import UserError
from gantrain.outputs.checkpoint import load_checkpoint, load_weights

CHUNK = 1024  # latents per pass of G when sampling (bit for bit the same whoever samples)


class Generator(nn.Module):
    """G(z, y) -> images (B, C, H, W) in [-1, 1] (or 2D points (B, 2)), in eval mode, no gradients. forward(z, y=None):
    z (B, latent_size) float32, y (B,) class indices for a conditional G. sample(n, seed=None, labels=None): n of them, as
    `gantrain sample` draws them. Attributes: latent_size, num_classes (0: unconditional), class_names (or
    None), image_shape ((C, H, W), or (2,) for points), ema (whether the weights are G's moving average)."""

    def __init__(self, net: nn.Module, latent_size: int, num_classes: int, class_names: list[str] | None,
                 image_shape: tuple[int, ...], ema: bool):
        super().__init__()
        self.net = net.requires_grad_(False)  # for sampling: outputs carry no graph (and an exported file none)
        self.latent_size, self.num_classes, self.class_names = latent_size, num_classes, class_names
        self.image_shape, self.ema = tuple(image_shape), ema
        self.eval()  # BatchNorm on its running statistics

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes and y is None:
            raise UserError(f"this generator is conditional ({self.num_classes} classes): pass y, the class of each z")
        return self.net(z, y if self.num_classes else None)

    def latents(self, n: int, seed: int | None = None) -> torch.Tensor:
        """n latents (n, latent_size), drawn on the CPU from `seed` (the same on any device); a fresh seed if None."""
        seed = int.from_bytes(os.urandom(8), "little") >> 1 if seed is None else seed
        return torch.randn(n, self.latent_size, generator=torch.Generator().manual_seed(seed))

    def labels(self, n: int, labels=None) -> torch.Tensor | None:
        """Class labels for n samples: None cycles through the classes (equal shares), an int gives that class,
        a sequence or tensor is taken as it is; None for an unconditional G (which takes none)."""
        if not self.num_classes:
            if labels is not None:
                raise UserError("labels are for conditional models, and this generator is unconditional; drop them")
            return None
        if labels is None:
            return torch.arange(n) % self.num_classes
        y = torch.full((n,), labels) if isinstance(labels, int) else torch.as_tensor(labels).long()
        if y.shape != (n,) or y.min() < 0 or y.max() >= self.num_classes:
            raise UserError(f"labels must be {n} class indices in 0..{self.num_classes - 1} (or one of them), got {labels!r}")
        return y

    @torch.no_grad()
    def generate(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """G over z (and y), CHUNK at a time, on this generator's device; float32 on the CPU."""
        device = self.device
        return torch.cat([self.net(chunk.to(device), None if y is None else y[i:i + CHUNK].to(device)).float().cpu()
                          for i, chunk in zip(range(0, len(z), CHUNK), z.split(CHUNK))])

    def sample(self, n: int, seed: int | None = None, labels=None) -> torch.Tensor:
        """n samples (n, *image_shape) in [-1, 1], on the CPU: the latents of `seed` (as `gantrain sample seed=`
        draws them), the classes cycled or as `labels` says."""
        return self.generate(self.latents(n, seed), self.labels(n, labels))


def generator_from_checkpoint(ckpt: dict, path, use_ema, device: torch.device) -> tuple[Generator, DictConfig]:
    """G rebuilt from a checkpoint's own config, with its EMA weights where use_ema is True or "auto" and it has
    them (True without them is refused), in eval mode; also that config."""
    saved = stored_config(ckpt, path)
    num_classes = ckpt.get("num_classes", 0)
    net, _ = build_networks(saved, tuple(ckpt["data_shape"]), num_classes)
    has_ema = ckpt.get("G_ema") is not None
    if use_ema is True and not has_ema:
        raise UserError("ema=true but this checkpoint has no EMA weights (trained with ema_decay off); use ema=auto")
    ema = has_ema and use_ema in ("auto", True)
    load_weights(net, ckpt["G_ema"] if ema else ckpt["G"], ckpt["version"])
    return Generator(net.to(device), saved.latent_size, num_classes, ckpt.get("class_names"), ckpt["data_shape"], ema), saved


def load_generator(path, device: str | torch.device = "cpu", ema: bool = True) -> Generator:
    """The generator a gantrain checkpoint holds, ready to sample: gantrain.load_generator("run/checkpoints/last.pt").
    ema=True takes G's moving average where the run kept one (else G itself), ema=False always G itself. A
    file that is not a readable gantrain checkpoint raises gantrain.UserError with the one line the commands
    print; the file is only ever read with weights_only=True."""
    path = Path(path).expanduser()
    ckpt = load_checkpoint(path)
    return generator_from_checkpoint(ckpt, path, "auto" if ema else False, pick_device(str(device)))[0]
