"""eval.features=inception: FID, KID and IS through the FID Inception network against torch-fidelity's own
numbers on the same images, and statistics files (gantrain stats, ref=) against pytorch-fid's, on a stand-in
weights file: torch-fidelity's architecture and keys with random weights made in the test (fast to build, and
it has the output layer; the real weights are tested in test_inception_weights.py)."""
import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import require, run_cli, write_photo_folder
from gantrain.errors import UserError
from gantrain.evaluation import metrics
from gantrain.evaluation.inception import inception_score, load_inception
from gantrain.evaluation.stats_files import frechet_distance, read_stats

torch_fidelity = require("torch_fidelity", "inception")
pytestmark = pytest.mark.xdist_group("inception")  # one worker builds the stand-in network once


@pytest.fixture(scope="session")  # once per test worker, however its tests interleave with others
def stand_in(tmp_path_factory) -> str:
    """torch-fidelity's InceptionV3 with random weights, scaled so features neither vanish nor explode."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    folder = tmp_path_factory.mktemp("inception")
    torch.save({}, folder / "empty.pth")
    original = FeatureExtractorInceptionV3.load_state_dict
    FeatureExtractorInceptionV3.load_state_dict = lambda self, state: None  # keep torch's random initialisation
    try:
        torch.manual_seed(0)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=folder / "empty.pth")
    finally:
        FeatureExtractorInceptionV3.load_state_dict = original
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(net.state_dict(), folder / "stand_in.pth")
    return str(folder / "stand_in.pth")


def image_sets(folder, n: int = 12) -> list[np.ndarray]:
    """Two sets of n RGB 32x32 images, as PNG folders: photo crops, and the same crops blurred and shifted."""
    photos = write_photo_folder(folder / "a", n, side=32)
    a = np.stack([np.asarray(Image.open(p)) for p in sorted(photos.glob("*.png"))])
    b = np.clip(np.roll(a, 3, axis=2).astype(int) // 2 + 60, 0, 255).astype(np.uint8)
    (folder / "b").mkdir()
    for i, img in enumerate(b):
        Image.fromarray(img).save(folder / "b" / f"{i:04d}.png")
    return [a, b]


def test_fid_kid_and_is_equal_torch_fidelitys_own(stand_in, tmp_path):
    a, b = image_sets(tmp_path)
    theirs = torch_fidelity.calculate_metrics(input1=str(tmp_path / "b"), input2=str(tmp_path / "a"), cuda=False,
                                              fid=True, kid=True, isc=True, kid_subset_size=len(a), verbose=False,
                                              feature_extractor_weights_path=stand_in)
    net = load_inception(stand_in, torch.device("cpu"))
    as_floats = lambda u8: torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1  # gantrain's image range
    with torch.no_grad():
        real, fake = net(as_floats(a)), net(as_floats(b))
        ours = metrics.fd_and_kid(real, fake)
        score = inception_score(net.logits(fake))["is"]
    assert theirs["frechet_inception_distance"] > 1e-3  # the two sets differ in this network's features
    assert ours["fd"]["value"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-3)
    assert ours["kid"]["value"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-3)
    assert score["value"] == pytest.approx(theirs["inception_score_mean"], rel=1e-3)


@pytest.mark.parametrize("make, says", [
    (lambda p, good: torch.save({k: v for k, v in list(torch.load(good).items())[3:]}, p), "is not the FID Inception network"),
    (lambda p, good: p.write_bytes(open(good, "rb").read()[:100_000]), "truncated or corrupt"),
    (lambda p, good: p.write_bytes(pickle.dumps(print)), "was refused"),
    (lambda p, good: torch.save({"a": 1}, p), "not a state dict of tensors"),
])
def test_a_weights_file_that_is_not_inception_is_one_line(stand_in, tmp_path, make, says):
    bad = tmp_path / "bad.pth"
    make(bad, stand_in)
    with pytest.raises(UserError, match=says):
        load_inception(str(bad), torch.device("cpu"))


def test_train_and_eval_report_fid_in_inception_features(stand_in, tmp_path):
    photos = write_photo_folder(tmp_path / "photos", 40, side=32)
    common = ["data=folder", f"data.root={photos}", "data.image_size=32", "device=cpu", "hydra.run.dir=run"]
    train = run_cli("train", *common, "model=dcgan", "epochs=1", "batch_size=20", "hidden_size=16", "latent_size=8",
                    "eval.n=10", "eval.features=inception", f"eval.inception_weights={stand_in}", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert {"fid", "kid", "is", "precision", "recall"} == set(saved)  # no FD: an FD in Inception's space is an FID
    assert all(e["features"] == "inception" for e in saved.values())
    again = run_cli("eval", f"ckpt={tmp_path / 'run'}", "n=10", "features=inception", f"inception_weights={stand_in}",
                    "out=again", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "features=inception" in again.stdout
    redone = json.loads((tmp_path / "again" / "metrics.json").read_text())["metrics"]
    assert redone["fid"]["value"] == pytest.approx(saved["fid"]["value"], rel=1e-4)
    report = run_cli("report", str(tmp_path / "run"), "--format", "markdown", cwd=tmp_path)
    assert "sorted by fid; image metrics in inception features" in report.stdout
    # offline, no weights file: one line naming the file and where to put it
    missing = run_cli("train", *common[:-1], "hydra.run.dir=run2", "epochs=1", "batch_size=20", "eval.features=inception", f"eval.inception_weights={tmp_path}/none.pth",
                      cwd=tmp_path, env={"TORCH_HOME": str(tmp_path / "hub")})
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "weights-inception-2015-12-05-6726825d.pth" in missing.stderr and missing.stderr.strip().count("\n") == 0
    assert not (tmp_path / "run2" / "metrics.csv").exists()  # refused before the first step, not after training


def test_members_of_one_stack_are_judged_in_their_own_feature_spaces(stand_in, tmp_path):
    """eval.* may differ between members: one member in Inception's features, the other in gantrain's own;
    each gets the metrics its lone run gets."""
    from conftest import TINY, compose_train
    from gantrain.engine.jobs import Job, train, train_group
    from gantrain.engine.plan import plan

    photos = write_photo_folder(tmp_path / "photos", 40, side=32)
    common = [*TINY, "epochs=1", "data=folder", f"data.root={photos}", "data.image_size=32", "model=dcgan", "eval.n=10"]
    cfgs = [compose_train([*common, "eval.features=inception", f"eval.inception_weights={stand_in}"]),
            compose_train([*common, "seed=1"])]
    assert len(plan(cfgs)) == 1  # one stack
    train_group([Job(c.copy(), tmp_path / f"stack{k}", [], str(k), own_log=True) for k, c in enumerate(cfgs)])
    train(cfgs[0].copy(), tmp_path / "alone0", [])
    read = lambda d: json.loads((tmp_path / d / "metrics.json").read_text())["metrics"]
    assert read("stack0")["fid"]["features"] == "inception" and read("stack1")["fd"]["features"] == "contrastive"
    assert read("stack0")["fid"]["value"] == pytest.approx(read("alone0")["fid"]["value"], rel=1e-3)


def test_cached_real_features_belong_to_the_weights_they_came_from(stand_in, tmp_path, monkeypatch):
    """The real images' features are cached on disk by the data and by the Inception weights: the same weights
    read them back (no Inception pass), another weights file (say the stand-in, then the real one) never
    reuses them."""
    from gantrain.components.data import load_data
    from gantrain.evaluation import evaluate

    monkeypatch.setenv("GANTRAIN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(evaluate, "_references", {})  # this process's: the disk cache is what is tested
    state = torch.load(stand_in, weights_only=True)
    state["fc.weight"] = state["fc.weight"] + 1
    state["Conv2d_1a_3x3.conv.weight"] = state["Conv2d_1a_3x3.conv.weight"] * 1.5  # other features too
    torch.save(state, tmp_path / "other.pth")
    same, again, other = (load_inception(p, torch.device("cpu")) for p in (stand_in, stand_in, str(tmp_path / "other.pth")))
    assert same.weights_hash == again.weights_hash != other.weights_hash
    data = load_data("folder", root=str(write_photo_folder(tmp_path / "photos", 6, side=16)), image_size=16)
    first = evaluate.real_reference(same, data, 6)
    assert len(list((tmp_path / "cache" / "references").glob("*inception*"))) == 1
    evaluate._references.clear()
    passes = []
    counting = evaluate.features
    monkeypatch.setattr(evaluate, "features", lambda net, x: passes.append(net) or counting(net, x))
    cached = evaluate.real_reference(again, data, 6)  # read from disk: no pass of the network
    assert passes == [] and torch.equal(cached.feats, first.feats)
    fresh = evaluate.real_reference(other, data, 6)  # another weights file: computed, never the cached ones
    assert passes == [other] and not torch.allclose(fresh.feats, first.feats)
    assert len(list((tmp_path / "cache" / "references").glob("*inception*"))) == 2


def test_kid_over_random_subsets_agrees_with_torch_fidelitys_within_their_spread():
    """Where KID is a mean over random subsets (n > its subset size of 1,000) gantrain (torchmetrics, 50 subsets)
    and torch-fidelity (100) draw different subsets: their means must agree within 3 standard errors of the
    two means (each std / sqrt(subsets); overlapping subsets make that approximate), and both lie that close
    to the unbiased KID over the whole sets."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    gen = torch.Generator().manual_seed(0)
    real, fake = torch.randn(3000, 64, generator=gen), torch.randn(3000, 64, generator=gen) * 1.1 + 0.05
    ours = metrics.fd_and_kid(real, fake)["kid"]
    theirs = kid_features_to_metric(real.double(), fake.double(), kid_subsets=100, kid_subset_size=1000, verbose=False)
    assert ours["subset_size"] == 1000
    se_ours, se_theirs = ours["std"] / 50 ** 0.5, theirs["kernel_inception_distance_std"] / 100 ** 0.5
    assert abs(ours["value"] - theirs["kernel_inception_distance_mean"]) <= 3 * (se_ours ** 2 + se_theirs ** 2) ** 0.5
    kernel = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3  # KID's polynomial kernel
    r, f, n = real.double(), fake.double(), len(real)
    within = lambda k: (k.sum() - k.diag().sum()) / (n * (n - 1))
    whole = float(within(kernel(r, r)) + within(kernel(f, f)) - 2 * kernel(r, f).mean())
    assert whole > 10 * se_ours  # the sets differ, measurably
    assert abs(ours["value"] - whole) <= 3 * se_ours and abs(theirs["kernel_inception_distance_mean"] - whole) <= 3 * se_theirs


@pytest.fixture(scope="session")
def trained(stand_in, tmp_path_factory):
    """A tiny run judged in the stand-in's Inception features, and its photos' statistics file (gantrain stats)."""
    cwd = tmp_path_factory.mktemp("stats")
    photos = write_photo_folder(cwd / "photos", 24, side=32)
    data = ["data=folder", f"data.root={photos}", "data.image_size=32"]
    train = run_cli("train", *data, "device=cpu", "model=dcgan", "epochs=1", "batch_size=12", "hidden_size=16",
                    "latent_size=8", "eval.n=12", "eval.features=inception", f"eval.inception_weights={stand_in}",
                    "hydra.run.dir=run", cwd=cwd)
    assert train.returncode == 0, train.stderr
    stats = run_cli("stats", *data, "n=12", f"inception_weights={stand_in}", "out=real.npz", cwd=cwd)
    assert stats.returncode == 0, stats.stderr
    return cwd


def test_a_statistics_file_is_pytorch_fids_layout_and_pytorch_fid_reads_it(trained, stand_in):
    fid_score = require("pytorch_fid.fid_score", "dev")
    with np.load(trained / "real.npz", allow_pickle=False) as f:
        assert f["mu"].shape == (2048,) and f["sigma"].shape == (2048, 2048) and int(f["n"]) == 12
        card = json.loads(str(f["gantrain_protocol"]))
    assert card["real"]["used"] == 12 and card["real"]["images"] == 24 and card["features"] == "inception"
    mu, sigma = fid_score.compute_statistics_of_path(str(trained / "real.npz"), None, 1, 2048, "cpu")  # its .npz reader
    ours = read_stats(trained / "real.npz", 2048)
    assert np.array_equal(mu, ours.mu.numpy()) and np.array_equal(sigma, ours.sigma.numpy())
    # pytorch-fid's Fréchet distance (scipy's sqrtm) against gantrain's (eigenvalues), on the file's first 64
    # features (a 2048-dimensional sqrtm takes scipy ~15 s here) and a shifted, scaled copy of them
    m, s = ours.mu[:64], ours.sigma[:64, :64]
    assert frechet_distance(m, s, m + 0.5, s * 1.1) == pytest.approx(
        fid_score.calculate_frechet_distance(m.numpy(), s.numpy(), (m + 0.5).numpy(), (s * 1.1).numpy()), rel=1e-4)
    again = run_cli("stats", "data=folder", f"data.root={trained / 'photos'}", "data.image_size=32", "out=real.npz",
                    f"inception_weights={stand_in}", cwd=trained)
    assert again.returncode == 1 and "never overwrites" in again.stderr


def test_fid_against_a_statistics_file_equals_fid_against_the_same_real_images(trained, stand_in):
    """The same 12 real images (the first 12 of eval's fixed shuffle), in process or through the file: FIDs
    equal to float rounding (the file's mean and covariance are float64; torchmetrics' in-process ones too)."""
    common = [f"ckpt={trained / 'run'}", "n=12", "features=inception", f"inception_weights={stand_in}"]
    inline = run_cli("eval", *common, "out=inline", cwd=trained)
    filed = run_cli("eval", *common, f"ref={trained / 'real.npz'}", "out=filed", cwd=trained)
    assert inline.returncode == 0 and filed.returncode == 0, filed.stderr
    read = lambda d: json.loads((trained / d / "metrics.json").read_text())["metrics"]
    assert set(read("filed")) == {"fid", "is"}  # KID and precision / recall need the real features themselves
    assert read("filed")["fid"]["value"] == pytest.approx(read("inline")["fid"]["value"], rel=1e-5)
    card = read("filed")["fid"]["protocol"]["reference"]
    assert card["protocol"]["real"]["used"] == 12 and card["n"] == 12 and len(card["sha256"]) == 16
    assert "KID and precision/recall need real images' features" in filed.stdout


@pytest.mark.parametrize("arrays, says", [
    (lambda mu, s: {"mu": mu[:100], "sigma": s[:100, :100]}, "statistics of 100 features, and this evaluation's network gives 2048"),
    (lambda mu, s: {"mu": mu, "sigma": s + np.triu(np.ones_like(s), 1)}, "sigma is not symmetric"),
    (lambda mu, s: {"mu": np.where(np.arange(len(mu)) == 5, np.nan, mu), "sigma": s}, "NaN or infinite"),
    (lambda mu, s: {"mu": mu, "sigma": s, "note": np.array([print], dtype=object)}, "holds pickled objects"),
    (lambda mu, s: {"m": mu, "s": s}, "holds m, s, not the mu"),
])
def test_a_statistics_file_that_cannot_be_used_is_one_line(trained, stand_in, arrays, says):
    with np.load(trained / "real.npz") as f:
        np.savez(trained / "bad.npz", **arrays(f["mu"], f["sigma"]))
    bad = run_cli("eval", f"ckpt={trained / 'run'}", "n=12", "features=inception", f"inception_weights={stand_in}",
                  f"ref={trained / 'bad.npz'}", "ref_protocol=clean", "out=bad", cwd=trained)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and bad.stderr.strip().count("\n") == 0
    assert says in bad.stderr and not (trained / "bad" / "metrics.json").exists()


def test_a_singular_covariance_from_elsewhere_is_accepted_and_its_protocol_said(trained, stand_in):
    """pytorch-fid's layout without gantrain's keys, from 12 images (< 2048 features: singular): accepted, its
    protocol the one ref_protocol names, or unknown."""
    with np.load(trained / "real.npz") as f:
        np.savez(trained / "theirs.npz", mu=f["mu"].astype(np.float32), sigma=f["sigma"])
    common = [f"ckpt={trained / 'run'}", "n=12", "features=inception", f"inception_weights={stand_in}", f"ref={trained / 'theirs.npz'}"]
    named = run_cli("eval", *common, "ref_protocol=legacy_tensorflow", "out=named", cwd=trained)
    assert named.returncode == 0, named.stderr
    card = json.loads((trained / "named" / "metrics.json").read_text())["metrics"]["fid"]["protocol"]["reference"]
    assert card["protocol"] == "legacy_tensorflow" and "protocol legacy_tensorflow" in named.stdout
    assert read_stats(trained / "theirs.npz", 2048).protocol == "unknown"  # unless ref_protocol names it


def test_the_report_never_ranks_fids_of_different_footing_together(trained, stand_in, tmp_path):
    """Two jobs, one judged against the photos themselves and one against a statistics file: the report labels
    their protocols, ranks within each, and says so in one line (table, CSV and report.html)."""
    for k in ("0", "1"):
        shutil.copytree(trained / "run", tmp_path / "sweep" / k)
    redo = run_cli("eval", f"ckpt={tmp_path / 'sweep' / '1'}", "n=12", "features=inception", f"inception_weights={stand_in}",
                   f"ref={trained / 'real.npz'}", f"out={tmp_path / 'sweep' / '1'}", cwd=tmp_path)
    assert redo.returncode == 0, redo.stderr
    report = run_cli("report", str(tmp_path / "sweep"), "--format", "markdown", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "measured on different footing (reference differ)" in report.stdout
    assert "protocol A: " in report.stdout and "protocol B: " in report.stdout and "statistics file" in report.stdout
    csv = (tmp_path / "sweep" / "report.csv").read_text()
    assert "protocol,protocol_card" in csv.splitlines()[0]
    assert "different footing" in (tmp_path / "sweep" / "report.html").read_text()


def test_members_of_one_stack_compare_with_their_own_statistics_files(trained, stand_in, tmp_path):
    """eval.ref and eval.ref_protocol may differ between members: each FID is against its own file, as its lone run's."""
    from conftest import TINY, compose_train
    from gantrain.engine.jobs import Job, train, train_group
    from gantrain.engine.plan import plan

    with np.load(trained / "real.npz") as f:
        np.savez(tmp_path / "theirs.npz", mu=f["mu"] + 0.1, sigma=f["sigma"])
    common = [*TINY, "epochs=1", "data=folder", f"data.root={trained / 'photos'}", "data.image_size=32", "model=dcgan",
              "eval.n=12", "eval.features=inception", f"eval.inception_weights={stand_in}"]
    cfgs = [compose_train([*common, f"eval.ref={trained / 'real.npz'}"]),
            compose_train([*common, f"eval.ref={tmp_path / 'theirs.npz'}", "eval.ref_protocol=clean"])]
    assert len(plan(cfgs)) == 1  # one stack
    train_group([Job(c.copy(), tmp_path / f"stack{k}", [], str(k), own_log=True) for k, c in enumerate(cfgs)])
    train(cfgs[1].copy(), tmp_path / "alone1", [])
    read = lambda d: json.loads((tmp_path / d / "metrics.json").read_text())["metrics"]["fid"]
    assert read("stack0")["protocol"]["reference"]["protocol"]["features"] == "inception"  # gantrain's own card
    assert read("stack1")["protocol"]["reference"]["protocol"] == "clean"
    assert read("stack1")["value"] == pytest.approx(read("alone1")["value"], rel=1e-5) != read("stack0")["value"]
