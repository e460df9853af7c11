"""A folder of images prepared once: the prepared copy equals a fresh decode, is found again and memory-mapped,
is made again when the folder changes or the copy is damaged, survives kill -9 and two runs at once, and
gives labels from class sub-folders."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
from pathlib import Path
import pytest
from PIL import Image

from conftest import write_photo_folder
from gantrain.cache import cache_dir
from gantrain.components.data import load_data
from gantrain.data import prepared
from gantrain.data.decode import ORIENTATION, decode
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
    fresh = np.stack([decode(str(p), (16, 16), 3) for p in sorted(photos.glob("*.png"))])
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
    """Where no tmpfs can be mounted: the kernel's answer to a write on a full disk (ENOSPC from write()),
    faked after the first 20 KB."""
    written, pwrite = [0], os.pwrite

    def filling(fd, data, offset):
        if written[0] > 20_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        written[0] += len(data)
        return pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", filling)
    with pytest.raises(UserError, match=r"could not write the prepared copy of .* in .*prepared \(No space left on device; "
                                        r"it needs 36.1 KiB\); free some space"):
        prepared.prepare_folder(str(photos), 32, 3, workers=1)
    assert not list((cache_dir() / "prepared").iterdir())  # no half copy, not even a temporary one


def test_a_real_full_disk_is_one_line_from_prepare_and_train_and_leaves_nothing(photos, tmp_path, monkeypatch):
    from conftest import run_cli, tmpfs

    with tmpfs(tmp_path / "small", "64k") as small:
        env = {"GANTRAIN_CACHE_DIR": str(small)}
        # 12 images at 64x64x3 take 144 KiB: refused before anything is written
        first = run_cli("prepare", f"data.root={photos}", "data.image_size=64", "workers=1", cwd=tmp_path, env=env)
        assert first.returncode == 1 and first.stdout.count("\n") <= 1, first.stdout
        assert first.stderr.startswith("gantrain prepare: error: not enough space for the prepared copy of ")
        assert "it needs 144.1 KiB and " in first.stderr and "Traceback" not in first.stderr
        assert len(first.stderr.strip().splitlines()) == 1
        # the free space misread (another writer filled the disk since): the kernel's own ENOSPC, mid-write
        disk_usage = shutil.disk_usage
        monkeypatch.setattr(shutil, "disk_usage", lambda path: disk_usage("/"))
        for command in (("prepare", "workers=1"), ("train", "model=dcgan", "epochs=1", "batch_size=4", "eval.enabled=false",
                                                     "data=folder", "hydra.run.dir=run")):
            result = run_cli(*command, f"data.root={photos}", "data.image_size=64", cwd=tmp_path, env=env)
            assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
            assert "could not write the prepared copy" in result.stderr and "No space left on device" in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
            assert not any((small / "prepared").iterdir())  # nothing left behind to keep the disk full
        assert not (tmp_path / "run").exists()


def test_unreadable_files_are_dropped_in_place_without_holding_the_set_in_memory(tmp_path, monkeypatch):
    import tracemalloc

    monkeypatch.setenv("GANTRAIN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(prepared, "CHUNK", 64)
    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 256, (400, 32, 32, 3), dtype=np.uint8)
    (tmp_path / "set").mkdir()
    for i, picture in enumerate(pictures):
        if i % 7 == 3:
            (tmp_path / "set" / f"{i:04d}.png").write_bytes(b"not an image")
        else:
            Image.fromarray(picture).save(tmp_path / "set" / f"{i:04d}.png")
    prepared.prepare_folder(str(tmp_path / "set"), 8, 3, workers=1)  # imports (Pillow's plugins, tqdm) done before
    tracemalloc.start()
    images, _, _ = prepared.prepare_folder(str(tmp_path / "set"), 32, 3, workers=1)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    kept = [i for i in range(400) if i % 7 != 3]
    assert images.shape == (len(kept), 3, 32, 32)
    assert np.array_equal(images, pictures[kept].transpose(0, 3, 1, 2))  # the readable ones, in file order
    whole = 400 * 3 * 32 * 32  # 1.2 MB: what `images[ok]` would have allocated at once
    assert peak < whole / 2, peak
    (folder,) = [f for f in prepared_folders() if json.loads((f / "meta.json").read_text())["size"] == [32, 32]]
    assert (folder / "images.npy").stat().st_size == prepared.HEADER + images.nbytes  # cut after the last one
    assert json.loads((folder / "meta.json").read_text())["unreadable"] == 57


def test_a_folder_prepared_again_removes_the_copy_it_supersedes_and_leaves_it_on_shared_storage(photos, caplog, monkeypatch):
    from gantrain import cache

    prepared.prepare_folder(str(photos), 16, 3, workers=1)
    prepared.prepare_folder(str(photos), 8, 3, workers=1)  # another size: another copy, not superseded
    Image.new("RGB", (30, 30), (0, 255, 0)).save(photos / "new.png")
    with caplog.at_level("INFO", logger="gantrain"):
        images, _, _ = prepared.prepare_folder(str(photos), 16, 3, workers=1)
    assert "changed since it was prepared (12 files then, 13 now)" in caplog.text and len(images) == 13
    assert "removed 1 superseded prepared copy of" in caplog.text
    assert sorted(cache.read_meta(f)["files"] for f in prepared_folders()) == [12, 13]  # the 8-px copy stays
    monkeypatch.setattr(cache, "file_system", lambda path: "nfs4")  # another machine may be reading it
    (photos / "new.png").unlink()
    caplog.clear()
    with caplog.at_level("INFO", logger="gantrain"):
        prepared.prepare_folder(str(photos), 16, 3, workers=1)
    assert "1 superseded prepared copy of" in caplog.text and "is on nfs4" in caplog.text and "gantrain cache prune" in caplog.text
    assert len(prepared_folders()) == 3
    assert [e.what for e in cache.entries() if e.superseded] == [f"{photos.resolve()} at 16x16x3, 13 images"]


def test_a_temporary_folder_is_removed_once_its_writer_is_gone(photos, monkeypatch):
    import socket
    import time

    from gantrain import cache

    home = cache_dir() / "prepared"
    home.mkdir(parents=True)
    live, dead, reused, other, other_old = (home / f".{name}.tmp" for name in ("live", "dead", "reused", "other", "old"))
    for folder, writer in ((live, {"host": socket.gethostname(), "pid": os.getpid(), "started": cache.start_time(os.getpid())}),
                           (dead, {"host": socket.gethostname(), "pid": 2**22 + 1, "started": "1"}),
                           (reused, {"host": socket.gethostname(), "pid": os.getpid(), "started": "1"}),  # a later process
                           (other, {"host": "elsewhere", "pid": 1}), (other_old, {"host": "elsewhere", "pid": 1})):
        folder.mkdir()
        (folder / cache.WRITER).write_text(json.dumps(writer))
    two_days_ago = time.time() - 2 * 86400
    for path in (other_old / cache.WRITER, other_old):
        os.utime(path, (two_days_ago, two_days_ago))
    prepared.prepare_folder(str(photos), 16, 3, workers=1)
    assert sorted(p.name for p in home.glob(".*.tmp")) == [".live.tmp", ".other.tmp"]


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
    assert proc.returncode == -signal.SIGKILL and not prepared_folders()
    (left,) = (cache_dir() / "prepared").glob(".*.tmp")  # the killed run's temporary folder, until the next run
    both = [subprocess.Popen([sys.executable, "-c", PREPARE, str(photos)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in both]
    assert all(p.returncode == 0 and "images 612" in out for p, out in zip(both, outs)), outs
    assert sum(f"removed {left.name}, left by a preparation that was killed" in out for out in outs) == 1, outs
    (folder,) = prepared_folders()
    assert json.loads((folder / "meta.json").read_text())["n"] == 612
    assert not list((cache_dir() / "prepared").glob(".*"))  # no temporary folder of anyone's is left


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


def test_gantrain_cache_lists_clears_and_prunes_what_it_holds(photos, tmp_path, mnist_root, monkeypatch):
    import time

    from conftest import run_cli
    from gantrain import cache
    from gantrain.evaluation import evaluate, features

    monkeypatch.setattr(features, "_loaded", {})  # this process's feature networks: trained (and kept) anew
    monkeypatch.setattr(evaluate, "_references", {})
    env = {"GANTRAIN_CACHE_DIR": str(cache_dir())}
    assert "is empty" in run_cli("cache", cwd=tmp_path, env=env).stdout
    prepared.prepare_folder(str(photos), 16, 3, workers=1)
    prepared.prepare_folder(str(photos), 8, 3, workers=1)
    trained = run_cli("train", "data=mnist", f"data.root={mnist_root}", "epochs=1", "batch_size=20", "hidden_size=16",
                      "latent_size=8", "eval.n=40", "device=cpu", "hydra.run.dir=run", cwd=tmp_path, env=env)
    assert trained.returncode == 0, trained.stderr
    listed = run_cli("cache", "list", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    assert f"{photos.resolve()} at 16x16x3, 12 images" in listed.stdout and f"at 8x8x3, 12 images" in listed.stdout
    assert "features" in listed.stdout and "references" in listed.stdout and "prepared data" in listed.stdout
    old = next(e for e in cache.entries() if "8x8x3" in e.what)
    month_ago = time.time() - 40 * 86400
    os.utime(old.path / cache.LAST_USE, (month_ago, month_ago))
    pruned = run_cli("cache", "prune", "--older-than", "30d", cwd=tmp_path, env=env)
    assert pruned.returncode == 0 and pruned.stdout.startswith("removed 1 cache entry"), pruned.stdout
    assert not old.path.exists() and len(prepared_folders()) == 1
    cleared = run_cli("cache", "clear", "prepared", cwd=tmp_path, env=env)
    assert cleared.stdout.startswith("removed 1 cache entry (prepared data)") and not prepared_folders()
    assert {e.kind for e in cache.entries()} == {"features", "references"}  # the other kinds stay
    run_cli("cache", "clear", cwd=tmp_path, env=env)
    assert not cache.entries()
    bad = run_cli("cache", "prune", "--older-than", "soon", cwd=tmp_path, env=env)
    assert bad.returncode == 1 and "--older-than takes an age like 30d" in bad.stderr


def test_a_read_only_cache_is_used_and_never_written(photos, tmp_path, mnist_root):
    from conftest import remount_read_only, run_cli, tmpfs

    with tmpfs(tmp_path / "shared", "8m") as shared:
        env = {"GANTRAIN_CACHE_DIR": str(shared)}
        assert run_cli("prepare", f"data.root={photos}", "data.image_size=16", "workers=1", cwd=tmp_path, env=env).returncode == 0
        remount_read_only(shared)
        before = sorted(str(p) for p in shared.rglob("*"))
        run = run_cli("train", "data=folder", f"data.root={photos}", "data.image_size=16", "model=dcgan", "epochs=1",
                      "batch_size=4", "hidden_size=8", "latent_size=8", "eval.n=12", "device=cpu", "hydra.run.dir=run",
                      cwd=tmp_path, env=env)
        assert run.returncode == 0, run.stderr
        assert "prepared at 16x16" in run.stdout and (tmp_path / "run" / "metrics.json").exists()
        assert run.stdout.count(f"cache: {shared} cannot be written") == 1  # one line, though two entries were not kept
        assert sorted(str(p) for p in shared.rglob("*")) == before
        other = run_cli("prepare", f"data.root={photos}", "data.image_size=8", cwd=tmp_path, env=env)
        assert other.returncode == 1 and "cannot be written and holds no prepared copy" in other.stderr


def exif_orientation(image: "Image.Image", orientation: int) -> "Image.Exif":
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif


@pytest.mark.parametrize("orientation, upright", [(3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)),
                                                  (8, lambda a: np.rot90(a, 1)), (2, lambda a: a[:, ::-1])])
def test_a_photo_is_turned_upright_by_its_exif_orientation(tmp_path, orientation, upright):
    """The EXIF orientation says how to turn the stored pixels to show them (6: 90 degrees clockwise, as a phone
    held upright writes them); the prepared image equals the upright pixels prepared directly."""
    rng = np.random.default_rng(orientation)
    stored = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    Image.fromarray(stored).save(tmp_path / "phone.png", exif=exif_orientation(None, orientation))
    Image.fromarray(np.ascontiguousarray(upright(stored))).save(tmp_path / "upright.png")
    for size in ((16, 16), (12, 20), (20, 12)):
        assert np.array_equal(decode(str(tmp_path / "phone.png"), size, 3),
                              decode(str(tmp_path / "upright.png"), size, 3))
    # a JPEG (decoded at reduced size) as a phone writes it: the bright corner lands where the viewer shows it
    stored = np.zeros((240, 320, 3), np.uint8)
    stored[:60, :80] = 255  # top left as stored
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif_orientation(None, 6), quality=95)
    shown = decode(str(tmp_path / "phone.jpg"), (32, 24), 1)[0]  # upright: 320 high, 240 wide
    assert shown[:8, -6:].mean() > 200 and shown[-8:, :6].mean() < 30  # top right after a clockwise turn


def test_16_bit_greyscale_is_scaled_not_clipped_and_other_modes_decode_as_pillow_shows_them(tmp_path):
    rng = np.random.default_rng(0)
    grey16 = rng.integers(0, 65536, (16, 16), dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "scan.png")
    Image.fromarray(grey16).save(tmp_path / "scan.tif")
    expected = np.round(grey16.astype(np.float64) * 255 / 65535).astype(np.uint8)  # a fixed scale, not per image
    for name in ("scan.png", "scan.tif"):
        for channels in (1, 3):
            decoded = decode(str(tmp_path / name), (16, 16), channels)
            assert np.array_equal(decoded, np.broadcast_to(expected, (channels, 16, 16))), (name, channels)
    assert abs(decode(str(tmp_path / "scan.png"), (16, 16), 1).mean() - 127.5) < 4  # was 254: clipped
    # 48-bit RGB: Pillow keeps each channel's high byte, within one level of the 255/65535 scale
    rgb48 = rng.integers(0, 65536, (8, 8, 3), dtype=np.uint16)
    write_png48(tmp_path / "rgb48.png", rgb48)
    decoded = decode(str(tmp_path / "rgb48.png"), (8, 8), 3).astype(int)
    assert np.array_equal(decoded, (rgb48 >> 8).transpose(2, 0, 1))
    assert np.abs(decoded - np.round(rgb48 * (255 / 65535)).transpose(2, 0, 1)).max() <= 1
    # CMYK, a palette with transparency, alpha and greyscale: as Pillow converts them (alpha dropped)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "print.tif")
    palette = Image.fromarray(rgb).quantize(16)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "icon.png", transparency=0)
    Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (8, 8), dtype=np.uint8)]), "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    for name in ("print.tif", "icon.png", "alpha.png", "grey.png"):
        with Image.open(tmp_path / name) as img:
            assert np.array_equal(decode(str(tmp_path / name), (8, 8), 3), np.asarray(img.convert("RGB")).transpose(2, 0, 1)), name


def write_png48(path, rgb: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot write one)."""
    import struct
    import zlib

    h, w, _ = rgb.shape
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_crop_and_resize_equal_pillows_full_decode_of_non_square_photos(tmp_path):
    """The prepared image is the centred region of H x W's aspect resized to H x W. A PNG equals Pillow's full
    decode resized over that region exactly; a JPEG is decoded at reduced size (>= 2x the size asked, the DCT
    scaled by 1/2, 1/4 or 1/8), which moves pixels by a few levels: mean |diff| <= 3 of 255 (measured: <= 2.3)."""
    import matplotlib
    import sklearn.datasets

    images = Path(sklearn.datasets.__file__).parent / "images"
    photos = [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg", images / "china.jpg",
              images / "flower.jpg"]  # 512x600 and 640x427
    with Image.open(photos[1]) as china:
        china.save(tmp_path / "china.png")
    for path in [*photos, tmp_path / "china.png"]:
        with Image.open(path) as img:
            full = img.convert("RGB")
        w0, h0 = full.size
        for h, w in ((16, 16), (48, 32), (32, 48), (64, 40), (64, 64)):
            crop_w, crop_h = min(w0, h0 * w / h), min(h0, w0 * h / w)  # the largest centred region of w:h
            box = ((w0 - crop_w) / 2, (h0 - crop_h) / 2, (w0 + crop_w) / 2, (h0 + crop_h) / 2)
            expected = np.asarray(full.resize((w, h), Image.BICUBIC, box=box)).transpose(2, 0, 1).astype(int)
            diff = np.abs(decode(str(path), (h, w), 3).astype(int) - expected)
            assert diff.mean() <= (3 if path.suffix == ".jpg" else 0), (path.name, (h, w), diff.mean())
