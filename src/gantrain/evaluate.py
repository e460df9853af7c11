"""Evaluation of a generator against its data set: used at the end of training and by `gantrain eval`."""
import json
import logging
import math
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from gantrain import metrics
from gantrain.checkpoint import load_checkpoint
from gantrain.config import is_int, kwargs_of, pick_device, user_path
from gantrain.data import MIXTURES, TensorData, load_data
from gantrain.errors import UserError

log = logging.getLogger("gantrain")
PROTOCOL_POINTS = 2500  # the PacGAN / VEEGAN tables count modes on 2,500 samples


@torch.no_grad()
def generate(G, n: int, latent_size: int, num_classes: int, device, seed: int) -> torch.Tensor:
    """n samples of G (eval mode) from a fixed seed; conditional models get the classes in equal shares."""
    was_training = G.training
    G.eval()
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, latent_size, generator=gen)
    y = torch.arange(n) % num_classes if num_classes else None
    out = torch.cat([G(z[i:i + 1000].to(device), None if y is None else y[i:i + 1000].to(device))
                     for i in range(0, n, 1000)])
    G.train(was_training)
    return out


def evaluate(G, data: TensorData, data_name: str, latent_size: int, num_classes: int, n: int, seed: int = 0) -> dict:
    """Every metric that fits the data: mode counts for the 2D mixtures, feature metrics for labelled images."""
    device = next(G.parameters()).device
    if data.x.dim() == 2:
        if data_name not in MIXTURES:
            return {}
        points = generate(G, PROTOCOL_POINTS, latent_size, num_classes, device, seed)
        return metrics.mixture_metrics(data_name, points, n_real=len(data))
    from gantrain.features import feature_net, split

    net, accuracy = feature_net(data, device)
    n = min(n, len(data))
    real = data.x[torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].to(data.x.device)]
    fake = generate(G, n, latent_size, num_classes, device, seed)
    out = metrics.image_metrics(net, real.to(device), fake, int(data.y.max()) + 1)
    out["feature_net_accuracy"] = metrics.entry(accuracy, len(split(len(data))[1]), 0, note="held-out real data")
    return out


def headline(results: dict, metric: str = "auto") -> float | None:
    """One number to minimise (Optuna, best.pt): FD (or KID) for images; -(modes + HQ fraction) for 2D."""
    if not results:
        return None
    if "modes" in results:
        return -(results["modes"]["value"] + results["hq_percent"]["value"] / 100)
    name = "fd" if metric == "auto" else metric
    if name not in results:
        raise UserError(f"eval.metric={metric} is not among this run's metrics ({', '.join(results)}); use auto, fd or kid")
    return results[name]["value"]


def write_metrics(path: Path, results: dict, **context) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: {kk: (None if isinstance(vv, float) and not math.isfinite(vv) else vv) for kk, vv in v.items()}
             for k, v in results.items()}
    path.write_text(json.dumps({**context, "metrics": clean}, indent=2) + "\n")


def print_table(results: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("metric", "value", "n_real", "n_fake", "note"):
        table.add_column(column, justify="right" if column != "metric" else "left")
    for name, e in results.items():
        note = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in e.items() if k not in ("value", "n_real", "n_fake"))
        table.add_row(name, f"{e['value']:.4g}", str(e["n_real"]), str(e["n_fake"]), note)
    Console().print(table)


def eval_command(cfg: DictConfig, run_dir: Path) -> float | None:
    """gantrain eval: rebuild G and its data set from a checkpoint, print the metrics, write metrics.json."""
    from gantrain.sample import generator_from_checkpoint

    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.ckpt:
        raise UserError("ckpt is required: pass the checkpoint, e.g. gantrain eval ckpt=outputs/train/<date>/<time>/checkpoints/last.pt")
    if not is_int(cfg.n) or cfg.n < 2:
        raise UserError(f"n must be an integer >= 2, got {cfg.n!r}; e.g. n=10000")
    ckpt = load_checkpoint(user_path(cfg.ckpt))
    device = pick_device(cfg.device)
    G, latent_size = generator_from_checkpoint(ckpt, cfg.ema, device)
    saved = OmegaConf.create(ckpt["config"])
    data = load_data(saved.data.name, **kwargs_of(saved.data, paths=("root",))).to(device)
    results = evaluate(G, data, saved.data.name, latent_size, ckpt.get("num_classes", 0), cfg.n, cfg.seed)
    if not results:
        raise UserError(f"no metrics for data set {saved.data.name}: eval covers labelled image sets and ring8/grid25")
    out = user_path(cfg.out) if cfg.out else run_dir
    write_metrics(out / "metrics.json", results, checkpoint=str(user_path(cfg.ckpt)), epoch=ckpt["epoch"], step=ckpt["step"])
    print_table(results, f"{saved.model.name}/{saved.loss.name} on {saved.data.name}, epoch {ckpt['epoch']}")
    log.info(f"wrote {out / 'metrics.json'}")
    return headline(results)
