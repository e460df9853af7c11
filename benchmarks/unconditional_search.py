"""Search for an unconditional digit preset on the bundled sample: each variant trained as `gantrain train
experiment=mnist_small_data model.conditional=false VARIANT`, evaluated every few epochs, its trajectory of
FD (classifier features), classes covered and class KL printed from its train.log.

    python benchmarks/unconditional_search.py                      # every variant below, seed 0
    python benchmarks/unconditional_search.py --only hinge_sn --seeds 0 1 2

The goal (issue 36): 10/10 classes, class KL <= 0.03, FD <= 15 over 3 seeds, within 10 minutes a run on 2
CPU cores. Results go to benchmarks/RESULTS.md by hand; wall times are only comparable with nothing else running.
"""
import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE = ["experiment=mnist_small_data", "model.conditional=false", "sample_every=0", "ckpt_every=0", "device=cpu"]
VARIANTS = {  # name: overrides on top of BASE
    "base_130": ["epochs=130"],
    "hinge_sn": ["epochs=130", "loss=hinge", "model.spectral_norm=true"],
    "lsgan": ["epochs=130", "loss=lsgan"],
    "r1": ["epochs=120", "loss.r1_gamma=0.2", "loss.r1_every=4"],
    "batch32": ["epochs=70", "batch_size=32"],
    "lr4e-4": ["epochs=130", "optim.lr=4e-4"],
    "ema9995": ["epochs=130", "ema_decay=0.9995"],
    "lr4e-4_ema9995": ["epochs=130", "optim.lr=4e-4", "ema_decay=0.9995"],
}
EVAL = re.compile(r"eval at epoch (\d+): (.*?) \(n_real")


def trajectory(log: str) -> list[tuple[int, dict]]:
    """(epoch, {metric: value}) of every evaluation in a train.log."""
    out = []
    for epoch, values in EVAL.findall(log):
        out.append((int(epoch), {k: float(v) for k, v in (kv.split(" ") for kv in values.split(", "))}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides for every run")
    args = parser.parse_args()
    gantrain = Path(sys.executable).parent / "gantrain"
    for name in args.only:
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                subprocess.run([str(gantrain), "train", *BASE, *VARIANTS[name], *args.set, f"seed={seed}",
                                f"eval_every={args.eval_every}", f"hydra.run.dir={tmp}/run"], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                seconds = time.perf_counter() - start
                points = trajectory((Path(tmp) / "run" / "train.log").read_text())
            best = min(points, key=lambda p: p[1]["fd"])
            print(f"{name} seed {seed} ({' '.join(VARIANTS[name] + args.set)}): {seconds:.0f} s; "
                  + "; ".join(f"e{e} fd {m['fd']:.1f} cls {m['classes_covered']:.0f} kl {m['class_kl']:.3f}"
                              for e, m in points) + f"; best fd {best[1]['fd']:.1f} at epoch {best[0]}", flush=True)


if __name__ == "__main__":
    main()
