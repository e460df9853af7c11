"""Slurm, against a real one-node cluster (shared/slurm/start-local-slurm: it installs Slurm with apt where
it can): a sweep's stack runs as one Slurm job; srun starts one run over its tasks; a pre-empted stack on 2
tasks is requeued and every member finishes exactly where an uninterrupted run ends; hydra/launcher=
submitit_slurm still runs one Slurm job per member. Skipped, with the script's reason, where the cluster cannot
start."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import run_cli, write_mnist
from gantrain.outputs.checkpoint import load_checkpoint

SCRIPTS = [os.environ.get("GANTRAIN_SLURM_SCRIPT", ""), Path(__file__).parents[2] / "shared/slurm/start-local-slurm",
           Path("/work/shared/slurm/start-local-slurm")]
pytestmark = pytest.mark.xdist_group("slurm")  # one worker talks to the cluster: jobs run one at a time anyway


@pytest.fixture(scope="session")
def slurm_cpus():
    script = next((Path(s) for s in SCRIPTS if s and Path(s).is_file()), None)
    if script is None:
        pytest.skip("no local Slurm: shared/slurm/start-local-slurm is not beside this checkout (set GANTRAIN_SLURM_SCRIPT)")
    try:  # without OMP_NUM_THREADS (conftest sets 1), which `nproc`, and so the node's CPU count, would follow
        started = subprocess.run([str(script)], capture_output=True, text=True, timeout=600,
                                 env={k: v for k, v in os.environ.items() if not k.startswith("OMP_")})
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


def test_a_preempted_stack_on_two_tasks_is_requeued_and_finishes_where_an_uninterrupted_one_does(cwd, slurm_cpus):
    """A stack of 2 members as one Slurm job of 2 tasks (hydra.launcher.tasks_per_node=2: one run over 2 ranks,
    K x R). Pre-empted in the middle of an epoch (SIGTERM, left alone, then USR2 as submitit's own test sends
    them): both ranks stop at the same step, rank 0 checkpoints every member, submitit requeues the job
    (scontrol requeue), and each member continues in its own dir to the weights of an uninterrupted run of one
    process (float64), no row twice."""
    if slurm_cpus < 2:
        pytest.skip("the local Slurm node has 1 CPU: a 2-task job needs 2")
    write_mnist(cwd / "long", n=2000)  # 200 steps an epoch: long enough to be pre-empted in the middle of one
    args = ["train", "-m", "seed=0,1", "epochs=2", *TINY, "data.root=long", "log_every=50", "trainer.precision=fp64"]
    two_tasks = [*slurm(slurm_cpus)[:3], "hydra.launcher.signal_delay_s=30", "hydra.launcher.cpus_per_task=1",
                 "hydra.launcher.tasks_per_node=2"]
    proc = subprocess.Popen([sys.executable, "-m", "gantrain", *args, *two_tasks, "hydra.sweep.dir=pre"],
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
    while time.time() < deadline and not re.search(r"Epoch\[1/2\] Step\[100/200\]", log.read_text() if log.exists() else ""):
        time.sleep(0.05)
    subprocess.run(["scancel", job_id, "--signal", "SIGTERM"], check=True)  # as submitit's _interrupt(): pre-emption
    subprocess.run(["scancel", job_id, "--signal", "USR2"], check=True)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    text = log.read_text()
    assert "on 2 ranks (cpu), 5 images each" in text
    assert "SIGUSR2: stopped at epoch 1" in text and "steps into epoch 1" in text  # checkpointed, requeued, resumed
    assert statuses(cwd / "pre") == ["done", "done"]
    straight = run_cli(*args, "hydra.sweep.dir=straight", cwd=cwd)  # the same stack here, one process, never interrupted
    assert straight.returncode == 0, straight.stderr
    for j in "01":
        a, b = (load_checkpoint(cwd / d / j / "checkpoints" / "last.pt") for d in ("pre", "straight"))
        assert a["step"] == b["step"] == 400 and a["world_size"] == 2
        assert_equal_in_float64(a, b)
        rows = [line.split(",")[2] for line in (cwd / "pre" / j / "metrics.csv").read_text().splitlines()[1:]]
        assert len(rows) == len(set(rows)) and rows[-1] == "400"  # no row twice after the requeue


def test_submitit_slurm_launcher_runs_one_slurm_job_per_member(cwd, slurm_cpus):
    result = run_cli("train", "-m", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug",
                     "hydra.launcher.timeout_min=5", "hydra.launcher.cpus_per_task=1", "seed=0,1", "epochs=1", *TINY,
                     "hydra.sweep.dir=per", cwd=cwd, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert statuses(cwd / "per") == ["done", "done"]
    assert len(set((cwd / "per" / ".submitit").iterdir())) >= 2  # one Slurm task each


def reference(cwd: Path, root: str, *overrides: str) -> dict:
    """The same run trained here, in one process: what 2 ranks must equal in float64 (test_distributed.py)."""
    from conftest import compose_train
    from gantrain.engine.jobs import train

    cfg = compose_train([*TINY, f"data.root={cwd / root}", "trainer.precision=fp64", *overrides])
    train(cfg, cwd / f"reference-{root}", [])
    return load_checkpoint(cwd / f"reference-{root}" / "checkpoints" / "last.pt")


def assert_equal_in_float64(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for net in ("G", "D"):
        for key, value in b[net].items():
            assert torch.allclose(a[net][key], value, rtol=1e-9, atol=1e-12), (net, key)


def test_srun_starts_one_run_over_its_tasks(cwd, slurm_cpus):
    """`srun -n 2 gantrain train` (its own allocation here; inside an sbatch script the same): ranks from Slurm's
    variables, the master the job's first node; it trains to the end with gloo and equals the 1-process run (so
    torchrun's) in float64. Rank 0 alone prints and writes."""
    if slurm_cpus < 2:
        pytest.skip("the local Slurm node has 1 CPU: a 2-task step needs 2")
    done = subprocess.run(["srun", "-n", "2", "-c", "1", sys.executable, "-m", "gantrain", "train", *TINY, "epochs=2",
                           "trainer.precision=fp64", "hydra.run.dir=srun"], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 ranks (cpu), 5 images each" in done.stdout and done.stdout.count("Epoch[2/2] Step[40/40]") == 1
    ckpt = load_checkpoint(cwd / "srun" / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2
    assert_equal_in_float64(ckpt, reference(cwd, "data", "epochs=2"))
