"""Sweep speed: K reference runs trained one after another (each a lone run) vs. as one stack.

    python benchmarks/bench_sweep.py                   # CPU, K=8, 100 steps per member
    python benchmarks/bench_sweep.py --device cuda --members 64 --steps 2000 --sequential-members 4
    python benchmarks/bench_sweep.py --set experiment=ring8    # any train overrides, for every member

Both paths build their members from the real config (the reference MLP GAN on the bundled MNIST sample,
each member its own learning rate and seed, unless --set changes it) and run the code `gantrain train`
runs: a stack of one (plain modules) and a stack of K (stacked parameters under torch.func). On CUDA both
replay their step as a CUDA graph (the stack is also timed without one, to show what the graph buys).
Prints member-steps/s of each (members x steps / seconds) and the ratio. The sequential rate is per
member, so --sequential-members times only the first few members (same speed, less waiting).
"""
import argparse
import time

import torch


def configs(k: int, device: str, batch_size: int, overrides: list[str]):
    from hydra import compose, initialize_config_module

    lrs = [1e-4 * (1 + j % 4) for j in range(k)]
    with initialize_config_module("gantrain.conf", version_base=None):
        return [compose("train", overrides=[f"optim.lr={lr}", f"seed={j}", f"device={device}",
                                            f"batch_size={batch_size}", *overrides]) for j, lr in enumerate(lrs)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stack_steps(cfgs, graph: bool = True):
    """(the stack's step on its next inputs, as a function of the step index; the device), as the loop runs it."""
    from gantrain.components.data import load_data
    from gantrain.config import kwargs_of, pick_device
    from gantrain.engine.build import build_stack, classes_of, set_matmul_precision
    from gantrain.engine.inputs import epoch_order

    cfg, device = cfgs[0], pick_device(cfgs[0].device)
    set_matmul_precision(cfg.trainer.precision)
    for c in cfgs:
        c.trainer.cuda_graph = c.trainer.cuda_graph and graph
    data = load_data(cfg.data.name, **kwargs_of(cfg.data)).to(device)
    classes = classes_of(cfg, data)
    stack = build_stack(cfgs, data, classes, device)
    gens = [torch.Generator(device).manual_seed(c.seed) for c in cfgs]
    per_epoch = len(data) // (cfg.batch_size * cfg.n_critic)
    orders = torch.stack([epoch_order(len(data), g) for g in gens])
    inputs = lambda i: stack.inputs(data, orders, i % per_epoch, gens)
    return (lambda i: stack.step(inputs(i), r1=stack.loss.r1_due(i))), inputs, stack.step, device


def timed(one, steps: int, warmup: int, device) -> float:
    for i in range(warmup):
        one(i)
    sync(device)
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        out = one(i)
    out.tolist()
    sync(device)
    return steps / (time.perf_counter() - start)


def sequential(cfgs, steps: int, warmup: int) -> float:
    """Member-steps/s of the members trained one after another, each a stack of one (a lone run)."""
    seconds = 0.0
    for cfg in cfgs:
        one, _, _, device = stack_steps([cfg])
        seconds += 1 / timed(one, steps, warmup, device)  # seconds per step of this member
    return len(cfgs) / seconds


def stacked(cfgs, steps: int, warmup: int, graph: bool, profile: bool = False) -> float:
    """Member-steps/s of the members as one stack."""
    one, inputs, step, device = stack_steps(cfgs, graph)
    rate = timed(one, steps, warmup, device)
    if profile:  # where a stacked step's time goes, kernel by kernel (eager steps: the kernels a graph replays)
        from torch.profiler import ProfilerActivity, profile as profiler

        with profiler(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (device.type == "cuda")) as prof:
            for i in range(10):
                one(i)
            sync(device)
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=20, max_name_column_width=60))
        if device.type == "cuda":  # a graph replays these one after another: their count matters at K=64
            kernels = sum(e.device_type == torch.autograd.DeviceType.CUDA for e in prof.events())
            print(f"GPU kernels and copies per stacked step (noise and batch included): {kernels / 10:.0f}")
    if graph and device.type == "cuda":  # what bounds a step: making its inputs (K noise draws, a gather) or the replay
        fixed = inputs(0)
        for name, work in (("inputs only", lambda i: inputs(i)["z"]), ("replay only", lambda i: step(fixed))):
            print(f"  {name:11s}: {timed(work, steps, 0, device):9.1f} stacked steps/s")
    return len(cfgs) * rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100, help="timed steps per member")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--sequential-members", type=int, default=0, help="time only this many members one by one (0 = all)")
    parser.add_argument("--set", nargs="*", default=[], help="train overrides for every member, e.g. trainer.precision=tf32")
    parser.add_argument("--profile", action="store_true", help="print the stacked step's top kernels")
    args = parser.parse_args()
    cfgs = configs(args.members, args.device, args.batch_size, args.set)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(f"device {args.device} ({name}), torch {torch.__version__}: {args.members} members, {args.steps} steps each "
          f"after {args.warmup} warm-up{', ' + ' '.join(args.set) if args.set else ' (the reference MLP GAN)'}")
    timed_cfgs = cfgs[:args.sequential_members or len(cfgs)]
    seq = sequential(timed_cfgs, args.steps, args.warmup)
    print(f"sequential : {seq:9.1f} member-steps/s  ({len(timed_cfgs)} of the {len(cfgs)} members timed one by one)")
    cuda = args.device.startswith("cuda")
    if cuda:
        eager = stacked(cfgs, args.steps, args.warmup, graph=False, profile=args.profile)
        print(f"stacked, eager      : {eager:9.1f} member-steps/s  ({eager / len(cfgs):.1f} stacked steps/s)")
    rate = stacked(cfgs, args.steps, args.warmup, graph=cuda, profile=args.profile and not cuda)
    print(f"stacked{', CUDA graph' if cuda else ''} : {rate:9.1f} member-steps/s  ({rate / len(cfgs):.1f} stacked steps/s)")
    print(f"ratio      : {rate / seq:9.2f}x")


if __name__ == "__main__":
    main()
