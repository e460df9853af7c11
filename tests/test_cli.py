"""The real CLI in a subprocess: a tiny run's artifacts and log, Hydra features, and one-line errors."""
import csv

import pytest
from PIL import Image

from conftest import N_TINY, only_run_dir, run_cli

TINY = ["device=cpu", "batch_size=20", "latent_size=8", "hidden_size=32", "trainer.threads=1"]


@pytest.fixture(scope="session")  # once per test worker, however its tests interleave with others
def tiny_run(tmp_path_factory, mnist_root):
    """One CLI run of 2 tiny epochs (6 steps each), logging every 4 steps."""
    cwd = tmp_path_factory.mktemp("cli")
    result = run_cli("train", *TINY, "epochs=2", "log_every=4", "data=mnist", f"data.root={mnist_root}", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd, result


def test_tiny_run_writes_every_artifact(tiny_run):
    cwd, _ = tiny_run
    run_dir = only_run_dir(cwd)
    assert run_dir.parent.parent == cwd / "outputs" / "train"  # outputs/train/<date>/<time>
    for name in (".hydra/config.yaml", "train.log", "metrics.csv", "real_images.png", "curves.png",
                 "samples/epoch_0001.png", "samples/epoch_0002.png", "checkpoints/last.pt"):
        assert (run_dir / name).is_file(), name
    assert Image.open(run_dir / "samples/epoch_0002.png").size == Image.open(run_dir / "real_images.png").size
    assert not list(run_dir.glob("checkpoints/*.tmp"))  # atomic writes leave no temp files


def test_log_lines_at_the_expected_steps(tiny_run):
    cwd, result = tiny_run
    steps_per_epoch = N_TINY // 20
    lines = [l for l in result.stdout.splitlines() if l.startswith("Epoch[")]
    # log_every=4 over 12 global steps: steps 4, 8, 12 = epoch 1 step 4, epoch 2 step 2, epoch 2 step 6
    assert [l.split(" d_loss")[0] for l in lines] == [
        f"Epoch[1/2] Step[4/{steps_per_epoch}]", f"Epoch[2/2] Step[2/{steps_per_epoch}]",
        f"Epoch[2/2] Step[6/{steps_per_epoch}]"]
    for line in lines:
        assert " D(x) " in line and " D(G(z)) " in line and " g_loss " in line
    log_file = (only_run_dir(cwd) / "train.log").read_text()
    assert all(line in log_file for line in lines)
    rows = list(csv.DictReader(open(only_run_dir(cwd) / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [4, 8, 12]
    assert all(0 <= float(r["d_x"]) <= 1 and 0 <= float(r["d_g_z"]) <= 1 for r in rows)


def test_no_command_and_unknown_command_print_usage_and_exit_2(tmp_path):
    for args in ((), ("frobnicate",)):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2
        assert "usage: gantrain COMMAND" in result.stderr and "train" in result.stderr and "sample" in result.stderr


def test_hydra_features_pass_through(tmp_path):
    job = run_cli("train", "epochs=7", "--cfg", "job", cwd=tmp_path)
    assert job.returncode == 0 and "epochs: 7" in job.stdout and "hidden_size: 256" in job.stdout
    help_ = run_cli("train", "--help", cwd=tmp_path)
    assert help_.returncode == 0 and "batch_size" in help_.stdout
    assert run_cli("--help", cwd=tmp_path).returncode == 0
    assert not (tmp_path / "outputs").exists()  # --cfg and --help run nothing


def test_shell_completion_strips_the_command_word(tmp_path):
    result = run_cli("-sc", "query=bash", cwd=tmp_path, env={"COMP_LINE": "gantrain train optim=a"})
    assert result.returncode == 0
    assert "optim=adam" in result.stdout and "optim=adamw" in result.stdout
