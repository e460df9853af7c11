"""One run on several devices (torch.distributed, gloo, 2 ranks on the CPU): R = 2 equals R = 1 in float64 for
lone runs and stacks over losses and R1, a BatchNorm network's ranks hold the same model, a NaN on one rank's
slice stops (or skips) on both, evaluation shared out equals the 1-rank numbers; and both ways to start one
(torchrun, trainer.devices) train, write one run dir from rank 0 only, stop together on a signal to one rank and
resume exactly. The engine's cases share one process group (ranks_harness.py), not one launch each."""
import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import compose_train, write_mnist
from gantrain.engine.jobs import Job, train, train_group
from gantrain.outputs.checkpoint import load_checkpoint
from test_stacks import weights_and_moments

pytestmark = pytest.mark.xdist_group("distributed")  # one worker: the 2 ranks take both cores
HERE = Path(__file__).parent
TINY = ["device=cpu", "epochs=2", "batch_size=20", "latent_size=8", "hidden_size=16", "log_every=3", "trainer.threads=1",
        "eval.enabled=false"]
FP64 = [*TINY, "trainer.precision=fp64"]
CASES = {  # name: each member's overrides (several: one stack), and a rank whose slice goes NaN
    "bce-mlp": ([[*FP64, "eval.enabled=true", "eval.n=30"]], None),
    "hinge-mlp-stack": ([[*FP64, "loss=hinge"], [*FP64, "loss=hinge", "seed=1", "optim.lr=3e-4"]], None),
    "wgan_gp-r1-mlp": ([[*FP64, "loss=wgan_gp", "n_critic=2", "loss.r1_gamma=1.0"]], None),
    "dcgan-batchnorm": ([[*TINY, "model=dcgan"]], None),
    "nan-stop": ([[*TINY]], 1),
    "nan-skip": ([[*TINY, "on_nan=skip"]], 1),
    "odd-batch": ([[*TINY, "batch_size=15", "model=dcgan"]], None),
    # test_torchrun_...'s uninterrupted run: 600 images, 60 steps an epoch
    "straight": ([["data.root=DATA600", "batch_size=10", "hidden_size=16", "latent_size=8", "epochs=3", "log_every=5",
                   "eval.enabled=false", "device=cpu"]], None),
}


def environment() -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


@pytest.fixture(scope="session")  # once per test worker, however its tests are interleaved with others
def ranks_ran(tmp_path_factory, mnist_root):
    """Every case above, trained by 2 ranks in one process group; its run dirs and each rank's final state."""
    out = tmp_path_factory.mktemp("ranks")
    data600 = write_mnist(out / "data600", n=600)
    root = lambda m: [o.replace("DATA600", str(data600)) for o in m] if any("DATA600" in o for o in m) else [
        *m, f"data.root={mnist_root}"]
    cases = [{"name": name, "members": [["data=mnist", *root(m)] for m in members], "nan_on_rank": nan}
             for name, (members, nan) in CASES.items()]
    (out / "cases.json").write_text(json.dumps({"cases": cases, "out": str(out)}))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(HERE / "ranks_harness.py"), str(out / "cases.json")], env=environment(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


def alone(mnist_root, tmp_path, members: list[list[str]]) -> list[Path]:
    """The same members trained by one process (a stack when several), as a lone run or sweep trains them."""
    cfgs = [compose_train([*m, "data=mnist", f"data.root={mnist_root}"]) for m in members]
    if len(cfgs) == 1:
        train(copy.deepcopy(cfgs[0]), tmp_path / "alone" / "0", [])
    else:
        train_group([Job(copy.deepcopy(c), tmp_path / "alone" / str(k), [], str(k), own_log=True) for k, c in enumerate(cfgs)])
    return [tmp_path / "alone" / str(k) for k in range(len(cfgs))]


@pytest.mark.parametrize("case", ["bce-mlp", "hinge-mlp-stack", "wgan_gp-r1-mlp"])
def test_two_ranks_equal_one_in_float64(ranks_ran, mnist_root, tmp_path, case):
    """The global batch split in two, gradients averaged: the weights and optimizer moments of the 1-rank run
    to float64's rounding (rtol 1e-9, ~1e7 times what was measured, on any CPU's kernels; a missed term or a
    wrong slice moves them by > 1e-4), the same log rows."""
    out, _ = ranks_ran
    for k, lone in enumerate(alone(mnist_root, tmp_path, CASES[case][0])):
        two, one = weights_and_moments(out / case / str(k)), weights_and_moments(lone)
        assert two.keys() == one.keys()
        for name, value in one.items():
            assert torch.allclose(two[name], value, rtol=1e-9, atol=1e-12), (name, float((two[name] - value).abs().max()))
        # the log rows: the global batch's losses and D outputs (each rank's means, averaged)
        rows = [[line.split(",") for line in (d / "metrics.csv").read_text().splitlines()[1:]] for d in (out / case / str(k), lone)]
        assert rows[0] and [r[:3] for r in rows[0]] == [r[:3] for r in rows[1]]
        assert all(float(a) == pytest.approx(float(b), rel=1e-5) for x, y in zip(*rows) for a, b in zip(x[3:], y[3:]))
        assert load_checkpoint(out / case / str(k) / "checkpoints" / "last.pt")["world_size"] == 2
    if case == "bce-mlp":  # evaluation shared out: each rank featurises half of the samples, rank 0 computes
        two, one = (json.loads((d / "metrics.json").read_text())["metrics"] for d in (out / case / "0", lone))
        for name in ("fd", "kid", "precision", "recall"):
            assert two[name]["value"] == pytest.approx(one[name]["value"], rel=1e-4, abs=1e-6), name
        assert two["fd"]["n_fake"] == one["fd"]["n_fake"] == 30


def test_a_batchnorm_networks_ranks_hold_the_same_model(ranks_ran):
    """DCGAN's G normalises over each rank's slice (10 images); the running statistics are averaged before the
    checkpoint, and the two ranks' weights, statistics and moments are identical, and those of the checkpoint."""
    out, stdout = ranks_ran
    states = [torch.load(out / "dcgan-batchnorm" / f"rank{r}.pt", weights_only=True)["states"][0] for r in (0, 1)]
    ckpt = load_checkpoint(out / "dcgan-batchnorm" / "0" / "checkpoints" / "last.pt")
    stats = [k for k in ckpt["G"] if k.endswith("running_mean")]
    assert stats and "BatchNorm statistics per rank (10 images)" in stdout
    for net in ("G", "D"):
        for key, value in ckpt[net].items():
            assert torch.equal(states[0][net][key], value) and torch.equal(states[1][net][key], value), (net, key)


def test_a_nan_on_one_ranks_slice_stops_or_skips_on_both(ranks_ran):
    out, stdout = ranks_ran
    stop = [torch.load(out / "nan-stop" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert stop[0]["alive"] == stop[1]["alive"] == [False]  # both ranks stopped the member at the same log line
    assert json.loads((out / "nan-stop" / "0" / "status.json").read_text())["state"] == "failed"
    skip = [torch.load(out / "nan-skip" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert skip[0]["skipped"] == skip[1]["skipped"] == [1] and skip[0]["alive"] == [True]
    for net in ("G", "D"):
        assert all(torch.equal(skip[0]["states"][0][net][k], v) for k, v in skip[1]["states"][0][net].items())
    assert all(torch.isfinite(v).all() for v in skip[0]["states"][0]["D"].values())


def rank_pid(parent: int, rank: int, timeout: float = 60) -> int:
    """The pid of rank `rank` among parent's descendants: torchrun's carry RANK in their environment from the
    start; trainer.devices' are torch.multiprocessing's spawned processes, started in rank order."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        mine = descendants(parent)
        spawned = []
        for pid in sorted(mine):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return pid
            if b"spawn_main" in cmdline:
                spawned.append(pid)
        if len(spawned) > rank:
            return spawned[rank]
        time.sleep(0.2)
    raise AssertionError(f"no rank {rank} under {parent}")


def descendants(pid: int) -> set[int]:
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.add(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return children | {d for c in children for d in descendants(c)}


def test_torchrun_ranks_stop_together_on_one_ranks_signal_and_max_restarts_resumes_exactly(tmp_path, ranks_ran):
    """torchrun --max-restarts=1 ... resume=auto: SIGTERM to rank 1 alone mid-epoch; both ranks stop at the same
    step, rank 0 saves one mid-epoch checkpoint, and both exit 128 + 15; torchrun starts them again, resume=auto
    finds the interrupted run (the same overrides) and continues it, to the weights of an uninterrupted 2-rank
    run (the harness's "straight") bit for bit. Each start wrote one run dir, from rank 0, and nothing else."""
    write_mnist(tmp_path / "data", n=600)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
               "-m", "gantrain", "train", "data=mnist", "data.root=data", *CASES["straight"][0][0][1:], "resume=auto"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    for line in proc.stdout:
        if "Epoch[2/3] Step[20/60]" in line:
            os.kill(rank_pid(proc.pid, 1), signal.SIGTERM)  # one rank only: the other learns it in the all-reduce
            break
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM: stopped at epoch 2" in out and "resume with: gantrain train resume=" in out, out + err[-2000:]
    first, second = sorted((tmp_path / "outputs" / "train").glob("*/*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "outputs"]  # no dir of rank 1's
    mid = load_checkpoint(first / "checkpoints" / "last.pt")
    assert mid["epoch"] == 1 and 20 <= mid["position"] < 60 and mid["world_size"] == 2
    assert json.loads((first / "status.json").read_text())["state"] == "interrupted"
    assert f"({mid['position']} steps into epoch 2)" in out
    final, whole = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (second, ranks_ran[0] / "straight" / "0"))
    assert final["step"] == whole["step"] == 180
    for net in ("G", "D", "opt_g", "opt_d"):
        assert str(final[net]) == str(whole[net]) if net.startswith("opt") else all(
            torch.equal(final[net][k], v) for k, v in whole[net].items()), net
    assert json.loads((second / "status.json").read_text())["state"] == "done"
    steps = [int(line.split(",")[2]) for line in (second / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 180 and 5 in steps  # the earlier rows carried over, none twice


def test_refusals_before_any_rank_trains(tmp_path, ranks_ran):
    from conftest import run_cli

    out, _ = ranks_ran
    refused = [torch.load(out / "odd-batch" / f"rank{r}.pt", weights_only=True)["refused"] for r in (0, 1)]
    assert refused[0] == refused[1] == ("batch_size=15 is the global batch, split among 2 ranks, and each rank takes "
                                        "an equal slice; use a multiple of 4, e.g. batch_size=16")
    write_mnist(tmp_path / "data", n=120)
    common = ["data=mnist", "data.root=data", "hidden_size=16", "latent_size=8", "epochs=1", "device=cpu"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gantrain", "train"]
    sweep = subprocess.run([*torchrun, "-m", *common, "seed=0,1"], cwd=tmp_path, env=environment(), capture_output=True,
                           text=True, timeout=120)
    assert sweep.returncode != 0 and sweep.stderr.count("-m under torchrun (or srun) would run the sweep on every rank") == 1
    in_sweep = run_cli("train", "-m", *common, "trainer.devices=2", "seed=0,1", "hydra.sweep.dir=sw", cwd=tmp_path)
    assert in_sweep.returncode == 1 and ("trainer.devices=2 spreads one run over several devices, and a sweep trains "
                                         "its jobs as stacks") in in_sweep.stderr


def test_trainer_devices_trains_and_a_rank_killed_is_one_line_naming_it(tmp_path, mnist_root):
    """gantrain train trainer.devices=2, float64: after epoch 1 its checkpoint holds the 1-process run's weights;
    then kill -9 of rank 1: rank 0 ends at once (gloo sees the reset connection) with one line naming rank 1, the
    command exits 1 with it, status.json says failed, and nothing was saved after the failure (last.pt stays
    epoch 1's)."""
    from gantrain.outputs.checkpoint import load_checkpoint as load

    write_mnist(tmp_path / "data", n=600)
    common = ["data=mnist", "data.root=data", *CASES["straight"][0][0][1:], "trainer.precision=fp64"]
    proc = subprocess.Popen([sys.executable, "-m", "gantrain", "train", *common, "trainer.devices=2",
                             "trainer.dist_timeout_s=30", "hydra.run.dir=run"], cwd=tmp_path, env=environment(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "Epoch[2/3] Step[20/60]" in line:
            os.kill(rank_pid(proc.pid, 1), signal.SIGKILL)
            killed = time.monotonic()
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and time.monotonic() - killed < 30  # within trainer.dist_timeout_s, and much less
    assert err.strip().count("\n") == 0 and err.startswith("gantrain train: error: rank 1 of 2 (on this machine) died: "
                                                          "a collective of the run failed ("), err[-2000:]
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and status["reason"].startswith("rank 1 of 2")
    saved = load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved["epoch"] == 1 and saved["position"] == 0 and saved["world_size"] == 2  # nothing after the failure
    train(compose_train([*common[:-1], "trainer.precision=fp64", "epochs=1", f"data.root={tmp_path / 'data'}"][0:]),
          tmp_path / "one", [])
    one = load(tmp_path / "one" / "checkpoints" / "last.pt")
    for net in ("G", "D"):
        for key, value in one[net].items():
            assert torch.allclose(saved[net][key], value, rtol=1e-9, atol=1e-12), (net, key)


def test_sync_batchnorm_is_refused_where_torch_cannot_run_it(tmp_path, mnist_root):
    from conftest import run_cli

    alone = run_cli("train", *TINY, "data=mnist", f"data.root={mnist_root}", "model=dcgan", "trainer.sync_batchnorm=true",
                    "hydra.run.dir=run", cwd=tmp_path)
    assert alone.returncode == 1 and ("trainer.sync_batchnorm=true is for a run on several devices (trainer.devices, "
                                      "torchrun, srun): alone, BatchNorm sees the whole batch; drop it") in alone.stderr
