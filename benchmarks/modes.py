"""Mode counting on the 2D mixtures: gantrain's ring8 and grid25 presets over N seeds, beside the published rows.

    python benchmarks/modes.py                          # both presets, 10 seeds each, one run at a time
    python benchmarks/modes.py --presets ring8 --stack  # the 10 seeds as one stack (gantrain sweep's way)
    python benchmarks/modes.py --presets ring8 --seeds 3 --set epochs=5

Each run trains the preset exactly as `gantrain train experiment=NAME seed=S` does (with --stack: as
`gantrain sweep experiment=NAME seed=0,...,9` does), then counts modes on 2,500 samples by the
PacGAN/VEEGAN protocol (high quality: within 3 std of the nearest mode).
"""
import argparse
import json
import logging
import math
import statistics
import tempfile
import time
from pathlib import Path

PUBLISHED = {  # modes, HQ %, KL (None where the paper gives none); 2,500 samples each
    "ring8": [("GAN (VEEGAN Table 1)", 1, 99.3, None), ("Unrolled GAN (VEEGAN)", 7.6, 35.6, None),
              ("VEEGAN", 8, 52.9, None), ("GAN (PacGAN Table 1)", 6.3, 98.2, 0.45), ("PacGAN2", 7.9, 95.6, 0.07)],
    "grid25": [("GAN (VEEGAN Table 1)", 3.3, 0.5, None), ("Unrolled GAN (VEEGAN)", 23.6, 16, None),
               ("VEEGAN", 24.6, 40, None), ("GAN (PacGAN Table 1)", 17.3, 94.8, 0.70), ("PacGAN4", 24.8, 93.6, 0.04)],
}


def compose_run(preset: str, seed: int, extra: list[str]):
    from hydra import compose, initialize_config_module

    with initialize_config_module("gantrain.conf", version_base=None):
        return compose("train", overrides=[f"experiment={preset}", f"seed={seed}", "device=cpu", *extra])


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())["metrics"]


def run_alone(preset: str, seeds: list[int], extra: list[str], out: Path) -> tuple[list[dict], list[float]]:
    """Each seed as its own run, one after another: (metrics, seconds) per seed."""
    from gantrain.engine.jobs import train

    results, seconds = [], []
    for seed in seeds:
        start = time.perf_counter()
        train(compose_run(preset, seed, extra), out / str(seed), [])
        seconds.append(time.perf_counter() - start)
        print(f"  trained {preset} seed {seed} in {seconds[-1]:.0f} s", flush=True)
        results.append(read_metrics(out / str(seed)))
    return results, seconds


def run_stacked(preset: str, seeds: list[int], extra: list[str], out: Path) -> tuple[list[dict], list[float]]:
    """All seeds as one stack: (metrics per seed, the stack's seconds shared out evenly)."""
    from gantrain.engine.jobs import Job, train_group

    jobs = [Job(compose_run(preset, seed, extra), out / str(seed), [], str(seed)) for seed in seeds]
    start = time.perf_counter()
    train_group(jobs)
    total = time.perf_counter() - start
    return [read_metrics(out / str(seed)) for seed in seeds], [total / len(seeds)] * len(seeds)


def mean_std(values: list[float]) -> str:
    """mean ± std; KL is infinite for a run with no high-quality sample, and then so is the mean."""
    if not all(map(math.isfinite, values)):
        return f"{'inf':>6} ({sum(not math.isfinite(v) for v in values)} of {len(values)} runs infinite)"
    return f"{statistics.mean(values):6.2f} ± {statistics.stdev(values) if len(values) > 1 else 0:5.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["ring8", "grid25"])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first..first+seeds-1 (to split a run over cores)")
    parser.add_argument("--set", nargs="*", default=[], help="extra train overrides, e.g. epochs=5")
    parser.add_argument("--stack", action="store_true", help="train the seeds as one stack (gantrain sweep's way)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for preset in args.presets:
        seeds = list(range(args.first_seed, args.first_seed + args.seeds))
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            results, seconds = (run_stacked if args.stack else run_alone)(preset, seeds, args.set, Path(tmp))
            wall = time.perf_counter() - start
        rows = []
        for seed, m, sec in zip(seeds, results, seconds):
            kl = m["mode_kl"]["value"]  # null in metrics.json when no sample is high quality
            rows.append((m["modes"]["value"], m["hq_percent"]["value"], float("inf") if kl is None else kl, sec))
            print(f"{preset} seed {seed}: modes {rows[-1][0]:.0f}, HQ {rows[-1][1]:.1f}%, KL {rows[-1][2]:.3f}", flush=True)
        modes, hq, kl, secs = (list(col) for col in zip(*rows))
        how = "as one stack" if args.stack else "one run at a time"
        print(f"\n{preset}: {args.seeds} seeds {how}, 2,500 samples each, overrides {args.set or 'none'}: {wall:.0f} s in all")
        print(f"  {'gantrain ' + preset:<24} modes {mean_std(modes)}   HQ% {mean_std(hq)}   KL {mean_std(kl)}   "
              f"train {statistics.mean(secs):.0f} s/run")
        for name, m, h, k in PUBLISHED[preset]:
            print(f"  {name:<24} modes {m:6.2f}           HQ% {h:6.2f}           KL {'-' if k is None else f'{k:.2f}'}")
        print()


if __name__ == "__main__":
    main()
