"""The benchmark scripts run end to end (tiny sizes: their numbers live in benchmarks/RESULTS.md)."""
import subprocess
import sys
from pathlib import Path

from PIL import Image

BENCH = Path(__file__).parent.parent / "benchmarks"


def run(script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_bench_train_prints_every_pipeline_against_the_floor():
    out = run("bench_train.py", "--images", "400", "--loop-images", "400", "--steps", "4", "--warmup", "1", "--rounds", "1",
              "--members", "2", "--process-epochs", "1", "--set", "trainer.threads=1", "hidden_size=32")
    rows = {line.split(":")[0].strip(): line.split(":")[1].split() for line in out.splitlines() if ":" in line}
    for name in ("floor", "reference pipeline", "plain eager step", "gantrain step", "stack of 2", "gantrain in its loop"):
        assert float(rows[name][0]) > 0 and float(rows[name][1]) > 0, name  # steps/s, fraction of the floor
    assert rows["floor"][1] == "1.00" and "gantrain in its loop / floor" in out
    assert out.splitlines()[-1].startswith("whole process") and out.rstrip().endswith("of floor")


def test_bench_sweep_prints_both_paths_and_the_ratio():
    out = run("bench_sweep.py", "--members", "2", "--steps", "3", "--warmup", "1")
    assert "sequential :" in out and "stacked :" in out and "ratio" in out


def test_modes_benchmark_runs_a_preset_alone_and_as_a_stack(tmp_path):
    tiny = ["--presets", "ring8", "--seeds", "2", "--set", "epochs=1", "data.n=512", "hidden_size=16"]
    alone, stacked = run("modes.py", *tiny), run("modes.py", *tiny, "--stack")
    assert "ring8 seed 1: modes" in alone and "PacGAN2" in alone and "one run at a time" in alone
    rows = lambda out: [line for line in out.splitlines() if line.startswith("ring8 seed")]
    assert rows(stacked) == rows(alone) and "as one stack" in stacked  # the same modes, HQ and KL to 3 decimals


def test_quality_benchmark_tabulates_seeds_and_copies_a_grid(tmp_path):
    out = run("quality.py", "--presets", "reference_mnist", "--seeds", "2", "--grids", str(tmp_path),
              "--set", "epochs=1", "hidden_size=16", "eval.n=200")
    assert "reference_mnist seed 1: fd" in out
    row = next(line for line in out.splitlines() if line.startswith("| `reference_mnist`"))
    assert row.count("±") == 7 and "2 (200 real, 200 fake)" in row  # six metrics and the wall time, over 2 seeds
    with Image.open(tmp_path / "reference_mnist.png") as grid:
        assert grid.size[0] > 8 * 28  # 64 digits with padding


def test_ssl_ladder_benchmark_prints_the_ladder(tmp_path):
    from conftest import write_photo_folder

    root = write_photo_folder(tmp_path / "photos", 40, side=32)
    out = run("ssl_ladder.py", "--root", str(root), "--sizes", "32", "--steps", "3")
    row = next(line for line in out.splitlines() if line.startswith("| 32 | 3 |"))
    assert len(row.split("|")[5].split("/")) == 5 and row.rstrip().endswith(("holds |", "BROKEN |"))


def test_bench_data_prepares_serves_and_feeds_each_way(tmp_path):
    out = run("bench_data.py", "--images", "64", "--sizes", "32", "--steps", "1", "--batches", "2", "--batch-size", "8",
              "--keep", str(tmp_path / "jpegs"))
    assert len(list((tmp_path / "jpegs").rglob("*.jpg"))) == 64 and len(list((tmp_path / "jpegs").glob("class*"))) == 4
    for row in ("prepare at  32 px", "DataLoader epoch  32 px", "second run to its first step", "batches served, in memory",
                "batches served, streamed", "batches served, DataLoader", "DCGAN 32 px fed streamed", "streamed / in memory"):
        assert row in out, row
