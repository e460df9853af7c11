"""The stacked launcher (hydra/launcher=stacked, the default of `gantrain train -m`): Optuna's batches train as
stacks and each trial gets its own metric, stacks spread over GPUs, a member that died without a word reads
as died, and the launcher is found both from an editable install and from a wheel."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import run_cli, write_mnist
from gantrain.engine.executors import assign_devices, gpus_for
from gantrain.engine.jobs import Job
from gantrain.outputs.status import HEARTBEAT, read_status, write_status

TINY = ["epochs=1", "data=mnist", "data.root=data", "batch_size=20", "hidden_size=32", "latent_size=8",
        "log_every=5", "eval.n=50", "device=cpu", "trainer.threads=1"]


@pytest.fixture
def cwd(tmp_path):
    write_mnist(tmp_path / "data", n=100)
    return tmp_path


def test_optuna_trains_each_batch_of_trials_as_one_stack_and_tells_each_trial_its_metric(cwd):
    import optuna

    result = run_cli("train", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
                     "hydra.sweeper.storage=sqlite:///study.db", "hydra.sweeper.study_name=s",
                     "optim.lr=interval(1e-4,1e-3)", *TINY, "hydra.sweep.dir=opt", cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("one stack (K=2)") == 2 and result.stdout.count("stack of 2 members: jobs") == 2
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{cwd / 'study.db'}").trials
    assert len(trials) == 4
    for trial in trials:  # trial t ran as job t: its value is that job's own metric, not a neighbour's
        metrics = json.loads((cwd / "opt" / str(trial.number) / "metrics.json").read_text())["metrics"]
        overrides = OmegaConf.load(cwd / "opt" / str(trial.number) / ".hydra" / "overrides.yaml")
        assert trial.value == pytest.approx(metrics["fd"]["value"])
        assert f"optim.lr={trial.params['optim.lr']}" in overrides
    assert len({t.value for t in trials}) == 4


def job(name: str, epochs: int = 10, members: int = 1, device: str = "auto") -> list[Job]:
    cfg = OmegaConf.create({"epochs": epochs, "n_critic": 1, "device": device})
    return [Job(cfg, f"run/{name}{k}", name=f"{name}{k}") for k in range(members)]


def test_stacks_spread_over_the_gpus_the_largest_first(monkeypatch):
    """The plan only (a faked device count: nothing trains): 4 stacks of 8, 4, 2 and 2 members over 2 GPUs
    balance to 8 on one and 4 + 2 + 2 on the other; over 3, the two small ones share."""
    stacks = [job("a", members=2), job("b", members=8), job("c", members=4), job("d", members=2)]
    assert assign_devices(stacks, 2) == [1, 0, 1, 1]
    assert assign_devices(stacks, 3) == [2, 0, 1, 2]
    assert assign_devices(stacks, 1) == [0, 0, 0, 0]
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    assert gpus_for(stacks) == 4
    assert gpus_for([job("e", device="cuda:1")]) == 0  # a device the user named: not spread


def test_the_members_per_stack_follow_the_memory_estimate(mnist_root, tmp_path, monkeypatch, caplog):
    """5 jobs that may share a stack, each estimated (plan.member_bytes) at 1/5 of the free memory: the launcher
    keeps half of it free, so stacks of 2, 2 and 1; with room for all, one stack of 5."""
    from conftest import compose_train
    from gantrain.engine import jobs

    cfgs = [compose_train(["device=cpu", "data=mnist", f"data.root={mnist_root}", f"seed={k}"]) for k in range(5)]
    per_member = jobs.member_bytes(cfgs[0], (1, 28, 28), 0)
    assert per_member > 4 * 256 * (784 + 256 + 64)  # at least its weights, gradients and Adam's moments (float32)
    trained = []
    monkeypatch.setattr(jobs, "train_stack", lambda stack, *args: trained.append(len(stack)) or [])
    for free, expected in ((5 * per_member, [2, 2, 1]), (10 * per_member, [5])):
        monkeypatch.setattr(jobs, "free_bytes", lambda device, free=free: free)
        trained.clear()
        with caplog.at_level("INFO", logger="gantrain"):
            jobs.train_group([Job(c, tmp_path / str(k), [], str(k)) for k, c in enumerate(cfgs)])
        assert trained == expected and f"up to {max(expected)} members per stack" in caplog.text


def test_a_job_whose_process_died_reads_as_died(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_status(tmp_path / "here", "running")
    record = json.loads((tmp_path / "here" / "status.json").read_text())
    assert record["pid"] == os.getpid() and read_status(tmp_path / "here")["state"] == "running"
    (tmp_path / "here" / "status.json").write_text(json.dumps({**record, "pid": dead.pid}))
    assert read_status(tmp_path / "here")["state"] == "died" and f"({dead.pid} on" in read_status(tmp_path / "here")["reason"]
    beat = time.time() - 5 * HEARTBEAT  # another host, no heartbeat for 5 beats
    (tmp_path / "there" / ".hydra").mkdir(parents=True)
    (tmp_path / "there" / "status.json").write_text(json.dumps({**record, "host": "elsewhere", "heartbeat": beat}))
    assert read_status(tmp_path / "there")["state"] == "died"
    (tmp_path / "there" / "status.json").write_text(json.dumps({**record, "host": "elsewhere", "heartbeat": time.time()}))
    assert read_status(tmp_path / "there")["state"] == "running"
    assert socket.gethostname() != "elsewhere"


def test_the_launcher_is_found_from_a_wheel_install_too(tmp_path):
    """An editable install is found because gantrain registers the launcher itself; a wheel is found by
    Hydra's own scan of hydra_plugins, without gantrain's command importing anything."""
    repo, source = Path(__file__).parents[1], tmp_path / "source"  # built from a copy: no build/ in the checkout
    shutil.copytree(repo / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, source / name)
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert wheel.returncode == 0, wheel.stderr
    assert "Warning" not in wheel.stdout + wheel.stderr, wheel.stdout + wheel.stderr  # a quiet build: every package listed
    target = tmp_path / "site"
    unpack = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                             *map(str, (tmp_path / "dist").glob("gantrain-*.whl"))], capture_output=True, text=True)
    assert unpack.returncode == 0, unpack.stderr
    probe = ("from hydra.core.plugins import Plugins; from hydra.plugins.launcher import Launcher; "
             "import gantrain, hydra_plugins.gantrain_launcher as p; print(gantrain.__file__, p.__file__); "
             "print(sorted(c.__name__ for c in Plugins.instance().discover(Launcher)))")
    env = {**os.environ, "PYTHONPATH": str(target)}  # the wheel's files before the editable install's
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    assert str(target) in found.stdout.splitlines()[0] and "StackedLauncher" in found.stdout.splitlines()[1]
    # every config group travels in the wheel: each experiment composes from the installed package alone
    experiments = sorted(p.stem for p in (repo / "src" / "gantrain" / "conf" / "experiment").glob("*.yaml"))
    compose = ("import sys; from hydra import compose, initialize_config_module\n"
               "with initialize_config_module('gantrain.conf', version_base=None):\n"
               "    for e in sys.argv[1:]: print(e, compose('train', overrides=['experiment=' + e]).model.name)")
    composed = subprocess.run([sys.executable, "-c", compose, *experiments], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert composed.returncode == 0, composed.stderr
    assert [line.split()[0] for line in composed.stdout.splitlines()] == experiments and experiments
