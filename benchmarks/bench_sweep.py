"""Sweep speed: K reference runs trained one after another vs. as one batched model (gantrain sweep).

    python benchmarks/bench_sweep.py                   # CPU, K=8, 100 steps per member
    python benchmarks/bench_sweep.py --device cuda --members 64 --steps 2000 --sequential-members 4

Both paths build their members from the real config (the reference MLP GAN on the bundled MNIST sample,
each member its own learning rate and seed) and run the code `gantrain train` and `gantrain sweep` run:
on CUDA both replay their step as a CUDA graph (the batched one is also timed eagerly, to show what the
graph buys). Prints model-steps/s of each (members x steps / seconds) and the ratio. The sequential rate
is per member, so --sequential-members times only the first few members (same speed, less waiting).
"""
import argparse
import time

import torch


def configs(k: int, device: str, batch_size: int, overrides: list[str]):
    from gantrain.sweep import compose_job

    lrs = [1e-4 * (1 + j % 4) for j in range(k)]
    cfgs = [compose_job([f"optim.lr={lr}", f"seed={j}", f"device={device}", f"batch_size={batch_size}", *overrides])
            for j, lr in enumerate(lrs)]
    for cfg in cfgs:
        with __import__("omegaconf").open_dict(cfg):
            del cfg["hydra"]
    return cfgs


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sequential(cfgs, steps: int, warmup: int) -> float:
    from gantrain.train import batches, build_parts, epoch_order

    seconds = 0.0
    for cfg in cfgs:
        parts = build_parts(cfg)
        loop = (inputs for _ in iter(int, 1) for _, inputs in batches(
            parts.data, epoch_order(parts.data, parts.gen), cfg.batch_size, cfg.latent_size, 1, 0, parts.gen))
        for _ in range(warmup):
            parts.step(*next(loop))
        sync(parts.device)
        start = time.perf_counter()
        for _ in range(steps):
            out = parts.step(*next(loop))
        out.tolist()
        sync(parts.device)
        seconds += time.perf_counter() - start
    return len(cfgs) * steps / seconds


def vectorized(cfgs, steps: int, warmup: int, graph: bool, profile: bool = False) -> float:
    from gantrain.config import kwargs_of, pick_device
    from gantrain.data import load_data
    from gantrain.train import epoch_order, set_matmul_precision
    from gantrain.vectorized_train import build_batched, member_batches

    device = pick_device(cfgs[0].device)
    set_matmul_precision(cfgs[0].trainer.precision)
    data = load_data(cfgs[0].data.name, **kwargs_of(cfgs[0].data)).to(device)
    _, step = build_batched(cfgs, data, device, [None] * len(cfgs), graph)  # what gantrain sweep trains
    gens = [torch.Generator(device).manual_seed(c.seed) for c in cfgs]
    B, L, per_epoch = cfgs[0].batch_size, cfgs[0].latent_size, len(data) // cfgs[0].batch_size
    orders = torch.stack([epoch_order(data, g) for g in gens])

    def one(i: int):
        return step(*member_batches(data, orders, i % per_epoch, B, L, gens))

    for i in range(warmup):
        one(i)
    sync(device)
    if profile:  # where a batched step's time goes, kernel by kernel (eager steps: the kernels a graph replays)
        from torch.profiler import ProfilerActivity, profile as profiler

        with profiler(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (device.type == "cuda")) as prof:
            for i in range(10):
                one(i)
            sync(device)
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=20, max_name_column_width=60))
        if device.type == "cuda":  # a graph replays these one after another: their count matters at K=64
            kernels = sum(e.device_type == torch.autograd.DeviceType.CUDA for e in prof.events())
            print(f"GPU kernels and copies per batched step (noise and batch included): {kernels / 10:.0f}")
    start = time.perf_counter()
    for i in range(steps):
        out = one(i)
    out.tolist()
    sync(device)
    rate = len(cfgs) * steps / (time.perf_counter() - start)
    if graph:  # what bounds a step: making its inputs (K noise draws, a gather) or the replayed step itself
        inputs = member_batches(data, orders, 0, B, L, gens)
        for name, work in (("inputs only", lambda i: member_batches(data, orders, i % per_epoch, B, L, gens)[1]),
                           ("replay only", lambda i: step(*inputs))):
            start = time.perf_counter()
            for i in range(steps):
                out = work(i)
            sync(device)
            print(f"  {name:11s}: {steps / (time.perf_counter() - start):9.1f} batched steps/s")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100, help="timed steps per member")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--sequential-members", type=int, default=0, help="time only this many members one by one (0 = all)")
    parser.add_argument("--set", nargs="*", default=[], help="train overrides for every member, e.g. trainer.precision=tf32")
    parser.add_argument("--profile", action="store_true", help="print the batched step's top kernels")
    args = parser.parse_args()
    cfgs = configs(args.members, args.device, args.batch_size, args.set)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(f"device {args.device} ({name}), torch {torch.__version__}: {args.members} members of the reference "
          f"MLP GAN, {args.steps} steps each after {args.warmup} warm-up{', ' + ' '.join(args.set) if args.set else ''}")
    timed = cfgs[:args.sequential_members or len(cfgs)]
    seq = sequential(timed, args.steps, args.warmup)
    print(f"sequential : {seq:9.1f} model-steps/s  ({len(timed)} of the {len(cfgs)} members timed one by one)")
    cuda = args.device.startswith("cuda")
    if cuda:
        eager = vectorized(cfgs, args.steps, args.warmup, graph=False, profile=args.profile)
        print(f"vectorized, eager      : {eager:9.1f} model-steps/s  ({eager / len(cfgs):.1f} batched steps/s)")
    vec = vectorized(cfgs, args.steps, args.warmup, graph=cuda, profile=args.profile and not cuda)
    print(f"vectorized{', CUDA graph' if cuda else ''} : {vec:9.1f} model-steps/s  ({vec / len(cfgs):.1f} batched steps/s)")
    print(f"ratio      : {vec / seq:9.2f}x")


if __name__ == "__main__":
    main()
