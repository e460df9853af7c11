"""Sample-quality metrics. Images: FD, KID (torchmetrics, on gantrain's own feature network), improved
precision/recall, class coverage and KL. 2D mixtures: the PacGAN/VEEGAN mode counts.

Each function returns {name: {"value": float, "n_real": int, "n_fake": int}} so no number travels
without the sample sizes it came from.
"""
import math
import warnings
from dataclasses import dataclass

import torch

from gantrain.components.data import MIXTURES


def entry(value: float, n_real: int, n_fake: int, **extra) -> dict:
    return {"value": float(value), "n_real": int(n_real), "n_fake": int(n_fake), **extra}


class Precomputed(torch.nn.Module):
    """Features in, features out: torchmetrics' FID and KID then run on features computed once, in one pass
    of the feature network over every member's samples (evaluate.py)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fd_and_kid(real: torch.Tensor, fake: torch.Tensor) -> dict:
    """Fréchet distance and KID (torchmetrics) between real and fake features (n, F)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
    subset = min(1000, len(real), len(fake))
    # the features are already every rank's (evaluate.shared_features): torchmetrics must not gather them again
    fd = FrechetInceptionDistance(feature=Precomputed(real.shape[1]), sync_on_compute=False).to(real.device)
    kid = KernelInceptionDistance(feature=Precomputed(real.shape[1]), subset_size=subset, subsets=50,
                                  sync_on_compute=False).to(real.device)
    torch.manual_seed(0)  # KID draws random subsets
    for metric in (fd, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    kid_mean, kid_std = kid.compute()
    return {"fd": entry(fd.compute(), len(real), len(fake)),
            "kid": entry(kid_mean, len(real), len(fake), std=float(kid_std), subset_size=subset)}


def kth_neighbour_radii(feats: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point of the same set (k + 1: itself is the
    nearest). topk, not kthvalue: the same value, several times faster on a CPU."""
    return torch.cat([torch.cdist(part, feats).topk(k + 1, dim=1, largest=False).values[:, -1]
                      for part in feats.split(chunk)])


def on_manifold(points: torch.Tensor, anchors: torch.Tensor, radii: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Whether each point lies within the k-NN ball of at least one anchor (Kynkäänniemi et al. 2019)."""
    return torch.cat([(torch.cdist(part, anchors) <= radii[None]).any(dim=1) for part in points.split(chunk)])


@dataclass
class RealReference:
    """The real side of the image metrics for one subset of the data: its features (n, F) and each
    feature's distance to its k-th nearest neighbour (the real manifold of improved precision)."""

    feats: torch.Tensor
    radii: torch.Tensor
    k: int


def real_reference(feats: torch.Tensor, k: int = 3) -> RealReference:
    """k = 3, as Kynkäänniemi et al. 2019 recommend."""
    return RealReference(feats, kth_neighbour_radii(feats, k), k)


def precision_recall(real: RealReference, fake_feats: torch.Tensor) -> dict:
    """Improved precision (fakes on the real manifold) and recall (reals on the fake manifold)."""
    precision = on_manifold(fake_feats, real.feats, real.radii).float().mean()
    recall = on_manifold(real.feats, fake_feats, kth_neighbour_radii(fake_feats, real.k)).float().mean()
    n_r, n_f = len(real.feats), len(fake_feats)
    return {"precision": entry(precision, n_r, n_f, k=real.k), "recall": entry(recall, n_r, n_f, k=real.k)}


def kl_to_uniform(counts: torch.Tensor) -> float:
    """KL(p || uniform) of a histogram, in nats (0 = perfectly balanced)."""
    p = counts.float() / counts.sum().clamp(min=1)
    nonzero = p[p > 0]
    return float((nonzero * (nonzero * len(counts)).log()).sum())


def class_coverage(logits: torch.Tensor, num_classes: int, n_real: int) -> dict:
    """How many classes the classifier finds among the samples (its logits (n, classes)), and the KL of
    their histogram to uniform.

    A class counts as found when it holds at least 10% of its uniform share of the samples, so that the
    classifier's few mistakes on real data do not count as classes.
    """
    counts = torch.bincount(logits.argmax(1), minlength=num_classes).cpu()
    threshold = max(1, math.ceil(0.1 * len(logits) / num_classes))
    return {"classes_covered": entry((counts >= threshold).sum(), n_real, len(logits), of=num_classes,
                                     min_samples=threshold),
            "class_kl": entry(kl_to_uniform(counts), n_real, len(logits))}


def image_metrics(real: RealReference, fake_feats: torch.Tensor, fake_logits: torch.Tensor | None,
                  num_classes: int) -> dict:
    """Every image metric from features: FD, KID, precision and recall; class coverage when the feature
    network is a classifier (fake_logits (n, classes))."""
    out = fd_and_kid(real.feats, fake_feats) | precision_recall(real, fake_feats)
    if fake_logits is not None:
        out |= class_coverage(fake_logits, num_classes, len(real.feats))
    return out


def mode_metrics(points: torch.Tensor, means: torch.Tensor, std: float, n_real: int = 0) -> dict:
    """PacGAN/VEEGAN protocol: a sample is high quality within 3 std of its nearest mode; a mode is covered
    when it is the nearest mode of at least one high-quality sample; KL of the modes' histogram (high-quality
    samples only) to uniform."""
    distance, nearest = torch.cdist(points.float(), means.float()).min(dim=1)
    good = distance <= 3 * std
    counts = torch.bincount(nearest[good], minlength=len(means)).cpu()
    n = len(points)
    return {"modes": entry((counts > 0).sum(), n_real, n, of=len(means)),
            "hq_percent": entry(100.0 * good.float().mean(), n_real, n),
            "mode_kl": entry(kl_to_uniform(counts) if counts.sum() else math.inf, n_real, n)}


def mixture_metrics(name: str, points: torch.Tensor, n_real: int = 0) -> dict:
    means_fn, std = MIXTURES[name]
    return mode_metrics(points, torch.tensor(means_fn(), device=points.device), std, n_real)
