"""gantrain eval: metrics of a checkpoint's generator against its data set, both rebuilt from the checkpoint."""
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gantrain.components.data import load_data
from gantrain.config import is_int, kwargs_of, pick_device, stored_config, user_path
from gantrain.engine.build import generator_from_checkpoint
from gantrain.errors import UserError
from gantrain.evaluation.evaluate import evaluate_stack, headline, write_metrics
from gantrain.outputs.checkpoint import load_checkpoint

log = logging.getLogger("gantrain")


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
    """Rebuild G and its data set from a checkpoint, print the metrics, write metrics.json."""
    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.ckpt:
        raise UserError("ckpt is required: pass the checkpoint, e.g. gantrain eval ckpt=outputs/train/<date>/<time>/checkpoints/last.pt")
    if not is_int(cfg.n) or cfg.n < 2:
        raise UserError(f"n must be an integer >= 2, got {cfg.n!r}; e.g. n=10000")
    ckpt = load_checkpoint(user_path(cfg.ckpt))
    device = pick_device(cfg.device)
    G, latent_size = generator_from_checkpoint(ckpt, user_path(cfg.ckpt), cfg.ema, device)
    saved = stored_config(ckpt, user_path(cfg.ckpt))
    data = load_data(saved.data.name, **kwargs_of(saved.data, paths=("root",))).to(device)
    sample = lambda z, y, members: G(z[0], None if y is None else y[0]).unsqueeze(0)  # one generator: K = 1
    results = evaluate_stack(sample, data, saved.data.name, latent_size, ckpt.get("num_classes", 0), [cfg.seed], [cfg.n])[0]
    if not results:
        raise UserError(f"no metrics for data set {saved.data.name}: eval covers labelled image sets and ring8/grid25")
    out = user_path(cfg.out) if cfg.out else run_dir
    write_metrics(out / "metrics.json", results, checkpoint=str(user_path(cfg.ckpt)), epoch=ckpt["epoch"], step=ckpt["step"])
    print_table(results, f"{saved.model.name}/{saved.loss.name} on {saved.data.name}, epoch {ckpt['epoch']}")
    log.info(f"wrote {out / 'metrics.json'}")
    return headline(results)
