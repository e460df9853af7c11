"""gantrain sample: rebuild G from the config inside a checkpoint and write samples; nothing else is needed."""
import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from gantrain.config import is_int, pick_device, user_path
from gantrain.engine.generator import generator_from_checkpoint
from gantrain.errors import UserError, naming
from gantrain.outputs import artifacts
from gantrain.outputs.checkpoint import load_checkpoint

log = logging.getLogger("gantrain")
FORMATS = ("grid", "png", "npz")


def check_sample_config(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.ckpt:
        raise UserError("ckpt is required: pass the checkpoint, e.g. gantrain sample ckpt=outputs/train/<date>/<time>/checkpoints/last.pt")
    for key, low, example in (("n", 1, 64), ("nrow", 1, 8), ("seed", 0, 0), ("interpolate", 0, 8)):
        if not is_int(cfg[key]) or cfg[key] < low:
            raise UserError(f"{key} must be an integer >= {low}, got {cfg[key]!r}; e.g. {key}={example}")
    if cfg.format not in FORMATS:
        raise UserError(f"format must be one of {', '.join(FORMATS)}, got {cfg.format!r}; e.g. format=grid")
    if cfg.interpolate > 0 and cfg.format != "grid":
        raise UserError(f"interpolate={cfg.interpolate} draws its rows as one PNG grid, so format={cfg.format} cannot "
                        f"hold it; drop format (or interpolate)")
    if str(cfg.ema) not in ("auto", "True", "False"):
        raise UserError(f"ema must be auto, true or false, got {cfg.ema!r}; e.g. ema=auto")
    if cfg.label is not None and (not is_int(cfg.label) or cfg.label < 0):
        raise UserError(f"label must be a class index >= 0 or null, got {cfg.label!r}; e.g. label=3")


def labels_for(ckpt: dict, cfg: DictConfig, n: int) -> torch.Tensor | None:
    """Class labels for a conditional G: all `label`, or cycling through the classes; None if unconditional."""
    classes = ckpt.get("num_classes", 0)
    if not classes:
        if cfg.label is not None:
            raise UserError("label= is for conditional models, and this checkpoint's model is unconditional; drop label=")
        return None
    if cfg.label is not None and cfg.label >= classes:
        raise UserError(f"label={cfg.label} but the model knows classes 0..{classes - 1}; use label=0..{classes - 1}")
    return torch.full((n,), cfg.label) if cfg.label is not None else torch.arange(n) % classes


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation: z0, z1 (K, L), t (T,) -> (K, T, L); linear where the endpoints are parallel."""
    cos = torch.nn.functional.cosine_similarity(z0, z1, dim=1).clamp(-1, 1)[:, None, None]  # (K, 1, 1)
    omega, t = torch.acos(cos), t[None, :, None]
    sin = torch.sin(omega)
    parallel = sin.abs() < 1e-6
    w0 = torch.where(parallel, 1 - t, torch.sin((1 - t) * omega) / torch.where(parallel, 1.0, sin))
    w1 = torch.where(parallel, t, torch.sin(t * omega) / torch.where(parallel, 1.0, sin))
    return w0 * z0[:, None] + w1 * z1[:, None]


def planned_files(cfg: DictConfig, out: Path) -> list[Path]:
    if cfg.interpolate > 0:
        return [out / "interpolation.png"]
    if cfg.format == "png":
        return [out / f"sample_{i:05d}.png" for i in range(cfg.n)]
    return [out / ("samples.npz" if cfg.format == "npz" else "samples.png")]


def sample(cfg: DictConfig, run_dir: Path) -> None:
    """Write samples of the checkpoint's generator as a grid, single PNGs, an npz, or an interpolation."""
    check_sample_config(cfg)
    ckpt = load_checkpoint(user_path(cfg.ckpt))
    device = pick_device(cfg.device)
    G, saved = generator_from_checkpoint(ckpt, user_path(cfg.ckpt), cfg.ema, device)
    latent_size = saved.latent_size
    out = user_path(cfg.out) if cfg.out else run_dir
    files = planned_files(cfg, out)
    existing = [f for f in files if f.exists()]
    if existing and not cfg.overwrite:
        raise UserError(f"{existing[0]} already exists; pass overwrite=true or another out=DIR")

    if cfg.interpolate > 0:  # drawn on the CPU: same seed, same samples on any device
        ends = G.latents(2 * cfg.interpolate, cfg.seed).view(2, cfg.interpolate, latent_size)
        z = slerp(ends[0], ends[1], torch.linspace(0, 1, cfg.nrow)).reshape(-1, latent_size)
    else:
        z = G.latents(cfg.n, cfg.seed)
    y = labels_for(ckpt, cfg, len(z))
    x = G.generate(z, y)  # (n, C, H, W) or (n, 2), on the CPU

    out.mkdir(parents=True, exist_ok=True)
    if cfg.format == "npz" and cfg.interpolate == 0:
        with naming(files[0]):
            np.savez(files[0], samples=x.numpy(), **({} if y is None else {"labels": y.numpy()}))
    elif cfg.format == "png" and cfg.interpolate == 0:
        for one, path in zip(x, files):
            artifacts.save_examples(one[None], path, nrow=1)
    else:
        artifacts.save_examples(x, files[0], nrow=cfg.nrow)
    where = files[0] if len(files) == 1 else f"{out}/sample_*.png ({len(files)} files)"
    log.info(f"wrote {len(x)} samples from {user_path(cfg.ckpt)} (epoch {ckpt['epoch']}, step {ckpt['step']}) to {where}")
