"""Images that are not square: data.image_size=[H, W] from preparing through training, samples, checkpoints,
evaluation and gantrain sample; every shape a network cannot take is one line naming the nearest it takes."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from gantrain.outputs.checkpoint import load_checkpoint

TINY = ["epochs=1", "batch_size=8", "latent_size=8", "hidden_size=8", "device=cpu", "trainer.threads=1", "log_every=2"]


@pytest.fixture(scope="session")  # once per test worker, however its tests interleave with others
def portraits(tmp_path_factory):
    """40 portraits of CelebA's 178x218, made from the photographs installed packages ship, as JPEGs."""
    from conftest import write_photo_folder

    square = write_photo_folder(tmp_path_factory.mktemp("square"), 40, side=218)
    root = tmp_path_factory.mktemp("portraits")
    for path in sorted(square.glob("*.png")):
        with Image.open(path) as img:
            img.crop((20, 0, 198, 218)).save(root / f"{path.stem}.jpg", quality=90)
    return root


def test_portraits_train_sample_and_evaluate_at_64x48(portraits, tmp_path):
    env = {"GANTRAIN_CACHE_DIR": str(tmp_path / "cache")}
    run = run_cli("train", "data=folder", f"data.root={portraits}", "data.image_size=[64,48]", "model=dcgan", "eval.n=16",
                  *TINY, "hydra.run.dir=run", cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert "prepared at 64x48" not in run.stdout and "preparing 40 images" in run.stdout and "at 64x48 once" in run.stdout
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["data_shape"] == [3, 64, 48] and ckpt["G"]["net.0.weight"].shape[2:] == (4, 3)  # the paper's, 4x3
    assert Image.open(tmp_path / "run" / "samples" / "epoch_0001.png").size == (8 * 48 + 18, 8 * 64 + 18)
    assert Image.open(tmp_path / "run" / "real_images.png").size == (8 * 48 + 18, 5 * 64 + 12)  # 40 images
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]["fd"]["features"] == "contrastive"
    sample = run_cli("sample", "ckpt=run/checkpoints/last.pt", "format=npz", "n=5", "out=npz", cwd=tmp_path, env=env)
    assert sample.returncode == 0, sample.stderr
    assert np.load(tmp_path / "npz" / "samples.npz")["samples"].shape == (5, 3, 64, 48)
    pngs = run_cli("sample", "ckpt=run/checkpoints/last.pt", "format=png", "n=2", "out=pngs", cwd=tmp_path, env=env)
    assert pngs.returncode == 0 and Image.open(tmp_path / "pngs" / "sample_00000.png").size == (48, 64)
    evaluated = run_cli("eval", "ckpt=run/checkpoints/last.pt", "n=16", "hydra.run.dir=ev", cwd=tmp_path, env=env)
    assert evaluated.returncode == 0 and "fd" in evaluated.stdout, evaluated.stderr
    again = run_cli("prepare", f"data.root={portraits}", "data.image_size=[64,48]", cwd=tmp_path, env=env)
    assert "prepared at 64x48" in again.stdout and "preparing" not in again.stdout  # the same copy, found


@pytest.mark.parametrize("model", ["dcgan", "resnet", "mlp"])
def test_64x128_trains_with_every_network(portraits, tmp_path, model):
    env = {"GANTRAIN_CACHE_DIR": str(tmp_path / "cache")}
    run = run_cli("train", "data=folder", f"data.root={portraits}", "data.image_size=[64,128]", f"model={model}",
                  "eval.enabled=false", *TINY, "hydra.run.dir=run", cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["data_shape"] == [3, 64, 128]


def test_a_side_and_its_square_are_the_same_prepared_copy(portraits, tmp_path):
    env = {"GANTRAIN_CACHE_DIR": str(tmp_path / "cache")}
    assert run_cli("prepare", f"data.root={portraits}", "data.image_size=16", cwd=tmp_path, env=env).returncode == 0
    again = run_cli("prepare", f"data.root={portraits}", "data.image_size=[16,16]", cwd=tmp_path, env=env)
    assert "prepared at 16x16" in again.stdout and "preparing" not in again.stdout


@pytest.mark.parametrize("size, model, says", [
    ("[50,50]", "dcgan", "model=dcgan takes images whose height and width are divisible by 4 .*got 50x50; nearest it "
                         "takes: 48x48, 48x52, 52x48"),
    ("[48,64]", "resnet", "model=resnet takes .*got 48x64; nearest it takes: 32x64, 48x48, 64x64"),
    ("[64,0]", "dcgan", r"data.image_size must be a side \(e.g. 64\) or \[height, width\] \(e.g. \[64,48\]\), got \[64, 0\]"),
    ("[64,48,3]", "mlp", r"data.image_size must be a side .*got \[64, 48, 3\]"),
])
def test_a_shape_a_network_cannot_take_is_one_line(portraits, tmp_path, size, model, says):
    import re

    env = {"GANTRAIN_CACHE_DIR": str(tmp_path / "cache")}
    run = run_cli("train", "data=folder", f"data.root={portraits}", f"data.image_size={size}", f"model={model}", *TINY,
                  "hydra.run.dir=run", cwd=tmp_path, env=env)
    assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert re.search(says, run.stderr), run.stderr
    assert not (tmp_path / "run").exists()
    assert "preparing" not in run.stdout  # refused before minutes of decoding, not after
