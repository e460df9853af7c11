"""Config checks and helpers shared by the commands: types, devices, user paths, resume merging."""
import inspect
import re
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from gantrain.components.data import MIXTURES
from gantrain.components.registry import REGISTRIES, lookup
from gantrain.errors import UserError
from gantrain.outputs.tracking import logger_names

POSITIVE_INTS = ("epochs", "batch_size", "latent_size", "hidden_size", "log_every", "n_critic")
NON_NEGATIVE_INTS = ("sample_every", "ckpt_every", "seed", "eval_every")
# keys a resumed run may change: they alter how the run proceeds or where it reads, not the model it trains
MUTABLE_ON_RESUME = ("epochs", "device", "log_every", "sample_every", "ckpt_every", "resume", "on_nan",
                     "eval_every", "eval", "trainer", "data.root", "data.download", "logger")


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_sweeper(sweeper: str, cfg) -> None:
    """A sweeper that optimises (Optuna) minimises each job's metric: a job must evaluate to return one."""
    if "optuna" in sweeper.lower() and not cfg.eval.enabled:
        raise UserError("hydra/sweeper=optuna minimises each job's metric, and eval.enabled=false leaves none to "
                        "return; set eval.enabled=true (or sweep a grid with the default sweeper)")


def check_features(ev, prefix: str, points: bool) -> None:
    """eval.features, eval.inception_weights, eval.ref and eval.ref_protocol (gantrain eval: the same keys at
    the top)."""
    if ev.features not in ("auto", "inception"):
        raise UserError(f"{prefix}features must be auto or inception, got {ev.features!r}; e.g. {prefix}features=inception")
    if ev.inception_weights not in (None, "auto") and ev.features != "inception":
        raise UserError(f"{prefix}inception_weights is read only with {prefix}features=inception; add that, or drop it")
    if ev.features == "inception" and points:
        raise UserError(f"{prefix}features=inception judges images, and this data set holds 2D points; drop it")
    ref, ref_protocol = ev.get("ref"), ev.get("ref_protocol")  # gantrain stats has neither
    if ref_protocol and not ref:
        raise UserError(f"{prefix}ref_protocol says how {prefix}ref's statistics file was made; add {prefix}ref=FILE.npz, or drop it")
    if ref and points:
        raise UserError(f"{prefix}ref is a statistics file for FID on images, and this data set holds 2D points; drop it")
    if ref and ev.get("metric", "auto") == "kid":
        raise UserError(f"{prefix}metric=kid needs the real images' features, and {prefix}ref gives FID only; "
                        f"use {prefix}metric=auto or drop {prefix}ref")


def devices_of(cfg, multirun: bool = False) -> int:
    """trainer.devices as a number of ranks: N, or auto (every visible GPU; 1 without one). A sweep trains its
    jobs as stacks, each on one device: it takes none."""
    devices = cfg.trainer.get("devices", 1)
    if devices == "auto":
        devices = max(1, torch.cuda.device_count()) if str(cfg.device) in ("auto", "cuda") else 1
    elif not is_int(devices) or devices < 1:
        raise UserError(f"trainer.devices must be an integer >= 1 or auto, got {devices!r}; e.g. trainer.devices=2")
    if multirun and devices != 1:
        raise UserError(f"trainer.devices={cfg.trainer.devices} spreads one run over several devices, and a sweep "
                        f"trains its jobs as stacks, each on one device (several GPUs: one stack each); drop "
                        f"trainer.devices for the sweep, or run its jobs one at a time")
    return devices


def check_train_config(cfg: DictConfig) -> None:
    """Types and ranges of the top-level training keys: one UserError naming the key and a valid example."""
    for key in POSITIVE_INTS + NON_NEGATIVE_INTS:
        value, low = cfg[key], 1 if key in POSITIVE_INTS else 0
        if not is_int(value) or value < low:
            raise UserError(f"{key} must be an integer >= {low}, got {value!r}; e.g. {key}={EXAMPLES[key]}")
    if not isinstance(cfg.ema_decay, (int, float)) or isinstance(cfg.ema_decay, bool) or not 0 <= cfg.ema_decay < 1:
        raise UserError(f"ema_decay must be a number in [0, 1) (0 = off), got {cfg.ema_decay!r}; e.g. ema_decay=0.999")
    if cfg.eval.metric not in ("auto", "fd", "kid"):
        raise UserError(f"eval.metric must be auto, fd or kid, got {cfg.eval.metric!r}; e.g. eval.metric=fd")
    check_features(cfg.eval, "eval.", cfg.data.name in MIXTURES)
    logger_names(cfg.logger)
    if cfg.eval.n != "auto" and (not is_int(cfg.eval.n) or cfg.eval.n < 2):
        raise UserError(f"eval.n must be auto or an integer >= 2, got {cfg.eval.n!r}; e.g. eval.n=10000")
    if cfg.on_nan not in ("stop", "skip"):
        raise UserError(f"on_nan must be stop or skip, got {cfg.on_nan!r}; e.g. on_nan=skip")
    if cfg.trainer.precision not in ("fp32", "tf32", "bf16", "fp64"):
        raise UserError(f"trainer.precision must be fp32, tf32, bf16 or fp64, got {cfg.trainer.precision!r}; "
                        f"e.g. trainer.precision=bf16")
    pack = cfg.model.get("pack", 1)
    if not is_int(pack) or pack < 1 or cfg.batch_size % pack:
        raise UserError(f"model.pack must be an integer >= 1 that divides batch_size={cfg.batch_size}, got {pack!r}; "
                        f"e.g. model.pack=2")
    heads = cfg.model.get("heads", 1)
    if not is_int(heads) or heads < 1:
        raise UserError(f"model.heads must be an integer >= 1 (1 = one output layer), got {heads!r}; e.g. model.heads=64")
    if cfg.model.get("seed_heads", False):
        if heads < 2:
            raise UserError(f"model.seed_heads=true starts G's heads at data points, and model.heads={heads}; "
                            f"set model.heads > 1 (e.g. one a mode) or drop seed_heads")
        if cfg.data.name not in MIXTURES:
            raise UserError(f"model.seed_heads=true starts G's heads at data points, for 2D data "
                            f"({', '.join(MIXTURES)}); data={cfg.data.name} holds images: drop seed_heads")
    if cfg.augment.name != "none" and cfg.data.name in MIXTURES:
        raise UserError(f"augment={cfg.augment.name} transforms images, and data={cfg.data.name} holds 2D points; "
                        f"use augment=none")
    r1_every = cfg.loss.get("r1_every", 1)
    if not is_int(r1_every) or r1_every < 1:
        raise UserError(f"loss.r1_every must be an integer >= 1 (1 = R1 on every step), got {r1_every!r}; "
                        f"e.g. loss.r1_every=4")
    timeout = cfg.trainer.get("dist_timeout_s", 600)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise UserError(f"trainer.dist_timeout_s must be a number of seconds > 0, got {timeout!r}; e.g. trainer.dist_timeout_s=600")
    if not is_int(cfg.trainer.threads) or cfg.trainer.threads < 0:
        raise UserError(f"trainer.threads must be an integer >= 0 (0 = torch's default), got {cfg.trainer.threads!r}")
    check_component_keys(cfg)


def check_component_keys(cfg: DictConfig) -> None:
    """Each group's keys against what its registry entry takes, before any data is loaded: an unknown key is
    refused here (the optimizer's values by torch itself), not dropped and not found minutes later."""
    lookup("optim", cfg.optim.name).settings(kwargs_of(cfg.optim))
    lookup("augment", cfg.augment.name)(**kwargs_of(cfg.augment))  # checks its policy (cheap: no tensors)
    for group, skip in (("model", ("conditional", "seed_heads")), ("loss", ()), ("augment", ())):  # skip: build.py's
        entry, kwargs = lookup(group, cfg[group].name), kwargs_of(cfg[group])
        try:
            inspect.signature(entry).bind_partial(**{k: v for k, v in kwargs.items() if k not in skip})
        except TypeError as e:
            raise bad_option(group, cfg[group].name, e) from None


def bad_option(group: str, name: str, e: TypeError) -> UserError:
    """The line for a component built with a key it does not take (found at the check or when building)."""
    return UserError(f"{group} '{name}' got a bad option ({e}); see gantrain/conf/{group}/{name}.yaml for its keys")


EXAMPLES = {"epochs": 200, "batch_size": 100, "latent_size": 64, "hidden_size": 256,
            "log_every": 200, "sample_every": 1, "ckpt_every": 1, "seed": 0, "n_critic": 1, "eval_every": 0}


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cpu', 'cuda', 'cuda:N' checked against this machine."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise UserError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}; e.g. device=cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device={name} but torch sees no CUDA GPU on this machine; use device=cpu or device=auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device={name} but this machine has {torch.cuda.device_count()} GPU(s); "
                            f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device


def user_path(path: str) -> Path:
    """A path the user typed, taken from the launch directory (runs keep hydra.job.chdir=false)."""
    return Path(str(path)).expanduser().absolute()


def kwargs_of(group: DictConfig, paths: tuple[str, ...] = ()) -> dict:
    """A config group as keyword arguments for its builder: every key but `name`, `paths` made absolute."""
    for key in group:
        if OmegaConf.is_missing(group, key):
            full = group._get_full_key(key)
            raise UserError(f"{full} is required and has no value; set it on the command line, e.g. {full}=VALUE")
    kwargs = {k: v for k, v in OmegaConf.to_container(group, resolve=True).items() if k != "name"}
    for key in paths:
        if kwargs.get(key) is not None:
            kwargs[key] = str(user_path(kwargs[key]))
    return kwargs


def override_keys(overrides: list[str]) -> list[str]:
    """The config keys (or group names) that command-line overrides set, via Hydra's own parser."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return [o.key_or_group for o in OverridesParser.create().parse_overrides(overrides)]


STORED_KEYS = ("model.name", "loss.name", "optim.name", "data.name", "latent_size", "hidden_size", "epochs", "seed")


def stored_config(ckpt: dict, path) -> DictConfig:
    """The config a checkpoint was trained with, checked for what rebuilding its run needs: a key it lacks or
    a component this gantrain does not know is a bad or foreign file, never a bad override."""
    try:
        cfg = OmegaConf.create(ckpt["config"])
        missing = [key for key in STORED_KEYS if OmegaConf.select(cfg, key) is None]
    except Exception:  # not a mapping at all: OmegaConf fails in many ways
        cfg, missing = None, ["any config"]
    if missing:
        raise UserError(f"{path}: the checkpoint's stored config is incomplete (it has no {', '.join(missing)}): "
                        f"the file is damaged or was not written by gantrain train; use another checkpoint")
    for kind in ("model", "loss", "optim", "data"):
        if cfg[kind].name not in REGISTRIES[kind]:
            raise UserError(f"{path}: the checkpoint's stored config names {kind} '{cfg[kind].name}', which this "
                            f"gantrain does not know (it knows {', '.join(sorted(REGISTRIES[kind]))}); use a checkpoint "
                            f"written by this gantrain, or the gantrain that wrote it")
    return cfg


def with_defaults(stored: DictConfig, current: DictConfig) -> DictConfig:
    """`stored` with the keys it lacks taken from `current`: top-level keys, and the keys of a group whose
    choice is the same in both (another choice's keys would not fit)."""
    out = OmegaConf.to_container(stored)
    for key, value in OmegaConf.to_container(current, resolve=True).items():
        if key == "hydra":
            continue
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict) and value.get("name") == out[key].get("name"):
            out[key] = {**value, **out[key]}
    return OmegaConf.create(out)


def config_for_resume(ckpt: dict, cfg: DictConfig, overrides: list[str], path) -> DictConfig:
    """The checkpoint's config, plus the overrides a resumed run may change; any other change is refused.
    Keys the checkpoint predates (added to gantrain since) take today's defaults, which keep old behaviour."""
    saved = with_defaults(stored_config(ckpt, path), cfg)
    for key in override_keys(overrides):
        new, old = OmegaConf.select(cfg, key), OmegaConf.select(saved, key)
        if isinstance(new, DictConfig) and isinstance(old, DictConfig):  # a group (data=mnist): compare the choice
            new, old = new.get("name"), old.get("name")
        if any(key == m or key.startswith(m + ".") for m in MUTABLE_ON_RESUME):
            new = OmegaConf.select(cfg, key)  # the whole node of a group: a logger choice replaces the old one
            OmegaConf.update(saved, key, new, force_add=True, merge=key != "logger")
        elif new != old:
            raise UserError(f"resume: the checkpoint was trained with {key}={_show(old)}, cannot continue with "
                            f"{key}={_show(new)}; drop that override or start a new run without resume=")
    if saved.epochs <= ckpt["epoch"]:
        raise UserError(f"resume: the checkpoint has already trained {ckpt['epoch']} of epochs={saved.epochs}; "
                        f"raise it, e.g. epochs={ckpt['epoch'] * 2}")
    return saved


def _show(value) -> str:
    if isinstance(value, DictConfig):
        return str(value.get("name", OmegaConf.to_container(value)))
    return str(value)
