"""Vectorized sweeps: batched members equal standalone runs, the per-member Adam equals torch's, grouping,
a diverging member, and the multirun layout that report, sample and resume read."""
import csv
import json

import pytest
import torch

from conftest import DEVICE, run_cli, write_mnist
from gantrain.checkpoint import load_checkpoint
from gantrain.networks import MLPDiscriminator, MLPGenerator
from gantrain.vectorized import StackedAdam, StackedParams, batched


def test_stacked_adam_matches_torch_adam_per_member():
    torch.manual_seed(0)
    hyper = dict(lr=[1e-3, 3e-2], beta1=[0.9, 0.5], beta2=[0.999, 0.9], eps=[1e-8, 1e-6], weight_decay=[0.0, 0.1])
    stacked = torch.randn(2, 5, 3)
    mine = StackedAdam(stacked.view(2, 15), lambda flat: [flat.view(2, 5, 3)], lambda grads: [grads[0].view(2, 15)], **hyper)
    refs = [torch.nn.Parameter(stacked[k].clone()) for k in range(2)]
    opts = [torch.optim.Adam([refs[k]], lr=hyper["lr"][k], betas=(hyper["beta1"][k], hyper["beta2"][k]),
                             eps=hyper["eps"][k], weight_decay=hyper["weight_decay"][k]) for k in range(2)]
    for _ in range(20):
        grad = torch.randn(2, 5, 3)
        mine.step([grad])
        for k in range(2):
            refs[k].grad = grad[k].clone()
            opts[k].step()
    for k in range(2):
        assert torch.allclose(stacked[k], refs[k].detach(), atol=1e-6, rtol=1e-5), k


@pytest.mark.parametrize("make", [lambda: MLPDiscriminator((1, 4, 4), 8, pack=2),
                                  lambda: MLPGenerator(3, 8, (2,), depth=3, heads=2)], ids=["mlp-d-packed", "mlp-g-heads"])
def test_stacked_params_hold_members_in_the_layout_their_gradients_arrive_in(make):
    """Members round-trip through the (K, N) tensor exactly, and every gradient of a batched backward
    flattens into it as a view: no copy before the optimizer, which reads all its tensors in one order."""
    torch.manual_seed(0)
    modules = [make() for _ in range(3)]
    stack = StackedParams(modules)
    assert any(stack.transposed) and not all(stack.transposed)  # Linear weights yes, biases (and heads) no
    for k, module in enumerate(modules):
        mine = stack.member(stack.flat, k)
        assert all(torch.equal(mine[n], v) and mine[n].is_contiguous() for n, v in module.state_dict().items())
    x = torch.randn(3, 4, *(1, 4, 4) if isinstance(modules[0], MLPDiscriminator) else (3,))
    views = stack.views()
    grads = torch.autograd.grad(batched(modules[0])(views, stack.buffers, x).square().sum(), list(views.values()))
    for g, flat in zip(grads, stack.flatten(list(grads))):
        assert flat.data_ptr() == g.data_ptr() and flat.is_contiguous()


@pytest.fixture
def cwd(tmp_path):
    write_mnist(tmp_path / "data", n=200)
    return tmp_path


IMAGES = ["epochs=2", "data=mnist", "data.root=data", "batch_size=20", "hidden_size=32", "latent_size=8",
          "log_every=5", "eval.n=50", f"device={DEVICE}"]
POINTS = ["epochs=2", "data=ring8", "data.n=400", "batch_size=50", "hidden_size=32", "latent_size=4", "model.heads=3",
          "model.seed_heads=true",
          "log_every=4", f"device={DEVICE}"]


@pytest.mark.parametrize("setup,swept", [(IMAGES, ["optim.lr=1e-4,2e-4", "seed=3"]),
                                         (POINTS, ["optim.betas=[0.5,0.9],[0.9,0.999]", "seed=0,1"])],
                         ids=["mlp-images-lr", "mlp-heads-2d-betas-seeds"])
def test_members_equal_standalone_runs(cwd, setup, swept):
    """Tolerance 1e-5: the same maths as a standalone run, with Adam written over stacked tensors instead
    of torch's fused kernel and batched matrix products summing in their own order (seen: ~1e-7)."""
    sweep = run_cli("sweep", *swept, "ema_decay=0.9", *setup, "hydra.sweep.dir=vs", cwd=cwd)
    assert sweep.returncode == 0, sweep.stderr
    jobs = sorted(p.name for p in (cwd / "vs").iterdir() if p.is_dir())
    assert "batched training of" in (cwd / "vs" / "sweep.log").read_text()  # the sweep's log, timestamped
    assert f"jobs {','.join(jobs)}: batched together (K={len(jobs)})" in sweep.stdout
    alone = run_cli("train", "-m", *swept, "ema_decay=0.9", *setup, "hydra.sweep.dir=plain", cwd=cwd)
    assert alone.returncode == 0, alone.stderr
    for job in jobs:
        a, b = (load_checkpoint(cwd / d / job / "checkpoints" / "last.pt") for d in ("vs", "plain"))
        assert a["config"] == {**b["config"], "resume": a["config"]["resume"]}
        for net in ("G", "D", "G_ema"):
            for k in a[net]:
                assert torch.allclose(a[net][k], b[net][k], atol=1e-5), (job, net, k)
        rows = [list(csv.DictReader(open(cwd / d / job / "metrics.csv"))) for d in ("vs", "plain")]
        assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]]
        assert all(abs(float(x["g_loss"]) - float(y["g_loss"])) < 1e-4 for x, y in zip(*rows))


def test_mixed_sweep_is_grouped_and_the_split_is_told(cwd):
    from gantrain.sweep import compose_job, expand, plan

    jobs = expand(["model=mlp,dcgan", "optim.lr=1e-4,2e-4", "hidden_size=32,64", *IMAGES[:1]])
    groups = plan([compose_job(j) for j in jobs])
    batched = sorted(sorted(m) for m, reason in groups if reason is None)
    alone = sorted((m[0], r) for m, r in groups if r is not None)
    # mlp jobs: 0, 1 (hidden 32, 64 at lr 1e-4), 2, 3 (lr 2e-4): same shapes pair up across learning rates
    assert batched == [[0, 2], [1, 3]]
    assert [i for i, _ in alone] == [4, 5, 6, 7] and all("model=dcgan" in r for _, r in alone)


def test_a_large_sweep_composes_in_processes_exactly_as_one_by_one():
    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf

    from gantrain.sweep import compose_job, compose_jobs, expand

    jobs = expand(["optim.lr=1e-4,2e-4", "seed=range(4)", "model=mlp,dcgan"])  # 16 jobs: two worker processes
    together = compose_jobs(jobs)
    assert [OmegaConf.to_container(c) for c in together] == [OmegaConf.to_container(compose_job(j)) for j in jobs]
    assert OmegaConf.is_struct(together[0])  # a typo in a later override still fails
    with pytest.raises(ConfigCompositionException, match="nokey"):
        compose_jobs(expand(["seed=range(16)", "nokey=1"]))  # Hydra's own error comes back from the workers


def test_a_diverging_member_stops_alone_and_the_report_reads_the_sweep(cwd):
    result = run_cli("sweep", "optim.lr=2e-4,inf", *IMAGES, "hydra.sweep.dir=vn", cwd=cwd)
    assert result.returncode == 0, result.stderr
    states = [json.loads((cwd / "vn" / j / "status.json").read_text()) for j in "01"]
    assert states[0]["state"] == "done" and states[1]["state"] == "failed"
    assert "non-finite at step 1" in states[1]["reason"]
    assert load_checkpoint(cwd / "vn" / "0" / "checkpoints" / "last.pt")["step"] == 20
    report = run_cli("report", "vn", cwd=cwd, env={"COLUMNS": "250"})
    assert report.returncode == 0 and "failed" in report.stdout and "done" in report.stdout
    assert len(list(csv.DictReader(open(cwd / "vn" / "report.csv")))) == 2


def test_a_failing_batch_marks_its_members_failed_and_the_sweep_goes_on(cwd):
    setup = [a for a in IMAGES if not a.startswith("data.root")] + ["eval.enabled=false"]
    result = run_cli("sweep", "data.root=missing,data", "seed=0,1", *setup, "hydra.sweep.dir=vf", cwd=cwd)
    assert result.returncode == 0, result.stderr
    states = [json.loads((cwd / "vf" / j / "status.json").read_text()) for j in "0123"]
    assert [s["state"] for s in states] == ["failed", "failed", "done", "done"]
    assert all("MNIST not found" in s["reason"] for s in states[:2])
    assert "jobs 0,1 failed: MNIST not found" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    every_job = run_cli("sweep", "data.root=missing", "seed=0,1", *setup, "hydra.sweep.dir=va", cwd=cwd)
    assert every_job.returncode == 1  # nothing trained: bad input, so the command fails
    assert "sweep done: 0 done, 2 failed" in every_job.stdout + every_job.stderr


def test_a_member_samples_and_resumes_like_a_normal_run(cwd):
    assert run_cli("sweep", "seed=0,1", *IMAGES, "eval.enabled=false", "hydra.sweep.dir=vr", cwd=cwd).returncode == 0
    ckpt = cwd / "vr" / "1" / "checkpoints" / "last.pt"
    assert run_cli("sample", f"ckpt={ckpt}", "n=4", "out=s", cwd=cwd).returncode == 0
    resumed = run_cli("train", f"resume={ckpt}", "epochs=3", "hydra.run.dir=more", cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(cwd / "more" / "checkpoints" / "last.pt")["step"] == 30


def test_a_killed_batched_sweep_resumes_per_member_with_resume_auto(cwd):
    import subprocess
    import sys
    import time

    write_mnist(cwd / "data2", n=2000)  # 200 steps per epoch: long enough to be killed part-way
    args = ["sweep", "seed=0,1", "resume=auto", "epochs=3", "data=mnist", "data.root=data2", "batch_size=10",
            "hidden_size=64", "eval.enabled=false", f"device={DEVICE}", "log_every=100"]
    proc = subprocess.Popen([sys.executable, "-m", "gantrain", *args, "hydra.sweep.dir=first"], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill -9 once both members hold an epoch-1 (or later) checkpoint
        if all((cwd / "first" / j / "checkpoints" / "last.pt").exists() for j in "01"):
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    epochs = [load_checkpoint(cwd / "first" / j / "checkpoints" / "last.pt")["epoch"] for j in "01"]
    assert min(epochs) < 3  # it was killed before the end
    again = run_cli(*args, "hydra.sweep.dir=second", cwd=cwd)
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stdout
    straight = run_cli(*[a for a in args if a != "resume=auto"], "hydra.sweep.dir=straight", cwd=cwd)
    assert straight.returncode == 0, straight.stderr
    for j in "01":
        a, b = (load_checkpoint(cwd / d / j / "checkpoints" / "last.pt") for d in ("second", "straight"))
        assert a["step"] == b["step"] == 600
        assert all(torch.equal(a["G"][k], b["G"][k]) for k in a["G"]), j
    third = run_cli(*args, "hydra.sweep.dir=third", cwd=cwd)  # everything finished: nothing re-runs
    assert third.returncode == 0 and third.stdout.count("already finished") == 2
