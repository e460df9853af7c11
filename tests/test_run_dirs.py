"""Data safety: runs started together never share a run dir, a named dir that holds a run is refused
before anything is written, and checkpoints get the mode any file the user writes gets."""
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import run_cli, write_mnist
from gantrain.outputs.checkpoint import atomic_save, load_checkpoint
from gantrain.outputs.rundirs import new_dir

TINY = ["epochs=1", "data=mnist", "data.root=data", "batch_size=20", "hidden_size=16", "latent_size=8",
        "eval.enabled=false", "device=cpu", "trainer.threads=1", "log_every=1000"]


def test_four_runs_started_together_end_in_four_dirs(tmp_path):
    """The shape of `for s in 0 1 2 3; do gantrain train seed=$s & done`: same second, same time-named dir."""
    write_mnist(tmp_path / "data", n=60)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    procs = [subprocess.Popen([sys.executable, "-m", "gantrain", "train", f"seed={s}", *TINY], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for s in range(4)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    dirs = sorted((tmp_path / "outputs" / "train").glob("*/*"))
    assert len(dirs) == 4, dirs
    seeds = set()
    for d in dirs:
        assert (d / ".hydra" / "config.yaml").is_file() and (d / "train.log").read_text().count("Epoch[") == 1
        seeds.add(load_checkpoint(d / "checkpoints" / "last.pt")["config"]["seed"])
    assert seeds == {0, 1, 2, 3}  # each run's own checkpoint, none overwritten


def test_a_named_dir_that_holds_a_run_is_refused_and_left_alone(tmp_path):
    write_mnist(tmp_path / "data", n=60)
    first = run_cli("train", *TINY, "hydra.run.dir=mine", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "mine").rglob("*") if p.is_file()}
    for args in (["train", *TINY, "hidden_size=32", "hydra.run.dir=mine"], ["train", "-m", "seed=0,1", *TINY, "hydra.sweep.dir=mine"]):
        again = run_cli(*args, cwd=tmp_path)
        assert again.returncode == 1 and "Traceback" not in again.stderr
        assert again.stderr.strip().count("\n") == 0 and "mine already holds a run started" in again.stderr
        assert "choose another hydra." in again.stderr
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "mine").rglob("*") if p.is_file()}
    assert after == before  # not one byte of the first run changed, not one file added


def test_new_dir_takes_the_next_free_name(tmp_path):
    assert new_dir(str(tmp_path / "a" / "10-00-00")) == str(tmp_path / "a" / "10-00-00")
    assert new_dir(str(tmp_path / "a" / "10-00-00")) == str(tmp_path / "a" / "10-00-00_2")
    assert new_dir(str(tmp_path / "a" / "10-00-00")) == str(tmp_path / "a" / "10-00-00_3")


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_checkpoints_follow_the_umask_like_any_file(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_save(tmp_path / "last.pt", {"w": torch.zeros(2)})
        (tmp_path / "plain.txt").write_text("a file written as usual")
    finally:
        os.umask(old)
    mode = lambda name: (tmp_path / name).stat().st_mode & 0o777
    assert mode("last.pt") == mode("plain.txt") == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_command_refused_for_bad_input_leaves_no_run_dir(tmp_path, mnist_root, one_epoch_ckpt):
    """A refused resume, sample or eval used to leave outputs/<command>/<date>/<time>/ behind (train with a
    'failed' status.json), which gantrain report then listed."""
    refused = [("train", "resume=missing.pt", "data=mnist", f"data.root={mnist_root}"),
               ("train", f"resume={one_epoch_ckpt}", "model=dcgan"),  # the checkpoint's network is another
               ("sample", "ckpt=missing.pt"), ("eval", f"ckpt={one_epoch_ckpt}", "n=1")]
    for args in refused:
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, (args, result.stderr)
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.*")), list((tmp_path / "outputs").rglob("*"))
    kept = run_cli("train", "data=mnist", f"data.root={mnist_root}", "epochs=1", "batch_size=20", "hidden_size=8",
                   "latent_size=8", "eval.enabled=false", "on_nan=stop", "optim.lr=inf", cwd=tmp_path)
    assert kept.returncode == 1 and "non-finite" in kept.stderr  # refused after training started: its files stay
    (run,) = (tmp_path / "outputs" / "train").glob("*/*")
    assert (run / "metrics.csv").is_file() and json.loads((run / "status.json").read_text())["state"] == "failed"
