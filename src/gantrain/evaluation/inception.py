"""The FID Inception network (eval.features=inception): the numbers papers, StudioGAN's tables and pytorch-fid
report, through torch-fidelity's port of the TensorFlow graph (which matches the original numbers).

The weights file is torch-fidelity's; gantrain never downloads it, and reads it with weights_only=True only
(torch-fidelity's own loader would unpickle anything). Its 2048 pool features feed FID, KID and precision /
recall; its unbiased logits the Inception Score.
"""
import hashlib
import io
from pathlib import Path

import torch
from torch import nn

from gantrain.errors import UserError
from gantrain.evaluation.metrics import entry
from gantrain.outputs.checkpoint import load_safely

WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_NAME}"
BATCH = 64  # images per pass: each is resized to 299x299, so a pass of 64 takes ~1.5 GB


def default_weights() -> Path:
    """Where torch-fidelity (and torchmetrics) keep the file: torch's hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME


def read_weights(path: Path) -> dict:
    """The file's tensors, loaded with weights_only=True; anything else is a one-line UserError."""
    fix = f"pass eval.inception_weights=PATH to torch-fidelity's {WEIGHTS_NAME}"
    state = load_safely(path, "weights file", refused=fix, corrupt=fix)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a state dict of tensors; {fix}")
    return state


class InceptionFeatures(nn.Module):
    """(B, C, H, W) in [-1, 1] -> the 2048 pool features; logits(features) -> the 1008 unbiased logits the
    Inception Score uses. Images are rounded to 8 bits as a PNG of them would be, grey ones repeated to RGB,
    and resized to 299x299 inside (torch-fidelity's TensorFlow-exact bilinear resize)."""

    def __init__(self, extractor: nn.Module, weights_hash: str):
        super().__init__()
        self.extractor = extractor
        self.weights_hash = weights_hash  # which weights: cached real features are only reused with the same

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        return torch.cat([self.extractor(chunk)[0] for chunk in pixels.split(BATCH)])

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        return feats @ self.extractor.fc.weight.T  # torch-fidelity's 'logits_unbiased': the fc layer without its bias


def load_inception(weights: str | None, device: torch.device) -> InceptionFeatures:
    """The FID Inception network from eval.inception_weights (None: torch's hub cache), on `device`."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise UserError("eval.features=inception needs torch-fidelity: pip install 'gantrain[inception]' "
                        "(or pip install torch-fidelity)") from None
    path = Path(weights).expanduser() if weights else default_weights()
    if not path.is_file():
        raise UserError(f"eval.features=inception needs the FID Inception weights {WEIGHTS_NAME} (91 MB), not found at "
                        f"{path}; on a machine with internet: python -c \"import torch; torch.hub.download_url_to_file("
                        f"'{WEIGHTS_URL}', '{default_weights()}')\", then copy it there or pass eval.inception_weights=PATH")
    state = read_weights(path)
    buffer = io.BytesIO()  # tensors only, re-serialised: torch-fidelity's loader then sees nothing but them
    torch.save(state, buffer)
    weights_hash = hashlib.sha256(buffer.getbuffer()).hexdigest()[:16]
    buffer.seek(0)
    try:
        extractor = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=buffer)
    except RuntimeError as e:  # load_state_dict: other keys or shapes
        detail = next((line.strip() for line in str(e).splitlines() if "Missing" in line or "Unexpected" in line
                       or "size mismatch" in line), str(e).splitlines()[0])
        raise UserError(f"{path} is not the FID Inception network ({detail[:120]}); "
                        f"pass eval.inception_weights=PATH to torch-fidelity's {WEIGHTS_NAME}") from None
    return InceptionFeatures(extractor, weights_hash).to(device).eval()


def inception_score(logits: torch.Tensor, splits: int = 10) -> dict:
    """The Inception Score of samples' unbiased logits (n, 1008): torch-fidelity's own computation (its
    10 splits, shuffled by its seed), the mean over the splits and their standard deviation."""
    from torch_fidelity.metric_isc import isc_features_to_metric  # installed: load_inception made sure

    out = isc_features_to_metric(logits.double().cpu(), splits=min(splits, len(logits)))
    return {"is": entry(out["inception_score_mean"], 0, len(logits), std=float(out["inception_score_std"]), splits=splits)}
