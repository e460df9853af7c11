"""The loop of a batched sweep: K members stepped together, each with its own data order, noise, log,
samples, checkpoints, metrics and status, written exactly as a standalone run writes them."""
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from gantrain import artifacts, curves
from gantrain.checkpoint import load_weights, save_checkpoint
from gantrain.config import check_train_config, kwargs_of, pick_device
from gantrain.errors import UserError
from gantrain.data import load_data
from gantrain.registry import lookup
from gantrain.runs import write_status
from gantrain.sweep import free_bytes, member_bytes
from gantrain.tracking import NoTracker
from gantrain.train import (STATS, Parts, Where, build_networks, build_optimizer, can_evaluate, checkpoint_state, due,
                            epoch_order, evaluate_and_keep_best, fixed_latents, has_batch_statistics, log_stats,
                            seed_heads, set_matmul_precision)
from gantrain.vectorized import VectorizedGAN

log = logging.getLogger("gantrain")


def resumable(cfg, run_dir: Path) -> dict | None:
    """The checkpoint cfg.resume names (resume=auto has been resolved to it by the sweep), if it ends an epoch."""
    from gantrain.checkpoint import load_checkpoint
    from gantrain.config import user_path

    if not cfg.resume:
        return None
    path = user_path(cfg.resume)
    ckpt = load_checkpoint(path)
    if ckpt.get("position"):
        raise UserError(f"{path} was saved mid-epoch: resume it alone with gantrain train resume={path}")
    log.info(f"job {run_dir.name}: resuming from {path} (epoch {ckpt['epoch']})")
    return ckpt


def train_batched(configs, dirs: list[Path]) -> None:
    """Train members that differ only in batchable values, in chunks that fit the device's free memory;
    members resuming from checkpoints of different epochs go in different chunks."""
    for cfg in configs:
        check_train_config(cfg)
    ckpts = [resumable(cfg, d) for cfg, d in zip(configs, dirs)]
    device = pick_device(configs[0].device)
    set_matmul_precision(configs[0].trainer.precision)  # the same in every member: it is part of the group key
    data = load_data(configs[0].data.name, **kwargs_of(configs[0].data, paths=("root",))).to(device)
    G, D = build_networks(configs[0], data.shape)
    per_member = member_bytes(configs[0], data.shape, sum(p.numel() for p in [*G.parameters(), *D.parameters()]))
    free = free_bytes(device)
    k_max = max(1, int(0.5 * free / per_member))
    log.info(f"memory: {free / 2**30:.1f} GiB free on {device}, ~{per_member / 2**20:.1f} MiB per "
             f"member: up to {k_max} members per batch")
    by_epoch: dict[int, list[int]] = {}
    for k, ckpt in enumerate(ckpts):
        by_epoch.setdefault(ckpt["epoch"] if ckpt else 0, []).append(k)
    # samples' PNGs and checkpoints are written by threads (encoding, fsync), while the GPU work stays in this one
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix="gantrain-writer") as writer:
        for members in by_epoch.values():
            for start in range(0, len(members), k_max):
                chunk = members[start:start + k_max]
                train_chunk([configs[k] for k in chunk], [dirs[k] for k in chunk], data, device,
                            [ckpts[k] for k in chunk], writer)


def member_parts(model: VectorizedGAN, k: int, cfg, data, gen, device) -> Parts:
    """Member k as a standalone run's Parts (real modules and torch optimizers), for checkpoints and eval."""
    G, D = (net.to(device) for net in build_networks(cfg, data.shape))
    g_state, d_state, ema_state = model.member_weights(k)
    load_weights(G, g_state)
    load_weights(D, d_state)
    G_ema = None
    if ema_state is not None and cfg.ema_decay > 0:
        G_ema = build_networks(cfg, data.shape)[0].to(device).requires_grad_(False)
        load_weights(G_ema, ema_state)
    opt_g, opt_d = (build_optimizer(cfg.optim, net, cfg.trainer.fast) for net in (G, D))
    model.member_optimizer_state(k, "g", G, opt_g)
    model.member_optimizer_state(k, "d", D, opt_d)
    return Parts(G, D, G_ema, model.loss, opt_g, opt_d, None, data, 0, gen, device)


def optimizer_hyper(configs) -> dict:
    """The members' Adam hyperparameters, each a list over the members (torch's defaults where unset)."""
    betas = [c.optim.get("betas", [0.9, 0.999]) for c in configs]
    return dict(lr=[c.optim.get("lr", 1e-3) for c in configs], beta1=[b[0] for b in betas], beta2=[b[1] for b in betas],
                eps=[c.optim.get("eps", 1e-8) for c in configs],
                weight_decay=[c.optim.get("weight_decay", 0.0) for c in configs])


def build_batched(configs, data, device, ckpts: list[dict | None], graph: bool):
    """The members' G and D (each initialised from its own seed, as standalone, or from its checkpoint's
    weights) stacked into one model, and its step: replayed as a CUDA graph when `graph`."""
    Gs, Ds = [], []
    for cfg, ckpt in zip(configs, ckpts):
        torch.manual_seed(cfg.seed)
        G, D = build_networks(cfg, data.shape)
        seed_heads(G, cfg, data)
        if ckpt:
            load_weights(G, ckpt["G"])
            load_weights(D, ckpt["D"])
        Gs.append(G.to(device))
        Ds.append(D.to(device))
    assert not has_batch_statistics(Gs[0]) and not has_batch_statistics(Ds[0])
    loss = lookup("loss", configs[0].loss.name)(**kwargs_of(configs[0].loss))
    model = VectorizedGAN(Gs, Ds, loss, optimizer_hyper(configs), [c.ema_decay for c in configs])
    if not graph:
        return model, model.step
    from gantrain.cuda_graph import graphed

    return model, graphed(model.step)


def member_batches(data, orders: torch.Tensor, i: int, batch_size: int, latent_size: int, gens) -> tuple:
    """Step i of an epoch for every member: real (K, B, ...) from its own data order, z (K, 2, B, L) from
    its own generator (as a standalone run draws them)."""
    real = data.x[orders[:, i * batch_size:(i + 1) * batch_size]]
    z = torch.stack([torch.randn(2, batch_size, latent_size, generator=g, device=data.x.device) for g in gens])
    return real, z


def train_chunk(configs, dirs: list[Path], data, device, ckpts: list[dict | None],
                writer: ThreadPoolExecutor) -> None:
    K, cfg0 = len(configs), configs[0]
    B, L = cfg0.batch_size, cfg0.latent_size
    model, step = build_batched(configs, data, device, ckpts, graph=device.type == "cuda" and cfg0.trainer.cuda_graph)
    gens = [torch.Generator(device).manual_seed(c.seed) for c in configs]
    where = Where(0, 0, 0, None)
    for k, ckpt in enumerate(ckpts):
        if ckpt:
            restore_member(model, k, ckpt, gens[k])
            where = Where(ckpt["epoch"], ckpt["step"], 0, None)
    steps_per_epoch = len(data) // B
    fixed_z = [fixed_latents(c, data, device) for c in configs]
    real_points = data.x[:len(fixed_z[0])].cpu() if data.x.dim() == 2 else None  # behind every member's 2D plots
    csvs = [artifacts.open_metrics(d / "metrics.csv", ("epoch", "step_in_epoch", "step", *STATS)) for d in dirs]
    alive, scores, best = [True] * K, [None] * K, [None] * K
    evaluating = can_evaluate(cfg0, data)
    # status.json says `running` already: the sweep's job_status wrote it for the whole batch
    artifacts.save_real_images(data, dirs[0] / "real_images.png")  # the same data for every member: drawn once
    for d in dirs[1:]:
        shutil.copyfile(dirs[0] / "real_images.png", d / "real_images.png")
    history = torch.zeros(K, steps_per_epoch, len(STATS), device=device)
    log.info(f"batched training of {K} members: {steps_per_epoch} steps/epoch, epochs 1..{cfg0.epochs}")
    seconds = {"steps": 0.0, "samples, checkpoints, eval": 0.0}
    first_step = where.step
    while where.epoch < cfg0.epochs:
        tick = time.perf_counter()
        orders = torch.stack([epoch_order(data, g) for g in gens])  # (K, N): each member's own data order
        for i in range(steps_per_epoch):
            history[:, i] = step(*member_batches(data, orders, i, B, L, gens))
            where.step, where.position = where.step + 1, i + 1
            if where.step % cfg0.log_every == 0:
                check_members(history[:, :i + 1], where, dirs, alive)
                latest = history[:, i].cpu()  # (K, 4): one copy to the host, not one per member
                for k in range(K):
                    if alive[k]:
                        log_stats(where, configs[k], steps_per_epoch, latest[k], csvs[k], 0, NoTracker())
        check_members(history, where, dirs, alive)  # waits for the epoch's last step: the timing below is true
        seconds["steps"] += time.perf_counter() - tick
        tick = time.perf_counter()
        where.epoch, where.position = where.epoch + 1, 0
        last = where.epoch == cfg0.epochs
        writes = []  # futures of this epoch's file writes
        for k in (k for k in range(K) if alive[k]):
            cfg, d = configs[k], dirs[k]
            sample, keep = due(cfg.sample_every, where.epoch, last), due(cfg.ckpt_every, where.epoch, last)
            evaluate = evaluating and due(cfg.eval_every, where.epoch, last)
            if not (sample or keep or evaluate):
                continue
            parts = member_parts(model, k, cfg, data, gens[k], device)
            if sample:
                images = artifacts.generate(parts.G_ema or parts.G, fixed_z[k], None).cpu()
                writes.append(writer.submit(artifacts.save_examples, images, d / "samples" / f"epoch_{where.epoch:04d}.png",
                                            real=real_points))
            if not (keep or evaluate):
                continue
            state = checkpoint_state(cfg, parts, where)
            if keep:
                writes.append(writer.submit(save_checkpoint, d / "checkpoints" / "last.pt", state))
            if evaluate:
                scores[k], best[k] = evaluate_and_keep_best(cfg, parts, d, where, state, best[k], NoTracker())
        for write in writes:
            write.result()  # a failed write stops the batch here, as it would have unthreaded
        seconds["samples, checkpoints, eval"] += time.perf_counter() - tick
    steps = where.step - first_step
    log.info(f"batched training of {K} members: {steps} steps in {seconds['steps']:.1f} s "
             f"({steps / max(seconds['steps'], 1e-9):.1f} batched steps/s, {K * steps / max(seconds['steps'], 1e-9):.0f} "
             f"model-steps/s); samples, checkpoints and eval {seconds['samples, checkpoints, eval']:.1f} s")
    for metrics_csv in csvs:
        metrics_csv.close()
    curves.plot_curves_of(dirs)
    for k, d in enumerate(dirs):
        if alive[k]:
            write_status(d, "done", **({} if scores[k] is None else {"metric": scores[k]}))


def restore_member(model: VectorizedGAN, k: int, ckpt: dict, gen: torch.Generator) -> None:
    """Member k's Adam moments, step count, EMA and data-order/noise state from its checkpoint."""
    from gantrain.checkpoint import set_rng_state

    model.restore_member_optimizer(k, "g", ckpt["opt_g"])
    model.restore_member_optimizer(k, "d", ckpt["opt_d"])
    if model.ema is not None and ckpt.get("G_ema") is not None:
        for name, view in model.g.views(model.ema).items():
            view[k] = ckpt["G_ema"][name]
    set_rng_state(gen, ckpt["rng"])


def check_members(history: torch.Tensor, where: Where, dirs: list[Path], alive: list[bool]) -> None:
    """A member whose loss went NaN/Inf is stopped and marked failed; the others go on."""
    bad = ~torch.isfinite(history[:, :, :2]).all(dim=2)  # (K, steps so far)
    for k in bad.any(dim=1).nonzero().flatten().tolist():
        if alive[k]:
            alive[k] = False
            i = int(bad[k].nonzero()[0])
            step = where.step - where.position + i + 1
            reason = f"loss became non-finite at step {step}; last good checkpoint: {dirs[k] / 'checkpoints' / 'last.pt'}"
            write_status(dirs[k], "failed", reason=reason)
            log.error(f"member {dirs[k].name} stopped: {reason}")
