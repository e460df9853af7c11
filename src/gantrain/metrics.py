"""Sample-quality metrics. Images: FD, KID (torchmetrics, on gantrain's own feature network), improved
precision/recall, class coverage and KL. 2D mixtures: the PacGAN/VEEGAN mode counts.

Each function returns {name: {"value": float, "n_real": int, "n_fake": int}} so no number travels
without the sample sizes it came from.
"""
import math

import torch

from gantrain.data import MIXTURES


def entry(value: float, n_real: int, n_fake: int, **extra) -> dict:
    return {"value": float(value), "n_real": int(n_real), "n_fake": int(n_fake), **extra}


@torch.no_grad()
def features_of(net, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    return torch.cat([net(chunk) for chunk in x.split(batch)])


def fd_and_kid(net, real: torch.Tensor, fake: torch.Tensor) -> dict:
    """Fréchet distance and KID between the feature distributions of real and fake images."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    import warnings

    warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
    shape = tuple(real.shape[1:])
    subset = min(1000, len(real), len(fake))
    fd = FrechetInceptionDistance(feature=net, input_img_size=shape, normalize=False).to(real.device)
    kid = KernelInceptionDistance(feature=net, subset_size=subset, subsets=50, normalize=False).to(real.device)
    torch.manual_seed(0)  # KID draws random subsets
    for metric in (fd, kid):
        for x, is_real in ((real, True), (fake, False)):
            for chunk in x.split(1000):
                metric.update(chunk, real=is_real)
    kid_mean, kid_std = kid.compute()
    return {"fd": entry(fd.compute(), len(real), len(fake)),
            "kid": entry(kid_mean, len(real), len(fake), std=float(kid_std), subset_size=subset)}


def kth_neighbour_radii(feats: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point of the same set."""
    radii = [torch.cdist(part, feats).kthvalue(k + 1, dim=1).values for part in feats.split(chunk)]  # +1: itself
    return torch.cat(radii)


def on_manifold(points: torch.Tensor, anchors: torch.Tensor, radii: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Whether each point lies within the k-NN ball of at least one anchor (Kynkäänniemi et al. 2019)."""
    return torch.cat([(torch.cdist(part, anchors) <= radii[None]).any(dim=1) for part in points.split(chunk)])


def precision_recall(real_feats: torch.Tensor, fake_feats: torch.Tensor, k: int = 3) -> dict:
    """Improved precision (fakes on the real manifold) and recall (reals on the fake manifold), k = 3."""
    precision = on_manifold(fake_feats, real_feats, kth_neighbour_radii(real_feats, k)).float().mean()
    recall = on_manifold(real_feats, fake_feats, kth_neighbour_radii(fake_feats, k)).float().mean()
    n_r, n_f = len(real_feats), len(fake_feats)
    return {"precision": entry(precision, n_r, n_f, k=k), "recall": entry(recall, n_r, n_f, k=k)}


def kl_to_uniform(counts: torch.Tensor) -> float:
    """KL(p || uniform) of a histogram, in nats (0 = perfectly balanced)."""
    p = counts.float() / counts.sum().clamp(min=1)
    nonzero = p[p > 0]
    return float((nonzero * (nonzero * len(counts)).log()).sum())


@torch.no_grad()
def class_coverage(net, fake: torch.Tensor, num_classes: int, n_real: int) -> dict:
    """How many classes the classifier finds among the samples, and the KL of their histogram to uniform.

    A class counts as found when it holds at least 10% of its uniform share of the samples, so that the
    classifier's few mistakes (about 2% on held-out digits) do not count as classes.
    """
    predicted = torch.cat([net.classify(chunk).argmax(1) for chunk in fake.split(1000)])
    counts = torch.bincount(predicted, minlength=num_classes).cpu()
    threshold = max(1, math.ceil(0.1 * len(fake) / num_classes))
    return {"classes_covered": entry((counts >= threshold).sum(), n_real, len(fake), of=num_classes,
                                     min_samples=threshold),
            "class_kl": entry(kl_to_uniform(counts), n_real, len(fake))}


def image_metrics(net, real: torch.Tensor, fake: torch.Tensor, num_classes: int) -> dict:
    """Every image metric; real and fake are (N, C, H, W) in [-1, 1] on the same device as net."""
    out = fd_and_kid(net, real, fake)
    out |= precision_recall(features_of(net, real), features_of(net, fake))
    out |= class_coverage(net, fake, num_classes, len(real))
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
