"""gantrain sample through the real CLI, from a checkpoint moved away from its run."""
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import only_run_dir, run_cli


@pytest.fixture(scope="module")
def moved_ckpt(one_epoch_ckpt, tmp_path_factory):
    """A tiny run's last.pt, moved to a folder with nothing else in it (the run dir is deleted)."""
    moved = tmp_path_factory.mktemp("elsewhere") / "model.pt"
    shutil.move(one_epoch_ckpt, moved)
    shutil.rmtree(one_epoch_ckpt.parent.parent)
    return moved


def sample(tmp_path, *args):
    return run_cli("sample", *args, cwd=tmp_path)


def test_grid_goes_to_the_run_dir_and_says_where(tmp_path, moved_ckpt):
    result = sample(tmp_path, f"ckpt={moved_ckpt}", "n=12", "nrow=4")
    assert result.returncode == 0, result.stderr
    grid = only_run_dir(tmp_path, "sample") / "samples.png"
    assert str(grid) in result.stdout
    # 4 columns x 3 rows of 28px images with torchvision's 2px padding
    assert Image.open(grid).size == (4 * 30 + 2, 3 * 30 + 2)


def test_png_and_npz_formats(tmp_path, moved_ckpt):
    assert sample(tmp_path, f"ckpt={moved_ckpt}", "n=5", "format=png", "out=pngs").returncode == 0
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == [f"sample_{i:05d}.png" for i in range(5)]
    assert Image.open(tmp_path / "pngs" / "sample_00000.png").size == (28, 28)  # one image, no border
    assert sample(tmp_path, f"ckpt={moved_ckpt}", "n=7", "format=npz", "out=raw").returncode == 0
    samples = np.load(tmp_path / "raw" / "samples.npz")["samples"]
    assert samples.shape == (7, 1, 28, 28) and samples.min() >= -1 and samples.max() <= 1


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, moved_ckpt):
    for out, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert sample(tmp_path, f"ckpt={moved_ckpt}", f"seed={seed}", f"out={out}").returncode == 0
    read = lambda d: (tmp_path / d / "samples.png").read_bytes()
    assert read("a") == read("b") and read("a") != read("c")


def test_interpolation_grid_has_k_rows(tmp_path, moved_ckpt):
    assert sample(tmp_path, f"ckpt={moved_ckpt}", "interpolate=3", "nrow=5", "out=i").returncode == 0
    refused = sample(tmp_path, f"ckpt={moved_ckpt}", "interpolate=8", "format=npz", "out=j")  # it wrote a PNG
    assert refused.returncode == 1 and "format=npz cannot hold it" in refused.stderr and not (tmp_path / "j").exists()
    assert Image.open(tmp_path / "i" / "interpolation.png").size == (5 * 30 + 2, 3 * 30 + 2)


def test_existing_files_are_kept_unless_overwrite(tmp_path, moved_ckpt):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "samples.png").write_bytes(b"precious")
    result = sample(tmp_path, f"ckpt={moved_ckpt}", "out=o")
    assert result.returncode == 1 and "overwrite=true" in result.stderr
    assert (tmp_path / "o" / "samples.png").read_bytes() == b"precious"
    assert sample(tmp_path, f"ckpt={moved_ckpt}", "out=o", "overwrite=true").returncode == 0
    assert (tmp_path / "o" / "samples.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("args,expected", [
    (["n=0"], "n must be an integer >= 1"), (["n=-3"], "n must be an integer >= 1"),
    (["format=gif"], "format must be one of grid, png, npz"), ([], None),
])
def test_bad_options(tmp_path, moved_ckpt, args, expected):
    ckpt = [f"ckpt={moved_ckpt}"] if expected else []
    result = sample(tmp_path, *ckpt, *args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (expected or "ckpt is required") in result.stderr


def test_a_file_system_error_names_out_the_setting_that_picks_the_folder(tmp_path, moved_ckpt):
    (tmp_path / "a_file").write_text("in the way")
    result = sample(tmp_path, f"ckpt={moved_ckpt}", "out=a_file/grids")
    assert result.returncode == 1 and "file system error on" in result.stderr and "(out=DIR)" in result.stderr
    assert "hydra.run.dir" not in result.stderr and "Traceback" not in result.stderr


def test_help_lists_what_the_command_takes():
    from conftest import run_cli

    sample_help = run_cli("sample", "--help", cwd=Path.cwd())
    assert sample_help.returncode == 0 and sample_help.stdout.startswith("gantrain sample:")
    assert "ckpt: ???" in sample_help.stdout and "model:" not in sample_help.stdout  # train's groups are not its own
    sweep_help = run_cli("sweep", "--help", cwd=Path.cwd())
    assert sweep_help.stdout.startswith("gantrain train (gantrain sweep = train -m)") and "is powered by Hydra" not in sweep_help.stdout
    assert "model: dcgan, mlp, resnet" in sweep_help.stdout
