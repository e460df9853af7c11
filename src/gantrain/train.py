"""gantrain train: build the pieces the config names, then run the GAN loop."""
import copy
import json
import logging
import math
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from gantrain import artifacts, curves
from gantrain.checkpoint import load_checkpoint, load_weights, rng_state, save_checkpoint, set_rng_state
from gantrain.config import check_train_config, config_for_resume, kwargs_of, pick_device, user_path
from gantrain.data import TensorData, load_data
from gantrain.errors import UserError
from gantrain.registry import lookup
from gantrain.tracking import open_tracker

log = logging.getLogger("gantrain")
STATS = ("d_loss", "g_loss", "d_x", "d_g_z")  # what a step returns, in this order
N_FIXED = {"image": 64, "points": 2500}  # size of the fixed latent batch behind samples/epoch_NNNN.png


def has_batch_statistics(net: torch.nn.Module) -> bool:
    """True if the net normalises over the batch, so real and fake must not share one forward pass."""
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())


def make_step(G, D, loss, opt_g, opt_d, *, n_critic: int = 1, precision: str = "fp32", joint_d_pass: bool = False,
              skip_nonfinite: bool = False, G_ema=None, ema_decay: float = 0.0):
    """One GAN step as a closure: step(real, z, y_real=None, y_fake=None, r1=True) -> stats (4,) on the device.

    real (n_critic, B, ...) and y_real (n_critic, B) feed the n_critic D updates; z (n_critic + 1, B, latent)
    and y_fake (n_critic + 1, B) their fakes and the G update. joint_d_pass runs D once over [real; fake]:
    the same maths summed in another order (weights differ from two passes by float rounding only).
    skip_nonfinite skips an update whose loss is NaN or Inf (one host sync per update) and counts it in
    step.skipped. r1=False leaves out the R1 penalty on this step (lazy R1: see losses.py).
    """
    device_type = next(G.parameters()).device.type
    # no cast cache: a CUDA graph capture cannot hold one, and these nets reuse no weight within a pass
    autocast = lambda: torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16",
                                      cache_enabled=False)
    joint_d_pass = joint_d_pass and not has_batch_statistics(D)
    label = lambda y, k: None if y is None else y[k]

    def update(opt, loss_value) -> None:
        if skip_nonfinite and not torch.isfinite(loss_value):
            step.skipped += 1
            return
        opt.step()

    def step(real, z, y_real=None, y_fake=None, r1: bool = True):
        for k in range(n_critic):
            # ---------------------------------------------------------------- #
            # (1) update D: push D(x) up and D(G(z)) down. G is held fixed, so
            #     its forward pass builds no graph and D's backward stops at fake.
            # ---------------------------------------------------------------- #
            x, y, y_f = real[k], label(y_real, k), label(y_fake, k)  # (B, ...), (B,), (B,)
            with torch.no_grad(), autocast():
                fake = G(z[k], y_f)
            with autocast():
                if joint_d_pass:
                    both_y = None if y is None else torch.cat([y, y_f])
                    real_logits, fake_logits = D(torch.cat([x, fake.to(x.dtype)]), both_y).float().chunk(2)
                else:
                    real_logits, fake_logits = D(x, y).float(), D(fake, y_f).float()  # (B,), (B,)
                d_loss = loss.d_loss(real_logits, fake_logits)
                penalty = loss.penalty(D, x, fake, y, y_f, r1)
            opt_d.zero_grad(set_to_none=True)
            (d_loss if penalty is None else d_loss + penalty).backward()
            update(opt_d, d_loss)

        # ---------------------------------------------------------------- #
        # (2) update G on fresh noise. D's weights are frozen so backward
        #     computes no gradients for them.
        # ---------------------------------------------------------------- #
        D.requires_grad_(False)
        y_g = label(y_fake, n_critic)
        with autocast():
            g_loss = loss.g_loss(D(G(z[n_critic], y_g), y_g).float())
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        update(opt_g, g_loss)
        D.requires_grad_(True)
        if G_ema is not None:  # ema <- decay * ema + (1 - decay) * G, buffers (BatchNorm statistics) copied
            with torch.no_grad():
                torch._foreach_lerp_(list(G_ema.parameters()), list(G.parameters()), 1 - ema_decay)
                for b_ema, b in zip(G_ema.buffers(), G.buffers()):
                    b_ema.copy_(b)

        # D(x) and D(G(z)) as probabilities, from the last D update (before it), as the reference logs them
        return torch.stack([d_loss.detach(), g_loss.detach(), real_logits.detach().sigmoid().mean(),
                            fake_logits.detach().sigmoid().mean()])

    step.skipped = 0
    return step


@dataclass
class Parts:
    """Everything train() builds from the config; fit() runs it."""

    G: torch.nn.Module
    D: torch.nn.Module
    G_ema: torch.nn.Module | None  # exponential moving average of G's weights, when ema_decay > 0
    loss: object  # the Loss from losses.py (the loop asks it which steps take a lazy R1)
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    step: object  # the closure from make_step
    data: TensorData
    num_classes: int  # > 0 for a conditional GAN
    gen: torch.Generator  # data order and noise
    device: torch.device


def set_matmul_precision(precision: str) -> None:
    """trainer.precision=tf32: float32 matrix products on CUDA's TF32 tensor cores (inputs rounded to a 10-bit
    mantissa, fp32 sums), several times faster on Ampere and later; fp32 and bf16 keep them in full fp32."""
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"


def build_networks(cfg, data_shape, num_classes: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """G and D from the model registry, with sizes from the top level of the config."""
    builder = lookup("model", cfg.model.name)
    kwargs = kwargs_of(cfg.model)
    kwargs.pop("conditional", None)  # decided by the caller, who knows the data's classes
    kwargs.pop("seed_heads", None)  # needs the data: seed_heads() does it
    try:
        return builder(data_shape=tuple(data_shape), latent_size=cfg.latent_size, hidden_size=cfg.hidden_size,
                       num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise UserError(f"model '{cfg.model.name}' got a bad option ({e}); see conf/model/{cfg.model.name}.yaml") from None


def seed_heads(G: torch.nn.Module, cfg, data: TensorData) -> None:
    """model.seed_heads: G's heads start at data points (k-means++ seeding over 10,000 of them), from the seed."""
    if cfg.model.get("seed_heads", False):  # 2D data and heads > 1: check_train_config made sure
        G.heads.seed_(data.x[:10_000].cpu(), torch.Generator().manual_seed(cfg.seed))


FUSED_OPTIMIZERS = ("adam", "adamw", "sgd")  # torch has one-kernel (fused) versions of these on CPU and CUDA
CAPTURABLE_OPTIMIZERS = ("adam", "adamw")  # keep their step count on the device, so a CUDA graph can replay them


def build_optimizer(cfg_optim, module: torch.nn.Module, fast: bool = False, capturable: bool = False):
    """The optimizer named in the config over `module`'s parameters; its keys go to torch (fused when fast)."""
    kwargs = kwargs_of(cfg_optim)
    if fast and cfg_optim.name in FUSED_OPTIMIZERS:
        kwargs.setdefault("fused", True)
    if capturable:
        kwargs.setdefault("capturable", True)
    try:
        return lookup("optim", cfg_optim.name)(module.parameters(), **kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"optim '{cfg_optim.name}' rejected its options: {e}; drop or fix that optim.* override") from None


def classes_of(cfg, data: TensorData) -> int:
    """How many classes a conditional model sees (0 when unconditional)."""
    if not cfg.model.get("conditional", False):
        return 0
    if data.y is None:
        raise UserError(f"model.conditional=true needs a labelled data set, and {cfg.data.name} has no labels")
    return int(data.y.max()) + 1


def build_parts(cfg: DictConfig) -> Parts:
    """Data, networks, loss, optimizers and the step, as the config names them, on the configured device."""
    check_train_config(cfg)
    device = pick_device(cfg.device)
    if cfg.trainer.threads > 0:
        torch.set_num_threads(cfg.trainer.threads)
    set_matmul_precision(cfg.trainer.precision)
    torch.manual_seed(cfg.seed)  # initial weights

    data = load_data(cfg.data.name, **kwargs_of(cfg.data, paths=("root",))).to(device)
    if cfg.batch_size * cfg.n_critic > len(data):
        raise UserError(f"batch_size={cfg.batch_size} (x n_critic={cfg.n_critic}) is larger than the data set "
                        f"({len(data)} examples); use batch_size<={len(data) // cfg.n_critic}")
    num_classes = classes_of(cfg, data)
    G, D = build_networks(cfg, data.shape, num_classes)
    seed_heads(G, cfg, data)
    G, D = G.to(device), D.to(device)
    G_ema = copy.deepcopy(G).requires_grad_(False) if cfg.ema_decay > 0 else None
    loss = lookup("loss", cfg.loss.name)(**kwargs_of(cfg.loss))
    skip = cfg.on_nan == "skip"
    graph = (cfg.trainer.cuda_graph and device.type == "cuda" and not skip
             and cfg.optim.name in CAPTURABLE_OPTIMIZERS)
    opt_g, opt_d = (build_optimizer(cfg.optim, net, cfg.trainer.fast, capturable=graph) for net in (G, D))
    step = make_step(G, D, loss, opt_g, opt_d, n_critic=cfg.n_critic, precision=cfg.trainer.precision,
                     joint_d_pass=cfg.trainer.fast, skip_nonfinite=skip, G_ema=G_ema, ema_decay=cfg.ema_decay)
    if graph:
        from gantrain.cuda_graph import graphed

        step = graphed(step)
    gen = torch.Generator(device).manual_seed(cfg.seed)
    return Parts(G, D, G_ema, loss, opt_g, opt_d, step, data, num_classes, gen, device)


def epoch_order(data: TensorData, gen: torch.Generator) -> torch.Tensor:
    """A fresh permutation of the data set for one epoch."""
    return torch.randperm(len(data), generator=gen, device=data.x.device)


def batches(data: TensorData, order: torch.Tensor, batch_size: int, latent_size: int, n_critic: int,
            num_classes: int, gen: torch.Generator, start: int = 0):
    """One epoch: yields (i, inputs of one step) for steps start.. of it; a last partial batch is dropped.

    inputs = (real (n_critic, B, ...), z (n_critic + 1, B, latent)), plus for a conditional GAN
    (y_real (n_critic, B), y_fake (n_critic + 1, B)) with fake labels drawn uniformly.
    """
    per_step, device = batch_size * n_critic, data.x.device
    for i in range(start, len(data) // per_step):
        idx = order[i * per_step:(i + 1) * per_step].view(n_critic, batch_size)
        z = torch.randn(n_critic + 1, batch_size, latent_size, generator=gen, device=device)
        if num_classes:
            y_fake = torch.randint(num_classes, (n_critic + 1, batch_size), generator=gen, device=device)
            yield i, (data.x[idx], z, data.y[idx], y_fake)
        else:
            yield i, (data.x[idx], z)


def auto_resume(cfg: DictConfig, run_dir: Path, overrides: list[str], multirun: bool) -> tuple[bool, float | None]:
    """resume=auto: find the newest earlier run of this job. Finished: adopt its results (returns True and its
    metric). Interrupted with a checkpoint: set cfg.resume to it. Otherwise start fresh."""
    from gantrain.evaluate import headline
    from gantrain.runs import adopt, carry_metrics, previous_run, read_status

    previous = previous_run(run_dir, overrides, multirun)
    last = previous / "checkpoints" / "last.pt" if previous else None
    ckpt = load_checkpoint(last) if last and last.exists() else None
    finished = ckpt is not None and ckpt["epoch"] >= cfg.epochs and not ckpt.get("position")
    if previous and (read_status(previous).get("state") == "done" or finished):
        adopt(previous, run_dir)
        log.info(f"resume=auto: this job already finished in {previous}; its results are linked here")
        metrics_json = previous / "metrics.json"
        results = json.loads(metrics_json.read_text())["metrics"] if metrics_json.exists() else {}
        return True, headline(results, cfg.eval.metric)
    if ckpt is not None:
        carry_metrics(previous, run_dir, ckpt["step"])
        cfg.resume = str(last)
        return False, None
    log.info("resume=auto: no earlier checkpoint of this job; starting fresh")
    cfg.resume = None
    return False, None


def train(cfg: DictConfig, run_dir: Path, overrides: list[str], multirun: bool = False) -> float | None:
    """Build everything `cfg` names (resuming from cfg.resume if set), then train; artifacts go to `run_dir`."""
    if (run_dir / "checkpoints" / "last.pt").exists():
        raise UserError(f"{run_dir} already holds a run's checkpoint; wait a second (run dirs are named by the "
                        f"time) or choose another hydra.run.dir")
    if cfg.resume == "auto":
        done, score = auto_resume(cfg, run_dir, overrides, multirun)
        if done:
            return score
    ckpt = None
    if cfg.resume:
        ckpt = load_checkpoint(user_path(cfg.resume))
        cfg = config_for_resume(ckpt, cfg, overrides)
    parts = build_parts(cfg)
    where = Where(0, 0, 0, None)
    if ckpt is not None:
        where = restore(parts, ckpt)
        log.info(f"resumed from {user_path(cfg.resume)} at epoch {where.epoch}, step {where.step}"
                 + (f" ({where.position} steps into epoch {where.epoch + 1})" if where.position else ""))
    return fit(cfg, parts, run_dir, where)


@dataclass
class Where:
    """A position in training: completed epochs, global step, steps done in the current epoch and its order."""

    epoch: int
    step: int
    position: int
    order: torch.Tensor | None  # the current epoch's permutation when position > 0


def restore(parts: Parts, ckpt: dict) -> Where:
    """Load weights, optimizer and RNG states from a checkpoint; returns where training stood."""
    for net, key in ((parts.G, "G"), (parts.D, "D"), (parts.opt_g, "opt_g"), (parts.opt_d, "opt_d")):
        load_weights(net, ckpt[key])
    if parts.G_ema is not None:  # ema_decay switched on at resume: the average starts from G
        load_weights(parts.G_ema, ckpt["G_ema"] if ckpt.get("G_ema") is not None else ckpt["G"])
    set_rng_state(parts.gen, ckpt["rng"])
    order = ckpt.get("order")
    return Where(ckpt["epoch"], ckpt["step"], ckpt.get("position", 0), None if order is None else order.to(parts.device))


def checkpoint_state(cfg, parts: Parts, where: Where) -> dict:
    """What a checkpoint holds: tensors and plain values only (see checkpoint.py)."""
    return {
        "config": OmegaConf.to_container(cfg, resolve=True), "data_shape": list(parts.data.shape),
        "num_classes": parts.num_classes, "epoch": where.epoch, "step": where.step,
        "position": where.position, "order": None if where.order is None else where.order.cpu(),
        "G": parts.G.state_dict(), "D": parts.D.state_dict(),
        "G_ema": None if parts.G_ema is None else parts.G_ema.state_dict(),
        "opt_g": parts.opt_g.state_dict(), "opt_d": parts.opt_d.state_dict(),
        "rng": rng_state(parts.gen),
    }


@contextmanager
def deferred_signals():
    """SIGINT and SIGTERM are noted, for the loop to stop at the next step boundary; a second Ctrl-C stops at once."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield caught
        return

    def note(signum, frame):
        if caught and signum == signal.SIGINT:
            raise KeyboardInterrupt
        caught.append(signum)

    previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def check_finite(history: torch.Tensor, first_step: int, last_ckpt: str) -> None:
    """Stop at the first step whose d_loss or g_loss is NaN or Inf (history: (steps, 4) from first_step)."""
    bad = ~torch.isfinite(history[:, :2]).all(dim=1)
    if bad.any():
        i = int(bad.nonzero()[0])
        d_loss, g_loss = history[i, :2].tolist()
        raise UserError(f"loss became non-finite at step {first_step + i} (d_loss {d_loss}, g_loss {g_loss}); "
                        f"last good checkpoint: {last_ckpt}. Resume from it with a lower optim.lr, or set on_nan=skip")


def log_stats(where: Where, cfg, steps_per_epoch: int, stats: torch.Tensor, csv, skipped: int, tracker) -> None:
    """The reference's log line, with the same values as a row of metrics.csv. A host sync, once per log_every."""
    values = stats.tolist()
    d_loss, g_loss, d_x, d_g_z = values
    tracker.scalars({f"train/{name}": v for name, v in zip(STATS, values)}, where.step)
    note = f" (skipped {skipped} non-finite updates)" if skipped else ""
    log.info(f"Epoch[{where.epoch + 1}/{cfg.epochs}] Step[{where.position}/{steps_per_epoch}] d_loss {d_loss:.4f} "
             f"g_loss {g_loss:.4f} D(x) {d_x:.2f} D(G(z)) {d_g_z:.2f}{note}")
    csv.write(f"{where.epoch + 1},{where.position},{where.step},{d_loss:.6g},{g_loss:.6g},{d_x:.6g},{d_g_z:.6g}\n")


def evaluate_and_keep_best(cfg, parts: Parts, run_dir: Path, where: Where, state: dict, best: float | None, tracker):
    """Metrics of the current G (EMA if kept) into metrics.json; checkpoints/best.pt when they are the best yet."""
    from gantrain.evaluate import evaluate, headline, write_metrics

    results = evaluate(parts.G_ema or parts.G, parts.data, cfg.data.name, cfg.latent_size, parts.num_classes,
                       cfg.eval.n, cfg.seed)
    score = headline(results, cfg.eval.metric)
    if score is None:
        return None, best
    write_metrics(run_dir / "metrics.json", results, epoch=where.epoch, step=where.step)
    tracker.scalars({f"eval/{k}": v["value"] for k, v in results.items() if math.isfinite(v["value"])}, where.step)
    log.info(f"eval at epoch {where.epoch}: " + ", ".join(f"{k} {v['value']:.4g}" for k, v in results.items())
             + f" (n_real {next(iter(results.values()))['n_real']}, n_fake {next(iter(results.values()))['n_fake']})")
    if best is None or score < best:
        save_checkpoint(run_dir / "checkpoints" / "best.pt", state)
        best = score
    return score, best


def can_evaluate(cfg, data: TensorData) -> bool:
    if not cfg.eval.enabled:
        return False
    if data.x.dim() == 4 and data.y is None:
        log.warning(f"{cfg.data.name} has no labels, so no feature network can be trained: metrics are skipped")
        return False
    return True


def due(every: int, epoch: int, last: bool) -> bool:
    """Whether an every-N-epochs task runs after `epoch` (always after the last; every=0 means only then)."""
    return last or (every > 0 and epoch % every == 0)


def fixed_latents(cfg, data: TensorData, device) -> torch.Tensor:
    """The fixed latent batch behind samples/epoch_NNNN.png (drawn on the CPU from the seed: any device)."""
    n = N_FIXED["points" if data.x.dim() == 2 else "image"]
    return torch.randn(n, cfg.latent_size, generator=torch.Generator().manual_seed(cfg.seed)).to(device)


def fit(cfg, parts: Parts, run_dir: Path, where: Where) -> float | None:
    """The training loop: epochs of index-sliced batches, logging, samples, checkpoints, stop on signals."""
    from tqdm import tqdm

    data, device = parts.data, parts.device
    steps_per_epoch = len(data) // (cfg.batch_size * cfg.n_critic)  # a last partial batch is dropped
    fixed_z = fixed_latents(cfg, data, device)
    fixed_y = torch.arange(len(fixed_z), device=device) % parts.num_classes if parts.num_classes else None
    real_points = data.x[:len(fixed_z)] if data.x.dim() == 2 else None  # 2D plots show the real mixture behind
    ckpt_path, last_ckpt = run_dir / "checkpoints" / "last.pt", str(user_path(cfg.resume)) if cfg.resume else "none yet"
    artifacts.save_real_images(data, run_dir / "real_images.png")
    csv = artifacts.open_metrics(run_dir / "metrics.csv", ("epoch", "step_in_epoch", "step", *STATS))
    history = torch.zeros(steps_per_epoch, len(STATS), device=device)  # this epoch's stats, read at log time
    evaluating, score, best = can_evaluate(cfg, data), None, None
    tracker = open_tracker(cfg.logger.name, run_dir)
    log.info(f"training {cfg.model.name}/{cfg.loss.name} on {cfg.data.name} ({len(data)} examples, "
             f"{steps_per_epoch} steps/epoch) on {device}, epochs {where.epoch + 1}..{cfg.epochs}; run dir {run_dir}")
    with deferred_signals() as caught, csv:
        while where.epoch < cfg.epochs:
            where.order = epoch_order(data, parts.gen) if where.order is None else where.order
            steps = batches(data, where.order, cfg.batch_size, cfg.latent_size, cfg.n_critic, parts.num_classes,
                            parts.gen, where.position)
            for i, inputs in tqdm(steps, initial=where.position, total=steps_per_epoch, leave=False,
                                  desc=f"epoch {where.epoch + 1}/{cfg.epochs}", disable=not sys.stderr.isatty()):
                history[i] = parts.step(*inputs, r1=parts.loss.r1_due(where.step))
                where.step, where.position = where.step + 1, i + 1
                if where.step % cfg.log_every == 0 or caught:
                    if cfg.on_nan == "stop":
                        check_finite(history[:i + 1], where.step - i, last_ckpt)
                    if where.step % cfg.log_every == 0:
                        log_stats(where, cfg, steps_per_epoch, history[i], csv, parts.step.skipped, tracker)
                if caught:  # a mid-epoch checkpoint that resumes exactly: it holds this epoch's order and position
                    save_checkpoint(ckpt_path, checkpoint_state(cfg, parts, where))
                    name = signal.Signals(caught[0]).name
                    log.info(f"{name}: stopped at epoch {where.epoch + 1}, step {where.step}; saved {ckpt_path}\n"
                             f"resume with: gantrain train resume={ckpt_path}")
                    raise SystemExit(128 + caught[0])
            if cfg.on_nan == "stop":
                check_finite(history, where.step - steps_per_epoch + 1, last_ckpt)  # before anything is saved
            where.epoch, where.position, where.order = where.epoch + 1, 0, None
            last = where.epoch == cfg.epochs
            if due(cfg.sample_every, where.epoch, last):
                png = run_dir / "samples" / f"epoch_{where.epoch:04d}.png"
                artifacts.save_samples(parts.G_ema or parts.G, fixed_z, fixed_y, png, real_points)
                tracker.image("samples", png, where.epoch)
            keep, evaluate = due(cfg.ckpt_every, where.epoch, last), evaluating and due(cfg.eval_every, where.epoch, last)
            state = checkpoint_state(cfg, parts, where) if keep or evaluate else None  # RNG reads, config resolve: only when used
            if keep:
                save_checkpoint(ckpt_path, state)
                last_ckpt = f"{ckpt_path} (epoch {where.epoch})"
            if evaluate:
                score, best = evaluate_and_keep_best(cfg, parts, run_dir, where, state, best, tracker)
    tracker.close()
    curves.plot_curves(run_dir / "metrics.csv", run_dir / "curves.png")
    log.info(f"done: {where.step} steps; checkpoint, samples and curves in {run_dir}")
    return score
