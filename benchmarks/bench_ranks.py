"""One run on two ranks (torch.distributed, gloo, one thread each) against one process with two threads, on the
CPU, in one run: the reference MLP GAN (MNIST, batch 100) and a 64-px DCGAN (photos, batch 64). Prints each
one's steps/s, the ratio, and the share of a 2-rank step spent in the gradient all-reduces (one per network per
update, timed on rank 0).

    python benchmarks/bench_ranks.py                 # 2 cores: ~2 minutes
    python benchmarks/bench_ranks.py --steps 100 --workloads mlp

On one machine's 2 cores the two ranks share what one process's two threads would use, so the ratio is what
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
             "dcgan64": ["experiment=dcgan64", "data.root=PHOTOS", "batch_size=64"]}


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_module

    with initialize_config_module("gantrain.conf", version_base=None):
        return hydra_compose("train", overrides=["device=cpu", "eval.enabled=false", *overrides])


def timed_steps(overrides: list[str], steps: int, ranks) -> tuple[float, float]:
    """steps/s of gantrain's step over `steps` after 3 warm-up steps, and the seconds spent in all-reduces."""
    from gantrain.components.data import load_data
    from gantrain.config import kwargs_of
    from gantrain.engine.build import build_stack
    from gantrain.engine.inputs import epoch_order

    cfg = compose(overrides)
    data = load_data(cfg.data.name, **kwargs_of(cfg.data, paths=("root",)))
    stack = build_stack([cfg], data, 0, torch.device("cpu"), ranks)
    gen = torch.Generator().manual_seed(0)
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
    if not ranks.alone:
        dist.barrier()
    reduce_seconds[0] = 0.0
    start = time.perf_counter()
    for i in range(steps):
        stack.step(stack.inputs(data, orders, (i + 3) % per_epoch, [gen]))
    seconds = time.perf_counter() - start
    return steps / seconds, reduce_seconds[0] / seconds


def rank(index: int, port: int, overrides: list[str], steps: int, results) -> None:
    from gantrain.ranks import current

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(index), WORLD_SIZE="2", LOCAL_RANK=str(index))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://")
    rate, share = timed_steps(overrides, steps, current())
    if index == 0:
        results.put((rate, share))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS))
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_data import make_folder
    from gantrain.commands.train import free_port
    from gantrain.ranks import ALONE

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GANTRAIN_CACHE_DIR"] = str(Path(tmp) / "cache")
        if "dcgan64" in args.workloads:
            make_folder(Path(tmp) / "photos", 1000)
        print(f"{os.cpu_count()} cores, torch {torch.__version__}, {args.steps} timed steps each")
        print("| workload | 1 process, 2 threads: steps/s | 2 ranks x 1 thread (gloo): steps/s | ratio | all-reduce share of a step |")
        print("| --- | --- | --- | --- | --- |")
        for name in args.workloads:
            overrides = [o.replace("PHOTOS", str(Path(tmp) / "photos")) for o in WORKLOADS[name]]
            torch.set_num_threads(2)
            alone, _ = timed_steps(overrides, args.steps, ALONE)
            context = mp.get_context("spawn")
            results = context.SimpleQueue()
            mp.start_processes(rank, args=(free_port(), overrides, args.steps, results), nprocs=2, start_method="spawn")
            two, share = results.get()
            print(f"| {name} | {alone:.1f} | {two:.1f} | {two / alone:.2f}x | {100 * share:.1f}% |", flush=True)


if __name__ == "__main__":
    main()
