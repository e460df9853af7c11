"""Faults: signals, kill -9, NaN losses and a full disk must cost at most the last checkpoint interval."""
import errno
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import open_dict

from conftest import assert_same_state, write_mnist
from gantrain.outputs import checkpoint
from gantrain.outputs.checkpoint import load_checkpoint
from gantrain.errors import UserError
from gantrain.components.losses import BCELoss
from gantrain.components.registry import REGISTRIES
from gantrain.engine.jobs import train

# long enough epochs to be interrupted in the middle: 2,400 images, batch 10 -> 240 steps per epoch
SLOW = ["device=cpu", "batch_size=10", "latent_size=32", "hidden_size=256", "trainer.threads=1", "log_every=20",
        "eval.enabled=false",
        "epochs=3"]


@pytest.fixture(scope="session")  # once per test worker, however its tests interleave with others
def slow_root(tmp_path_factory):
    return write_mnist(tmp_path_factory.mktemp("slow"), n=2400)


@pytest.fixture(scope="session")  # once per test worker, however its tests interleave with others
def straight(slow_root, tmp_path_factory):
    """The weights of an uninterrupted run, through the same CLI."""
    cwd = tmp_path_factory.mktemp("straight")
    done = cli(cwd, "hydra.run.dir=run", f"data.root={slow_root}")
    assert done.returncode == 0, done.stderr
    return load_checkpoint(cwd / "run" / "checkpoints" / "last.pt")


def cli(cwd, *args, wait=True):
    cmd = [sys.executable, "-m", "gantrain", "train", *SLOW, "data=mnist", *args]
    if wait:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_mid_epoch_and_resume_is_exact(tmp_path, slow_root, straight, sig):
    proc = cli(tmp_path, "hydra.run.dir=first", f"data.root={slow_root}", wait=False)
    for line in proc.stdout:  # wait until training is well under way, then signal
        if "Epoch[2/3] Step[20/240]" in line:
            proc.send_signal(sig)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    ckpt_path = tmp_path / "first" / "checkpoints" / "last.pt"
    assert f"resume with: gantrain train resume={ckpt_path}" in out
    assert "Traceback" not in err
    mid = load_checkpoint(ckpt_path)
    assert mid["epoch"] == 1 and 20 <= mid["position"] < 240 and mid["order"].shape == (2400,)

    resumed = cli(tmp_path, "hydra.run.dir=second", f"resume={ckpt_path}")
    assert resumed.returncode == 0, resumed.stderr
    assert f"({mid['position']} steps into epoch 2)" in resumed.stdout
    final = load_checkpoint(tmp_path / "second" / "checkpoints" / "last.pt")
    assert final["step"] == straight["step"] == 720
    assert_same_state(final, straight)  # G, D and both optimizers


def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_weights(tmp_path):
    """Short epochs (600 images, batch 10: 60 steps, a checkpoint after each) so kills land all over a run;
    two of the kills are aimed at a checkpoint being written (its temp file on disk), the atomic write's case."""
    root = write_mnist(tmp_path / "data", n=600)
    args = [f"data.root={root}", "epochs=3", "log_every=10"]
    done = cli(tmp_path, "hydra.run.dir=straight", *args)
    assert done.returncode == 0, done.stderr
    rng = random.Random(1234)
    latest, kinds, in_write = None, [], 0  # the newest complete checkpoint on disk; how each kill ended; kills mid-write
    for attempt in range(4):
        resume = [f"resume={latest}"] if latest else []
        proc = cli(tmp_path, f"hydra.run.dir=run{attempt}", *args, *resume, wait=False)
        if attempt in (1, 2):  # aimed: the moment a checkpoint's temp file appears beside last.pt
            temp = lambda: list((tmp_path / f"run{attempt}" / "checkpoints").glob(".last.pt.*.tmp"))
            deadline = time.monotonic() + 120
            while not temp() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.0002)
            proc.kill()
            in_write += bool(temp())  # still there after the kill: it landed inside the write
        else:
            lines = rng.randint(0, 9)  # 0: kill during start-up; else after that many log lines (10 steps each)
            if lines == 0:
                time.sleep(rng.uniform(0.5, 2.0))
            for line in proc.stdout if lines else ():
                lines -= line.startswith("Epoch[")
                if lines == 0:
                    break
            time.sleep(rng.uniform(0, 0.05))  # land anywhere: inside a step or a sample grid
            proc.kill()
        proc.communicate()
        kinds.append(proc.returncode)
        for path in tmp_path.glob("run*/checkpoints/last.pt"):  # every last.pt on disk loads: none half-written
            step = load_checkpoint(path)["step"]
            if latest is None or step > load_checkpoint(latest)["step"]:
                latest = path
    assert kinds.count(-signal.SIGKILL) >= 3  # the kills did land while runs were going
    assert in_write >= 1, "no kill landed inside a checkpoint write"
    if latest is None or load_checkpoint(latest)["epoch"] < 3:
        finish = cli(tmp_path, "hydra.run.dir=final", *args, *([f"resume={latest}"] if latest else []))
        assert finish.returncode == 0, finish.stderr
        latest = tmp_path / "final" / "checkpoints" / "last.pt"
    assert_same_state(load_checkpoint(latest), load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt"))


class NaNAt(BCELoss):
    """BCE, except that d_loss is NaN at one call: a loss that diverges at a known step."""

    def __init__(self, at_call: int):
        super().__init__()
        self.calls, self.at_call = 0, at_call

    def d_loss(self, real, fake):
        self.calls += 1
        loss = super().d_loss(real, fake)
        return loss * float("nan") if self.calls == self.at_call else loss


@pytest.fixture
def nan_loss():
    REGISTRIES["loss"]["nan_at"] = NaNAt
    yield
    del REGISTRIES["loss"]["nan_at"]


def with_nan_loss(cfg, at_call):
    with open_dict(cfg):
        cfg.loss = {"name": "nan_at", "at_call": at_call}
    return cfg


def test_nan_stops_and_names_the_step_and_the_last_good_checkpoint(cfg, tmp_path, nan_loss):
    cfg = with_nan_loss(cfg, at_call=8)  # 6 steps per epoch: step 8 is in epoch 2
    with pytest.raises(UserError) as e:
        train(cfg, tmp_path, [])
    message = str(e.value)
    assert "non-finite at step 8" in message and f"{tmp_path / 'checkpoints' / 'last.pt'} (epoch 1)" in message
    assert "resume from it with a lower optim.lr" in message and "d_loss nan" in message
    good = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert good["epoch"] == 1  # the epoch-1 checkpoint is intact and holds finite weights
    assert all(torch.isfinite(v).all() for v in good["G"].values())


def test_nan_before_any_checkpoint_says_to_start_again(cfg, tmp_path, nan_loss):
    with pytest.raises(UserError) as e:
        train(with_nan_loss(cfg, at_call=2), tmp_path, [])
    assert "no checkpoint was written yet; start again with a lower optim.lr, or set on_nan=skip" in str(e.value)
    assert "none yet" not in str(e.value) and "Resume from it" not in str(e.value)


def test_nan_skip_skips_the_update_and_counts_it(cfg, tmp_path, nan_loss, caplog):
    cfg = with_nan_loss(cfg, at_call=2)
    cfg.on_nan, cfg.log_every = "skip", 1
    with caplog.at_level("INFO", logger="gantrain"):
        train(cfg, tmp_path, [])
    final = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert final["step"] == 12 and all(torch.isfinite(v).all() for v in final["D"].values())
    assert "skipped 1 non-finite updates" in caplog.text
    assert "Step[1/6]" in caplog.text and "skipped" not in caplog.text.split("Step[2/6]")[0]


def test_full_disk_keeps_the_previous_checkpoint(cfg, tmp_path, monkeypatch):
    real_save = torch.save

    def save_then_fill_the_disk(obj, f):
        temp_file = os.readlink(f"/proc/self/fd/{f.fileno()}")  # .last.pt.XXXX.tmp beside the checkpoint
        if ".last.pt." in temp_file and obj["epoch"] == 2:  # the second last.pt: half written, then the disk is full
            f.write(b"x" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", save_then_fill_the_disk)
    with pytest.raises(OSError, match="no space left on the device .the previous last.pt, if any, is intact") as e:
        train(cfg, tmp_path, [])
    assert e.value.filename == str(tmp_path / "checkpoints" / "last.pt")  # the checkpoint, not its temp file
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["epoch"] == 1
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))  # no temp file left (best.pt may be written beside)


def test_a_full_disk_at_the_first_checkpoint_is_one_line_naming_the_file(mnist_root, tmp_path, monkeypatch):
    """torch's zip writer reports a full disk as a RuntimeError ('unexpected pos'): it was a 60-line traceback."""
    from conftest import TINY, run_cli

    def full(obj, f):
        f.write(b"x" * 64)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    result = run_cli("train", *TINY, "data=mnist", f"data.root={mnist_root}", "eval.enabled=false", "hydra.run.dir=run",
                     cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and f"{tmp_path / 'run' / 'checkpoints' / 'last.pt'}" in line and "the write failed" in line
    assert not list((tmp_path / "run" / "checkpoints").glob("*"))  # no half file


@pytest.mark.parametrize("write", ["sample grid", "metrics.csv"])
def test_a_full_disk_at_any_write_is_one_line_naming_the_file(mnist_root, tmp_path, monkeypatch, write):
    from PIL import Image

    from conftest import TINY, run_cli
    from gantrain.engine import member

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # a file object's write: no file name in it

    if write == "sample grid":
        monkeypatch.setattr(Image.Image, "save", full)
        expected = tmp_path / "run" / "real_images.png"  # the first picture a run writes
    else:
        class FullFile:
            write, close = full, lambda self: None

        monkeypatch.setattr(member.artifacts, "open_metrics", lambda path, columns: FullFile())
        expected = tmp_path / "run" / "metrics.csv"
    result = run_cli("train", *TINY, "data=mnist", f"data.root={mnist_root}", "eval.enabled=false", "hydra.run.dir=run",
                     cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"file system error on {expected}: No space left on device" in result.stderr and result.stderr.count("\n") == 1


def test_a_log_file_on_a_real_full_disk_is_one_warning_not_a_traceback_per_line(tmp_path, capfd):
    import logging

    from conftest import tmpfs
    from gantrain.processes import log_file

    with tmpfs(tmp_path / "small", "64k") as small:
        handler = log_file(small / "train.log")
        logger = logging.Logger("full-disk-test")
        logger.addHandler(handler)
        with open(small / "filler", "wb", buffering=0) as f:  # fill the disk, for real
            try:
                while True:
                    f.write(b"x" * 4096)
            except OSError as e:
                assert e.errno == errno.ENOSPC
        for i in range(50):
            logger.info(f"Epoch[1/1] Step[{i}/50] d_loss 0.5 g_loss 0.7 D(x) 0.5 D(G(z)) 0.5")
        handler.close()
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "--- Logging error ---" not in err and "Traceback" not in err
    assert f"gantrain: warning: could not write {small / 'train.log'} (No space left on device); its lines go on" in err


FULL = OSError(errno.ENOSPC, "No space left on device")


def fail_writes_of(monkeypatch, name: str) -> None:
    """A full disk for the one file `name` (or its temp file): its writes raise ENOSPC, as a write() does."""
    from pathlib import Path

    import matplotlib.figure

    from gantrain.processes import LogFile

    class FullStream:
        def write(self, text):
            raise FULL

        flush = close = lambda self: None

    if name in ("train.log", "sweep.log"):
        opened = LogFile._open
        monkeypatch.setattr(LogFile, "_open", lambda self: FullStream() if self.baseFilename.endswith(name) else opened(self))
    elif name == "curves.png":
        savefig = matplotlib.figure.Figure.savefig
        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, path, **kw: (
            (_ for _ in ()).throw(FULL) if str(path).endswith(name) else savefig(self, path, **kw)))
    elif name == "best.pt":
        real_save = checkpoint.torch.save

        def save(obj, f):
            if f".{name}." in os.readlink(f"/proc/self/fd/{f.fileno()}"):
                raise FULL
            real_save(obj, f)

        monkeypatch.setattr(checkpoint.torch, "save", save)
    else:  # status.json, metrics.json, report.html: written whole by Path.write_text (to a temp file)
        write_text = Path.write_text
        monkeypatch.setattr(Path, "write_text", lambda self, text, *a, **kw: (
            (_ for _ in ()).throw(FULL) if name in self.name else write_text(self, text, *a, **kw)))


@pytest.mark.parametrize("name", ["train.log", "sweep.log", "status.json", "curves.png"])
def test_a_full_disk_at_a_log_or_status_file_is_one_warning_and_training_goes_on(mnist_root, tmp_path, monkeypatch, name):
    from conftest import TINY, run_cli

    fail_writes_of(monkeypatch, name)
    sweep = name == "sweep.log"
    where = ["-m", "seed=0", "hydra.sweep.dir=run"] if sweep else ["hydra.run.dir=run"]
    result = run_cli("train", *where, *TINY, "data=mnist", f"data.root={mnist_root}", "eval.n=40", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [l for l in (result.stdout + result.stderr).splitlines() if "could not write" in l]
    assert len(warnings) == 1 and name in warnings[0] and "No space left on device" in warnings[0], warnings
    assert "Traceback" not in result.stderr and "Logging error" not in result.stderr
    job = tmp_path / "run" / ("0" if sweep else "")
    assert (job / "checkpoints" / "last.pt").exists() and (job / "metrics.json").exists()  # the run went on to its end


@pytest.mark.parametrize("name", ["metrics.json", "best.pt"])
def test_a_full_disk_at_a_result_file_stops_with_one_line_naming_it(mnist_root, tmp_path, monkeypatch, name):
    from conftest import TINY, run_cli

    fail_writes_of(monkeypatch, name)
    result = run_cli("train", *TINY, "data=mnist", f"data.root={mnist_root}", "eval.n=40", "eval_every=1",
                     "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    expected = tmp_path / "run" / (name if name == "metrics.json" else f"checkpoints/{name}")
    assert f"file system error on {expected}: " in result.stderr and "no space left on" in result.stderr.lower()
    assert result.stderr.count("\n") == 1 and not list((tmp_path / "run").rglob("*.tmp"))


def test_a_full_disk_at_a_report_file_is_one_line_naming_it(mnist_root, tmp_path, monkeypatch):
    from conftest import TINY, run_cli

    done = run_cli("train", *TINY, "data=mnist", f"data.root={mnist_root}", "eval.enabled=false", "hydra.run.dir=run",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    fail_writes_of(monkeypatch, "report.html")
    result = run_cli("report", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"file system error on {tmp_path / 'run' / 'report.html'}: No space left on device" in result.stderr
