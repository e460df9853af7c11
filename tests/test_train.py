import copy

import pytest
import torch
from omegaconf import OmegaConf

from gantrain.outputs.checkpoint import load_checkpoint
from gantrain.errors import UserError
from gantrain.components.losses import BCELoss
from gantrain.engine.jobs import train
from gantrain.engine.plain import PlainMembers
from gantrain.engine.step import make_step


def weights(run_dir, net="G"):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")[net]


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def tiny_parts(seed=0):
    from gantrain.components.networks import mlp

    torch.manual_seed(seed)
    G, D = mlp(data_shape=(1, 28, 28), latent_size=8, hidden_size=16)
    opt_g, opt_d = torch.optim.Adam(G.parameters(), 1e-3), torch.optim.Adam(D.parameters(), 1e-3)
    return G, D, opt_g, opt_d


def one_step(G, D, opt_g, opt_d, real, z):
    """One step of a lone member: real (n_critic, B, ...) and z (n_critic + 1, B, latent); its stats (4,)."""
    return make_step(PlainMembers(G, D, opt_g, opt_d), BCELoss())({"real": real[None], "z": z[None]})[0]


def test_one_step_changes_both_networks():
    G, D, opt_g, opt_d = tiny_parts()
    before_g, before_d = copy.deepcopy(G.state_dict()), copy.deepcopy(D.state_dict())
    stats = one_step(G, D, opt_g, opt_d, torch.rand(1, 4, 1, 28, 28) * 2 - 1, torch.randn(2, 4, 8))
    assert stats.shape == (4,) and torch.isfinite(stats).all()
    assert 0 < stats[2] < 1 and 0 < stats[3] < 1  # D(x), D(G(z)) are probabilities
    for before, net in ((before_g, G), (before_d, D)):
        for k, v in net.state_dict().items():
            assert not torch.equal(before[k], v), k


@pytest.mark.numerical
def test_d_step_does_not_backpropagate_into_g_and_g_step_adds_nothing_to_d():
    G, D, opt_g, opt_d = tiny_parts()
    real, z_d, z_g = torch.rand(4, 1, 28, 28) * 2 - 1, torch.randn(4, 8), torch.randn(4, 8)
    # D's gradient from the D step alone, on copies
    G2, D2 = copy.deepcopy(G), copy.deepcopy(D)
    BCELoss().d_loss(D2(real), D2(G2(z_d))).backward()
    fired = []
    for p in G.parameters():  # record in which phase gradients reach G
        p.register_hook(lambda g: fired.append(len(opt_d.state)))
    one_step(G, D, opt_g, opt_d, real[None], torch.stack([z_d, z_g]))
    assert fired and all(n > 0 for n in fired)  # only after D's update: the D step never reached G
    for p, p2 in zip(D.parameters(), D2.parameters()):  # D frozen in the G step: its grads are the D step's
        assert torch.allclose(p.grad, p2.grad, atol=1e-6)
        assert p.requires_grad  # unfrozen again afterwards


@pytest.mark.numerical
def test_step_reports_d_x_as_probability_of_the_real_batch():
    G, D, opt_g, opt_d = tiny_parts()
    real, z_d = torch.rand(6, 1, 28, 28) * 2 - 1, torch.randn(6, 8)
    with torch.no_grad():
        expected_dx = torch.sigmoid(D(real)).mean()
        expected_dgz = torch.sigmoid(D(G(z_d))).mean()
    stats = one_step(G, D, opt_g, opt_d, real[None], torch.stack([z_d, torch.randn(6, 8)]))
    assert stats[2].item() == pytest.approx(expected_dx.item(), abs=1e-6)
    assert stats[3].item() == pytest.approx(expected_dgz.item(), abs=1e-6)


def test_same_seed_same_weights_other_seed_other_weights(cfg, tmp_path):
    train(cfg, tmp_path / "a", [])
    train(cfg, tmp_path / "b", [])
    cfg.seed = 1
    train(cfg, tmp_path / "c", [])
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))
    assert not torch.equal(weights(tmp_path / "a")["net.0.weight"], weights(tmp_path / "c")["net.0.weight"])


@pytest.mark.numerical
def test_resume_is_bit_exact(cfg, tmp_path):
    train(cfg, tmp_path / "straight", [])
    cfg.epochs = 1
    train(cfg, tmp_path / "first", [])
    cfg.epochs, cfg.resume = 2, str(tmp_path / "first" / "checkpoints" / "last.pt")
    train(cfg, tmp_path / "resumed", ["epochs=2", f"resume={cfg.resume}"])
    for net in ("G", "D", "opt_g", "opt_d"):
        a, b = load_checkpoint(tmp_path / "straight/checkpoints/last.pt"), load_checkpoint(tmp_path / "resumed/checkpoints/last.pt")
        if net.startswith("opt"):
            for (k, sa), sb in zip(a[net]["state"].items(), b[net]["state"].values()):
                assert all(torch.equal(sa[n], sb[n]) for n in sa), (net, k)
        else:
            assert_same_weights(a[net], b[net])
    resumed = load_checkpoint(tmp_path / "resumed/checkpoints/last.pt")
    assert (resumed["epoch"], resumed["step"]) == (2, 2 * 120 // 20)


def test_resume_refuses_a_changed_network_and_allows_more_epochs(cfg, tmp_path):
    cfg.epochs = 1
    train(cfg, tmp_path / "first", [])
    ckpt = str(tmp_path / "first" / "checkpoints" / "last.pt")
    changed = copy.deepcopy(cfg)
    changed.hidden_size, changed.epochs, changed.resume = 64, 2, ckpt
    with pytest.raises(UserError, match="hidden_size=32, cannot continue with hidden_size=64"):
        train(changed, tmp_path / "x", ["hidden_size=64", "epochs=2", f"resume={ckpt}"])
    # an unchanged default that was not overridden is fine, and so are epochs and log_every
    ok = copy.deepcopy(cfg)
    ok.epochs, ok.log_every, ok.hidden_size, ok.resume = 3, 2, 256, ckpt
    train(ok, tmp_path / "y", ["epochs=3", "log_every=2", f"resume={ckpt}"])
    final = load_checkpoint(tmp_path / "y" / "checkpoints" / "last.pt")
    assert final["epoch"] == 3 and final["config"]["hidden_size"] == 32 and final["config"]["log_every"] == 2


def test_resume_with_no_epochs_left_says_how_to_continue(cfg, tmp_path):
    train(cfg, tmp_path / "a", [])
    cfg.resume = str(tmp_path / "a" / "checkpoints" / "last.pt")
    with pytest.raises(UserError, match="epochs=4"):
        train(cfg, tmp_path / "b", [f"resume={cfg.resume}"])


def test_checkpoint_holds_only_tensors_and_plain_values(cfg, tmp_path):
    train(cfg, tmp_path, [])
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)  # would raise on any object

    def check(value):
        if isinstance(value, dict):
            [check(v) for v in value.values()]
        elif isinstance(value, (list, tuple)):
            [check(v) for v in value]
        else:
            assert value is None or isinstance(value, (torch.Tensor, int, float, str, bool)), type(value)

    check(ckpt)
    assert ckpt["config"] == OmegaConf.to_container(cfg, resolve=True)
    assert set(ckpt["rng"]) == {"data", "torch", "cuda", "numpy", "python"}


@pytest.mark.parametrize("key,value,message", [
    ("epochs", "abc", "epochs must be an integer >= 1, got 'abc'"),
    ("epochs", 0, "epochs must be an integer >= 1"),
    ("batch_size", -5, "batch_size must be an integer >= 1"),
    ("batch_size", 1000, "batch_size=1000 (x n_critic=1) is larger than the data set (120 examples)"),
    ("device", "cuda:0" if not torch.cuda.is_available() else "cuda:99", "device=cuda"),
    ("device", "tpu", "device must be auto, cpu, cuda or cuda:N"),
])
def test_bad_values_are_one_line_user_errors(cfg, tmp_path, key, value, message):
    cfg[key] = value
    with pytest.raises(UserError) as e:
        train(cfg, tmp_path, [])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_tf32_is_switched_per_run_and_back():
    from gantrain.engine.build import set_matmul_precision

    before = torch.backends.cuda.matmul.allow_tf32
    try:
        set_matmul_precision("tf32")
        assert torch.backends.cuda.matmul.allow_tf32
        set_matmul_precision("fp32")  # a later run in the same process must not inherit TF32
        assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.numerical
def test_fast_path_matches_plain_path_within_float_rounding(cfg, tmp_path):
    """trainer.fast fuses Adam and runs D once over [real; fake]: same maths, other summation order. In
    float64 (any CPU's kernels agree to ~1e-14 after 12 steps) the weights agree to 1e-10; a real
    difference in the maths (a wrong loss, a skipped update) moves them by more than 1e-4."""
    cfg.trainer.precision = "fp64"
    train(cfg, tmp_path / "fast", [])
    cfg.trainer.fast = False
    train(cfg, tmp_path / "plain", [])
    fast, plain = load_checkpoint(tmp_path / "fast/checkpoints/last.pt"), load_checkpoint(tmp_path / "plain/checkpoints/last.pt")
    assert fast["opt_d"]["param_groups"][0]["fused"] and not plain["opt_d"]["param_groups"][0]["fused"]
    assert fast["G"]["net.4.weight"].dtype == torch.float64
    for net in ("G", "D"):
        for k in fast[net]:
            diff = (fast[net][k] - plain[net][k]).abs().max().item()
            assert diff < 1e-10, (net, k, diff)
    # and the comparison is sensitive: one more step on the plain path moves weights far beyond it
    cfg.epochs = 3
    train(cfg, tmp_path / "longer", [])
    longer = load_checkpoint(tmp_path / "longer/checkpoints/last.pt")
    assert (longer["G"]["net.4.weight"] - plain["G"]["net.4.weight"]).abs().max() > 1e-4


def test_no_torch_op_runs_beside_the_loops_thread(cfg, tmp_path):
    """Samples, checkpoints, real_images.png, tracker images and evaluation: every torch op of a run happens on
    the thread that trains. A torch op on a writer thread starts a second OpenMP team, and with more
    OpenMP threads than cores every parallel region of the step waits on a wake-up (artifacts.py)."""
    import threading

    from torch.profiler import ProfilerActivity, _ExperimentalConfig, profile

    every_thread = lambda: profile(activities=[ProfilerActivity.CPU],
                                   experimental_config=_ExperimentalConfig(profile_all_threads=True))
    with every_thread() as control:  # the check itself sees a torch op on another thread, on purpose
        torch.zeros(1).add_(1)
        other = threading.Thread(target=lambda: torch.ones(3).mul_(2))
        other.start()
        other.join()
    assert len({e.thread for e in control.events()}) == 2
    cfg.logger = {"tensorboard": {}}
    with every_thread() as prof:
        torch.zeros(1).add_(1)  # marks the loop's thread
        train(cfg, tmp_path, [])
    threads = {e.thread for e in prof.events()}
    assert len(threads) == 1, {t: sorted({e.name for e in prof.events() if e.thread == t})[:5] for t in threads}
    assert len(list((tmp_path / "samples").glob("*.png"))) == 2 and (tmp_path / "real_images.png").is_file()


def test_a_run_shorter_than_log_every_still_logs_its_last_step(cfg, tmp_path, caplog):
    cfg.epochs, cfg.log_every = 1, 1000  # 6 steps
    with caplog.at_level("INFO", logger="gantrain"):
        train(cfg, tmp_path, [])
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[1:] and rows[1].startswith("1,6,6,") and len(rows) == 2  # the last step: one row
    assert "Epoch[1/1] Step[6/6]" in caplog.text and (tmp_path / "curves.png").is_file()


def test_resume_honours_the_keys_the_readme_says_may_change_and_the_readme_names_them_all(cfg, tmp_path, one_epoch_ckpt):
    from pathlib import Path

    from gantrain.config import MUTABLE_ON_RESUME
    from gantrain.engine.jobs import Job, prepare

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    sentence = readme[readme.index("`resume=PATH` continues with the"):readme.index("other changes are refused")]
    for key in MUTABLE_ON_RESUME:
        if key != "resume":  # resume itself is the path
            assert f"`{key}`" in sentence or f"`{key}.*`" in sentence, key
    cfg.resume, cfg.epochs, cfg.on_nan, cfg.eval_every, cfg.eval.n = str(one_epoch_ckpt), 3, "skip", 1, 44
    cfg.logger = {"tensorboard": {}}
    job = Job(cfg, tmp_path / "more", ["epochs=3", "on_nan=skip", "eval_every=1", "eval.n=44", "logger=tensorboard",
                                       f"resume={one_epoch_ckpt}"])
    assert prepare(job, multirun=False)
    assert (job.cfg.epochs, job.cfg.on_nan, job.cfg.eval_every, job.cfg.eval.n) == (3, "skip", 1, 44)
    assert list(job.cfg.logger) == ["tensorboard"]  # the new logger choice replaces the checkpoint's csv
    train(job.cfg, tmp_path / "run", job.overrides)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["config"]["eval"]["n"] == 44
