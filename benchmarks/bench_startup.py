"""Start-up: from the command to the first "training ..." line and to the first step's log line, for
`gantrain train data=mnist` on 60,000 images, and where that time goes, phase by phase.

    python benchmarks/bench_startup.py          # 3 runs of the real command, then the phases in-process

The phases are the ones `gantrain train` goes through before its first step, timed in one process in the
same order: imports, composing the config, decoding the data set, building the stack, the first step.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_train import write_mnist_idx  # beside this script, which Python puts first on the path


def command_times(root: Path, out: Path, env: dict) -> tuple[float, float]:
    """Seconds from starting `gantrain train` to its "training ..." line and to its first log line."""
    args = [sys.executable, "-m", "gantrain", "train", "data=mnist", f"data.root={root}", "epochs=1", "log_every=1",
            "device=cpu", "eval.enabled=false", f"hydra.run.dir={out}"]
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=out.parent)
    first_line = None
    for line in proc.stdout:
        if first_line is None and line.startswith("training "):
            first_line = time.perf_counter() - start
        if re.match(r"Epoch\[1/1\] Step\[1/", line):
            first_step = time.perf_counter() - start
            proc.kill()
            break
    proc.wait()
    return first_line, first_step


def phases(root: Path) -> list[tuple[str, float]]:
    """The same work in one process, phase by phase (a fresh interpreter: imports are cold)."""
    code = f"""
import time
t = time.perf_counter(); out = []
def mark(name):
    global t
    now = time.perf_counter(); out.append((name, now - t)); t = now
import gantrain.cli; mark("import gantrain's command (hydra, omegaconf)")
import torch; mark("import torch")
from hydra import compose, initialize_config_module
with initialize_config_module("gantrain.conf", version_base=None):
    cfg = compose("train", overrides=["data=mnist", "data.root={root}", "device=cpu", "epochs=1"])
mark("compose the config")
from gantrain.engine.jobs import Job; mark("import the engine (torchvision, components)")
from gantrain.components.data import load_data
data = load_data("mnist", root="{root}"); mark("decode 60,000 IDX images into one tensor")
from gantrain.engine.build import build_stack
stack = build_stack([cfg], data, 0, torch.device("cpu")); mark("build G, D, optimizers, the step")
from gantrain.outputs import artifacts
import pathlib, tempfile
artifacts.save_real_images(data, pathlib.Path(tempfile.mkdtemp()) / "real_images.png"); mark("write real_images.png")
from gantrain.engine.inputs import epoch_order
gen = torch.Generator().manual_seed(0); orders = epoch_order(len(data), gen)[None]
stack.step(stack.inputs(data, orders, 0, [gen])).tolist()
mark("the first step")
for name, s in out: print(f"{{s:.3f}}\\t{{name}}")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [(line.split("\t")[1], float(line.split("\t")[0])) for line in result.stdout.splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--other", help="also time another checkout's src/ (e.g. the code before a change), "
                                        "alternating with this one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "mnist60k"
        write_mnist_idx(root, 60_000)
        help_start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gantrain", "train", "--help"], capture_output=True, check=True)
        help_time = time.perf_counter() - help_start
        envs = {"this checkout": {**os.environ, "PYTHONUNBUFFERED": "1"}}
        if args.other:
            envs[args.other] = {**envs["this checkout"], "PYTHONPATH": str(Path(args.other) / "src")}
        runs = {name: [] for name in envs}
        for i in range(args.runs):  # alternating: the machine's speed drifts
            for name, env in envs.items():
                runs[name].append(command_times(root, Path(tmp) / f"{len(runs[name])}-{abs(hash(name))}", env))
        print(f"gantrain train --help: {help_time:.2f} s")
        for name, times in runs.items():
            print(f"gantrain train data=mnist (60,000 images), {name}, median of {args.runs}: \"training ...\" line "
                  f"after {statistics.median(r[0] for r in times):.2f} s, first step's log line after "
                  f"{statistics.median(r[1] for r in times):.2f} s")
        print("where it goes (one cold process, in order):")
        for name, seconds in phases(root):
            print(f"  {seconds:6.3f} s  {name}")


if __name__ == "__main__":
    main()
