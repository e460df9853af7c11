"""Sample quality of the image presets on the bundled MNIST sample, over seeds, beside each other.

    python benchmarks/quality.py                                    # every image preset, 3 seeds each
    python benchmarks/quality.py --presets mnist_small_data --seeds 3 --grids docs/quality
    python benchmarks/quality.py --presets sngan_cifar10 --seeds 1 --set data=mnist_sample epochs=20
    python benchmarks/quality.py --seeds 1 --inception 2000         # and seed 0's FID in Inception features

Each run trains the preset exactly as `gantrain train experiment=NAME seed=S` does (on 2 CPU cores unless
--threads says otherwise), one run at a time, and reads its end-of-run evaluation (metrics.json: FD, KID,
precision, recall, classes covered, class KL, all against the same 5,000 real images through the same
feature network). Prints a markdown table of mean ± std over the seeds and each run's wall time, and copies
seed 0's last sample grid of each preset to --grids as <preset>.png. --inception N: seed 0's last checkpoint is
also judged as `gantrain eval features=inception n=N` (N generated against the first N of eval's fixed shuffle
of the real images; eval.inception_weights=auto's weights), its FID and protocol printed.
"""
import argparse
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from gantrain.components.data import load_data
from gantrain.evaluation import metrics
from gantrain.evaluation.evaluate import feature_space, features, fixed_order, real_reference
from gantrain.evaluation.protocol import describe
from modes import compose_run, read_metrics  # beside this script: the same composing and metrics.json

PRESETS = ["reference_mnist", "dcgan_mnist", "wgan_gp_mnist", "mnist_small_data"]
METRICS = ["fd", "kid", "precision", "recall", "classes_covered", "class_kl"]


def inception_fid(ckpt: Path, n: int) -> dict:
    """The checkpoint's FID in Inception features: metrics.json's entry, protocol card and all."""
    import gantrain

    with tempfile.TemporaryDirectory() as out:
        return gantrain.evaluate(ckpt, ["features=inception", f"n={n}", "device=cpu"], out=out)["metrics"]["fid"]


def inception_calibration(n: int) -> float:
    """The Inception FID between eval's real side at n (the first n of its fixed shuffle) and the next n real
    images of the bundled sample: what a perfect G would score at this n."""
    data = load_data("mnist_sample")
    net, _, _ = feature_space(data, "inception", "auto")
    with torch.no_grad():
        other = features(net, data.floats(fixed_order(data)[n:2 * n]))
    return metrics.fd_and_kid(real_reference(net, data, n).feats, other)["fd"]["value"]


def run(preset: str, seed: int, extra: list[str], out: Path) -> tuple[dict, float]:
    from gantrain.engine.jobs import train

    cfg = compose_run(preset, seed, extra)
    start = time.perf_counter()
    train(cfg, out, [])
    return read_metrics(out), time.perf_counter() - start


def cell(values: list[float], digits: str = ".4g") -> str:
    if len(values) == 1:
        return f"{values[0]:{digits}}"
    return f"{statistics.mean(values):{digits}} ± {statistics.stdev(values):{'.0f' if digits == '.0f' else '.2g'}}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[], help="extra train overrides for every run")
    parser.add_argument("--grids", type=Path, default=None, help="copy seed 0's last sample grid here as <preset>.png")
    parser.add_argument("--inception", type=int, default=0, help="N > 0: seed 0's FID in Inception features at n=N")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows, fids = [], {}
    for preset in args.presets:
        results = []
        with tempfile.TemporaryDirectory() as tmp:
            for seed in range(args.seeds):
                metrics, seconds = run(preset, seed, args.set, Path(tmp) / str(seed))
                results.append((metrics, seconds))
                print(f"{preset} seed {seed}: " + ", ".join(f"{m} {metrics[m]['value']:.4g}" for m in METRICS)
                      + f", {seconds:.0f} s", flush=True)
                if seed == 0 and args.inception:
                    start = time.perf_counter()
                    fid = inception_fid(Path(tmp) / "0" / "checkpoints" / "last.pt", args.inception)
                    fids[preset] = fid
                    print(f"{preset} seed 0: Inception FID {fid['value']:.4g} (n_real {fid['n_real']}, n_fake "
                          f"{fid['n_fake']}), {time.perf_counter() - start:.0f} s", flush=True)
                if seed == 0 and args.grids:
                    args.grids.mkdir(parents=True, exist_ok=True)
                    shutil.copy(sorted((Path(tmp) / "0" / "samples").glob("*.png"))[-1], args.grids / f"{preset}.png")
        n_real, n_fake = results[0][0]["fd"]["n_real"], results[0][0]["fd"]["n_fake"]
        rows.append([f"`{preset}`", *(cell([r[0][m]["value"] for r in results]) for m in METRICS),
                     cell([r[1] for r in results], ".0f") + " s", f"{args.seeds} ({n_real} real, {n_fake} fake)"]
                    + ([f"{fids[preset]['value']:.4g}"] if args.inception else []))
    print(f"\noverrides: {' '.join(args.set) or 'none'}\n")
    inception = [f"Inception FID (seed 0, n={args.inception})"] if args.inception else []
    print("| preset | " + " | ".join(METRICS + ["wall time a run", "seeds"] + inception) + " |")
    print("|---" * (len(METRICS) + 3 + len(inception)) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if fids:
        print(f"\nreal against real (the next {args.inception} images of the sample): Inception FID "
              f"{inception_calibration(args.inception):.4g}")
        for card in {describe(f["protocol"]): f for f in fids.values()}:
            print(f"\nInception FID protocol: {card}")


if __name__ == "__main__":
    main()
