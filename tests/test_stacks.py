"""Stacks of members: the stacked optimizers equal torch's per member, members equal their lone runs over
losses x models x optimizers, every config key is honoured per member or splits the stack, and a stack
that is stopped or killed resumes exactly."""
import copy
import csv
import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf, open_dict

from conftest import write_photo_folder, assert_same_state, DEVICE, run_cli, write_mnist
from gantrain.components.networks import MLPDiscriminator, MLPGenerator
from gantrain.components.optimizers import SGD, Adam, AdamW, RMSprop
from gantrain.components.registry import REGISTRIES
from gantrain.engine.jobs import Job, train, train_group
from gantrain.engine.loop import MEMBER_KEYS
from gantrain.engine.plan import plan, stack_key
from gantrain.engine.stacked import StackedParams, vmapped
from gantrain.outputs.checkpoint import load_checkpoint


OPTIMIZER_CASES = {  # two members each, every member key of each optimizer set differently in some case
    "adam": (Adam, [dict(lr=1e-3), dict(lr=3e-2, betas=[0.5, 0.9], eps=1e-6, weight_decay=0.1)]),
    "amsgrad": (Adam, [dict(lr=1e-3, amsgrad=True), dict(lr=3e-2, amsgrad=True, weight_decay=0.01)]),
    "adamw": (AdamW, [dict(lr=1e-3), dict(lr=3e-2, weight_decay=0.1, betas=[0.5, 0.99], eps=1e-6)]),
    "sgd-momentum": (SGD, [dict(lr=0.1, momentum=0.9), dict(lr=0.05, momentum=0.5, dampening=0.1, weight_decay=0.01)]),
    "sgd-nesterov": (SGD, [dict(lr=0.1, momentum=0.9, nesterov=True), dict(lr=0.05, momentum=0.5, nesterov=True)]),
    "sgd-plain": (SGD, [dict(lr=0.1), dict(lr=0.05, weight_decay=0.1)]),
    "rmsprop": (RMSprop, [dict(lr=1e-3), dict(lr=3e-3, alpha=0.9, eps=1e-6, weight_decay=0.1)]),
    "rmsprop-centred": (RMSprop, [dict(lr=1e-3, momentum=0.9, centered=True), dict(lr=3e-3, alpha=0.9, momentum=0.5, centered=True)]),
}


@pytest.mark.numerical
@pytest.mark.parametrize("optimizer,members", OPTIMIZER_CASES.values(), ids=OPTIMIZER_CASES.keys())
def test_stacked_optimizer_equals_torch_per_member_and_round_trips_its_state(optimizer, members):
    torch.manual_seed(0)
    stacked = torch.randn(2, 5, 3)
    split = lambda flat: [flat.view(2, 5, 3)]
    mine = optimizer(stacked.view(2, 15), split, members)
    refs = [torch.nn.Parameter(stacked[k].clone()) for k in range(2)]
    opts = [optimizer.torch_class([refs[k]], **members[k]) for k in range(2)]
    for _ in range(20):
        grad = torch.randn(2, 5, 3)
        mine.step(grad.view(2, 15))
        for k in range(2):
            refs[k].grad = grad[k].clone()
            opts[k].step()
    for k in range(2):
        assert torch.allclose(stacked[k], refs[k].detach(), atol=1e-6, rtol=1e-5), k
    exported = optimizer.torch_class([torch.nn.Parameter(torch.zeros(5, 3))], **members[1])
    mine.export_member(1, exported)  # a member's state in torch's own format: its checkpoint resumes alone
    for name, value in opts[1].state_dict()["state"].get(0, {}).items():
        assert torch.allclose(exported.state_dict()["state"][0][name].float(), value.float(), atol=1e-5), name
    back = optimizer(torch.zeros(2, 15), split, members)
    back.restore_member(1, exported.state_dict())
    assert all(torch.equal(a[1], b[1]) for a, b in zip(back.state.values(), mine.state.values()))


def test_a_stacked_optimizer_refuses_unknown_keys_and_says_why_a_key_keeps_a_job_alone():
    from gantrain.errors import UserError

    with pytest.raises(UserError, match="optim has no option 'momentum': torch.optim.Adam takes lr, betas"):
        Adam.settings({"lr": 1e-3, "momentum": 0.9})
    with pytest.raises(UserError, match="Invalid learning rate"):
        Adam.settings({"lr": -1})
    assert "optim.fused" in Adam.why_not_stacked({"fused": True}) and Adam.why_not_stacked({"foreach": None}) is None


@pytest.mark.parametrize("make", [lambda: MLPDiscriminator((1, 4, 4), 8, pack=2),
                                  lambda: MLPGenerator(3, 8, (2,), depth=3, heads=2)], ids=["mlp-d-packed", "mlp-g-heads"])
@pytest.mark.numerical
def test_stacked_params_hold_members_in_the_layout_their_gradients_arrive_in(make):
    """Members round-trip through the (K, N) tensor exactly, and every gradient of a stacked backward
    flattens into it as a view: no copy before the optimizer, which reads all its tensors in one order."""
    torch.manual_seed(0)
    modules = [make() for _ in range(3)]
    stack = StackedParams(modules)
    assert any(stack.transposed) and not all(stack.transposed)  # Linear weights yes, biases (and heads) no
    for k, module in enumerate(modules):
        mine = stack.member(k)
        assert all(torch.equal(mine[n], v) and mine[n].is_contiguous() for n, v in module.state_dict().items())
    x = torch.randn(3, 4, *(1, 4, 4) if isinstance(modules[0], MLPDiscriminator) else (3,))
    params = list(stack.params.values())
    grads = torch.autograd.grad(vmapped(modules[0])[0](stack.params, stack.buffers, x).square().sum(), params)
    for g, flat in zip(grads, stack.flatten(list(grads))):
        assert flat.data_ptr() == g.data_ptr() and flat.is_contiguous()
    with torch.no_grad():
        stack.flat.mul_(2)  # the optimizer writes the flat tensor; the forward passes read the leaves
    assert all(torch.equal(p[k], 2 * m.state_dict()[n]) for n, p in stack.params.items() for k, m in enumerate(modules))


@pytest.fixture(scope="session")  # once per test worker, however its tests interleave with others
def tiny_root(tmp_path_factory):
    root = write_mnist(tmp_path_factory.mktemp("stack_data"), n=120)
    write_photo_folder(root / "photos", n=60, side=64)  # for the 64-px cases (data=folder data.root=photos)
    return root


def tiny(root, *overrides):
    """The tiny MNIST runs; a case that names data= gets its paths relative to the tiny data's root."""
    data = [f"data.root={root / 'photos'}"] if any(o.startswith("data=") for o in overrides) else ["data=mnist", f"data.root={root}"]
    with initialize_config_module("gantrain.conf", version_base=None):
        return compose("train", overrides=[f"device={DEVICE}", "epochs=2", "batch_size=20", "latent_size=8",
                                           "hidden_size=32", "log_every=3", "eval.enabled=false", "trainer.threads=1",
                                           *overrides, *data])


# each case: what both members share, and what the second one changes (member keys only)
CASES = {
    "bce-mlp-adam": ([], ["seed=1", "optim.lr=3e-4", "optim.betas=[0.5,0.99]", "+optim.eps=1e-6", "+optim.weight_decay=0.01",
                          "log_every=2", "sample_every=2", "ckpt_every=2", "ema_decay=0.9", "eval.enabled=true",
                          "eval.n=40", "eval_every=1", "eval.metric=kid"]),
    "lsgan-dcgan-sgd": (["loss=lsgan", "model=dcgan", "optim=sgd", "optim.lr=0.002"],
                        ["seed=1", "optim.momentum=0.5", "+optim.dampening=0.1", "optim.lr=0.001"]),
    "hinge-dcgan-sn-rmsprop": (["loss=hinge", "model=dcgan", "model.spectral_norm=true", "optim=rmsprop"],
                               ["optim.lr=1e-4", "optim.alpha=0.9", "+optim.momentum=0.0"]),
    "wgan_gp-mlp-adam-n_critic5": (["loss=wgan_gp", "n_critic=5", "batch_size=10", "optim.betas=[0.0,0.9]"],
                                   ["seed=2", "loss.gp_weight=5"]),
    "bce-lazy_r1-adamw-ema": (["optim=adamw", "loss.r1_gamma=1.0", "loss.r1_every=2", "ema_decay=0.9"],
                              ["seed=1", "loss.r1_gamma=3.0", "ema_decay=0.99", "optim.weight_decay=0.1"]),
    "conditional-dcgan-adam": (["model=dcgan", "model.conditional=true"], ["seed=2", "optim.betas=[0.5,0.999]"]),
    "conditional-mlp-pack-heads-skip": (["model.conditional=true", "model.pack=2", "model.heads=3", "on_nan=skip"],
                                        ["seed=3", "optim.lr=1e-3"]),
    "diffaugment-dcgan-r1": (["augment=diffaugment", "model=dcgan", "loss.r1_gamma=1.0"], ["seed=1", "augment.strength=0.5"]),
    "resnet-hinge-conditional": (["model=resnet", "hidden_size=16", "loss=hinge", "model.conditional=true"], ["seed=1"]),
    # 64 px photos through the paper's DCGAN (4x4 doubling to 64x64), 4 base channels
    "dcgan64-photos": (["data=folder", "data.image_size=64", "model=dcgan", "hidden_size=16"],
                       ["seed=1", "optim.lr=1e-4"]),
    # photos that are not square: the paper's DCGAN from a 3x4 map (48x64)
    "dcgan-48x64-photos": (["data=folder", "data.image_size=[48,64]", "model=dcgan", "hidden_size=16"], ["seed=1"]),
}


def weights_and_moments(run_dir) -> dict[str, torch.Tensor]:
    """Every float tensor a run's last checkpoint holds (G, D, G_ema, optimizer states), by name, in float64."""
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    out = {f"{net}.{key}": t for net in ("G", "D", "G_ema") for key, t in (ckpt[net] or {}).items()}
    out |= {f"{opt}.{j}.{n}": t for opt in ("opt_g", "opt_d") for j, state in ckpt[opt]["state"].items() for n, t in state.items()}
    return {name: t.double() for name, t in out.items() if t.is_floating_point() and t.dim() > 0}


def relative_gap(a: dict, b: dict) -> float:
    """The largest difference between two runs' tensors (those both have), each relative to its largest value."""
    return max(float((a[n] - b[n]).abs().max() / b[n].abs().max().clamp(min=1e-30)) for n in b if n in a)


def assert_same_run(stacked, alone, rtol=1e-9, atol=1e-10):
    """Weights and optimizer state of two checkpoints (default: to float64's rounding, ~1e6 times below what a
    missed term or a wrong member changes); the same config, step, metrics.csv steps and files."""
    a, b = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (stacked, alone))
    assert a["config"] == b["config"] and (a["epoch"], a["step"]) == (b["epoch"], b["step"])
    for net in ("G", "D", "G_ema"):
        assert (a[net] is None) == (b[net] is None), net
    for opt in ("opt_g", "opt_d"):
        assert a[opt]["param_groups"] == b[opt]["param_groups"]
    tensors = [weights_and_moments(d) for d in (stacked, alone)]
    assert tensors[0].keys() == tensors[1].keys()
    for name, value in tensors[1].items():
        assert torch.allclose(tensors[0][name], value, rtol=rtol, atol=atol), (name, float((tensors[0][name] - value).abs().max()))
    rows = [list(csv.DictReader(open(d / "metrics.csv"))) for d in (stacked, alone)]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] and rows[0]
    assert all(abs(float(x["g_loss"]) - float(y["g_loss"])) < 1e-4 for x, y in zip(*rows))
    # train.log: Hydra's job logging writes a lone run's (the CLI test compares them); event files carry a time
    files = [sorted(str(p.relative_to(d).parent if "tfevents" in p.name else p.relative_to(d)) for p in d.rglob("*")
                    if p.is_file() and p.name != "train.log") for d in (stacked, alone)]
    assert files[0] == files[1]


@pytest.mark.numerical
@pytest.mark.parametrize("case", CASES)
def test_members_equal_their_lone_runs(tiny_root, tmp_path, case):
    """In float64 (trainer.precision=fp64), where the same maths agrees to ~1e-14 after 12 steps on any CPU's
    kernels, and a missed term, a wrong member or a hyperparameter of another member differs by >1e-4."""
    common, second = CASES[case]
    cfgs = [tiny(tiny_root, *common, "trainer.precision=fp64"), tiny(tiny_root, *common, *second, "trainer.precision=fp64")]
    assert len(plan(cfgs)) == 1 and plan(cfgs)[0][1] is None  # one stack
    members = train_group([Job(copy.deepcopy(c), tmp_path / f"stack{k}", [], str(k), own_log=True) for k, c in enumerate(cfgs)])
    assert all(m.alive for m in members)
    for k, cfg in enumerate(cfgs):
        train(copy.deepcopy(cfg), tmp_path / f"alone{k}", [])
        assert_same_run(tmp_path / f"stack{k}", tmp_path / f"alone{k}")
        assert (tmp_path / f"stack{k}" / "train.log").read_text().count("Epoch[") == len(
            list(csv.DictReader(open(tmp_path / f"stack{k}" / "metrics.csv"))))
    # the members differ from each other (their seeds and hyperparameters are honoured, not shared)
    assert relative_gap(*(weights_and_moments(tmp_path / f"stack{k}") for k in (0, 1))) > 1e-3
    for k, cfg in enumerate(cfgs):  # each member evaluated with its own eval.* settings, or not at all
        saved = tmp_path / f"stack{k}" / "metrics.json"
        assert saved.exists() == bool(cfg.eval.enabled)
        if cfg.eval.enabled:
            assert json.loads(saved.read_text())["metrics"]["fd"]["n_fake"] == cfg.eval.n


@pytest.mark.numerical
@pytest.mark.parametrize("case", ["lsgan-dcgan-sgd", "wgan_gp-mlp-adam-n_critic5"])
def test_float32_members_are_as_close_to_their_lone_runs_as_float32_rounding_allows(tiny_root, tmp_path, case):
    """The real float32 path, against a yardstick of pure rounding measured in the same run on the same
    kernels: how far the lone float32 run itself lies from the exact (float64) run of the same config. A
    stacked member may differ from its lone run by that much (Adam and GAN training amplify rounding, by
    ~1e3 over 12 steps, differently on every CPU), not by what a real difference in the maths would make."""
    common, second = CASES[case]
    cfgs = [tiny(tiny_root, *common), tiny(tiny_root, *common, *second)]
    train_group([Job(copy.deepcopy(c), tmp_path / f"stack{k}", [], str(k), own_log=True) for k, c in enumerate(cfgs)])
    for k, cfg in enumerate(cfgs):
        train(copy.deepcopy(cfg), tmp_path / f"alone{k}", [])
        train(tiny(tiny_root, *common, *(second if k else []), "trainer.precision=fp64"), tmp_path / f"exact{k}", [])
        stacked, alone, exact = (weights_and_moments(tmp_path / f"{d}{k}") for d in ("stack", "alone", "exact"))
        rounding = relative_gap(alone, exact)
        # float32 does round, and only rounds: other maths on the float32 path (a lost term, another member's
        # hyperparameter) lies O(1) from the exact run; measured here: 1.6e-6 to 0.032 on two sets of kernels
        assert 0 < rounding < 0.2, rounding
        assert relative_gap(stacked, alone) <= 10 * rounding, (relative_gap(stacked, alone), rounding)


def leaf_keys(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def another(value):
    """A different value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, list):
        if value and isinstance(value[-1], str):
            return value[:-1]  # a list of names, e.g. augment.policy
        return [*value[:-1], value[-1] / 2] if value else [1]
    return f"{value}_other"


def member_key(group_choice: dict, key: str) -> bool:
    top = key.split(".")[0]
    if top in MEMBER_KEYS:
        return True
    if top in ("optim", "loss"):
        return key.split(".", 1)[1] in REGISTRIES[top][group_choice[top]].member_keys
    if top == "augment":
        return key.split(".", 1)[1] in REGISTRIES["augment"][group_choice["augment"]].member_keys
    return False


GROUPS = {"model": ["mlp", "dcgan", "resnet"], "augment": ["none", "diffaugment"], "loss": ["bce", "lsgan", "hinge", "wgan_gp"], "optim": ["adam", "adamw", "sgd", "rmsprop"],
          "data": ["mnist_sample", "mnist", "fashion_mnist", "kmnist", "cifar10", "folder", "ring8", "grid25"],
          "logger": ["csv", "tensorboard"]}


def test_every_config_key_is_honoured_per_member_or_splits_the_stack():
    """Walks every leaf of the composed config under every choice of each group, plus every argument of
    each optimizer's torch class. Changing a key that is not a member key must split two jobs into two
    stacks; a member key must be one that a test above varies between two members which then equal their
    lone runs (an optimizer's: the stacked-optimizer cases; the rest: CASES, the CLI sweep, the resume test)."""
    varied = {o.lstrip("+").split("=")[0] for _, second in CASES.values() for o in second}
    varied |= {"logger.csv", "logger.tensorboard", "resume"}  # the everything sweep varies the logger; resume=auto resumes a stack
    varied |= {"eval.features", "eval.inception_weights", "eval.ref", "eval.ref_protocol"}  # test_inception: members
    # in their own feature spaces, and against their own statistics files
    for optimizer in (Adam, AdamW, SGD, RMSprop):
        differ = {key for opt, members in OPTIMIZER_CASES.values() if opt is optimizer for key in members[1]
                  if members[0].get(key) != members[1][key]}
        assert set(optimizer.member_keys) <= differ, optimizer
        varied |= {f"optim.{key}" for key in optimizer.member_keys}
    for group, choices in GROUPS.items():
        keys_of_choices = set()
        for choice in choices:
            with initialize_config_module("gantrain.conf", version_base=None):
                cfg = compose("train", overrides=[f"{group}={choice}"])
            keys_of_choices.add(stack_key(cfg))
            plain = OmegaConf.to_container(cfg)
            chosen = {g: plain[g]["name"] for g in ("optim", "loss", "augment")}
            torch_args = {f"optim.{k}": v for k, v in REGISTRIES["optim"][chosen["optim"]].settings({}).items()}
            for key, value in [*leaf_keys(plain), *torch_args.items()]:
                if key.split(".")[0] in GROUPS and key.endswith(".name"):
                    continue  # another choice of a group: compared below
                if member_key(chosen, key):
                    assert key in varied, f"{group}={choice}: member key {key} is varied by no test"
                    continue
                other = copy.deepcopy(cfg)
                with open_dict(other):
                    OmegaConf.update(other, key, another(value), force_add=True)
                assert stack_key(cfg) != stack_key(other), f"{group}={choice}: {key} neither splits nor is per member"
        assert len(keys_of_choices) == (1 if group in MEMBER_KEYS else len(choices)), group  # the logger is per member


def test_a_member_key_that_switches_a_code_path_splits_the_stack(tiny_root):
    r1 = [tiny(tiny_root, f"loss.r1_gamma={g}") for g in (0.0, 1.0, 2.0)]
    assert stack_key(r1[0]) != stack_key(r1[1]) and stack_key(r1[1]) == stack_key(r1[2])  # R1 adds a pass of D
    sgd = [tiny(tiny_root, "optim=sgd", f"optim.momentum={m}") for m in (0.0, 0.5, 0.9)]
    assert stack_key(sgd[0]) != stack_key(sgd[1]) and stack_key(sgd[1]) == stack_key(sgd[2])  # torch keeps no buffer at 0
    alone = plan([tiny(tiny_root, "trainer.precision=bf16"), tiny(tiny_root, "trainer.precision=bf16", "seed=1"),
                  tiny(tiny_root, "+optim.fused=true", "seed=2")])
    assert [reason.split(":")[0] for _, reason in alone] == ["trainer.precision=bf16"] * 2 + ["optim.fused says how torch runs its update; a stack runs its own (drop it to stack)"]
    assert plan([tiny(tiny_root), tiny(tiny_root, "seed=1")], [(1, 6, 0), (1, 6, 3)]) != plan([tiny(tiny_root), tiny(tiny_root, "seed=1")])


@pytest.fixture
def cwd(tmp_path):
    write_mnist(tmp_path / "data", n=200)
    return tmp_path


IMAGES = ["epochs=2", "data=mnist", "data.root=data", "batch_size=20", "hidden_size=32", "latent_size=8",
          "log_every=5", "eval.n=50", f"device={DEVICE}"]


def pixels(png):
    from PIL import Image

    with Image.open(png) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def test_a_sweep_of_everything_stacks_and_each_member_writes_what_its_lone_run_writes(cwd):
    """The issue's case through the real CLI: dcgan, wgan_gp with n_critic=5, one thread, members of other seeds
    and trackers in one stack (in float64); every member's files equal its lone run's, value by value: log lines,
    metrics.csv, samples (pixels), curves, metrics.json, last.pt and best.pt, TensorBoard events."""
    setup = ["model=dcgan", "loss=wgan_gp", "n_critic=5", "batch_size=10", "trainer.threads=1", "log_every=2",
             "epochs=2", "data=mnist", "data.root=data", "hidden_size=16", "latent_size=8", "eval.n=40",
             f"device={DEVICE}", "optim.lr=1e-4", "trainer.precision=fp64"]
    swept = ["seed=0,1", "logger=csv,tensorboard"]
    sweep = run_cli("sweep", *swept, *setup, "hydra.sweep.dir=vs", cwd=cwd)
    assert sweep.returncode == 0, sweep.stderr
    assert "jobs 0,1,2,3: one stack (K=4)" in sweep.stdout and "stack of 4 members" in sweep.stdout
    alone = run_cli("train", "-m", *swept, *setup, "hydra.sweep.dir=plain", cwd=cwd)
    assert alone.returncode == 0, alone.stderr
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for job in "0123":
        assert_same_run(cwd / "vs" / job, cwd / "plain" / job)
        logs = [[line.split("] ", 2)[-1] for line in (cwd / d / job / "train.log").read_text().splitlines()
                 if "Epoch[" in line or "eval at" in line] for d in ("vs", "plain")]
        assert len(logs[0]) > 1 and logs[0] == logs[1]  # whole lines: every printed loss and metric
        for name in ("samples/epoch_0001.png", "samples/epoch_0002.png", "real_images.png", "curves.png"):
            a, b = (pixels(cwd / d / job / name) for d in ("vs", "plain"))
            assert a.shape == b.shape and (np.abs(a - b) > 1).mean() < 0.01, name  # float64: the same picture
        best = [load_checkpoint(cwd / d / job / "checkpoints" / "best.pt") for d in ("vs", "plain")]
        assert best[0]["epoch"] == best[1]["epoch"] and all(
            torch.allclose(best[0]["G"][k], best[1]["G"][k], rtol=1e-9, atol=1e-10) for k in best[1]["G"])
        a, b = (json.loads((cwd / d / job / "metrics.json").read_text())["metrics"] for d in ("vs", "plain"))
        assert a.keys() == b.keys() and all(a[m]["value"] == pytest.approx(b[m]["value"], rel=1e-6, abs=1e-9) for m in b)
        if job in "13":  # logger=tensorboard
            events = []
            for d in ("vs", "plain"):
                acc = EventAccumulator(str(cwd / d / job / "tensorboard"))
                acc.Reload()
                scalars = {tag: [(e.step, round(e.value, 5)) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
                events.append((scalars, {tag: [e.step for e in acc.Images(tag)] for tag in acc.Tags()["images"]}))
            assert events[0] == events[1] and {"train/g_loss", "eval/fd"} <= set(events[0][0]) and events[0][1]["samples"]
    # the members differ (jobs 0 and 2: seeds 0 and 1, both csv): a mix-up between them would show above
    assert relative_gap(*(weights_and_moments(cwd / "vs" / j) for j in "02")) > 1e-3


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


def test_a_failing_stack_marks_its_members_failed_and_the_sweep_goes_on(cwd):
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


def test_a_stack_stopped_by_sigterm_then_killed_resumes_exactly_with_resume_auto(cwd):
    """SIGTERM mid-epoch: every member saves a mid-epoch checkpoint and says `interrupted`. The same command
    with resume=auto continues them as one stack from that step; killed with -9 in its next epoch, it
    is run again and finishes from the epoch checkpoints. Every member ends with its uninterrupted weights."""
    write_mnist(cwd / "data2", n=1000)  # 100 steps per epoch
    args = ["sweep", "seed=0,1", "resume=auto", "epochs=3", "data=mnist", "data.root=data2", "batch_size=10",
            "hidden_size=64", "eval.enabled=false", f"device={DEVICE}", "log_every=10", "trainer.threads=1"]
    proc = subprocess.Popen([sys.executable, "-m", "gantrain", *args, "hydra.sweep.dir=first"], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "[1] Epoch[1/3] Step[30/100]" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM
    assert "resume with: gantrain train resume=" not in rest  # not a lone run's line per job: one for the sweep
    assert rest.count("continue the sweep with: gantrain train -m seed=0,1") == 1 and "hydra.sweep.dir=first_resumed resume=auto" in rest
    stopped_at = []
    for j in "01":
        status = json.loads((cwd / "first" / j / "status.json").read_text())
        assert status["state"] == "interrupted" and status["reason"] == "SIGTERM"
        mid = load_checkpoint(cwd / "first" / j / "checkpoints" / "last.pt")
        assert 30 <= mid["position"] < 100 and mid["step"] == mid["position"]
        stopped_at.append(mid["step"])
    proc = subprocess.Popen([sys.executable, "-m", "gantrain", *args, "hydra.sweep.dir=second"], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "[1] Epoch[2/3] Step[50/100]" in line:
            proc.kill()
            break
    proc.communicate(timeout=60)
    assert any("steps into epoch 1" in line for line in lines) and "jobs 0,1: one stack (K=2)" in "".join(lines)
    third = run_cli(*args, "hydra.sweep.dir=third", cwd=cwd)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "resumed from" in third.stdout and "at epoch 1, step 100" in third.stdout
    timing = next(line for line in third.stdout.splitlines() if "stack of 2 members:" in line and "steps/s" in line)
    assert "samples and checkpoints" in timing and "eval" not in timing  # evaluation is off: no 'eval 0.0 s'
    straight = run_cli(*[a for a in args if a != "resume=auto"], "hydra.sweep.dir=straight", cwd=cwd)
    assert straight.returncode == 0, straight.stderr
    for j in "01":
        a, b = (load_checkpoint(cwd / d / j / "checkpoints" / "last.pt") for d in ("third", "straight"))
        assert a["step"] == b["step"] == 300
        assert_same_state(a, b)  # G, D and both optimizers
        rows = list(csv.DictReader(open(cwd / "third" / j / "metrics.csv")))
        # every 10 steps and where the signal stopped it, carried over from the earlier runs, none twice
        assert [int(r["step"]) for r in rows] == sorted({*range(10, 301, 10), stopped_at[int(j)]})
    again = run_cli(*args, "hydra.sweep.dir=fourth", cwd=cwd)  # everything finished: nothing re-runs
    assert again.returncode == 0 and again.stdout.count("already finished") == 2


def test_a_member_samples_evaluates_and_resumes_like_a_lone_run(cwd):
    """Member 1 of a stack against the lone run of its config (float64): the same samples, the same metrics from
    gantrain eval, and resumed for another epoch, the same weights and optimizer state."""
    fp64 = [*IMAGES, "eval.enabled=false", "trainer.precision=fp64"]
    assert run_cli("sweep", "seed=0,1", *fp64, "hydra.sweep.dir=vr", cwd=cwd).returncode == 0
    assert run_cli("train", "seed=1", *fp64, "hydra.run.dir=lone", cwd=cwd).returncode == 0
    ckpts = {"member": cwd / "vr" / "1" / "checkpoints" / "last.pt", "lone": cwd / "lone" / "checkpoints" / "last.pt"}
    drawn, measured = {}, {}
    for who, ckpt in ckpts.items():
        assert run_cli("sample", f"ckpt={ckpt}", "n=16", "format=npz", f"out=s_{who}", cwd=cwd).returncode == 0
        drawn[who] = np.load(cwd / f"s_{who}" / "samples.npz")["samples"]
        assert run_cli("eval", f"ckpt={ckpt}", "n=50", f"out=e_{who}", cwd=cwd).returncode == 0
        measured[who] = json.loads((cwd / f"e_{who}" / "metrics.json").read_text())["metrics"]
        resumed = run_cli("train", f"resume={ckpt}", "epochs=3", f"hydra.run.dir=more_{who}", cwd=cwd)
        assert resumed.returncode == 0, resumed.stderr
    assert np.allclose(drawn["member"], drawn["lone"], atol=1e-6)  # the samples are float32 from either
    assert all(measured["member"][m]["value"] == pytest.approx(measured["lone"][m]["value"], rel=1e-5, abs=1e-8)
               for m in measured["lone"])
    more = {who: load_checkpoint(cwd / f"more_{who}" / "checkpoints" / "last.pt") for who in ckpts}
    assert more["member"]["step"] == more["lone"]["step"] == 30
    a, b = (weights_and_moments(cwd / f"more_{who}") for who in ("member", "lone"))  # to float64's rounding
    assert a.keys() == b.keys() and all(torch.allclose(a[n], b[n], rtol=1e-9, atol=1e-10) for n in b)
    assert relative_gap(weights_and_moments(cwd / "more_member"), weights_and_moments(cwd / "vr" / "0")) > 1e-3


def test_a_grid_over_models_and_learning_rates_stacks_the_learning_rates(tiny_root):
    cfgs = [tiny(tiny_root, f"model={m}", f"optim.lr={lr}", f"seed={s}") for m in ("mlp", "dcgan") for lr in (1e-4, 2e-4)
            for s in range(4)]
    assert sorted(sorted(m) for m, reason in plan(cfgs)) == [list(range(8)), list(range(8, 16))]


@pytest.mark.parametrize("k,overrides", [(1, []), (2, []), (2, ["on_nan=skip", "loss=wgan_gp", "n_critic=2", "optim=rmsprop"]),
                                         (2, ["model=dcgan", "loss.r1_gamma=1", "ema_decay=0.9", "optim=sgd"]),
                                         (2, ["augment=diffaugment", "model=resnet", "hidden_size=16"])],
                         ids=["lone", "stack", "stack-skip-wgan_gp-rmsprop", "stack-dcgan-r1-ema-sgd", "stack-diffaugment-resnet"])
def test_a_step_asks_the_host_nothing_and_draws_no_random_numbers(tiny_root, monkeypatch, k, overrides):
    """What a CUDA graph needs of the step it captures (the capture itself needs a GPU): no tensor is read
    on the host, and no random number is drawn inside (the inputs carry them). A lone run with on_nan=skip
    does read (and is never graphed); a stack skips on the device."""
    from gantrain.components.data import load_data
    from gantrain.engine.build import build_stack
    from gantrain.engine.inputs import epoch_order

    cfgs = [tiny(tiny_root, *overrides, f"seed={s}") for s in range(k)]
    data = load_data("mnist", root=str(tiny_root))
    stack = build_stack(cfgs, data, 0, torch.device("cpu"))
    gens = [torch.Generator().manual_seed(s) for s in range(k)]
    orders = torch.stack([epoch_order(len(data), g) for g in gens])
    stack.step(stack.inputs(data, orders, 0, gens))  # the first step creates the optimizer state
    inputs, step = stack.inputs(data, orders, 1, gens), stack.step
    rng = torch.get_rng_state()

    def host_read(*args, **kwargs):
        raise AssertionError("the step read a tensor on the host")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    stats = step(inputs)
    monkeypatch.undo()
    assert stats.shape == (k, 4) and torch.equal(torch.get_rng_state(), rng)


@pytest.mark.numerical
def test_the_second_kernel_set_of_make_test_is_the_one_torch_runs():
    """make test reruns the numerical tests under ATEN_CPU_CAPABILITY=default: torch must report that it runs its
    unvectorised kernels then, and its vectorised ones otherwise (on a CPU with AVX2), or the rerun proves nothing."""
    import os
    from pathlib import Path

    asked = os.environ.get("ATEN_CPU_CAPABILITY")
    if asked:
        assert torch.backends.cpu.get_cpu_capability() == asked.upper()
        return
    if " avx2" not in (Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""):
        pytest.skip("this CPU has no AVX2: its native kernels are the unvectorised ones")
    assert torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
