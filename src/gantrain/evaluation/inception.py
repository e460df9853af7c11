"""The FID Inception network (eval.features=inception): the numbers papers, StudioGAN's tables and pytorch-fid
report, through torch-fidelity's port of the TensorFlow graph (which matches the original numbers), on weights
from any of the files that carry them (inception_weights.py). Its 2048 pool features feed FID, KID and
precision / recall; its unbiased logits the Inception Score (when the file has the output layer).
"""
import io
import logging
from functools import cache

import torch
from torch import nn

from gantrain.errors import UserError
from gantrain.evaluation.inception_weights import FID_INCEPTION_FEATURES as FID_NETWORK, Weights, find_weights, read_weights
from gantrain.evaluation.metrics import entry

log = logging.getLogger("gantrain")
BATCH = 64  # images per pass: each is resized to 299x299, so a pass of 64 takes ~1.5 GB
RESIZE = "to 299x299 inside the network, TensorFlow-exact bilinear (a non-square image is stretched), from 8-bit pixels"


@cache
def network_class():
    """torch-fidelity's network, built without its file: its constructor loads what torch.load gives it, and is
    given None, which is skipped; the mapped tensors are then loaded (strictly) like any state dict."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise UserError("eval.features=inception needs torch-fidelity: pip install 'gantrain[inception]' "
                        "(or pip install torch-fidelity)") from None

    class TorchFidelityInception(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None if state_dict is None else super().load_state_dict(state_dict, strict, assign)

    return TorchFidelityInception


def build_network(device="cpu") -> nn.Module:
    nothing = io.BytesIO()
    torch.save(None, nothing)
    nothing.seek(0)
    with torch.device(device):
        return network_class()("inception-v3-compat", ["2048"], feature_extractor_weights_path=nothing)


def implementation() -> str:
    from torch_fidelity import __version__

    return f"torch-fidelity {__version__} FeatureExtractorInceptionV3"


class InceptionFeatures(nn.Module):
    """(B, C, H, W) in [-1, 1] -> the 2048 pool features; logits(features) -> the 1008 unbiased logits the
    Inception Score uses. Images are rounded to 8 bits as a PNG of them would be, grey ones repeated to RGB,
    and resized to 299x299 inside (torch-fidelity's TensorFlow-exact bilinear resize)."""

    def __init__(self, extractor: nn.Module, weights: Weights):
        super().__init__()
        self.extractor = extractor
        self.weights = weights
        self.weights_hash = weights.features_sha256[:16]  # cached real features are only reused with the same

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        return torch.cat([self.extractor(chunk)[0] for chunk in pixels.split(BATCH)])

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        return feats @ self.extractor.fc.weight.T  # torch-fidelity's 'logits_unbiased': the fc layer without its bias


def weights_of(weights: str | None) -> Weights:
    """eval.inception_weights (a file, or auto: the first found where inception_weights.candidates() looks),
    read onto torch-fidelity's network."""
    network_class()  # torch-fidelity installed, before any file is looked for
    return read_weights(find_weights(weights), build_network("meta").state_dict())


def load_inception(weights: str | None, device: torch.device) -> InceptionFeatures:
    """The FID Inception network on `device`, its weights from eval.inception_weights."""
    read = weights_of(weights)
    if not read.recognised:
        log.warning(f"eval: {read.path} holds Inception weights gantrain does not recognise (features sha256 "
                    f"{read.features_sha256[:16]}, not the FID network's {FID_NETWORK[:16]}): its numbers are not "
                    f"comparable with published FIDs")
    extractor = build_network()
    extractor.load_state_dict(read.state)
    return InceptionFeatures(extractor.eval(), read).to(device)


def inception_score(logits: torch.Tensor, splits: int = 10) -> dict:
    """The Inception Score of samples' unbiased logits (n, 1008): torch-fidelity's own computation (its
    10 splits, shuffled by its seed), the mean over the splits and their standard deviation."""
    from torch_fidelity.metric_isc import isc_features_to_metric  # installed: load_inception made sure

    out = isc_features_to_metric(logits.double().cpu(), splits=min(splits, len(logits)))
    return {"is": entry(out["inception_score_mean"], 0, len(logits), std=float(out["inception_score_std"]), splits=splits)}
