"""The benchmark scripts run end to end (tiny sizes: their numbers live in benchmarks/RESULTS.md)."""
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parent.parent / "benchmarks"


def run(script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_bench_train_prints_both_pipelines_and_the_ratio():
    out = run("bench_train.py", "--images", "600", "--steps", "8", "--warmup", "2", "--rounds", "2")
    assert "reference pipeline :" in out and "gantrain           :" in out and "ratio" in out


def test_bench_sweep_prints_both_paths_and_the_ratio():
    out = run("bench_sweep.py", "--members", "2", "--steps", "3", "--warmup", "1")
    assert "sequential :" in out and "stacked :" in out and "ratio" in out


def test_modes_benchmark_runs_a_preset(tmp_path):
    out = run("modes.py", "--presets", "ring8", "--seeds", "1", "--set", "epochs=1", "data.n=512", "hidden_size=16")
    assert "ring8 seed 0: modes" in out and "PacGAN2" in out
