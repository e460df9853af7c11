"""Evaluation of generators against their data set: at the end of training (every due member of a stack at
once: one pass of the feature network over all their samples) and by `gantrain eval`."""
import json
import logging
import math
import os
from pathlib import Path

import torch

from gantrain.components.data import MIXTURES
from gantrain.data.tensors import TensorData
from gantrain.ranks import ALONE, Ranks
from gantrain.errors import UserError, naming
from gantrain.evaluation import metrics
from gantrain import cache
from gantrain.evaluation.features import content_hash, feature_net, keep, split
from gantrain.evaluation.inception import inception_score, load_inception
from gantrain.evaluation.cards import network_card, real_card
from gantrain.evaluation.protocol import footing
from gantrain.evaluation.stats_files import Stats, frechet_distance, mean_and_covariance, read_stats

log = logging.getLogger("gantrain")
PROTOCOL_POINTS = 2500  # the PacGAN / VEEGAN tables count modes on 2,500 samples
CHUNK = 1000  # samples generated (and featurised) per member at a time
AUTO_N = 10_000  # eval.n=auto: samples per evaluation, or as many as the data set holds if fewer
REFERENCE_VERSION = 3  # bump when the real subset or its features change: old cache entries are then ignored


def evaluable(cfg, data: TensorData) -> bool:
    """Whether this run evaluates: eval.enabled (every image set has metrics; 2D points: ring8 and grid25)."""
    return bool(cfg.eval.enabled) and (data.x.dim() == 4 or cfg.data.name in MIXTURES)


def eval_latents(n: int, latent_size: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The n latents (and labels, the classes in equal shares) an evaluation samples: drawn on the CPU from
    the seed, so the same on any device."""
    z = torch.randn(n, latent_size, generator=torch.Generator().manual_seed(seed))
    return z, (torch.arange(n) % num_classes if num_classes else None)


def samples_in_chunks(sample, members: list[int], latents: list[tuple], device):
    """Yield (M, chunk, ...) samples of the M members, CHUNK latents at a time (memory stays bounded)."""
    z = torch.stack([zm for zm, _ in latents])  # (M, n, latent)
    y = None if latents[0][1] is None else torch.stack([ym for _, ym in latents])
    for start in range(0, z.shape[1], CHUNK):
        yield sample(z[:, start:start + CHUNK].to(device), None if y is None else y[:, start:start + CHUNK].to(device),
                     members)


def features(net, x: torch.Tensor) -> torch.Tensor:
    """The feature network over x (N, C, H, W), CHUNK images at a time (larger passes only cost memory traffic)."""
    return torch.cat([net(chunk) for chunk in x.split(CHUNK)])


_references: dict[tuple, metrics.RealReference] = {}  # this process's real references, by (data, weights, n)
_inception: dict[tuple, torch.nn.Module] = {}  # this process's Inception networks, by (weights, device)


def feature_space(data: TensorData, features: str, weights: str = "auto") -> tuple[torch.nn.Module, tuple | None, str]:
    """The network behind the image metrics, its held-out (score, what the score is) or None for Inception,
    and the name of its feature space: 'inception' (eval.features=inception), else the 'classifier' or
    'contrastive' encoder gantrain trains on the data set itself (features.py)."""
    if features == "inception":
        key = (weights, str(data.device))
        if key not in _inception:
            _inception[key] = load_inception(weights, data.device)
        return _inception[key], None, "inception"
    net, score, what = feature_net(data, data.device)  # trained once (with gradients), then cached
    return net, (score, what), "classifier" if data.y is not None else "contrastive"


@torch.no_grad()
def fixed_order(data: TensorData) -> torch.Tensor:
    """The one shuffle of the data set (seed 0) whose first n are the real side of every evaluation at n (and of
    gantrain stats n=N): the same for every run, member and checkpoint."""
    return torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).to(data.device)


def real_reference(net, data: TensorData, n: int) -> metrics.RealReference:
    """Features and k-NN radii of the n real examples every evaluation compares with (the first n of one
    fixed shuffle: the same for every run, member and checkpoint, so their numbers compare): computed once
    per data set, feature network and n, and cached on disk beside the feature network. gantrain's own
    networks are made from the data, so the data names them; Inception by its weights."""
    weights = getattr(net, "weights_hash", None)
    key = (content_hash(data), weights, n)
    if key in _references:
        return _references[key]
    name = f"{key[0]}-n{n}" if weights is None else f"{key[0]}-inception-{weights}-n{n}"
    path = cache.cache_dir() / "references" / f"{name}-v{REFERENCE_VERSION}.pt"
    try:
        saved = torch.load(path, map_location=data.device, weights_only=True)
        reference = metrics.RealReference(saved["feats"], saved["radii"], saved["k"])
        cache.touch(path)
    except Exception:  # not there yet, or unreadable: a cache entry is only ever recomputed
        reference = metrics.real_reference(features(net, data.floats(fixed_order(data)[:n])))
        keep("references", path, {"feats": reference.feats.cpu(), "radii": reference.radii.cpu(), "k": reference.k})
    _references[key] = reference
    return reference


def evaluate_stack(sample, data: TensorData, data_name: str, latent_size: int, num_classes: int,
                   seeds: list[int], ns: list[int], features: str = "auto", weights: str = "auto",
                   ranks: Ranks = ALONE, ref: str | None = None, ref_protocol: str | None = None) -> list[dict]:
    """Metrics of M generators: sample(z (M, n, latent), y, members) -> their samples (M, n, ...), member j
    drawing its latents from seeds[j] and compared with the same ns[j] real examples as every other
    evaluation (2D mixtures: the protocol's 2,500 points). Mode counts for the 2D mixtures; for images FD,
    KID, precision/recall and class coverage in gantrain's own features, or FID, KID, precision/recall and
    the Inception Score in Inception's (features=inception, weights: its file). ref: a statistics file
    (stats_files.py) to compute FD / FID against instead of the data's real images. On several devices (ranks)
    every rank featurises its share of the samples and rank 0 computes the metrics (the others get {})."""
    if data.x.dim() == 2:
        if data_name not in MIXTURES or not ranks.writes:  # 2,500 points: not worth sharing out
            return [{} for _ in seeds]
        latents = [eval_latents(PROTOCOL_POINTS, latent_size, num_classes, s) for s in seeds]
        with torch.no_grad():
            points = torch.cat(list(samples_in_chunks(sample, list(range(len(seeds))), latents, data.device)), dim=1)
        return [metrics.mixture_metrics(data_name, p, n_real=len(data)) for p in points]
    net, score, space = ranks.first(lambda: feature_space(data, features, weights))  # trained (and cached) once
    stats = None if ref is None else read_stats(Path(ref).expanduser(), num_features(net, data), ref_protocol)
    with torch.no_grad():
        return image_results(sample, data, data_name, latent_size, num_classes, seeds, ns, net, score, space, ranks, stats)


def check_reference(stats: Stats, card: dict) -> None:
    """A statistics file gantrain wrote says its feature network: it must be this evaluation's (`card`)."""
    made = stats.protocol if isinstance(stats.protocol, dict) else {}
    if made and (made.get("features"), made.get("weights_sha256")) != (card["features"], card["weights_sha256"]):
        raise UserError(f"{stats.path} was written by gantrain stats in {made.get('features')} features (weights sha256 "
                        f"{str(made.get('weights_sha256'))[:12]}), and this evaluation uses {card['features']} features "
                        f"(weights sha256 {card['weights_sha256'][:12]}): an FD between them means nothing; write the "
                        f"file again with these features and weights")


def num_features(net, data: TensorData) -> int:
    """How many features the network gives (a statistics file must hold as many)."""
    with torch.no_grad():
        return net(data.floats(torch.arange(1))).shape[1]


def shared_features(net, sample, group: list[int], latents: list[tuple], device, ranks: Ranks) -> torch.Tensor:
    """The features (M, n, F) of the group's samples from `latents` (n each): on several devices each rank
    featurises its contiguous share (n * r / R to n * (r + 1) / R), padded to the largest share for the
    gather and trimmed after it, so every rank holds the features of the 1-rank run's samples, in order."""
    n = len(latents[0][0])
    bounds = [n * r // ranks.world for r in range(ranks.world + 1)]
    lo, hi = bounds[ranks.rank], bounds[ranks.rank + 1]
    mine = [(z[lo:max(hi, lo + 1)], None if y is None else y[lo:max(hi, lo + 1)]) for z, y in latents]  # >= 1 row: F
    feats = torch.cat([features(net, x.flatten(0, 1)).view(len(group), x.shape[1], -1)
                       for x in samples_in_chunks(sample, group, mine, device)], dim=1)[:, :hi - lo]  # (M, share, F)
    if ranks.alone:
        return feats
    widest = max(b - a for a, b in zip(bounds, bounds[1:]))
    padded = torch.zeros(widest, *feats.shape[::2], dtype=feats.dtype, device=feats.device)  # (rows, M, F)
    padded[:hi - lo] = feats.transpose(0, 1)
    every = ranks.gather(padded).view(ranks.world, widest, *padded.shape[1:])
    return torch.cat([every[r, :bounds[r + 1] - bounds[r]] for r in range(ranks.world)]).transpose(0, 1)


_said: set[str] = set()  # what this process has explained once


def say_once(line: str) -> None:
    if line not in _said:
        _said.add(line)
        log.info(line)


def image_results(sample, data: TensorData, data_name: str, latent_size: int, num_classes: int, seeds: list[int],
                  ns: list, net, score: tuple | None, space: str, ranks: Ranks = ALONE, stats: Stats | None = None) -> list[dict]:
    """Each member's metrics, its samples featurised with the others': FD (FID in Inception's space), KID,
    precision/recall, and class coverage (a classifier's space) or the Inception Score; against a statistics
    file, FD / FID alone (KID and precision/recall need the real images' features). Every entry carries its
    protocol card (protocol.py). On several devices, computed on rank 0 (the others return {})."""
    classes = 0 if data.y is None or space != "classifier" else int(data.y.max()) + 1
    n_held = len(split(len(data))[1])
    with_is = space == "inception" and net.weights.has_output
    if space == "inception" and not with_is:
        say_once(f"eval: no Inception Score: {net.weights.path.name} holds the network's features only, not the "
                 f"output layer the score needs (torch-fidelity's, pytorch-fid's or clean-fid's file has it)")
    if stats is not None:
        say_once(f"eval: {'FID' if space == 'inception' else 'FD'} against {stats.path.name} (protocol: "
                 f"{stats.protocol if isinstance(stats.protocol, str) else 'gantrain stats'}); KID and precision/recall "
                 f"need real images' features, which a statistics file does not hold (drop ref to get them)")
    results: list[dict] = [{} for _ in seeds]
    asked = [n for n in ns if n != "auto"]
    if stats is None and asked and max(asked) > len(data):
        log.info(f"eval: n={max(asked)} is more than the data set's {len(data)} examples: {len(data)} generated images "
                 f"are compared with {len(data)} real ones")
    limit = len(data) if stats is None else float("inf")  # a statistics file needs no real images of the data
    ns = [min(AUTO_N if n == "auto" else n, limit) for n in ns]
    card = network_card(net, space)
    if stats is not None:
        check_reference(stats, card)
    for n in sorted(set(ns)):  # members compared with as many real examples share a pass
        group = [j for j in range(len(seeds)) if ns[j] == n]
        latents = [eval_latents(n, latent_size, num_classes, seeds[j]) for j in group]  # every rank: all of them
        feats = shared_features(net, sample, group, latents, data.device, ranks)  # (M', n, F)
        if not ranks.writes:
            continue
        for j, f in zip(group, feats):
            if stats is None:
                out = metrics.image_metrics(real_reference(net, data, n), f, net.logits(f) if classes else None, classes)
                cards = dict.fromkeys(out, card | real_card(data_name, data, n))
            else:
                out = {"fd": metrics.entry(frechet_distance(stats.mu, stats.sigma, *mean_and_covariance(f)), stats.n or 0, n)}
                out |= metrics.class_coverage(net.logits(f), classes, 0) if classes else {}
                cards = dict.fromkeys(out, card | stats.card())
            if space == "inception":
                out = {("fid" if name == "fd" else name): value for name, value in out.items()}
                cards = {("fid" if name == "fd" else name): c for name, c in cards.items()}
                if with_is:
                    out |= inception_score(net.logits(f))
                    cards["is"] = network_card(net, space, with_output=True)
            else:
                out["feature_net_accuracy"] = metrics.entry(score[0], n_held, 0, note=score[1])
                cards["feature_net_accuracy"] = card
            results[j] = {name: {**value, "features": space, "protocol": cards[name]} for name, value in out.items()}
    return results


def headline(results: dict, metric: str = "auto") -> float | None:
    """One number to minimise (Optuna, best.pt): FD, FID in Inception's space (or KID) for images;
    -(modes + HQ fraction) for 2D."""
    if not results:
        return None
    if "modes" in results:
        return -(results["modes"]["value"] + results["hq_percent"]["value"] / 100)
    name = ("fid" if "fid" in results else "fd") if metric in ("auto", "fd") else metric
    if name not in results:
        raise UserError(f"eval.metric={metric} is not among this run's metrics ({', '.join(results)}); use auto, fd or kid")
    return results[name]["value"]


def protocol(results: dict, metric: str = "auto") -> dict:
    """How a headline number was measured, so that only numbers measured alike are compared (best.pt): which
    metric, in which features, on how many samples (and whatever else its entry names: the weights)."""
    if "modes" in results:
        return {"metric": "modes", "n_fake": results["modes"]["n_fake"]}
    name = ("fid" if "fid" in results else "fd") if metric in ("auto", "fd") else metric
    entry = results[name]
    return {"metric": name, **footing(entry.get("protocol", {})), "n_real": entry["n_real"], "n_fake": entry["n_fake"]}


def write_metrics(path: Path, results: dict, **context) -> None:
    """metrics.json: the results (NaN and Inf as null, which JSON has) and what they are of; written whole
    (a temp file renamed over it), or an error naming it (a full disk)."""
    clean = lambda value: (None if isinstance(value, float) and not math.isfinite(value) else
                           {k: clean(v) for k, v in value.items()} if isinstance(value, dict) else
                           [clean(v) for v in value] if isinstance(value, list) else value)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    with naming(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(clean({**context, **({"metrics": results} if results else {})}), indent=2) + "\n")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
