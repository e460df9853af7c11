"""Slurm, against a real one-node cluster (shared/slurm/start-local-slurm: it installs Slurm with apt where
it can): a sweep's stack runs as one Slurm job; a pre-empted stack is requeued and every member finishes
exactly where an uninterrupted run ends; hydra/launcher=submitit_slurm still runs one Slurm job per member.
Skipped, with the script's reason, where the cluster cannot start."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import assert_same_state, run_cli, write_mnist
from gantrain.outputs.checkpoint import load_checkpoint

SCRIPTS = [os.environ.get("GANTRAIN_SLURM_SCRIPT", ""), Path(__file__).parents[2] / "shared/slurm/start-local-slurm",
           Path("/work/shared/slurm/start-local-slurm")]
pytestmark = pytest.mark.xdist_group("slurm")  # one worker talks to the cluster: jobs run one at a time anyway


@pytest.fixture(scope="session")
def slurm_cpus():
    script = next((Path(s) for s in SCRIPTS if s and Path(s).is_file()), None)
    if script is None:
        pytest.skip("no local Slurm: shared/slurm/start-local-slurm is not beside this checkout (set GANTRAIN_SLURM_SCRIPT)")
    try:
        started = subprocess.run([str(script)], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"no local Slurm: {script} did not run ({e})")
    last = (started.stdout.strip().splitlines() or [started.stderr.strip()[-200:]])[-1]
    if started.returncode != 0:
        pytest.skip(f"no local Slurm: {last}")
    return int(re.search(r"(\d+) cpus", last).group(1))


TINY = ["data=mnist", "data.root=data", "batch_size=10", "hidden_size=32", "latent_size=8", "eval.enabled=false",
        "device=cpu", "trainer.threads=1", "log_every=10"]


def slurm(cpus: int) -> list[str]:
    return ["hydra.launcher.executor=slurm", "hydra.launcher.partition=debug", "hydra.launcher.timeout_min=10",
            f"hydra.launcher.cpus_per_task={min(cpus, 2)}", "hydra.launcher.signal_delay_s=30"]


@pytest.fixture
def cwd(tmp_path):
    write_mnist(tmp_path / "data", n=400)  # 40 steps an epoch
    return tmp_path


def statuses(sweep: Path) -> list[str]:
    return [json.loads((sweep / j / "status.json").read_text())["state"] for j in "01"]


def test_a_stack_runs_as_one_slurm_job(cwd, slurm_cpus):
    result = run_cli("train", "-m", "seed=0,1", "epochs=1", *TINY, *slurm(slurm_cpus), "hydra.sweep.dir=sw", cwd=cwd,
                     timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(re.findall(r"Slurm job \d+: jobs 0,1 \(K=2\)", result.stdout)) == 1
    assert statuses(cwd / "sw") == ["done", "done"]
    slurm_logs = list((cwd / "sw" / ".submitit").glob("*/*_log.out"))
    assert len(slurm_logs) == 1 and "stack of 2 members" in slurm_logs[0].read_text()  # one Slurm job: the stack
    assert load_checkpoint(cwd / "sw" / "1" / "checkpoints" / "last.pt")["step"] == 40


def test_a_preempted_stack_is_requeued_and_finishes_where_an_uninterrupted_one_does(cwd, slurm_cpus):
    write_mnist(cwd / "long", n=3000)  # 300 steps an epoch: long enough to be pre-empted in the middle of one
    args = ["train", "-m", "seed=0,1", "epochs=2", *TINY, "data.root=long", "log_every=50"]
    proc = subprocess.Popen([sys.executable, "-m", "gantrain", *args, *slurm(slurm_cpus), "hydra.sweep.dir=pre"],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job_id = None
    for line in proc.stdout:
        found = re.search(r"Slurm job (\d+): jobs 0,1", line)
        if found:
            job_id = found.group(1)
            break
    assert job_id, "the stack was not submitted"
    log = cwd / "pre" / "1" / "train.log"
    deadline = time.time() + 120
    while time.time() < deadline and not re.search(r"Epoch\[1/2\] Step\[100/300\]", log.read_text() if log.exists() else ""):
        time.sleep(0.05)
    subprocess.run(["scancel", job_id, "--signal", "SIGTERM"], check=True)  # as submitit's _interrupt(): pre-emption
    subprocess.run(["scancel", job_id, "--signal", "USR2"], check=True)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    text = log.read_text()
    assert "SIGUSR2: stopped at epoch 1" in text and "steps into epoch 1" in text  # checkpointed, requeued, resumed
    assert statuses(cwd / "pre") == ["done", "done"]
    straight = run_cli(*args, "hydra.sweep.dir=straight", cwd=cwd)  # the same stack here, never interrupted
    assert straight.returncode == 0, straight.stderr
    for j in "01":
        a, b = (load_checkpoint(cwd / d / j / "checkpoints" / "last.pt") for d in ("pre", "straight"))
        assert a["step"] == b["step"] == 600
        assert_same_state(a, b)  # G, D and both optimizers
        rows = [line.split(",")[2] for line in (cwd / "pre" / j / "metrics.csv").read_text().splitlines()[1:]]
        assert len(rows) == len(set(rows))  # no row twice after the requeue


def test_submitit_slurm_launcher_runs_one_slurm_job_per_member(cwd, slurm_cpus):
    result = run_cli("train", "-m", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug",
                     "hydra.launcher.timeout_min=5", "hydra.launcher.cpus_per_task=1", "seed=0,1", "epochs=1", *TINY,
                     "hydra.sweep.dir=per", cwd=cwd, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert statuses(cwd / "per") == ["done", "done"]
    assert len(set((cwd / "per" / ".submitit").iterdir())) >= 2  # one Slurm task each
