"""The feature network behind the image metrics, which gantrain trains itself.

Inception weights cannot be downloaded offline, and an ImageNet network is a poor judge of 28x28 digits
anyway; so, as in the GAN literature's MNIST evaluations, a small CNN classifier is trained on the data
set's own labelled training split, once, and cached by the data's content hash. Its penultimate layer (128
units) gives the features for FD, KID and precision/recall; its predictions give class coverage. Data
without labels (an image folder) gets a contrastive encoder of the same shape instead (contrastive.py).
"""
import hashlib
import logging
import time

import torch
import torch.nn.functional as F
from torch import nn

from gantrain import cache
from gantrain.outputs.checkpoint import atomic_save
from gantrain.data.tensors import TensorData
from gantrain.evaluation.contrastive import ContrastiveNet, train_contrastive
from gantrain.evaluation.encoder import EncoderNet

log = logging.getLogger("gantrain")
VERSION = 3  # bump when the classifier or its training changes: old cache entries are then ignored
CONTRASTIVE_VERSION = 1  # the same for the contrastive encoder
HELD_OUT = 0.2  # fraction of each data set held out to measure the classifier's accuracy
EPOCHS, BATCH, LR = 10, 64, 3e-3  # with a one-cycle schedule (held-out accuracy: benchmarks/RESULTS.md)


class FeatureNet(EncoderNet):
    """(B, C, H, W) in [-1, 1] -> features (B, 128); logits(features) -> (B, classes)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__(channels)
        self.head = nn.Linear(self.num_features, num_classes)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self(x))


def keep(kind: str, path, obj) -> None:
    """Save what was computed in the cache for later runs; a cache that is read-only or full costs only that
    (one warning line), never the run."""
    if cache.writable(kind):
        try:
            atomic_save(path, obj)
        except OSError as e:
            log.warning(f"cache: could not keep {path.name} in {path.parent} ({e.strerror or e}); it is used "
                        f"now and computed again next time")


def content_hash(data: TensorData) -> str:
    """A short hash of the data's values (and labels), computed once per TensorData."""
    if "_hash" not in data.__dict__:
        h = hashlib.sha256(data.x.detach().cpu().contiguous().numpy().tobytes())
        if data.y is not None:
            h.update(data.y.detach().cpu().numpy().tobytes())
        data.__dict__["_hash"] = h.hexdigest()[:16]
    return data.__dict__["_hash"]


def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed train / held-out split of n examples (the same for every run and machine)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    n_held = max(1, int(n * HELD_OUT))
    return order[n_held:], order[:n_held]


@torch.no_grad()
def accuracy(net: FeatureNet, x: torch.Tensor, y: torch.Tensor) -> float:
    predictions = torch.cat([net.classify(chunk).argmax(1) for chunk in x.split(1024)])
    return (predictions == y).float().mean().item()


def train_feature_net(data: TensorData, device: torch.device) -> tuple[FeatureNet, float]:
    """Train on the training split; returns the net and its accuracy on the held-out split."""
    x, y = data.floats().to(device), data.y.to(device)
    train_idx, held_idx = (i.to(device) for i in split(len(x)))
    gen = torch.Generator(device).manual_seed(0)
    torch.manual_seed(0)
    net = FeatureNet(x.shape[1], int(y.max()) + 1).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    steps = EPOCHS * -(-len(train_idx) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps)  # warm-up, then anneal
    for epoch in range(EPOCHS):
        order = train_idx[torch.randperm(len(train_idx), generator=gen, device=device)]
        for i in range(0, len(order), BATCH):
            idx = order[i:i + BATCH]
            batch = x[idx]
            shift = torch.randint(-2, 3, (2,), generator=gen, device=device).tolist()  # a little augmentation
            loss = F.cross_entropy(net.classify(torch.roll(batch, shifts=shift, dims=(2, 3))), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
    net.eval()
    return net, accuracy(net, x[held_idx], y[held_idx])


_loaded: dict[tuple, tuple] = {}  # this process's feature networks, by (data, device)


def feature_net(data: TensorData, device: torch.device) -> tuple[nn.Module, float, str]:
    """The feature network for image data: a classifier for labelled data, a contrastive encoder trained by
    self-supervision for unlabelled data (contrastive.py); from the cache, or trained now and cached. Also
    its held-out score, and what that score is."""
    key = (content_hash(data), str(device))
    if key not in _loaded:
        _loaded[key] = load_or_train(data, device)
    return _loaded[key]


def load_or_train(data: TensorData, device: torch.device) -> tuple[nn.Module, float, str]:
    labelled = data.y is not None
    name = f"{content_hash(data)}-v{VERSION}.pt" if labelled else f"{content_hash(data)}-contrastive-v{CONTRASTIVE_VERSION}.pt"
    path, what = cache.cache_dir() / "features" / name, "held-out accuracy" if labelled else "held-out view matching"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        net = FeatureNet(data.x.shape[1], saved["num_classes"]) if labelled else ContrastiveNet(data.x.shape[1])
        net.load_state_dict(saved["state"])
        log.info(f"feature network: cached {path.name}, {what} {saved['score']:.4f}")
        cache.touch(path)
        return net.to(device).eval().requires_grad_(False), saved["score"], what
    except Exception:  # not there yet, or unreadable: a cache entry is only ever recomputed
        pass
    start = time.perf_counter()
    if labelled:
        log.info(f"feature network: training a classifier on {len(data)} labelled examples (once; cached in {path.parent})")
        net, score = train_feature_net(data, device)
    else:
        log.info(f"feature network: no labels, so training a contrastive encoder on {len(data)} images by "
                 f"self-supervision (once; cached in {path.parent})")
        train_idx, held_idx = (i.to(device) for i in split(len(data)))
        net, score = train_contrastive(data.floats(train_idx).to(device), data.floats(held_idx).to(device))
    keep("features", path, {"state": {k: v.cpu() for k, v in net.state_dict().items()}, "score": score,
                            "num_classes": net.head.out_features if labelled else 0})
    log.info(f"feature network: {what} {score:.4f} on {len(split(len(data))[1])} examples, trained in "
             f"{time.perf_counter() - start:.0f} s")
    return net.requires_grad_(False), score, what
