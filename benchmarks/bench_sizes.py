"""Networks that grow with the image: parameter counts at 32, 64 and 128 px, and for the photo presets
(dcgan64, sngan128) steps/s of a lone run and of a stack of --members, with each one's memory per member
measured against the launcher's estimate (engine/plan.member_bytes).

    python benchmarks/bench_sizes.py                       # CPU: counts, 3 timed steps of each
    python benchmarks/bench_sizes.py --device cuda --steps 30

Each timing runs in a fresh process (so its peak memory is its own) on a folder of photos cropped from the
pictures that installed packages ship, at the preset's size, with the preset's batch and n_critic. Memory
per member: on a GPU the growth of torch's peak allocation from a lone run to the stack, over the added
members; on a CPU the same growth of the process's peak RSS (coarser: the allocator keeps freed pages).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

PRESETS = {"dcgan64": 64, "sngan128": 128}


def photo_folder(root: Path, n: int) -> Path:
    """n CelebA-shaped crops of matplotlib's and scikit-learn's sample photos (bench_data.py's folder)."""
    from bench_data import make_folder  # beside this script

    make_folder(root, n)
    return root


def compose(preset: str, root: Path, device: str, extra: list[str]):
    from hydra import compose as hydra_compose, initialize_config_module

    with initialize_config_module("gantrain.conf", version_base=None):
        return hydra_compose("train", overrides=[f"experiment={preset}", f"data.root={root}", f"device={device}",
                                                 "eval.enabled=false", *extra])


def child(args) -> None:
    """One timing in this process: a stack of args.k members of the preset, args.steps steps after one warm-up."""
    from gantrain.components.data import load_data
    from gantrain.config import kwargs_of, pick_device
    from gantrain.engine.build import build_stack
    from gantrain.engine.inputs import epoch_order
    from gantrain.engine.plan import member_bytes

    cfgs = [compose(args.child, args.root, args.device, [f"seed={s}", *args.set]) for s in range(args.k)]
    device = pick_device(args.device)
    data = load_data("folder", **kwargs_of(cfgs[0].data, paths=("root",))).to(device)
    stack = build_stack(cfgs, data, 0, device)
    gens = [torch.Generator(device).manual_seed(c.seed) for c in cfgs]
    orders = torch.stack([epoch_order(len(data), g) for g in gens])
    per_epoch = len(data) // (cfgs[0].batch_size * cfgs[0].n_critic)
    stack.step(stack.inputs(data, orders, 0, gens)).flatten()[0].item()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(args.steps):
        out = stack.step(stack.inputs(data, orders, (i + 1) % per_epoch, gens))
    out.flatten()[0].item()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps({"steps_per_s": args.steps / seconds, "peak": peak,
                      "estimate": member_bytes(cfgs[0], data.shape, 0)}))


def run_child(preset: str, k: int, root: Path, args) -> dict:
    command = [sys.executable, __file__, "--child", preset, "--k", str(k), "--root", str(root), "--steps",
               str(args.steps), "--device", args.device, "--set", *args.set]
    env = {**os.environ, "GANTRAIN_CACHE_DIR": str(root.parent / "cache")}  # the prepared copy: once, in the temp dir
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{preset} x{k} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def counts() -> None:
    from gantrain.components.registry import lookup

    print("| model | side | G parameters | D parameters |\n| --- | --- | --- | --- |")
    for model, latent in (("dcgan", 100), ("resnet", 128)):
        for side in (32, 48, 64, 128):
            if model == "dcgan" and side == 48:
                continue
            G, D = lookup("model", model)(data_shape=(3, side, side), latent_size=latent, hidden_size=256)
            n = lambda net: f"{sum(p.numel() for p in net.parameters()):,}"
            print(f"| {model} | {side} | {n(G)} | {n(D)} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (G steps) after one warm-up")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--images", type=int, default=600, help="photos in the folder")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--set", nargs="*", default=[], help="extra train overrides, e.g. batch_size=32")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    counts()
    gpu_memory = 80 * 2**30
    print(f"\n{args.device}, {torch.get_num_threads()} threads, {args.steps} timed steps each"
          + (f", overrides {' '.join(args.set)}" if args.set else ""))
    print("| preset | lone steps/s | stack of K: member-steps/s (x lone) | estimate / member | measured / member | "
          "estimate covers it | members on an 80 GB GPU (estimate) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        root = photo_folder(Path(tmp) / "photos", args.images)
        for preset in args.presets:
            lone, stack = run_child(preset, 1, root, args), run_child(preset, args.members, root, args)
            measured = (stack["peak"] - lone["peak"]) / (args.members - 1)
            rate = stack["steps_per_s"] * args.members
            print(f"| {preset} | {lone['steps_per_s']:.3g} | K={args.members}: {rate:.3g} ({rate / lone['steps_per_s']:.2f}x) "
                  f"| {lone['estimate'] / 2**20:,.0f} MiB | {measured / 2**20:,.0f} MiB "
                  f"| {'yes' if lone['estimate'] >= measured else 'NO'} ({lone['estimate'] / max(measured, 1):.2f}x) "
                  f"| {int(0.5 * gpu_memory / lone['estimate'])} |", flush=True)


if __name__ == "__main__":
    main()
