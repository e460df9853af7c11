"""A resumed run is one run: best.pt is the best of the whole training whichever way it resumes (a new run dir,
resume=auto, in place as a Slurm requeue does, as a member of a stack), one MLflow / W&B run across an
interruption, and the default run says nothing about settings nobody made."""
import copy
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import compose_train, require, run_cli, write_mnist
from gantrain.engine import jobs, loop
from gantrain.engine.jobs import Job, train, train_group
from gantrain.outputs.checkpoint import load_checkpoint


@pytest.fixture
def scripted(monkeypatch):
    """Evaluations that score what the test says, in the order they happen (one list per member of a stack):
    the real metrics cannot be steered into 'better, then worse'."""
    scores: list[list] = []  # "stop": the run is stopped there, as by SIGTERM, before that epoch's checkpoint

    def evaluate_stack(sample, data, data_name, latent_size, num_classes, seeds, ns, features, weights, ranks=None,
                       ref=None, ref_protocol=None):
        values = [scores[j].pop(0) for j in range(len(ns))]
        if "stop" in values:
            raise SystemExit(128 + signal.SIGTERM)
        return [{"fd": {"value": v, "n_real": 40, "n_fake": 40 if n == "auto" else n, "features": "classifier"}}
                for v, n in zip(values, ns)]

    monkeypatch.setattr(loop, "evaluate_stack", evaluate_stack)
    return scores


def cfg_for(mnist_root, *overrides):
    return compose_train(["device=cpu", "batch_size=20", "latent_size=8", "hidden_size=16", "log_every=2",
                          "trainer.threads=1", "eval_every=1", "data=mnist", f"data.root={mnist_root}", *overrides])


def best_of(run_dir) -> dict:
    ckpt = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    return {"epoch": ckpt["epoch"], **ckpt["best"]}


def test_a_resume_into_a_new_run_dir_keeps_the_best_of_the_whole_training(mnist_root, tmp_path, scripted, caplog):
    scripted.append([5.0, 3.0])  # epoch 2 is the best
    train(cfg_for(mnist_root, "epochs=2"), tmp_path / "first", [])
    assert best_of(tmp_path / "first")["epoch"] == 2
    assert load_checkpoint(tmp_path / "first" / "checkpoints" / "last.pt")["best"]["score"] == 3.0  # this epoch's too
    scripted[0] = [4.0, 3.5]  # every evaluation after the resume is worse than epoch 2's
    resumed = cfg_for(mnist_root, "epochs=4", f"resume={tmp_path / 'first' / 'checkpoints' / 'last.pt'}")
    job = Job(resumed, tmp_path / "second", ["epochs=4", f"resume={resumed.resume}"])
    assert jobs.prepare(job, multirun=False)
    train_group([job])
    best = best_of(tmp_path / "second")
    assert best["epoch"] == 2 and best["score"] == 3.0 and best["protocol"]["metric"] == "fd"
    assert os.path.samefile(tmp_path / "second" / "checkpoints" / "best.pt", tmp_path / "first" / "checkpoints" / "best.pt")
    assert load_checkpoint(tmp_path / "second" / "checkpoints" / "last.pt")["best"]["epoch"] == 2
    # a changed protocol starts a new best, saying why
    scripted[0] = [9.0]
    changed = cfg_for(mnist_root, "epochs=5", "eval.n=30", f"resume={tmp_path / 'second' / 'checkpoints' / 'last.pt'}")
    job = Job(changed, tmp_path / "third", ["epochs=5", "eval.n=30", f"resume={changed.resume}"])
    assert jobs.prepare(job, multirun=False)
    with caplog.at_level("INFO", logger="gantrain"):
        train_group([job])
    assert "best.pt starts anew: its best (3 at epoch 2) was measured as" in caplog.text and "'n_fake': 30" in caplog.text
    assert best_of(tmp_path / "third")["epoch"] == 5 and best_of(tmp_path / "second")["epoch"] == 2  # the old one intact


def test_a_requeue_in_place_and_a_stack_member_keep_the_best(mnist_root, tmp_path, scripted):
    """A Slurm requeue continues each member in its own dir (continue_in_place) from its last.pt (epoch 2 here:
    ckpt_every=2), behind an evaluation that was the best (epoch 3); after it, only worse ones."""
    cfgs = [cfg_for(mnist_root, "epochs=4", "ckpt_every=2"), cfg_for(mnist_root, "epochs=4", "ckpt_every=2", "seed=1")]
    scripted += [[5.0, 4.0, 2.0, "stop"], [4.0, 6.0, 7.0, "stop"]]  # member 0: epoch 3 best; member 1: epoch 1
    stack = [Job(copy.deepcopy(c), tmp_path / f"m{k}", [], str(k), own_log=True) for k, c in enumerate(cfgs)]
    with pytest.raises(SystemExit):
        train_group(stack)
    assert load_checkpoint(tmp_path / "m0" / "checkpoints" / "last.pt")["best"]["score"] == 4.0  # epoch 2's view
    for job in stack:
        assert jobs.continue_in_place(job)
    scripted[:] = [[3.0, 2.5], [5.0, 4.5]]  # epochs 3 and 4 again: worse than each member's best
    train_group(stack)
    assert best_of(tmp_path / "m0")["epoch"] == 3 and best_of(tmp_path / "m0")["score"] == 2.0
    assert best_of(tmp_path / "m1")["epoch"] == 1 and best_of(tmp_path / "m1")["score"] == 4.0
    assert load_checkpoint(tmp_path / "m0" / "checkpoints" / "last.pt")["best"]["score"] == 2.0


def test_resume_auto_keeps_the_best_of_the_interrupted_run(tmp_path, scripted):
    write_mnist(tmp_path / "data", n=120)
    setup = ["epochs=3", "data=mnist", "data.root=data", "batch_size=20", "hidden_size=16", "latent_size=8", "device=cpu",
             "eval_every=1", "resume=auto", "seed=0"]
    scripted.append([2.0, 5.0, "stop"])
    first = run_cli("train", "-m", *setup, "hydra.sweep.dir=first", cwd=tmp_path)
    assert first.returncode == 128 + signal.SIGTERM, first.stderr
    scripted[0] = [4.0]
    again = run_cli("train", "-m", *setup, "hydra.sweep.dir=second", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert best_of(tmp_path / "second" / "0")["epoch"] == 1 and best_of(tmp_path / "second" / "0")["score"] == 2.0


def wandb_runs(run_dir):
    from test_trackers import wandb_records

    out = []
    for run_file in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        records = list(wandb_records(run_file))
        header = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        key = lambda item: item.key or "/".join(item.nested_key)
        steps = [r.history.step.num for r in records if r.WhichOneof("record_type") == "history"
                 and any(key(i) == "train/g_loss" for i in r.history.item)]
        exits = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
        out.append((header.run_id, steps, exits))
    return out


def test_a_training_killed_and_resumed_is_one_tracker_run_without_a_step_twice(tmp_path):
    """kill -9 after the run logged past its last.pt (epoch 1's): the resume trains those steps again, and
    the trackers, which have them, skip them (MLflow by its store; W&B, whose service loses what it had not
    flushed, by metrics.csv)."""
    mlflow = require("mlflow", "trackers")
    require("wandb", "trackers")
    write_mnist(tmp_path / "data", n=600)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["train", "data=mnist", "data.root=data", "batch_size=10", "hidden_size=16", "latent_size=8", "epochs=3",
            "log_every=5", "eval.enabled=false", "device=cpu", "logger=[mlflow,wandb]", f"logger.mlflow.tracking_uri={store}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "-m", "gantrain", *args, "hydra.run.dir=first"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "Epoch[2/3] Step[30/60]" in line:
            proc.kill()
            break
    proc.communicate(timeout=120)
    client = mlflow.tracking.MlflowClient(store)
    mid = load_checkpoint(tmp_path / "first" / "checkpoints" / "last.pt")
    assert mid["epoch"] == 1 and mid["position"] == 0 and mid["trackers"]["mlflow"]
    resumed = run_cli(*args, f"resume={tmp_path / 'first' / 'checkpoints' / 'last.pt'}", "hydra.run.dir=second",
                      cwd=tmp_path, env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert resumed.returncode == 0, resumed.stderr
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])  # one run
    assert run.info.status == "FINISHED" and run.info.run_id == mid["trackers"]["mlflow"]
    steps = lambda d: [int(line.split(",")[2]) for line in (tmp_path / d / "metrics.csv").read_text().splitlines()[1:]]
    assert steps("first")[-1] >= 90 and steps("second")[0] == 65  # from epoch 1's end: steps 65-90 trained again
    history = [m.step for m in client.get_metric_history(run.info.run_id, "train/g_loss")]
    assert history == list(range(5, 181, 5))  # in MLflow every step once, none twice
    # W&B continues the same run after the last row metrics.csv has (W&B's own offline file of a killed process
    # holds only what its service had flushed: here nothing, which gantrain cannot see)
    (second_id, second_steps, second_exit), = wandb_runs(tmp_path / "second")
    assert second_id == mid["trackers"]["wandb"] and second_exit == [0]
    assert second_steps[0] == steps("first")[-1] + 5 and second_steps[-1] == 180


def test_an_interrupted_run_ends_its_tracker_runs_as_interrupted_and_resume_auto_continues_them(tmp_path, scripted):
    mlflow = require("mlflow", "trackers")
    require("wandb", "trackers")
    write_mnist(tmp_path / "data", n=120)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    setup = ["epochs=2", "data=mnist", "data.root=data", "batch_size=20", "hidden_size=16", "latent_size=8", "device=cpu",
             "eval_every=1", "resume=auto", "seed=0", "logger=[mlflow,wandb]", f"logger.mlflow.tracking_uri={store}"]
    offline = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    scripted.append([3.0, "stop"])  # as SIGTERM at the end of epoch 2
    first = run_cli("train", "-m", *setup, "hydra.sweep.dir=first", cwd=tmp_path, env=offline)
    assert first.returncode == 128 + signal.SIGTERM, first.stderr
    client = mlflow.tracking.MlflowClient(store)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "KILLED"  # interrupted, not failed: it continues
    ((_, _, exits),) = wandb_runs(tmp_path / "first" / "0")
    assert exits == [0]
    scripted[0] = [2.5]
    again = run_cli("train", "-m", *setup, "hydra.sweep.dir=second", cwd=tmp_path, env=offline)
    assert again.returncode == 0, again.stderr
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/fd")] == [6, 12]


def test_the_default_run_says_nothing_of_an_eval_n_nobody_set(mnist_root, tmp_path, caplog):
    cfg = compose_train(["device=cpu", "epochs=1", "batch_size=60", "hidden_size=16", "latent_size=8",
                         "data=mnist", f"data.root={mnist_root}"])
    with caplog.at_level("INFO", logger="gantrain"):
        train(cfg, tmp_path / "auto", [])
    assert "is more than the data set" not in caplog.text
    saved = json.loads((tmp_path / "auto" / "metrics.json").read_text())["metrics"]["fd"]
    assert saved["n_fake"] == saved["n_real"] == 120  # auto: 10,000, or the whole (tiny) set
    cfg.eval.n = 500  # set by hand: then it is worth a line
    with caplog.at_level("INFO", logger="gantrain"):
        train(cfg, tmp_path / "asked", [])
    assert "eval: n=500 is more than the data set's 120 examples" in caplog.text


def test_the_version_is_the_installed_packages():
    from importlib.metadata import version
    from pathlib import Path

    import tomllib

    import gantrain

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert gantrain.__version__ == version("gantrain") == project["version"]
