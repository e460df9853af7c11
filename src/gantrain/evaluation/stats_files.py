"""Statistics files: the mean and covariance of a feature network's features over a data set, the real side
of FID as people share it. The layout is pytorch-fid's --save-stats npz (mu (F,), sigma (F, F)), which TTUR's
and clean-fid's files use too; gantrain's own add the protocol they were measured under (gantrain_protocol,
JSON) and their image count (n). Read with allow_pickle=False: an npz holding objects is refused.
"""
import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gantrain.errors import UserError, naming

LAYOUT = "mu (F,) and sigma (F, F): pytorch-fid's, TTUR's and clean-fid's layout"


@dataclass
class Stats:
    """A statistics file's mean and covariance (float64), and where they came from: the file, its sha256,
    its protocol (gantrain's card for its own files; for others what ref_protocol says, else "unknown")."""

    mu: torch.Tensor
    sigma: torch.Tensor
    path: Path
    sha256: str
    protocol: dict | str
    n: int | None

    def card(self) -> dict:
        """What an FID against this file says about its real side."""
        return {"reference": {"file": str(self.path), "sha256": self.sha256, "protocol": self.protocol,
                              **({"n": self.n} if self.n else {})}}


def mean_and_covariance(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, F) features -> their mean (F,) and unbiased covariance (F, F), in float64 (as pytorch-fid's np.cov)."""
    x = feats.detach().to(torch.float64)
    centred = x - x.mean(0)
    return x.mean(0), centred.T @ centred / (len(x) - 1)


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^1/2), the trace of the root from the eigenvalues
    of sigma1 sigma2 (torchmetrics' way: no scipy sqrtm, and a singular sigma is fine)."""
    mu1, sigma1, mu2, sigma2 = (t.to(torch.float64) for t in (mu1, sigma1, mu2, sigma2))
    root_trace = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum()
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * root_trace)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_stats(path: Path, feats: torch.Tensor, protocol: dict) -> None:
    """feats (n, F) -> an npz pytorch-fid reads; written whole (a temp file renamed onto it)."""
    mu, sigma = mean_and_covariance(feats)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    with naming(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a name that lacks it
                np.savez(f, mu=mu.cpu().numpy(), sigma=sigma.cpu().numpy(), n=np.int64(len(feats)),
                         gantrain_protocol=np.array(json.dumps(protocol)))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def read_stats(path: Path, num_features: int | None, ref_protocol: str | None = None) -> Stats:
    """A statistics file checked for what FID needs: mu and sigma of `num_features` features, finite, sigma
    symmetric (a singular one is normal: fewer images than features). Anything else is one line.
    num_features None: any size (checked again once the network is known)."""
    if not path.is_file():
        raise UserError(f"no statistics file at {path}; pass a statistics .npz as ref= (eval.ref= in training; gantrain "
                        f"stats writes one)")
    with open(path, "rb") as f:
        magic = f.read(6)
    if not magic.startswith((b"PK\x03\x04", b"\x93NUMPY")):  # np.load takes anything else for a pickle
        raise UserError(f"{path} is not a readable .npz (no numpy or zip header); pass a statistics file with {LAYOUT}")
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise UserError(f"{path} is a single array, not a statistics .npz with {LAYOUT}")
            arrays = {k: f[k] for k in f.files}
    except ValueError as e:
        if "pickle" in str(e):
            raise UserError(f"{path} was refused: it holds pickled objects, which gantrain never loads; a statistics "
                            f"file holds arrays only ({LAYOUT})") from None
        raise UserError(f"{path} is not a readable .npz ({e}); pass a statistics file with {LAYOUT}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{path} is not a readable .npz (truncated or corrupt: {type(e).__name__}); pass a "
                        f"statistics file with {LAYOUT}") from None
    if "mu" not in arrays or "sigma" not in arrays:
        raise UserError(f"{path} holds {', '.join(arrays) or 'nothing'}, not the {LAYOUT}")
    mu, sigma = arrays["mu"], arrays["sigma"]
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise UserError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not a mean and its covariance ({LAYOUT})")
    if num_features is not None and len(mu) != num_features:
        raise UserError(f"{path} holds statistics of {len(mu)} features, and this evaluation's network gives "
                        f"{num_features}; use a file made with the same network (gantrain stats features=... writes one)")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UserError(f"{path} holds NaN or infinite values in mu or sigma; it is damaged: make it again")
    if np.abs(sigma - sigma.T).max() > 1e-6 * max(1.0, float(np.abs(sigma).max())):
        raise UserError(f"{path}: sigma is not symmetric, so it is no covariance matrix; the file is damaged or "
                        f"not a statistics file")
    theirs = json.loads(str(arrays["gantrain_protocol"])) if "gantrain_protocol" in arrays else None
    if theirs is not None and ref_protocol:
        raise UserError(f"ref_protocol={ref_protocol} describes a file from elsewhere, and {path.name} was written by "
                        f"gantrain stats, which says its own protocol; drop ref_protocol")
    n = int(arrays["n"]) if "n" in arrays and arrays["n"].ndim == 0 else None
    return Stats(torch.from_numpy(mu.astype(np.float64)), torch.from_numpy(sigma.astype(np.float64)), path,
                 sha256_of(path)[:16], theirs or ref_protocol or "unknown", n)
