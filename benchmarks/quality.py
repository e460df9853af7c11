"""Sample quality of the image presets on the bundled MNIST sample, over seeds, beside each other.

    python benchmarks/quality.py                                    # every image preset, 3 seeds each
    python benchmarks/quality.py --presets mnist_small_data --seeds 3 --grids docs/quality
    python benchmarks/quality.py --presets sngan_cifar10 --seeds 1 --set data=mnist_sample epochs=20

Each run trains the preset exactly as `gantrain train experiment=NAME seed=S` does (on 2 CPU cores unless
--threads says otherwise), one run at a time, and reads its end-of-run evaluation (metrics.json: FD, KID,
precision, recall, classes covered, class KL, all against the same 5,000 real images through the same
feature network). Prints a markdown table of mean ± std over the seeds and each run's wall time, and copies
seed 0's last sample grid of each preset to --grids as <preset>.png.
"""
import argparse
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from modes import compose_run, read_metrics  # beside this script: the same composing and metrics.json

PRESETS = ["reference_mnist", "dcgan_mnist", "wgan_gp_mnist", "mnist_small_data"]
METRICS = ["fd", "kid", "precision", "recall", "classes_covered", "class_kl"]


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
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for preset in args.presets:
        results = []
        with tempfile.TemporaryDirectory() as tmp:
            for seed in range(args.seeds):
                metrics, seconds = run(preset, seed, args.set, Path(tmp) / str(seed))
                results.append((metrics, seconds))
                print(f"{preset} seed {seed}: " + ", ".join(f"{m} {metrics[m]['value']:.4g}" for m in METRICS)
                      + f", {seconds:.0f} s", flush=True)
                if seed == 0 and args.grids:
                    args.grids.mkdir(parents=True, exist_ok=True)
                    shutil.copy(sorted((Path(tmp) / "0" / "samples").glob("*.png"))[-1], args.grids / f"{preset}.png")
        n_real, n_fake = results[0][0]["fd"]["n_real"], results[0][0]["fd"]["n_fake"]
        rows.append([f"`{preset}`", *(cell([r[0][m]["value"] for r in results]) for m in METRICS),
                     cell([r[1] for r in results], ".0f") + " s", f"{args.seeds} ({n_real} real, {n_fake} fake)"])
    print(f"\noverrides: {' '.join(args.set) or 'none'}\n")
    print("| preset | " + " | ".join(METRICS) + " | wall time a run | seeds |")
    print("|---" * (len(METRICS) + 3) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
