"""A folder of images prepared once: the prepared copy equals a fresh decode, is found again and memory-mapped,
is made again when the folder changes or the copy is damaged, survives kill -9 and two runs at once, and
gives labels from class sub-folders."""
import errno
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import write_photo_folder
from gantrain.cache import cache_dir
from gantrain.components.data import load_data
from gantrain.data import prepared
from gantrain.errors import UserError


@pytest.fixture
def photos(tmp_path, monkeypatch):
    monkeypatch.setenv("GANTRAIN_CACHE_DIR", str(tmp_path / "cache"))
    return write_photo_folder(tmp_path / "photos", 12, side=40)


def prepared_folders():
    return sorted(p for p in (cache_dir() / "prepared").iterdir() if not p.name.startswith("."))


def test_a_prepared_folder_equals_a_fresh_decode_and_is_read_back_memory_mapped(photos, caplog):
    with caplog.at_level("INFO", logger="gantrain"):
        images, labels, classes = prepared.prepare_folder(str(photos), 16, 3, workers=2)
    assert "preparing 12 images" in caplog.text and labels is None and classes is None
    fresh = np.stack([prepared.decode(str(p), 16, 3) for p in sorted(photos.glob("*.png"))])
    assert images.shape == (12, 3, 16, 16) and images.dtype == np.uint8 and np.array_equal(images, fresh)
    caplog.clear()
    with caplog.at_level("INFO", logger="gantrain"):
        again, _, _ = prepared.prepare_folder(str(photos), 16, 3)
    assert "preparing" not in caplog.text and "12 images of" in caplog.text and isinstance(again, np.memmap)
    assert np.array_equal(again, images) and len(prepared_folders()) == 1
    data = load_data("folder", root=str(photos), image_size=16, channels=3)  # what training sees: [-1, 1]
    assert data.mapped and np.array_equal(data.x.numpy(), fresh)
    assert np.array_equal(((data.floats().numpy() + 1) * 127.5).round().astype(np.uint8), fresh)


def test_a_changed_folder_is_prepared_again_and_a_damaged_copy_is_never_trusted(photos, caplog):
    prepared.prepare_folder(str(photos), 16, 3, workers=1)
    Image.new("RGB", (30, 30), (0, 255, 0)).save(photos / "new.png")
    with caplog.at_level("INFO", logger="gantrain"):
        images, _, _ = prepared.prepare_folder(str(photos), 16, 3, workers=1)
    assert "changed since it was prepared (12 files then, 13 now)" in caplog.text and len(images) == 13
    newest = max(prepared_folders(), key=lambda p: p.stat().st_mtime)
    path = newest / "images.npy"
    path.write_bytes(path.read_bytes()[:-100])  # truncated
    caplog.clear()
    with caplog.at_level("INFO", logger="gantrain"):
        images, _, _ = prepared.prepare_folder(str(photos), 16, 3, workers=1)
    assert "incomplete or corrupt; preparing" in caplog.text and images.shape == (13, 3, 16, 16)


def test_labels_come_from_class_sub_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("GANTRAIN_CACHE_DIR", str(tmp_path / "cache"))
    for name, colour in (("cats", (255, 0, 0)), ("dogs", (0, 0, 255))):
        (tmp_path / "pets" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 20), colour).save(tmp_path / "pets" / name / f"{i}.png")
    data = load_data("folder", root=str(tmp_path / "pets"), image_size=8)
    assert data.y.tolist() == [0, 0, 0, 1, 1, 1] and data.x[0, 0].min() == 255 and data.x[3, 2].min() == 255
    assert prepared.prepare_folder(str(tmp_path / "pets"), 8, 3)[2] == ["cats", "dogs"]
    assert load_data("folder", root=str(tmp_path / "pets"), image_size=8, labels="none").y is None
    (tmp_path / "pets" / "loose.png").write_bytes((tmp_path / "pets" / "cats" / "0.png").read_bytes())
    assert load_data("folder", root=str(tmp_path / "pets"), image_size=8).y is None  # auto: not every image in a class
    with pytest.raises(UserError, match=r"data.labels=folders needs one sub-folder per class .*1 image\(s\) at its top"):
        load_data("folder", root=str(tmp_path / "pets"), image_size=8, labels="folders")


def test_a_full_disk_while_preparing_is_one_line_and_leaves_nothing(photos, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np.lib.format, "open_memmap", full)
    with pytest.raises(UserError, match="could not write the prepared copy of .*No space left on device"):
        prepared.prepare_folder(str(photos), 16, 3, workers=1)
    assert not list((cache_dir() / "prepared").iterdir())  # no half copy, not even a temporary one


PREPARE = ("import sys, logging; logging.basicConfig(level=logging.INFO)\n"
           "from gantrain.data.prepared import prepare_folder\n"
           "images, _, _ = prepare_folder(sys.argv[1], 32, 3, workers=1); print('images', len(images))")


def test_kill_9_while_preparing_leaves_nothing_a_later_run_uses_and_two_runs_at_once_both_train(photos, tmp_path):
    rng = np.random.default_rng(0)
    for i in range(600):  # ~0.3 s of decoding in one process: killed in the middle
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(photos / f"noise{i:03d}.png")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", PREPARE, str(photos)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "preparing" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not prepared_folders()  # only a temporary folder, if anything
    both = [subprocess.Popen([sys.executable, "-c", PREPARE, str(photos)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in both]
    assert all(p.returncode == 0 and "images 612" in out for p, out in zip(both, outs)), outs
    (folder,) = prepared_folders()
    assert json.loads((folder / "meta.json").read_text())["n"] == 612


def test_gantrain_prepare_prepares_once_for_the_runs_that_follow_and_writes_nothing_else(photos, tmp_path):
    from conftest import run_cli

    env = {"GANTRAIN_CACHE_DIR": str(tmp_path / "cache")}
    first = run_cli("prepare", f"data.root={photos}", "data.image_size=16", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert "preparing 12 images" in first.stdout and "prepared: 12 images of 16x16x3" in first.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "photos"]  # no run dir, no log file
    train = run_cli("train", "data=folder", f"data.root={photos}", "data.image_size=16", "model=dcgan", "epochs=1",
                    "batch_size=4", "hidden_size=8", "latent_size=8", "eval.enabled=false", "device=cpu",
                    "hydra.run.dir=run", cwd=tmp_path, env=env)
    assert train.returncode == 0, train.stderr
    assert "12 images of" in train.stdout and "prepared at 16x16" in train.stdout and "preparing" not in train.stdout
    wrong = run_cli("prepare", "data=mnist_sample", cwd=tmp_path, env=env)
    assert wrong.returncode == 1 and "gantrain prepare takes data=folder" in wrong.stderr


def test_uint8_batches_train_the_same_weights_as_the_float_data_set_they_stand_for(mnist_root):
    """The set lives as uint8 and each batch becomes floats in the step's inputs; the weights are bit for bit
    those of training on the same set held as floats in [-1, 1] (how every set was held before)."""
    import torch

    from conftest import compose_train
    from gantrain.data.tensors import TensorData
    from gantrain.engine.build import build_stack
    from gantrain.engine.inputs import epoch_order

    cfg = compose_train(["device=cpu", "model=dcgan", "batch_size=20", "hidden_size=16", "latent_size=8"])
    pixels = load_data("mnist", root=str(mnist_root))
    as_floats = TensorData(pixels.floats(), pixels.y)
    assert pixels.x.dtype == torch.uint8 and as_floats.x.dtype == torch.float32
    weights = []
    for data in (pixels, as_floats):
        stack = build_stack([cfg], data, 0, torch.device("cpu"))
        gen = torch.Generator().manual_seed(0)
        orders = epoch_order(len(data), gen).unsqueeze(0)
        for i in range(4):
            stack.step(stack.inputs(data, orders, i, [gen]))
        weights.append(stack.nets.member_state(0))
    for net in ("G", "D"):
        assert all(torch.equal(weights[0][net][k], weights[1][net][k]) for k in weights[1][net]), net


def test_a_streamed_run_equals_the_in_memory_run_bit_for_bit(photos, tmp_path, monkeypatch, caplog):
    import torch

    from conftest import compose_train
    from gantrain.engine import jobs
    from gantrain.outputs.checkpoint import load_checkpoint

    common = ["device=cpu", "data=folder", f"data.root={photos}", "data.image_size=16", "model=dcgan", "epochs=2",
              "batch_size=4", "hidden_size=8", "latent_size=8", "eval.enabled=false", "log_every=1"]
    for mode in ("true", "false"):
        jobs.train(compose_train([*common, f"data.in_memory={mode}"]), tmp_path / mode, [])
    monkeypatch.setattr(jobs, "free_bytes", lambda device: 1000)  # auto: 12 images of 768 bytes do not fit
    with caplog.at_level("INFO", logger="gantrain"):
        jobs.train(compose_train([*common, "data.in_memory=auto"]), tmp_path / "auto", [])
    assert "streamed from the prepared copy" in caplog.text
    runs = [load_checkpoint(tmp_path / mode / "checkpoints" / "last.pt") for mode in ("true", "false", "auto")]
    for run in runs[1:]:
        for net in ("G", "D"):
            assert all(torch.equal(runs[0][net][k], run[net][k]) for k in runs[0][net]), net
    with pytest.raises(UserError, match="data.in_memory must be auto, true or false, got 'sometimes'"):
        load_data("folder", root=str(photos), image_size=16, in_memory="sometimes")


def test_class_names_travel_in_the_checkpoint_and_gantrain_eval_shows_them(tmp_path):
    from conftest import run_cli
    from gantrain.outputs.checkpoint import load_checkpoint

    for name, colour in (("cats", (255, 0, 0)), ("dogs", (0, 0, 255))):
        (tmp_path / "pets" / name).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (20, 20), tuple(min(255, c + 10 * i) for c in colour)).save(tmp_path / "pets" / name / f"{i}.png")
    env = {"GANTRAIN_CACHE_DIR": str(tmp_path / "cache")}
    train = run_cli("train", "data=folder", "data.root=pets", "data.image_size=8", "model=dcgan", "model.conditional=true",
                    "epochs=1", "batch_size=4", "hidden_size=8", "latent_size=8", "eval.enabled=false", "device=cpu",
                    "hydra.run.dir=run", cwd=tmp_path, env=env)
    assert train.returncode == 0, train.stderr
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["class_names"] == ["cats", "dogs"] and ckpt["num_classes"] == 2
    evaluated = run_cli("eval", "ckpt=run/checkpoints/last.pt", "n=16", "hydra.run.dir=ev", cwd=tmp_path, env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "classes: 0 cats, 1 dogs" in evaluated.stdout


def test_a_zip_of_a_folder_reads_the_same_as_the_folder(tmp_path, monkeypatch):
    import zipfile

    monkeypatch.setenv("GANTRAIN_CACHE_DIR", str(tmp_path / "cache"))
    for name, colour in (("cats", (255, 0, 0)), ("dogs", (0, 0, 255))):
        (tmp_path / "pets" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 24), tuple(min(255, c + 30 * i) for c in colour)).save(tmp_path / "pets" / name / f"{i}.png")
    with zipfile.ZipFile(tmp_path / "pets.zip", "w") as archive:
        for path in sorted((tmp_path / "pets").rglob("*.png")):
            archive.write(path, f"pets/{path.relative_to(tmp_path / 'pets')}")  # as zip -r pets.zip pets/ makes it
        archive.writestr("pets/cats/broken.png", b"not a png")
    folder, zipped = (prepared.prepare_folder(str(tmp_path / p), 8, 3) for p in ("pets", "pets.zip"))
    assert np.array_equal(folder[0], zipped[0]) and np.array_equal(folder[1], zipped[1]) and zipped[2] == ["cats", "dogs"]
    (tmp_path / "notes.zip").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="is neither a folder nor a readable .zip"):
        prepared.prepare_folder(str(tmp_path / "notes.zip"), 8, 3)
