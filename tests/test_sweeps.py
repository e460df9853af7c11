"""Sweeps through the real CLI: launchers, a failing job, resume=auto, gantrain report, Optuna, TensorBoard."""
import csv
import json
import signal
import subprocess
import sys

import pytest
import torch
from PIL import Image

from conftest import assert_same_state, run_cli, write_mnist
from gantrain.outputs.checkpoint import load_checkpoint

TINY = ["epochs=1", "data=mnist", "data.root=data", "batch_size=20", "hidden_size=32", "latent_size=8",
        "log_every=5", "eval.n=50", "device=cpu"]


@pytest.fixture
def sweep_cwd(tmp_path):
    write_mnist(tmp_path / "data", n=100)
    return tmp_path


def sweep_dir(cwd):
    dirs = sorted((cwd / "outputs" / "train-multirun").glob("*/*"))
    return dirs[-1]


def statuses(sweep):
    return {d.name: json.loads((d / "status.json").read_text()) for d in sorted(sweep.iterdir()) if d.name.isdigit()}


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]])
def test_2x2_sweep_and_its_report(sweep_cwd, launcher):
    result = run_cli("train", "-m", *launcher, "optim.lr=1e-4,2e-4", "seed=0,1", *TINY, cwd=sweep_cwd)
    assert result.returncode == 0, result.stderr
    sweep = sweep_dir(sweep_cwd)
    assert sorted(statuses(sweep)) == ["0", "1", "2", "3"]
    assert all(s["state"] == "done" for s in statuses(sweep).values())
    for job in "0123":
        assert (sweep / job / "checkpoints" / "last.pt").is_file() and (sweep / job / "metrics.json").is_file()

    report = run_cli("report", str(sweep), cwd=sweep_cwd)  # piped, as in a CI log: whole headers and values
    assert report.returncode == 0, report.stderr
    assert "sorted by fd" in report.stdout and "mean ± std over seeds" in report.stdout and "…" not in report.stdout
    rows = list(csv.DictReader(open(sweep / "report.csv")))
    assert len(rows) == 4 and {r["optim.lr"] for r in rows} == {"0.0001", "0.0002"}
    for column in ("optim.lr", "seed", "status", "steps", "d_loss", "g_loss", "fd", "kid", "precision", "recall"):
        assert column in report.stdout
    assert all(f"{float(r['fd']):.4g}" in report.stdout for r in rows)
    fds = [float(r["fd"]) for r in rows]
    assert fds == sorted(fds) and all(r["status"] == "done" and r["steps"] == "5" for r in rows)
    assert Image.open(sweep / "report.png").size[0] > 500
    as_json = json.loads(run_cli("report", str(sweep), "--format", "json", cwd=sweep_cwd).stdout)
    assert [j["fd"] for j in as_json["jobs"]] == fds and len(as_json["over_seeds"]) == 2
    as_csv = run_cli("report", str(sweep), "--format", "csv", cwd=sweep_cwd).stdout
    assert list(csv.DictReader(as_csv.splitlines())) == rows
    markdown = run_cli("report", str(sweep), "--format", "markdown", cwd=sweep_cwd).stdout
    assert markdown.count("\n| ") >= 4 + 2 and "| optim.lr |" in markdown


def test_joblib_jobs_share_the_cores():
    import os

    from hydra import compose, initialize_config_module

    from gantrain.commands.train import launcher_settings

    with initialize_config_module("gantrain.conf", version_base=None):
        cfg = compose("train", overrides=["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], return_hydra_config=True)
    launcher_settings(cfg, cfg.hydra)
    assert cfg.trainer.threads == max(1, (os.cpu_count() or 1) // 2)


def test_submitit_local_launcher(sweep_cwd):
    result = run_cli("train", "-m", "hydra/launcher=submitit_local", "seed=0,1", *TINY, cwd=sweep_cwd)
    assert result.returncode == 0, result.stderr
    assert [s["state"] for s in statuses(sweep_dir(sweep_cwd)).values()] == ["done", "done"]


def test_a_failing_job_does_not_stop_the_others(sweep_cwd):
    result = run_cli("train", "-m", "batch_size=20,500,10", *[t for t in TINY if not t.startswith("batch_size")],
                     cwd=sweep_cwd)
    assert result.returncode == 0, result.stderr
    states = statuses(sweep_dir(sweep_cwd))
    assert [states[k]["state"] for k in "012"] == ["done", "failed", "done"]
    assert "batch_size=500" in states["1"]["reason"] and "larger than the data set" in states["1"]["reason"]
    report = run_cli("report", str(sweep_dir(sweep_cwd)), cwd=sweep_cwd, env={"COLUMNS": "250"})
    assert report.returncode == 0 and "failed" in report.stdout


def test_an_interrupted_sweep_resumes_with_resume_auto(sweep_cwd):
    """Hydra's basic launcher (one job at a time): job 0 finishes, job 1 is stopped by SIGTERM mid-epoch (as
    Slurm pre-empts); the same command with resume=auto skips job 0 and continues job 1 from its checkpoint
    to the uninterrupted weights. (A stack stopped the same way: test_stacks.py.)"""
    write_mnist(sweep_cwd / "data", n=2000)
    args = ["train", "-m", "hydra/launcher=basic", "seed=0,1", "resume=auto", "epochs=2", "data=mnist", "data.root=data", "batch_size=10",
            "hidden_size=128", "log_every=20", "eval.enabled=false", "device=cpu"]
    proc = subprocess.Popen([sys.executable, "-m", "gantrain", *args], cwd=sweep_cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen_job1 = False
    for line in proc.stdout:
        seen_job1 |= "/1;" in line or line.rstrip().endswith("/1")
        if seen_job1 and "Epoch[1/2] Step[60/200]" in line:
            proc.send_signal(signal.SIGTERM)
            break
    proc.communicate(timeout=120)
    first = sweep_dir(sweep_cwd)
    assert [s["state"] for s in statuses(first).values()] == ["done", "interrupted"]

    again = run_cli(*args, cwd=sweep_cwd)
    assert again.returncode == 0, again.stderr
    second = sweep_dir(sweep_cwd)
    assert second != first and [s["state"] for s in statuses(second).values()] == ["done", "done"]
    assert "already finished" in again.stdout and "steps into epoch 1" in again.stdout
    # job 0 was not re-run: its checkpoint is the same file
    assert (second / "0/checkpoints/last.pt").stat().st_ino == (first / "0/checkpoints/last.pt").stat().st_ino
    # job 1 ends where an uninterrupted run ends
    straight = run_cli("train", "seed=1", *args[5:], "hydra.run.dir=straight", cwd=sweep_cwd)  # no -m, no resume
    assert straight.returncode == 0, straight.stderr
    a, b = load_checkpoint(second / "1/checkpoints/last.pt"), load_checkpoint(sweep_cwd / "straight/checkpoints/last.pt")
    assert_same_state(a, b)  # G, D and both optimizers
    rows = list(csv.DictReader(open(second / "1" / "metrics.csv")))  # the earlier rows were carried over
    stopped = load_checkpoint(first / "1/checkpoints/last.pt")["step"]  # and the row where the signal stopped it
    assert [int(r["step"]) for r in rows] == sorted({*range(20, 401, 20), stopped})


def test_optuna_study_of_two_trials(sweep_cwd):
    result = run_cli("train", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
                     "hydra.sweeper.storage=sqlite:///study.db", "optim.lr=interval(1e-4,1e-3)", *TINY, cwd=sweep_cwd)
    assert result.returncode == 0, result.stderr
    printed = result.stdout + result.stderr  # off a terminal: no colour codes, no storage plugin announcements
    assert "\x1b[" not in printed and "setup plugin" not in printed and "Study name" in printed
    sweep = sweep_dir(sweep_cwd)
    results = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in results and "optim.lr" in results
    metrics = [json.loads((sweep / j / "metrics.json").read_text())["metrics"]["fd"]["value"] for j in "01"]
    assert f"best_value: {min(metrics)}"[:18] in results
    assert (sweep_cwd / "study.db").is_file()


def test_tensorboard_event_file_holds_the_scalars(sweep_cwd):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_cli("train", *TINY, "logger=tensorboard", "hydra.run.dir=tb", cwd=sweep_cwd)
    assert result.returncode == 0, result.stderr
    events = EventAccumulator(str(sweep_cwd / "tb" / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert {"train/d_loss", "train/g_loss", "train/d_x", "train/d_g_z", "eval/fd"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/g_loss")] == [5]
    assert "samples" in tags["images"]


def test_optuna_without_evaluation_is_refused_before_anything_trains(sweep_cwd):
    result = run_cli("train", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "optim.lr=interval(1e-4,1e-3)",
                     *TINY, "eval.enabled=false", cwd=sweep_cwd)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "hydra/sweeper=optuna minimises each job's metric, and eval.enabled=false leaves none" in result.stderr
    assert "float-castable" not in result.stdout + result.stderr and not list(sweep_cwd.rglob("metrics.csv"))
