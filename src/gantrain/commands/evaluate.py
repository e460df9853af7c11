"""gantrain eval: metrics of checkpoints' generators against their data set, both rebuilt from the checkpoints.
Several checkpoints (a list, or a run or sweep dir) get one table, a row each, all compared with the same
real examples through the same feature network, from the same latents (evaluate.py), so the rows compare."""
import logging
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from gantrain.commands.tables import as_table, console, write_csv
from gantrain.components.data import load_data
from gantrain.config import check_features, is_int, kwargs_of, pick_device, user_path
from gantrain.engine.generator import generator_from_checkpoint
from gantrain.errors import UserError, naming
from gantrain.evaluation.evaluate import evaluate_stack, headline, write_metrics
from gantrain.evaluation.inception import weights_of
from gantrain.evaluation.inception_weights import compare
from gantrain.evaluation.protocol import describe, differences
from gantrain.outputs.checkpoint import load_checkpoint

log = logging.getLogger("gantrain")


def checkpoints_of(ckpt) -> list[Path]:
    """ckpt=PATH, ckpt=[A,B], or a run / sweep dir: every checkpoints/last.pt below it."""
    paths = [user_path(p) for p in (ckpt if isinstance(ckpt, (list, ListConfig)) else [ckpt])]
    found = []
    for path in paths:
        if path.is_dir():
            below = sorted(path.glob("checkpoints/last.pt")) or sorted(path.glob("*/checkpoints/last.pt"),
                                                                        key=lambda p: (len(p.parts[-3]), p.parts[-3]))
            if not below:
                raise UserError(f"{path} holds no checkpoints/last.pt (nor do the job dirs below it); pass a run or "
                                f"sweep dir, or the checkpoint files")
            found += below
        else:
            found.append(path)
    return found


def evaluate_checkpoint(path: Path, cfg: DictConfig, device, datasets: dict) -> tuple[dict, dict, DictConfig]:
    """One checkpoint's metrics; `datasets` keeps the data sets loaded so far, so the checkpoints of a sweep
    load (and hash, for the feature cache) their common data once."""
    ckpt = load_checkpoint(path)
    G, saved = generator_from_checkpoint(ckpt, path, cfg.ema, device)
    kwargs = kwargs_of(saved.data, paths=("root",))
    key = (saved.data.name, repr(sorted(kwargs.items())))
    if key not in datasets:
        datasets[key] = load_data(saved.data.name, **kwargs).to(device)
    data = datasets[key]
    check_features(cfg, "", data.x.dim() == 2)
    sample = lambda z, y, members: G(z[0], None if y is None else y[0]).unsqueeze(0)  # one generator: K = 1
    results = evaluate_stack(sample, data, saved.data.name, saved.latent_size, ckpt.get("num_classes", 0), [cfg.seed], [cfg.n],
                             cfg.features, cfg.inception_weights, ref=cfg.ref and str(user_path(cfg.ref)),
                             ref_protocol=cfg.ref_protocol)[0]
    if not results:
        raise UserError(f"no metrics for data set {saved.data.name} ({path}): eval covers image sets and ring8/grid25")
    return results, ckpt, saved


def print_table(rows: list[dict], title: str) -> None:
    console().print(as_table(rows, title, left=("metric", "checkpoint", "note")))


def print_protocols(results: list[dict]) -> None:
    """Under the table: the protocol of its numbers, one line per protocol (Inception Score's weights add the
    output layer); one line more when the rows' footing differs (weights, resize or reference)."""
    cards = [e["protocol"] for r in results for e in r.values() if "protocol" in e]
    for card in list({describe(c): c for c in cards}.values()):
        log.info(f"protocol: {describe(card)}")
    cards = [r[name]["protocol"] for r in results for name in r if name in ("fid", "fd") and "protocol" in r[name]]
    differ = differences(cards)
    if differ:
        log.warning(f"these rows' FIDs were measured on different footing ({', '.join(differ)} differ): they do not rank together")


def verify_weights(cfg: DictConfig) -> None:
    """verify_weights=OTHER: inception_weights' file and OTHER compared tensor by tensor; one line."""
    log.info(compare(weights_of(cfg.inception_weights), weights_of(str(user_path(cfg.verify_weights)))))


def eval_command(cfg: DictConfig, run_dir: Path) -> float | None:
    """Rebuild G and its data set from each checkpoint, print the metrics, write metrics.json (several: one
    table and eval.csv)."""
    if cfg.verify_weights:
        verify_weights(cfg)
        if OmegaConf.is_missing(cfg, "ckpt") or not cfg.ckpt:
            return None
    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.ckpt:
        raise UserError("ckpt is required: pass the checkpoint, e.g. gantrain eval ckpt=outputs/train/<date>/<time>/checkpoints/last.pt")
    if cfg.n != "auto" and (not is_int(cfg.n) or cfg.n < 2):
        raise UserError(f"n must be auto or an integer >= 2, got {cfg.n!r}; e.g. n=10000")
    paths, device = checkpoints_of(cfg.ckpt), pick_device(cfg.device)
    out = user_path(cfg.out) if cfg.out else run_dir
    datasets = {}
    evaluated = [evaluate_checkpoint(path, cfg, device, datasets) for path in paths]
    datas = {(saved.data.name, str(saved.data.get("root"))) for _, _, saved in evaluated}
    if len(datas) > 1:
        raise UserError(f"these checkpoints were trained on different data ({', '.join(sorted(d for d, _ in datas))}), "
                        f"which one table cannot compare; evaluate them separately")
    if len(paths) == 1:
        (results, ckpt, saved), = evaluated
        write_metrics(out / "metrics.json", results, checkpoint=str(paths[0]), epoch=ckpt["epoch"], step=ckpt["step"])
        note = lambda e: ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in e.items()
                                   if k not in ("value", "n_real", "n_fake", "protocol"))
        print_table([{"metric": name, "value": e["value"], "n_real": e["n_real"], "n_fake": e["n_fake"], "note": note(e)}
                     for name, e in results.items()],
                    f"{saved.model.name}/{saved.loss.name} on {saved.data.name}, epoch {ckpt['epoch']}")
        print_protocols([results])
        if ckpt.get("class_names"):  # a conditional model on class sub-folders: what its labels 0, 1, ... are
            log.info("classes: " + ", ".join(f"{i} {name}" for i, name in enumerate(ckpt["class_names"])))
        log.info(f"wrote {out / 'metrics.json'}")
        return headline(results)
    rows = [{"checkpoint": str(path), "model": f"{saved.model.name}/{saved.loss.name}", "epoch": ckpt["epoch"],
             **{name: e["value"] for name, e in results.items()}} for path, (results, ckpt, saved) in zip(paths, evaluated)]
    first = next(iter(evaluated[0][0].values()))
    write_metrics(out / "metrics.json", {}, checkpoints=[{"checkpoint": str(p), "epoch": c["epoch"], "step": c["step"],
                                                           "metrics": r} for p, (r, c, _) in zip(paths, evaluated)])
    with naming(out / "eval.csv"), open(out / "eval.csv", "w", newline="") as f:
        write_csv(rows, f)
    print_table(rows, f"{len(rows)} checkpoints on {evaluated[0][2].data.name}, each against the same "
                      f"{first['n_real']} real examples and {first['n_fake']} samples from the same latents"
                      + (f", in {first['features']} features" if "features" in first else ""))
    print_protocols([r for r, _, _ in evaluated])
    log.info(f"wrote {out / 'metrics.json'} and {out / 'eval.csv'}")
    return None
