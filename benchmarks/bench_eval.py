"""Evaluation cost: the default end-of-run evaluation (10,000 generated images against 10,000 real ones of the
bundled sample) with a cold cache, a warm one, where a warm one's time goes, and K members of a stack
evaluated together (one feature pass over all their samples) against one by one.

    python benchmarks/bench_eval.py                 # reference G (untrained: the cost does not depend on it)
    python benchmarks/bench_eval.py --data mnist60k    # 10,000 against 10,000 of 60,000 MNIST-format images

The cache (feature network, real features and radii) goes to a temp dir, so "cold" includes training the
feature network; "warm, new process" reads both from disk; "warm" also has them in memory, as the later
evaluations of a run or a sweep do.
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from bench_train import write_mnist_idx  # beside this script, which Python puts first on the path


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return (time.perf_counter() - start) / repeat, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="generated (and real) images per evaluation")
    parser.add_argument("--members", type=int, default=8, help="members for the stacked evaluation")
    parser.add_argument("--data", choices=("mnist_sample", "mnist60k"), default="mnist_sample",
                        help="the bundled 5,000 images (make train's data), or 60,000 MNIST-format ones tiled from them")
    args = parser.parse_args()
    os.environ["GANTRAIN_CACHE_DIR"] = tempfile.mkdtemp(prefix="gantrain-bench-eval-")

    from hydra import compose, initialize_config_module

    from gantrain.components.data import load_data
    from gantrain.engine.build import build_stack
    from gantrain.evaluation import evaluate, features, metrics

    with initialize_config_module("gantrain.conf", version_base=None):
        cfgs = [compose("train", overrides=[f"seed={k}", "device=cpu"]) for k in range(args.members)]
    if args.data == "mnist60k":
        root = Path(tempfile.mkdtemp(prefix="gantrain-bench-eval-data-"))
        write_mnist_idx(root, 60_000)
        data, name = load_data("mnist", root=str(root)), "mnist"
    else:
        data, name = load_data("mnist_sample"), "mnist_sample"
    nets, lone = build_stack(cfgs, data, 0, torch.device("cpu")).nets, build_stack(cfgs[:1], data, 0, torch.device("cpu")).nets
    run = lambda members, seeds: evaluate.evaluate_stack(lambda z, y, which: members.sample(z, y, which), data,
                                                         name, 64, 0, seeds, [args.n] * len(seeds))
    n = min(args.n, len(data))  # as the evaluation does: no more real images than the data set has, as many fakes
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads: evaluation of {n} generated against "
          f"{n} real images ({args.data})")
    cold, _ = timed(lambda: run(lone, [0]))
    features._loaded.clear()
    evaluate._references.clear()
    disk, _ = timed(lambda: run(lone, [0]))
    warm, _ = timed(lambda: run(lone, [0]), repeat=3)
    print(f"cold cache (trains the feature network)  : {cold:6.2f} s")
    print(f"warm cache on disk, new process          : {disk:6.2f} s")
    print(f"warm cache (the default end-of-run eval) : {warm:6.2f} s")

    # where a warm evaluation's time goes
    net, _, _ = features.feature_net(data, torch.device("cpu"))
    z, _ = evaluate.eval_latents(n, 64, 0, 0)
    reference = evaluate.real_reference(net, data, n)
    with torch.no_grad():
        t_sample, fake = timed(lambda: torch.cat([lone.sample(c[None], None, [0])[0] for c in z.split(evaluate.CHUNK)]))
        t_feats, feats = timed(lambda: evaluate.features(net, fake))
        t_fd, _ = timed(lambda: metrics.fd_and_kid(reference.feats, feats))
        t_pr, _ = timed(lambda: metrics.precision_recall(reference, feats))
        t_cov, _ = timed(lambda: metrics.class_coverage(net.head(feats), 10, n))
    for name, t in (("generate", t_sample), ("feature pass", t_feats), ("FD + KID", t_fd),
                    ("precision/recall (fake k-NN radii)", t_pr), ("class coverage", t_cov)):
        print(f"  {name:<34}: {t:6.2f} s")

    together, _ = timed(lambda: run(nets, list(range(args.members))))
    print(f"{args.members} members together: {together:6.2f} s ({together / args.members:.2f} s a member) against "
          f"{warm:.2f} s for one alone: x{args.members * warm / together:.2f}")


if __name__ == "__main__":
    main()
