"""One run on R ranks (torch.distributed) against one process, in one run: the reference MLP GAN (MNIST, batch
100), a 64-px DCGAN (photos, batch 64) and, on GPUs, SNGAN at 128 px. Prints each one's steps/s and images/s,
the ratio to one process (on GPUs: the scaling efficiency, images/s over R x one GPU's), and the share of a step
spent in the gradient all-reduces (one per network per update, timed on rank 0).

    python benchmarks/bench_ranks.py                                  # CPU: 2 gloo ranks x 1 thread vs 1 x 2 threads
    python benchmarks/bench_ranks.py --steps 100 --workloads mlp
    python benchmarks/bench_ranks.py --device cuda --ranks 8 --workloads dcgan64 sngan128   # NCCL, one GPU a rank
    GANTRAIN_DIST_BACKEND=gloo python benchmarks/bench_ranks.py --device cuda --ranks 2 --same-gpu   # 2 gloo ranks on cuda:0

On one machine's 2 CPU cores the two ranks share what one process's two threads would use, so the ratio is what
splitting a batch costs (the all-reduce, the loss of the threads' shared work), not a speed-up: that needs more
cores or devices than one process can use.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORKLOADS = {"mlp": ["data=mnist_sample"],
             "dcgan64": ["experiment=dcgan64", "data.root=PHOTOS", "batch_size=64"],
             "sngan128": ["experiment=sngan128", "data.root=PHOTOS", "batch_size=32"]}


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_module

    with initialize_config_module("gantrain.conf", version_base=None):
        return hydra_compose("train", overrides=["eval.enabled=false", *overrides])


def timed_steps(overrides: list[str], steps: int, ranks) -> tuple[float, float, int]:
    """steps/s of gantrain's step over `steps` after 3 warm-up steps, and the seconds spent in all-reduces."""
    from gantrain.components.data import load_data
    from gantrain.config import kwargs_of
    from gantrain.engine.build import build_stack
    from gantrain.engine.inputs import epoch_order
    from gantrain.engine.jobs import rank_device

    cfg = compose(overrides)
    device = rank_device(cfg.device, ranks)
    data = load_data(cfg.data.name, **kwargs_of(cfg.data, paths=("root",))).to(device)
    stack = build_stack([cfg], data, 0, device, ranks)
    gen = torch.Generator(device).manual_seed(0)
    orders = epoch_order(len(data), gen).unsqueeze(0)
    per_epoch = len(data) // cfg.batch_size
    reduce_seconds = [0.0]
    if not ranks.alone:
        all_reduce = dist.all_reduce

        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = all_reduce(*args, **kwargs)
            reduce_seconds[0] += time.perf_counter() - start
            return out

        dist.all_reduce = timed
    for i in range(3):
        stack.step(stack.inputs(data, orders, i, [gen]))
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
    sync()
    if not ranks.alone:
        dist.barrier()
    reduce_seconds[0] = 0.0
    start = time.perf_counter()
    for i in range(steps):
        stack.step(stack.inputs(data, orders, (i + 3) % per_epoch, [gen]))
    sync()
    seconds = time.perf_counter() - start
    return steps / seconds, reduce_seconds[0] / seconds, cfg.batch_size


def rank(index: int, world: int, port: int, overrides: list[str], steps: int, same_gpu: bool, results) -> None:
    from gantrain.ranks import join

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(index), WORLD_SIZE=str(world),
                      LOCAL_RANK="0" if same_gpu else str(index))
    torch.set_num_threads(1)
    rate, share, _ = timed_steps(overrides, steps, join())
    if index == 0:
        results.put((rate, share))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workloads", nargs="+", default=["mlp", "dcgan64"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--same-gpu", action="store_true", help="every rank on cuda:0 (with GANTRAIN_DIST_BACKEND=gloo)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_data import make_folder
    from gantrain.commands.train import free_port
    from gantrain.ranks import ALONE

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GANTRAIN_CACHE_DIR"] = str(Path(tmp) / "cache")
        if set(args.workloads) & {"dcgan64", "sngan128"}:
            make_folder(Path(tmp) / "photos", 1000)
        gpu = args.device != "cpu"
        alone_is = "1 GPU" if gpu else f"1 process, {os.cpu_count()} threads"
        ranks_are = f"{args.ranks} ranks" + (" on cuda:0" if args.same_gpu else " (a GPU each)" if gpu else " x 1 thread")
        print(f"{os.cpu_count()} cores, torch {torch.__version__}, {args.device}, backend "
              f"{os.environ.get('GANTRAIN_DIST_BACKEND', 'nccl' if gpu else 'gloo')}, {args.steps} timed steps each")
        print(f"| workload | {alone_is}: steps/s (images/s) | {ranks_are}: steps/s (images/s) | ratio"
              f"{' (scaling efficiency: ratio / R)' if gpu and not args.same_gpu else ''} | all-reduce share of a step |")
        print("| --- | --- | --- | --- | --- |")
        for name in args.workloads:
            overrides = [f"device={args.device}", *(o.replace("PHOTOS", str(Path(tmp) / "photos")) for o in WORKLOADS[name])]
            torch.set_num_threads(os.cpu_count() or 1)
            alone, _, batch = timed_steps(overrides, args.steps, ALONE)
            context = mp.get_context("spawn")
            results = context.SimpleQueue()
            mp.start_processes(rank, args=(args.ranks, free_port(), overrides, args.steps, args.same_gpu, results),
                               nprocs=args.ranks, start_method="spawn")
            many, share = results.get()
            ratio = many / alone
            scaling = f" ({ratio / args.ranks:.2f})" if gpu and not args.same_gpu else ""
            print(f"| {name} | {alone:.1f} ({alone * batch:.0f}) | {many:.1f} ({many * batch:.0f}) | {ratio:.2f}x{scaling} "
                  f"| {100 * share:.1f}% |", flush=True)


if __name__ == "__main__":
    main()
