"""The catalogue of bad input, through the real CLI. Every case must give a non-zero exit, at most three
lines that name the problem and the fix, no traceback, and leave every file already on disk as it was."""
import hashlib
import os
import re
import pickle

import pytest
import torch

from conftest import Evil, run_cli, write_mnist
from gantrain.outputs.checkpoint import load_checkpoint, save_checkpoint


def test_the_evil_pickle_really_runs_code_when_unpickled_unsafely(tmp_path):
    """Guards the malicious-checkpoint cases: the payload does create its marker under plain pickle."""
    pickle.loads(pickle.dumps(Evil(tmp_path / "PWNED")))
    assert (tmp_path / "PWNED").exists()


@pytest.fixture(scope="module")
def good_ckpt(one_epoch_ckpt):
    return one_epoch_ckpt


def make_checkpoint(kind: str, folder, good):
    """A bad checkpoint of the given kind in `folder`."""
    path = folder / f"{kind}.pt"
    ckpt = load_checkpoint(good)
    if kind == "missing":
        return folder / "nope.pt"
    if kind == "directory":
        (folder / "a_dir").mkdir()
        return folder / "a_dir"
    if kind == "text":
        path.write_text("hello")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "foreign":
        torch.save({"state_dict": ckpt["G"], "epoch": 3}, path)
    elif kind == "future":
        torch.save({**ckpt, "version": 99}, path)
    elif kind == "malicious":
        torch.save({"format": "gantrain-checkpoint", "version": 1, "G": Evil(folder / "PWNED")}, path)
    elif kind == "malicious_pickle":
        path.write_bytes(pickle.dumps(Evil(folder / "PWNED"), protocol=2))
    elif kind in ("incomplete_config", "unknown_model"):  # a config this gantrain cannot rebuild the run from
        if kind == "incomplete_config":
            del ckpt["config"]["model"]
        else:
            ckpt["config"]["model"]["name"] = "nosuch"
        save_checkpoint(path, {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    elif kind == "mismatched_weights":  # its config says hidden_size=64, its weights are 32 wide
        ckpt["config"]["hidden_size"] = 64
        save_checkpoint(path, {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    return path


CHECKPOINTS = {
    "missing": "checkpoint not found", "directory": "is a directory, not a checkpoint",
    "text": "is not a checkpoint", "truncated": "truncated or corrupt",
    "foreign": "not a gantrain checkpoint", "future": "format version 99",
    "malicious": "gantrain never unpickles", "malicious_pickle": "gantrain never unpickles",
    "mismatched_weights": "does not match the networks it names",
    "incomplete_config": "the checkpoint's stored config is incomplete (it has no model.name)",
    "unknown_model": "the checkpoint's stored config names model 'nosuch', which this gantrain does not know",
}


FIX = re.compile(r"\b(e\.g\. |use |pass |set |raise |drop |replace |upgrade |only load |choose |delete |point |add |"
                 r"valid names are |`gantrain \w+ --cfg job` lists)")


def snapshot(folder) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def assert_one_clear_failure(result, expected: str, before: dict, folder):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    assert expected in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 3, result.stderr
    # the line names a fix, in one of the forms the messages use: a verb of what to do, or an example
    assert FIX.search(result.stderr), result.stderr
    for path, digest in before.items():  # nothing already on disk is lost or changed
        assert path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == digest, path
    assert not list(folder.rglob("PWNED"))  # and no pickle ever ran


TRAIN_CASES = {
    "unknown model": (["model=nope"], "unknown model 'nope': valid names are dcgan, mlp"),
    "unknown loss": (["loss=nope"], "unknown loss 'nope': valid names are bce,"),
    "unknown optim": (["optim=nope"], "unknown optim 'nope': valid names are adam, adamw, rmsprop, sgd"),
    "unknown data": (["data=nope"], "unknown data 'nope': valid names are"),
    "unknown experiment": (["experiment=nope"], "unknown experiment 'nope'"),
    "unknown key": (["no_such_key=1"], "unknown config key 'no_such_key'"),
    "unknown group key": (["optim.no_such=1"], "unknown config key 'optim.no_such'"),
    "bad optimizer option": (["+optim.no_such=1"], "optim has no option 'no_such': torch.optim.Adam takes lr, betas"),
    "epochs not a number": (["epochs=abc"], "epochs must be an integer >= 1, got 'abc'"),
    "batch_size a float": (["batch_size=1.5"], "batch_size must be an integer >= 1, got 1.5"),
    "seed not a number": (["seed=abc"], "seed must be an integer >= 0"),
    "ema_decay not a number": (["ema_decay=abc"], "ema_decay must be a number in [0, 1)"),
    "on_nan unknown": (["on_nan=maybe"], "on_nan must be stop or skip"),
    "precision unknown": (["trainer.precision=fp8"], "trainer.precision must be fp32, tf32, bf16 or fp64, got 'fp8'"),
    "pack not dividing the batch": (["model.pack=3"], "model.pack must be an integer >= 1 that divides batch_size=100"),
    "zero heads": (["model.heads=0"], "model.heads must be an integer >= 1"),
    "seeded heads without heads": (["model.seed_heads=true"], "set model.heads > 1"),
    "seeded heads on images": (["model.seed_heads=true", "model.heads=2"], "for 2D data (ring8, grid25); data=mnist_sample"),
    "lazy R1 every 0 steps": (["loss.r1_every=0"], "loss.r1_every must be an integer >= 1"),
    "augmenting points": (["data=ring8", "augment=diffaugment"], "augment=diffaugment transforms images, and data=ring8"),
    "unknown augmentation op": (["augment=diffaugment", "augment.policy=[color,flip]"], "augment.policy: unknown op 'flip'"),
    "resnet on points": (["data=ring8", "model=resnet"], "model=resnet takes images (C, H, W), and this data set holds points of shape (2,); use model=mlp"),
    "device unknown": (["device=tpu"], "device must be auto, cpu, cuda or cuda:N"),
    "zero epochs": (["epochs=0"], "epochs must be an integer >= 1, got 0"),
    "zero batch": (["batch_size=0"], "batch_size must be an integer >= 1"),
    "zero latent": (["latent_size=0"], "latent_size must be an integer >= 1"),
    "negative hidden": (["hidden_size=-1"], "hidden_size must be an integer >= 1"),
    "zero log_every": (["log_every=0"], "log_every must be an integer >= 1"),
    "batch larger than data": (["batch_size=100000"], "batch_size=100000 (x n_critic=1) is larger than the data set (5000"),
    "bad override syntax": (["epochs=[1,"], "overrides look like key=value"),
    "unwritable run dir": (["hydra.run.dir=existing.txt/run"], "file system error on"),
    "ref_protocol without ref": (["eval.ref_protocol=clean"], "eval.ref_protocol says how eval.ref's statistics file was made"),
    "missing statistics file": (["eval.ref=nope.npz"], "no statistics file at"),
    "statistics file not an npz": (["eval.ref=existing.txt"], "is not a readable .npz"),
    "kid against a statistics file": (["eval.ref=nope.npz", "eval.metric=kid"], "eval.metric=kid needs the real images' features"),
    "ref for points": (["data=ring8", "eval.ref=nope.npz"], "eval.ref is a statistics file for FID on images"),
}
if not torch.cuda.is_available():
    TRAIN_CASES["cuda without a gpu"] = (["device=cuda"], "device=cuda but torch sees no CUDA GPU")


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_train_bad_options(tmp_path, case):
    args, expected = TRAIN_CASES[case]
    (tmp_path / "existing.txt").write_text("keep me")
    before = snapshot(tmp_path)
    assert_one_clear_failure(run_cli("train", "epochs=1", "device=cpu", *args, cwd=tmp_path), expected, before, tmp_path)


def write_data(kind: str, root):
    raw = root / "MNIST" / "raw"
    if kind == "empty":
        raw.mkdir(parents=True)
        (raw / "train-images-idx3-ubyte").write_bytes(b"")
        (raw / "train-labels-idx1-ubyte").write_bytes(b"")
    elif kind == "corrupt":
        write_mnist(root, n=50)
        (raw / "train-images-idx3-ubyte").write_bytes(os.urandom(3000))
    elif kind == "truncated":
        write_mnist(root, n=50)
        images = raw / "train-images-idx3-ubyte"
        images.write_bytes(images.read_bytes()[:5000])
    elif kind == "mismatched":
        write_mnist(root, n=50)
        write_mnist(root / "other", n=40)
        os.replace(root / "other" / "MNIST" / "raw" / "train-labels-idx1-ubyte", raw / "train-labels-idx1-ubyte")


DATA_CASES = {"missing": "MNIST not found", "empty": "not an IDX file", "corrupt": "not an IDX file",
              "truncated": "truncated or corrupt", "mismatched": "do not match"}


@pytest.mark.parametrize("kind", sorted(DATA_CASES))
def test_train_bad_data(tmp_path, kind):
    write_data(kind, tmp_path / "data")
    before = snapshot(tmp_path)
    result = run_cli("train", "data=mnist", "data.root=data", "epochs=1", "device=cpu", cwd=tmp_path)
    assert_one_clear_failure(result, DATA_CASES[kind], before, tmp_path)


@pytest.mark.parametrize("command", ["train", "sample"])
@pytest.mark.parametrize("kind", sorted(CHECKPOINTS))
def test_bad_checkpoints(tmp_path, good_ckpt, mnist_root, command, kind):
    path = make_checkpoint(kind, tmp_path, good_ckpt)
    before = snapshot(tmp_path)
    args = ["resume=" + str(path), "epochs=5"] if command == "train" else ["ckpt=" + str(path)]
    result = run_cli(command, *args, cwd=tmp_path)
    assert_one_clear_failure(result, CHECKPOINTS[kind], before, tmp_path)


@pytest.mark.parametrize("override,expected", [
    ("hidden_size=64", "trained with hidden_size=32, cannot continue with hidden_size=64"),
    ("model=dcgan", "trained with model=mlp, cannot continue with model=dcgan"),
    ("loss=hinge", "trained with loss=bce, cannot continue with loss=hinge"),
    ("epochs=1", "already trained 1 of epochs=1"),
])
def test_resume_refuses_a_different_network(tmp_path, good_ckpt, override, expected):
    before = snapshot(good_ckpt.parent)
    result = run_cli("train", f"resume={good_ckpt}", "epochs=3", override, cwd=tmp_path)
    assert_one_clear_failure(result, expected, before, good_ckpt.parent)


def test_stats_bad_options(tmp_path):
    (tmp_path / "taken.npz").write_bytes(b"statistics written earlier")  # never overwritten
    before = snapshot(tmp_path)
    for args, expected in (([], "out is required"), (["out=taken.npz"], "exists, and gantrain stats never overwrites"),
                           (["out=s.npz", "n=1"], "n must be all or an integer >= 2"),
                           (["out=s.npz", "data=ring8"], "features=inception judges images, and this data set holds 2D points"),
                           (["out=s.npz", "features=clip"], "features must be auto or inception, got 'clip'")):
        assert_one_clear_failure(run_cli("stats", *args, cwd=tmp_path), expected, before, tmp_path)


def test_sample_bad_options(tmp_path, good_ckpt):
    (tmp_path / "earlier.png").write_bytes(b"a grid drawn earlier")  # nothing on disk may change
    before = snapshot(tmp_path)
    assert before
    for args, expected in ((["n=0"], "n must be an integer >= 1"), (["format=gif"], "format must be one of"),
                           ([], "ckpt is required"), (["label=3"], "label= is for conditional models")):
        ckpt = [f"ckpt={good_ckpt}"] if args else []
        assert_one_clear_failure(run_cli("sample", *ckpt, *args, "out=.", cwd=tmp_path), expected, before, tmp_path)
