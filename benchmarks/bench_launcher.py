"""Whole sweep commands, gantrain's stacked launcher (the default of `gantrain train -m`) against Hydra's basic
launcher (one job after another), alternating in one run: a grid of seeds, and an Optuna study in batches.

    python benchmarks/bench_launcher.py                               # 8 seeds of the reference, 10 epochs
    python benchmarks/bench_launcher.py --set experiment=ring8 epochs=10
    python benchmarks/bench_launcher.py --optuna                      # a 2 x 4 Optuna study instead

Wall time of each command from start to exit (composing, training, evaluation, files), and the ratio.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time


def run(args: list[str], cwd: str) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "gantrain", "train", "-m", *args], cwd=cwd, capture_output=True,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{result.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1, help="alternations of the two launchers")
    parser.add_argument("--optuna", action="store_true", help="a study of 2 batches of 4 trials (optim.lr)")
    parser.add_argument("--set", nargs="*", default=["epochs=10"], help="train overrides for every job")
    args = parser.parse_args()
    if args.optuna:
        sweep = ["hydra/sweeper=optuna", "hydra.sweeper.n_trials=8", "hydra.sweeper.n_jobs=4",
                 "optim.lr=interval(1e-4,1e-3)"]
        what = "an Optuna study of 2 batches of 4 trials (optim.lr)"
    else:
        sweep = [f"seed={','.join(map(str, range(args.seeds)))}"]
        what = f"{args.seeds} seeds"
    print(f"gantrain train -m: {what}, overrides {' '.join(args.set)}, device cpu, {os.cpu_count()} cores")
    times = {"stacked": [], "basic": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for launcher in times:
                extra = [] if launcher == "stacked" else ["hydra/launcher=basic"]
                study = [f"hydra.sweeper.storage=sqlite:///{tmp}/{launcher}{r}.db"] if args.optuna else []
                times[launcher].append(run([*sweep, *extra, *study, *args.set, "device=cpu",
                                            f"hydra.sweep.dir={tmp}/{launcher}{r}"], tmp))
                print(f"  {launcher:8s}: {times[launcher][-1]:7.1f} s", flush=True)
    stacked, basic = min(times["stacked"]), min(times["basic"])
    print(f"stacked {stacked:.1f} s, basic {basic:.1f} s (best of {args.rounds}): the stacked launcher {basic / stacked:.2f}x faster")


if __name__ == "__main__":
    main()
