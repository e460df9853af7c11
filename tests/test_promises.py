"""What the README promises and no other test checked: partial batches dropped with a fresh permutation each
epoch, gantrain report --metric, gantrain list, a second Ctrl-C, resume=auto on a job with no checkpoint, and
sample label= on a conditional model."""
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import torch

from conftest import TINY, run_cli, write_mnist
from gantrain.components.registry import REGISTRIES, lookup
from gantrain.data.tensors import TensorData
from gantrain.engine.inputs import epoch_order, step_inputs
from gantrain.outputs.checkpoint import load_checkpoint


def test_a_last_partial_batch_is_dropped_and_each_epoch_is_a_fresh_permutation():
    data = TensorData(torch.arange(130, dtype=torch.float32).view(130, 1, 1, 1))  # example i holds the value i
    gen, epochs = torch.Generator().manual_seed(0), []
    loss, augment = lookup("loss", "bce")(), lookup("augment", "none")()
    for _ in range(3):
        order = epoch_order(len(data), gen).unsqueeze(0)
        steps = len(data) // 20  # 6 steps of 20: 10 examples left over
        seen = torch.cat([step_inputs(data, order, i, [gen], batch_size=20, latent_size=2, n_critic=1, num_classes=0,
                                      loss=loss, augment=augment)["real"].flatten() for i in range(steps)])
        assert len(seen) == 120 and len(set(seen.tolist())) == 120  # every batch full, no example twice
        epochs.append(seen)
    dropped = [set(range(130)) - set(e.long().tolist()) for e in epochs]
    assert all(len(d) == 10 for d in dropped) and len({frozenset(d) for d in dropped}) == 3  # other examples each time
    assert not torch.equal(epochs[0], epochs[1])  # another order


def test_report_sorts_by_the_metric_asked_for(tmp_path):
    for job, fd, kid in (("0", 30.0, 3.0), ("1", 10.0, 9.0), ("2", 20.0, 1.0)):
        d = tmp_path / "sweep" / job
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        (d / "status.json").write_text(json.dumps({"state": "done"}))
        (d / "metrics.json").write_text(json.dumps({"metrics": {n: {"value": v, "n_real": 9, "n_fake": 9}
                                                                for n, v in (("fd", fd), ("kid", kid))}}))
    for metric, expected in (("fd", ["1", "2", "0"]), ("kid", ["2", "0", "1"])):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # report.png of jobs without curves: no matplotlib warning either
            out = run_cli("report", "sweep", "--metric", metric, "--format", "json", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["sorted_by"] == metric and [str(r["seed"]) for r in report["jobs"]] == expected, report


def test_list_prints_every_entry_and_preset():
    from gantrain.commands.listing import experiment_presets

    out = run_cli("list", cwd=".", env={"COLUMNS": "300"})
    assert out.returncode == 0
    for kind, table in REGISTRIES.items():
        for name in table:
            assert f" {name} " in out.stdout, (kind, name)
    assert all(f" {preset} " in out.stdout for preset in experiment_presets())


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    """The first Ctrl-C asks for a checkpoint at the next step boundary; a second one, while the first waits (here
    behind the end of epoch 1's evaluation, which trains its feature network), stops at once, saving nothing."""
    write_mnist(tmp_path / "data", n=2000)
    proc = subprocess.Popen([sys.executable, "-m", "gantrain", "train", *TINY, "data=mnist", "data.root=data", "epochs=3",
                             "eval_every=1", "hydra.run.dir=run"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        if "feature network: training" in line:
            proc.send_signal(signal.SIGINT)
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "gantrain train: interrupted" in err and "Traceback" not in err
    assert "SIGINT: stopped at" not in out and "eval at epoch 1" not in out  # no checkpoint, no waiting for the eval


def test_resume_auto_on_a_job_that_left_no_checkpoint_starts_afresh(tmp_path):
    """The same job (the same overrides) failed before its first checkpoint (its data was not there yet):
    resume=auto finds it, says it left no checkpoint, and trains from the start."""
    setup = [*TINY, "data=mnist", "data.root=data", "eval.enabled=false", "resume=auto", "seed=0"]
    failed = run_cli("train", "-m", *setup, "hydra.sweep.dir=first", cwd=tmp_path)
    assert failed.returncode == 1 and not (tmp_path / "first" / "0" / "checkpoints" / "last.pt").exists()
    write_mnist(tmp_path / "data", n=120)
    again = run_cli("train", "-m", *setup, "hydra.sweep.dir=second", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"resume=auto: the earlier run {(tmp_path / 'first' / '0').resolve()} of this job left no checkpoint; " \
           f"starting fresh" in again.stdout
    straight = run_cli("train", *[a for a in setup if a != "resume=auto"], "hydra.run.dir=straight", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    a, b = (load_checkpoint(tmp_path / d / "checkpoints" / "last.pt") for d in ("second/0", "straight"))
    assert "resumed from" not in again.stdout and a["step"] == b["step"] == 12
    assert all(torch.equal(a["G"][k], b["G"][k]) for k in b["G"])  # trained from the start, as a new run


def test_sample_label_draws_that_class_from_a_conditional_model(tmp_path, mnist_root):
    from gantrain.engine.generator import generator_from_checkpoint

    trained = run_cli("train", *TINY, "data=mnist", f"data.root={mnist_root}", "model.conditional=true", "epochs=1",
                      "eval.enabled=false", "hydra.run.dir=run", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    for label in (3, 7):
        result = run_cli("sample", f"ckpt={ckpt}", f"label={label}", "n=8", "format=npz", f"out=s{label}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    saved = {label: np.load(tmp_path / f"s{label}" / "samples.npz") for label in (3, 7)}
    assert (saved[3]["labels"] == 3).all() and (saved[7]["labels"] == 7).all()
    G, _ = generator_from_checkpoint(load_checkpoint(ckpt), ckpt, "auto", torch.device("cpu"))
    z = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))  # sample's seed=0 latents
    with torch.no_grad():
        for label in (3, 7):
            assert np.allclose(saved[label]["samples"], G(z, torch.full((8,), label)).numpy(), atol=1e-6)
    assert not np.allclose(saved[3]["samples"], saved[7]["samples"])
