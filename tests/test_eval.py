"""Evaluation: the sanity ladder on the bundled sample and (self-supervised features) on real photographs, the
2D protocol, precision/recall by hand, the cache."""
import json
import math
import re

import pytest
import torch

from conftest import run_cli, write_photo_folder
from gantrain.evaluation import features, metrics
from gantrain.components.data import grid25_means, load_data, ring8_means
from gantrain.components.dcgan import SmallDCGANGenerator
from gantrain.outputs.checkpoint import load_checkpoint
from gantrain.engine.jobs import train


@pytest.fixture(scope="session")  # once per test worker, however its tests interleave with others
def mnist_features():
    data = load_data("mnist_sample")
    net, accuracy, _ = features.feature_net(data, torch.device("cpu"))
    return data, net, accuracy


@pytest.mark.xdist_group("mnist_sample_features")
def test_feature_network_reaches_97_percent_on_held_out_digits(mnist_features):
    _, _, accuracy = mnist_features
    assert accuracy >= 0.97


@pytest.mark.xdist_group("mnist_sample_features")
def test_sanity_ladder_on_the_bundled_sample(mnist_features):
    from torchvision.transforms.functional import gaussian_blur

    data, net, _ = mnist_features
    x = data.floats()
    train_idx, held_idx = features.split(len(data))
    feats = lambda x: torch.cat([net(chunk) for chunk in x.split(1000)]).detach()
    reference, other = metrics.real_reference(feats(x[train_idx[:2000]])), x[train_idx[2000:3000]]
    noise = torch.randn(other.shape, generator=torch.Generator().manual_seed(1))
    fd = lambda x: metrics.fd_and_kid(reference.feats, feats(x))["fd"]["value"]
    image_metrics = lambda x: metrics.image_metrics(reference, feats(x), net.head(feats(x)), 10)
    held_out, noisy, blurred = fd(x[held_idx]), fd((other + 0.2 * noise).clamp(-1, 1)), fd(gaussian_blur(other, 5, 1.0))
    one_class, uniform = fd(x[data.y == 3]), fd(torch.rand(other.shape, generator=torch.Generator().manual_seed(2)) * 2 - 1)
    assert held_out < noisy < blurred
    assert one_class < uniform
    pr = image_metrics(x[data.y == 3])
    assert pr["precision"]["value"] > 0.8 and pr["recall"]["value"] < 0.3
    assert pr["classes_covered"]["value"] == 1 and pr["class_kl"]["value"] > 2.0  # log 10 = 2.30 for one class
    balanced = image_metrics(x[held_idx])
    assert balanced["classes_covered"]["value"] == 10 and balanced["class_kl"]["value"] < 0.05
    assert all(e["n_real"] == 2000 and e["n_fake"] == len(held_idx) for e in balanced.values())


def test_feature_network_cache_is_reused(base_cfg, mnist_root, monkeypatch):
    data = load_data("mnist", root=str(mnist_root))
    net, acc, _ = features.feature_net(data, torch.device("cpu"))  # trained, or cached by an earlier test
    calls = []
    monkeypatch.setattr(features, "train_feature_net", lambda *a: calls.append(1))
    features._loaded.clear()  # this process's copy: the one on disk is the cache under test
    again, acc_again, _ = features.feature_net(data, torch.device("cpu"))
    assert not calls and acc_again == acc
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))


def test_precision_recall_by_hand():
    real = torch.tensor([[0.0], [1.0], [2.0], [10.0]])  # k=1 radii: 1, 1, 1, 8
    fake = torch.tensor([[0.5], [5.0], [20.0]])  # k=1 radii: 4.5, 4.5, 15
    pr = metrics.precision_recall(metrics.real_reference(real, k=1), fake)
    assert pr["precision"]["value"] == pytest.approx(2 / 3)  # 20 is outside every real ball
    assert pr["recall"]["value"] == 1.0  # 10 is inside the ball of 20 (radius 15)
    assert metrics.precision_recall(metrics.real_reference(real, k=1), real)["precision"]["value"] == 1.0


@pytest.mark.parametrize("name,modes,means", [("ring8", 8, ring8_means), ("grid25", 25, grid25_means)])
def test_mode_metrics_on_exact_mixtures(name, modes, means):
    real = load_data(name, n=2500).x
    m = metrics.mixture_metrics(name, real)
    assert m["modes"]["value"] == modes
    assert m["hq_percent"]["value"] == pytest.approx(100 * (1 - math.exp(-4.5)), abs=1.0)  # 98.9% within 3 std in 2D
    assert m["mode_kl"]["value"] < 0.05
    one_mode = real[load_data(name, n=2500).y == 0]
    single = metrics.mixture_metrics(name, one_mode)
    assert single["modes"]["value"] == 1 and single["mode_kl"]["value"] == pytest.approx(math.log(modes))


def test_mode_metrics_on_hand_made_points():
    means = torch.tensor(ring8_means())
    on_two = torch.cat([means[:1].repeat(3, 1), means[1:2]])  # 3 at mode 0, 1 at mode 1
    m = metrics.mode_metrics(on_two, means, std=0.01)
    assert m["modes"]["value"] == 2 and m["hq_percent"]["value"] == 100
    assert m["mode_kl"]["value"] == pytest.approx(0.75 * math.log(0.75 * 8) + 0.25 * math.log(0.25 * 8))
    far = metrics.mode_metrics(torch.zeros(5, 2), means, std=0.01)  # the ring's centre is 1 away from every mode
    assert far["modes"]["value"] == 0 and far["hq_percent"]["value"] == 0 and far["mode_kl"]["value"] == math.inf


def test_training_writes_metrics_and_best_and_returns_the_headline(cfg, tmp_path, caplog):
    cfg.eval_every, cfg.epochs = 1, 3
    with caplog.at_level("INFO", logger="gantrain"):
        score = train(cfg, tmp_path, [])
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["epoch"] == 3 and score == pytest.approx(saved["metrics"]["fd"]["value"])
    assert {"fd", "kid", "precision", "recall", "classes_covered", "class_kl"} <= set(saved["metrics"])
    assert all({"value", "n_real", "n_fake"} <= set(e) for e in saved["metrics"].values())
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    fds = {int(m.group(1)): float(m.group(2)) for m in re.finditer(r"eval at epoch (\d+): fd ([\d.e+-]+)", caplog.text)}
    assert sorted(fds) == [1, 2, 3] and best["epoch"] == min(fds, key=fds.get)  # the epoch with the lowest FD
    assert best["epoch"] == 3 or not torch.equal(best["G"]["net.4.weight"], load_checkpoint(tmp_path / "checkpoints" / "last.pt")["G"]["net.4.weight"])


def test_2d_training_reports_modes(cfg, tmp_path):
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.data = {"name": "ring8", "n": 500, "seed": 0}
    cfg.batch_size = 100
    score = train(cfg, tmp_path, [])
    saved = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert saved["modes"]["n_fake"] == 2500 and 0 <= saved["modes"]["value"] <= 8
    assert score == pytest.approx(-(saved["modes"]["value"] + saved["hq_percent"]["value"] / 100))


def test_eval_command_prints_a_table_and_writes_metrics_json(tmp_path, base_cfg):
    import copy

    cfg = copy.deepcopy(base_cfg)
    cfg.epochs, cfg.eval.enabled = 1, False
    train(cfg, tmp_path / "run", [])
    result = run_cli("eval", f"ckpt={tmp_path / 'run' / 'checkpoints' / 'last.pt'}", "n=50", "out=ev", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "fd" in result.stdout and "precision" in result.stdout and "n_fake" in result.stdout
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["metrics"]["fd"]["n_fake"] == 50 and saved["epoch"] == 1
    assert "more than the data set" not in result.stdout
    more = run_cli("eval", f"ckpt={tmp_path / 'run' / 'checkpoints' / 'last.pt'}", "n=500", "out=ev2", cwd=tmp_path)
    assert more.returncode == 0, more.stderr  # 120 images: said in one line, not only in the n columns
    assert "eval: n=500 is more than the data set's 120 examples: 120 generated images are compared with 120 real ones" in more.stdout


@pytest.fixture(scope="session")  # once per test worker, however its tests interleave with others
def photos(tmp_path_factory):
    """300 real colour photographs in a folder, loaded as data=folder does at 32x32, and their contrastive
    feature network as gantrain trains it, into this session's cache."""
    root = write_photo_folder(tmp_path_factory.mktemp("photos"), 300)
    data = load_data("folder", root=str(root), image_size=32, channels=3)
    net, score, what = features.feature_net(data, torch.device("cpu"))
    return root, data, net, score, what


@pytest.mark.xdist_group("photos")
def test_unlabelled_photographs_get_self_supervised_features_that_hold_the_sanity_ladder(photos):
    from torchvision.transforms.functional import gaussian_blur

    root, data, net, score, what = photos
    assert what == "held-out view matching" and score > 0.3  # chance: 1 in 60 held-out images
    assert net.logits(torch.zeros(1, 128)) is None  # no classes, so no class coverage
    feats = lambda x: torch.cat([net(chunk) for chunk in x.split(500)]).detach()
    reference, other = metrics.real_reference(feats(data.floats()[:150])), data.floats()[150:]
    g = torch.Generator().manual_seed(1)
    ladder = {"real split": other, "lightly noised": (other + 0.1 * torch.randn(other.shape, generator=g)).clamp(-1, 1),
              "blurred": gaussian_blur(other, 5, 1.5), "collapsed": other[:1].expand_as(other),
              "uniform noise": torch.rand(other.shape, generator=g) * 2 - 1}
    results = {name: metrics.image_metrics(reference, feats(x), None, 0) for name, x in ladder.items()}
    fds = [results[name]["fd"]["value"] for name in ladder]
    assert fds == sorted(fds), dict(zip(ladder, fds))
    assert results["collapsed"]["recall"]["value"] < 0.1 < 0.8 < results["real split"]["recall"]["value"]
    assert "classes_covered" not in results["real split"]


@pytest.mark.xdist_group("photos")
def test_a_run_on_an_image_folder_is_evaluated_with_those_features(photos, tmp_path):
    root, data, net, score, what = photos
    result = run_cli("train", "data=folder", f"data.root={root}", "data.image_size=32", "model=dcgan", "epochs=1",
                     "batch_size=30", "hidden_size=16", "latent_size=8", "eval.n=100", "device=cpu",
                     "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "training a contrastive encoder" not in result.stdout  # the fixture's, found by the data's content hash
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert {"fd", "kid", "precision", "recall"} <= set(saved) and "classes_covered" not in saved
    assert saved["feature_net_accuracy"]["note"] == "held-out view matching"
    assert saved["feature_net_accuracy"]["value"] == pytest.approx(score)
    # a checkpoint gantrain 0.1 wrote at 32 px held its small DCGAN (a Linear projection): refused in one line
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    small_g = SmallDCGANGenerator(8, 4, (3, 32, 32))
    torch.save({**ckpt, "version": 1, "G": small_g.state_dict(), "G_ema": None}, tmp_path / "old.pt")
    old = run_cli("sample", f"ckpt={tmp_path / 'old.pt'}", "n=4", cwd=tmp_path)
    assert old.returncode == 1 and "Traceback" not in old.stderr
    assert old.stderr.strip().count("\n") == 0 and "written by gantrain 0.1" in old.stderr
    assert run_cli("sample", f"ckpt={tmp_path / 'run' / 'checkpoints' / 'last.pt'}", "n=4", cwd=tmp_path).returncode == 0


def test_eval_of_several_checkpoints_is_one_table_on_the_same_real_examples(tmp_path, base_cfg):
    import copy
    import csv

    for seed in (0, 1):
        cfg = copy.deepcopy(base_cfg)
        cfg.epochs, cfg.eval.enabled, cfg.seed = 1, False, seed
        train(cfg, tmp_path / "sweep" / str(seed), [])
    a, b = (tmp_path / "sweep" / s / "checkpoints" / "last.pt" for s in "01")
    listed = run_cli("eval", f"ckpt=[{a},{b}]", "n=50", "out=both", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "2 checkpoints on mnist, each against the same 50 real examples" in listed.stdout
    rows = list(csv.DictReader(open(tmp_path / "both" / "eval.csv")))
    assert [r["checkpoint"] for r in rows] == [str(a), str(b)] and rows[0]["fd"] != rows[1]["fd"]
    alone = run_cli("eval", f"ckpt={b}", "n=50", "out=b", cwd=tmp_path)  # the same number as in the table
    fd_alone = json.loads((tmp_path / "b" / "metrics.json").read_text())["metrics"]["fd"]["value"]
    assert alone.returncode == 0 and float(rows[1]["fd"]) == pytest.approx(fd_alone)
    from_dir = run_cli("eval", f"ckpt={tmp_path / 'sweep'}", "n=50", "out=dir", cwd=tmp_path)  # a sweep dir: every job
    assert from_dir.returncode == 0 and list(csv.DictReader(open(tmp_path / "dir" / "eval.csv"))) == rows
