"""gantrain train: build the pieces the config names, then run the GAN loop."""
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from gantrain import artifacts
from gantrain.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from gantrain.config import check_train_config, config_for_resume, kwargs_of, pick_device, user_path
from gantrain.data import TensorData, load_data
from gantrain.errors import UserError
from gantrain.registry import lookup

log = logging.getLogger("gantrain")
STATS = ("d_loss", "g_loss", "d_x", "d_g_z")  # what a step returns, in this order
N_FIXED = 64  # size of the fixed latent batch behind samples/epoch_NNNN.png


def has_batch_statistics(net: torch.nn.Module) -> bool:
    """True if the net normalises over the batch, so real and fake must not share one forward pass."""
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())


def make_step(G, D, loss, opt_g, opt_d, precision: str = "fp32", joint_d_pass: bool = False):
    """One GAN step as a closure: step(real (B,...), z_d (B,L), z_g (B,L)) -> stats (4,) on the device.

    joint_d_pass runs D once over [real; fake] (one matrix product of 2B rows instead of two of B):
    the same maths, summed in another order, so weights differ from two passes by float rounding only.
    """
    device_type = next(G.parameters()).device.type
    autocast = lambda: torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")
    joint_d_pass = joint_d_pass and not has_batch_statistics(D)

    def step(real: torch.Tensor, z_d: torch.Tensor, z_g: torch.Tensor) -> torch.Tensor:
        # ---------------------------------------------------------------- #
        # (1) update D: push D(x) up and D(G(z)) down. G is held fixed, so
        #     its forward pass builds no graph and D's backward stops at fake.
        # ---------------------------------------------------------------- #
        with torch.no_grad(), autocast():
            fake = G(z_d)
        with autocast():
            if joint_d_pass:
                real_logits, fake_logits = D(torch.cat([real, fake.to(real.dtype)])).chunk(2)  # (B,), (B,)
            else:
                real_logits, fake_logits = D(real), D(fake)  # (B,), (B,)
            d_loss = loss.d_loss(real_logits.float(), fake_logits.float())
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

        # ---------------------------------------------------------------- #
        # (2) update G on fresh noise with the non-saturating loss. D's
        #     weights are frozen so backward computes no gradients for them.
        # ---------------------------------------------------------------- #
        D.requires_grad_(False)
        with autocast():
            g_loss = loss.g_loss(D(G(z_g)).float())
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        D.requires_grad_(True)

        # D(x) and D(G(z)) as probabilities, measured in the D step (before its update), as the reference logs
        return torch.stack([d_loss, g_loss, real_logits.detach().float().sigmoid().mean(),
                            fake_logits.detach().float().sigmoid().mean()]).detach()

    return step


@dataclass
class Parts:
    """Everything train() builds from the config; fit() runs it."""

    G: torch.nn.Module
    D: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    step: object  # the closure from make_step
    data: TensorData
    gen: torch.Generator  # data order and noise
    device: torch.device


def build_networks(cfg, data_shape) -> tuple[torch.nn.Module, torch.nn.Module]:
    """G and D from the model registry, with sizes from the top level of the config."""
    builder = lookup("model", cfg.model.name)
    try:
        return builder(data_shape=data_shape, latent_size=cfg.latent_size, hidden_size=cfg.hidden_size,
                       **kwargs_of(cfg.model))
    except TypeError as e:
        raise UserError(f"model '{cfg.model.name}' got a bad option ({e}); see conf/model/{cfg.model.name}.yaml") from None


FUSED_OPTIMIZERS = ("adam", "adamw", "sgd")  # torch has one-kernel (fused) versions of these on CPU and CUDA


def build_optimizer(cfg_optim, module: torch.nn.Module, fast: bool = False) -> torch.optim.Optimizer:
    """The optimizer named in the config over `module`'s parameters; its keys go to torch (fused when fast)."""
    kwargs = kwargs_of(cfg_optim)
    if fast and cfg_optim.name in FUSED_OPTIMIZERS:
        kwargs.setdefault("fused", True)
    try:
        return lookup("optim", cfg_optim.name)(module.parameters(), **kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"optim '{cfg_optim.name}' rejected its options: {e}; check the optim.* overrides") from None


def build_parts(cfg: DictConfig) -> Parts:
    """Data, networks, loss, optimizers and the step, as the config names them, on the configured device."""
    check_train_config(cfg)
    device = pick_device(cfg.device)
    if cfg.trainer.threads > 0:
        torch.set_num_threads(cfg.trainer.threads)
    torch.manual_seed(cfg.seed)  # initial weights

    data = load_data(cfg.data.name, **kwargs_of(cfg.data, paths=("root",))).to(device)
    if cfg.batch_size > len(data):
        raise UserError(f"batch_size={cfg.batch_size} is larger than the data set ({len(data)} examples); "
                        f"use batch_size<={len(data)}")
    G, D = (net.to(device) for net in build_networks(cfg, data.shape))
    loss = lookup("loss", cfg.loss.name)(**kwargs_of(cfg.loss))
    fast = cfg.trainer.fast
    opt_g, opt_d = build_optimizer(cfg.optim, G, fast), build_optimizer(cfg.optim, D, fast)
    gen = torch.Generator(device).manual_seed(cfg.seed)
    step = make_step(G, D, loss, opt_g, opt_d, cfg.trainer.precision, joint_d_pass=fast)
    return Parts(G, D, opt_g, opt_d, step, data, gen, device)


def batches(data: TensorData, batch_size: int, latent_size: int, gen: torch.Generator):
    """One epoch from a fresh permutation: yields (i, real (B, C, H, W), z (2, B, latent)); drops a last partial batch."""
    order = torch.randperm(len(data), generator=gen, device=data.x.device)
    for i in range(len(data) // batch_size):
        real = data.x[order[i * batch_size:(i + 1) * batch_size]]
        yield i, real, torch.randn(2, batch_size, latent_size, generator=gen, device=data.x.device)


def train(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> float | None:
    """Build everything `cfg` names (resuming from cfg.resume if set), then train; artifacts go to `run_dir`."""
    ckpt = None
    if cfg.resume:
        ckpt = load_checkpoint(user_path(cfg.resume))
        cfg = config_for_resume(ckpt, cfg, overrides)
    parts = build_parts(cfg)
    start_epoch, step = 0, 0
    if ckpt is not None:
        start_epoch, step = restore(parts, ckpt)
        log.info(f"resumed from {user_path(cfg.resume)} at epoch {start_epoch}, step {step}")
    return fit(cfg, parts, run_dir, start_epoch, step)


def restore(parts: Parts, ckpt: dict) -> tuple[int, int]:
    """Load weights, optimizer and RNG states from a checkpoint; returns (epoch, global step)."""
    try:
        parts.G.load_state_dict(ckpt["G"])
        parts.D.load_state_dict(ckpt["D"])
        parts.opt_g.load_state_dict(ckpt["opt_g"])
        parts.opt_d.load_state_dict(ckpt["opt_d"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise UserError(f"checkpoint does not match the networks it names ({str(e).splitlines()[0][:120]}); "
                        f"it may be corrupt or from another gantrain version") from None
    set_rng_state(parts.gen, ckpt["rng"])
    return ckpt["epoch"], ckpt["step"]


def checkpoint_state(cfg, parts: Parts, epoch: int, step: int) -> dict:
    """What a checkpoint holds: tensors and plain values only (see checkpoint.py)."""
    return {
        "config": OmegaConf.to_container(cfg, resolve=True), "data_shape": list(parts.data.shape),
        "epoch": epoch, "step": step,
        "G": parts.G.state_dict(), "D": parts.D.state_dict(),
        "opt_g": parts.opt_g.state_dict(), "opt_d": parts.opt_d.state_dict(),
        "rng": rng_state(parts.gen),
    }


def log_stats(epoch: int, epochs: int, i: int, steps_per_epoch: int, step: int, stats: torch.Tensor, csv) -> None:
    """The reference's log line, with the same values as a row of metrics.csv. The one host sync of a step."""
    d_loss, g_loss, d_x, d_g_z = stats.tolist()
    log.info(f"Epoch[{epoch + 1}/{epochs}] Step[{i + 1}/{steps_per_epoch}] d_loss {d_loss:.4f} g_loss {g_loss:.4f} "
             f"D(x) {d_x:.2f} D(G(z)) {d_g_z:.2f}")
    csv.write(f"{epoch + 1},{i + 1},{step},{d_loss:.6g},{g_loss:.6g},{d_x:.6g},{d_g_z:.6g}\n")
    csv.flush()
    if not all(math.isfinite(v) for v in (d_loss, g_loss)):
        raise UserError(f"loss is not finite at step {step} (d_loss {d_loss}, g_loss {g_loss}); "
                        f"lower optim.lr or resume from the last checkpoint")


def fit(cfg, parts: Parts, run_dir: Path, start_epoch: int, step: int) -> float | None:
    """The training loop: epochs of index-sliced batches, logging, samples and checkpoints."""
    from tqdm import tqdm

    data, device, B = parts.data, parts.device, cfg.batch_size
    steps_per_epoch = len(data) // B  # the last partial batch is dropped, as DataLoader(drop_last=True)
    fixed_z = torch.randn(N_FIXED, cfg.latent_size, generator=torch.Generator().manual_seed(cfg.seed)).to(device)
    artifacts.save_real_images(data, run_dir / "real_images.png")
    csv = artifacts.open_metrics(run_dir / "metrics.csv", ("epoch", "step_in_epoch", "step", *STATS))
    log.info(f"training {cfg.model.name}/{cfg.loss.name} on {cfg.data.name} ({len(data)} examples, "
             f"{steps_per_epoch} steps/epoch) on {device}, epochs {start_epoch + 1}..{cfg.epochs}; run dir {run_dir}")
    for epoch in range(start_epoch, cfg.epochs):
        bar = tqdm(batches(data, B, cfg.latent_size, parts.gen), total=steps_per_epoch, leave=False,
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not sys.stderr.isatty(), file=sys.stderr)
        for i, real, z in bar:
            stats = parts.step(real, z[0], z[1])
            step += 1
            if step % cfg.log_every == 0:
                log_stats(epoch, cfg.epochs, i, steps_per_epoch, step, stats, csv)
        last = epoch + 1 == cfg.epochs
        if last or (cfg.sample_every > 0 and (epoch + 1) % cfg.sample_every == 0):
            artifacts.save_samples(parts.G, fixed_z, run_dir / "samples" / f"epoch_{epoch + 1:04d}.png")
        if last or (cfg.ckpt_every > 0 and (epoch + 1) % cfg.ckpt_every == 0):
            save_checkpoint(run_dir / "checkpoints" / "last.pt", checkpoint_state(cfg, parts, epoch + 1, step))
    csv.close()
    artifacts.plot_curves(run_dir / "metrics.csv", run_dir / "curves.png")
    log.info(f"done: {step} steps; checkpoint, samples and curves in {run_dir}")
    return None
