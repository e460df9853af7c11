"""Use what you trained: the public Python API as a notebook uses it (twice in one process, leaving nothing behind),
and an exported generator that plain torch and onnxruntime run in a process that cannot import gantrain."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import require, run_cli, write_mnist

NOTEBOOK = '''
import logging, os, signal, sys, threading, time
import numpy as np, torch
import gantrain

def state():
    root = logging.getLogger()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHINDUCTOR")}  # torch's own imports set these
    return (list(root.handlers), root.level, [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)],
            torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32, torch.get_default_dtype(),
            torch.get_rng_state(), sys.argv[:], env, os.getcwd())

torch.set_num_threads(2)
before = state()
tiny = ["data=mnist", "data.root=data", "epochs=1", "batch_size=20", "hidden_size=16", "latent_size=8", "eval.n=40",
        "device=cpu", "trainer.threads=1", "model=dcgan", "model.conditional=true"]
runs = [gantrain.train([*tiny, f"seed={seed}"], run_dir=f"run{seed}") for seed in (0, 1)]
after = state()
assert all(str(a) == str(b) for a, b in zip(before, after)), [(a, b) for a, b in zip(before, after) if str(a) != str(b)]
print("metrics", runs[0].metrics["fd"]["value"], runs[1].metrics["fd"]["value"], runs[0].run_dir.name, runs[1].run_dir.name)
G = gantrain.load_generator(runs[0].checkpoint)
assert isinstance(G, torch.nn.Module) and not G.training and isinstance(G, gantrain.Generator)
print("generator", G.latent_size, G.num_classes, G.class_names, G.image_shape, G.ema)
np.save("api_samples.npy", G.sample(12, seed=3).numpy())
with torch.no_grad():  # sample() is forward() on the seed's latents, the classes cycled
    assert torch.equal(G.sample(4, seed=7), G(G.latents(4, seed=7), torch.arange(4)))
    assert torch.equal(G.sample(3, seed=7, labels=5), G(G.latents(3, seed=7), torch.full((3,), 5)))
metrics = gantrain.evaluate(runs[1].checkpoint, ["n=30"])
print("evaluated", metrics["metrics"]["fd"]["n_fake"])
for bad in ("missing.pt", "data"):
    try:
        gantrain.load_generator(bad)
    except gantrain.UserError as e:
        print("UserError", str(e).splitlines()[0][:60])
try:
    gantrain.train([*tiny, "epochs=0"])
except gantrain.UserError as e:
    print("UserError", e)
threading.Timer(2.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()  # Ctrl-C in the middle of training
try:
    gantrain.train([*tiny, "epochs=500"], run_dir="interrupted")
except gantrain.Interrupted as e:
    print("Interrupted", e)
assert all(str(a) == str(b) for a, b in zip(before, state()))
print("state kept")
'''


def test_a_notebook_trains_twice_samples_and_evaluates_with_the_public_names(tmp_path):
    """In a fresh interpreter, as a notebook's kernel: only names from `import gantrain`."""
    write_mnist(tmp_path / "data", n=120)
    (tmp_path / "notebook.py").write_text(NOTEBOOK)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    done = subprocess.run([sys.executable, "notebook.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "metrics" in out and "run0 run1" in out and "generator 8 10 None (1, 28, 28) False" in out
    assert "evaluated 30" in out and "UserError checkpoint not found:" in out and "UserError data is a directory" in out
    assert "UserError epochs must be an integer >= 1, got 0; e.g. epochs=200" in out
    assert "Interrupted SIGINT: training stopped and saved its checkpoint" in out and "state kept" in out
    assert (tmp_path / "interrupted" / "checkpoints" / "last.pt").exists()
    assert all((tmp_path / f"run{s}" / ".hydra" / "config.yaml").exists() for s in (0, 1))  # as the command leaves it
    # the same samples, bit for bit, as gantrain sample with the same seed
    sampled = run_cli("sample", "ckpt=run0/checkpoints/last.pt", "n=12", "seed=3", "format=npz", "out=cli", cwd=tmp_path)
    assert sampled.returncode == 0, sampled.stderr
    assert np.array_equal(np.load(tmp_path / "api_samples.npy"), np.load(tmp_path / "cli" / "samples.npz")["samples"])


RUN_WITHOUT_GANTRAIN = '''
import json, sys
sys.modules["gantrain"] = None  # any import of gantrain now fails: the files must run with torch alone
import numpy as np, torch
torch.set_num_threads(1)
z, y = torch.from_numpy(np.load("z.npy")), torch.from_numpy(np.load("y.npy"))
extra = {"gantrain.json": ""}
ts = torch.jit.load("g.pt", _extra_files=extra)
np.save("out_torchscript.npy", ts(z, y).numpy())
meta = json.loads(extra["gantrain.json"])
extra = {"gantrain.json": ""}
with open("g.pt2", "rb") as f:
    program = torch.export.load(f, extra_files=extra)
np.save("out_exported.npy", program.module()(z, y).numpy())
same = lambda other, fmt: other["format"] == fmt and {**other, "format": meta["format"]} == meta
assert meta["format"] == "torchscript" and same(json.loads(extra["gantrain.json"]), "exported")
import onnx, onnxruntime
session = onnxruntime.InferenceSession("g.onnx", providers=["CPUExecutionProvider"])
np.save("out_onnx.npy", session.run(None, {"z": z.numpy(), "y": y.numpy()})[0])
assert same({p.key: json.loads(p.value) for p in onnx.load("g.onnx").metadata_props}["gantrain.json"], "onnx")
print(json.dumps(meta))
'''


def test_an_exported_generator_runs_without_gantrain_in_each_format(tmp_path, mnist_root):
    """A conditional DCGAN (BatchNorm in G): each file gives the API's G(z, y) for the same z, bit for bit for
    TorchScript and torch.export on the CPU with one thread, to 1e-5 for onnxruntime (its own kernels), on a
    batch size the export never saw."""
    require("onnxruntime", "onnx")
    import gantrain

    conditional = run_cli("train", "data=mnist", f"data.root={mnist_root}", "epochs=1", "batch_size=20", "hidden_size=16",
                          "latent_size=8", "eval.enabled=false", "device=cpu", "model=dcgan", "model.conditional=true",
                          "hydra.run.dir=cond", cwd=tmp_path)
    assert conditional.returncode == 0, conditional.stderr
    ckpt = tmp_path / "cond" / "checkpoints" / "last.pt"
    for fmt, name in (("torchscript", "g.pt"), ("exported", "g.pt2"), ("onnx", "g.onnx")):
        exported = run_cli("export", f"ckpt={ckpt}", f"format={fmt}", f"out={name}", cwd=tmp_path)
        assert exported.returncode == 0, exported.stderr
    G = gantrain.load_generator(ckpt)
    z, y = G.latents(7, seed=5), torch.arange(7) % G.num_classes
    np.save(tmp_path / "z.npy", z.numpy())
    np.save(tmp_path / "y.npy", y.numpy())
    (tmp_path / "run.py").write_text(RUN_WITHOUT_GANTRAIN)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "run.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads(done.stdout.strip().splitlines()[-1])
    assert meta["latent_size"] == G.latent_size and meta["num_classes"] == G.num_classes == 10
    assert meta["image_shape"] == [1, 28, 28] and meta["value_range"] == [-1, 1] and meta["checkpoint"] == str(ckpt)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            expected = G(z, y).numpy()
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(np.load(tmp_path / "out_torchscript.npy"), expected)
    assert np.array_equal(np.load(tmp_path / "out_exported.npy"), expected)
    assert np.abs(np.load(tmp_path / "out_onnx.npy") - expected).max() <= 1e-5
    again = run_cli("export", f"ckpt={ckpt}", "format=onnx", "out=g.onnx", cwd=tmp_path)
    assert again.returncode == 1 and "g.onnx already exists; pass overwrite=true" in again.stderr
    bad = run_cli("export", f"ckpt={ckpt}", "format=keras", cwd=tmp_path)
    assert bad.returncode == 1 and "format must be one of torchscript, exported, onnx" in bad.stderr



@pytest.mark.parametrize("model", [["model=mlp", "model.heads=3", "model.conditional=true"],
                                   ["model=dcgan", "model.spectral_norm=true", "data.image_size=[48,64]"],
                                   ["model=resnet", "data.image_size=[32,16]"]])
def test_every_kind_of_generator_exports_to_every_format(tmp_path, model):
    """What the README claims: heads, spectral norm, a rectangle, a residual G: every format takes them (each
    file is checked against G on a new batch size as it is written)."""
    require("onnxruntime", "onnx")
    from conftest import compose_train
    from gantrain.commands.export import FORMATS, export_generator
    from gantrain.engine.build import build_networks
    from gantrain.engine.generator import Generator

    cfg = compose_train(["data=folder", "data.root=.", "hidden_size=16", "latent_size=8", *model])
    shape = (1, 28, 28) if "model=mlp" in model else (3, *((48, 64) if "model=dcgan" in model else (32, 16)))
    classes = 3 if "model.conditional=true" in model else 0
    torch.manual_seed(0)
    G = Generator(build_networks(cfg, shape, classes)[0], 8, classes, None, shape, False)
    for fmt, suffix in FORMATS.items():
        meta = export_generator(G, {"epoch": 0, "step": 0}, tmp_path / "last.pt", fmt, tmp_path / f"g{suffix}")
        assert meta["format"] == fmt and meta["image_shape"] == list(shape) and (tmp_path / f"g{suffix}").exists()
