"""Experiment trackers beside the console and metrics.csv (which are always written): logger=tensorboard,
mlflow, wandb, or several at once (logger=[tensorboard,mlflow]). One tracker run per job, and per member of
a stack, across interruptions: a resumed, requeued or resume=auto run continues the same MLflow and W&B run
(their ids travel in the checkpoint) and logs only the steps after the last one its earlier run logged. An
interrupted run ends its tracker runs as interrupted (MLflow KILLED; W&B finished, marked preempting under
Slurm), not failed. A tracker that fails (a store that cannot be reached, a full disk) says so in one warning
line and is switched off; training and the others go on, and metrics.csv and metrics.json keep everything.
"""
import logging
import os
import time
from pathlib import Path

from omegaconf import OmegaConf

from gantrain.errors import UserError

log = logging.getLogger("gantrain")


def flat(config: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as {'optim.lr': '0.0002', ...}: what trackers take as a run's parameters."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


class Run:
    """What every tracker is told about its run: the config, the overrides that made the job, its name,
    and its sweep (the sweep dir, or None for a single run)."""

    def __init__(self, cfg, run_dir: Path, overrides: list[str]):
        run_dir = run_dir.absolute()
        self.run_dir, self.overrides = run_dir, [o for o in overrides if not o.startswith(("hydra.", "hydra/"))]
        self.config = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"}
        self.sweep = run_dir.parent if (run_dir.parent / "multirun.yaml").exists() else None
        self.name = (f"{run_dir.name} " if self.sweep else "") + (" ".join(self.overrides) or run_dir.name)




class Tracker:
    """The interface; logger=csv's (the console, train.log and metrics.csv only). `resumed`: the id of the
    tracker run an earlier part of this training opened (None: a new run); `id`: this one's, for the checkpoint."""

    id = None
    logged: dict | None = None  # a resumed run's last steps as the tracker itself knows them ({"train": .., "eval": ..})

    def __init__(self, run: Run | None = None, settings: dict | None = None, resumed: str | None = None):
        pass

    def scalars(self, values: dict[str, float], step: int) -> None:
        pass

    def image(self, tag: str, png: Path, step: int) -> None:
        pass

    def notes(self, values: dict[str, str]) -> None:
        """Text beside the numbers, e.g. {"protocol/fid": "torch-fidelity 0.3.0 ...; real: ..."}: the latest holds."""

    def finish(self, how: str) -> None:
        """The run ends (finished, failed, interrupted or preempted): its files (curves.png, metrics.json, where its checkpoint is) go with it."""


class TensorBoard(Tracker):
    """Scalars and sample grids as TensorBoard events in <run dir>/tensorboard (tensorboard --logdir outputs)."""

    def __init__(self, run: Run, settings: dict, resumed: str | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run.run_dir / "tensorboard"))

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, png: Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(png) as img:
            self.writer.add_image(tag, np.asarray(img.convert("RGB")), step, dataformats="HWC")

    def notes(self, values: dict[str, str]) -> None:
        for tag, text in values.items():
            self.writer.add_text(tag, text)

    def finish(self, how: str) -> None:
        self.writer.close()


class MLflow(Tracker):
    """One MLflow run: the overrides and the whole config as params, every logged row as metrics at its step,
    sample grids, curves.png and metrics.json as artifacts, the checkpoint's path as a tag; a sweep's jobs
    share an experiment named after the sweep dir. A resumed training reopens its run (RUNNING again) and
    keeps its params (the keys a resume may change, such as epochs, would clash with MLflow's immutable ones)."""

    def __init__(self, run: Run, settings: dict, resumed: str | None = None):
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.Metric = Metric

        self.client, self.run_dir = MlflowClient(settings.get("tracking_uri")), run.run_dir
        # MLflow logs its store's set-up (creating tables) at INFO on the console: not gantrain's business
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        if resumed:
            try:
                self.client.update_run(resumed, status="RUNNING")
                self.id = resumed
                self.client.set_tag(resumed, "run_dir", str(run.run_dir))  # where it goes on
                # what the store holds, exactly (a kill -9 may land between metrics.csv's row and this store's)
                keys = self.client.get_run(resumed).data.metrics
                last = lambda kind: max((m.step for key in keys if key.startswith(f"{kind}/")
                                         for m in self.client.get_metric_history(resumed, key)), default=0)
                self.logged = {"train": last("train"), "eval": last("eval")}
                return
            except MlflowException:  # not in this store (logger.mlflow.tracking_uri changed): a new run
                log.warning(f"logger=mlflow: the earlier run {resumed} of this training is not in this store; "
                            f"logging to a new run")
        name = settings.get("experiment") or (str(run.sweep) if run.sweep else "gantrain")
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else self.client.create_experiment(name)
        tags = {"mlflow.runName": run.name, "run_dir": str(run.run_dir), "overrides": " ".join(run.overrides)}
        self.id = self.client.create_run(experiment, tags=tags, run_name=run.name).info.run_id
        params = [Param(k, v[:6000]) for k, v in flat(run.config).items()]  # MLflow's limit on a value
        for i in range(0, len(params), 100):  # and on a batch
            self.client.log_batch(self.id, params=params[i:i + 100])
        self.client.log_batch(self.id, tags=[RunTag(f"override.{o.split('=')[0].lstrip('+~')}", o.split("=", 1)[-1])
                                             for o in run.overrides])

    def scalars(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.id, metrics=[self.Metric(k, float(v), now, step) for k, v in values.items()])

    def image(self, tag: str, png: Path, step: int) -> None:
        self.client.log_artifact(self.id, str(png), tag)

    def notes(self, values: dict[str, str]) -> None:
        for tag, text in values.items():  # tags, not params: a resumed run may measure under another protocol
            self.client.set_tag(self.id, tag, text[:5000])

    def finish(self, how: str) -> None:
        for name in ("curves.png", "metrics.json"):
            if (self.run_dir / name).exists():
                self.client.log_artifact(self.id, str(self.run_dir / name))
        self.client.set_tag(self.id, "checkpoint", str(self.run_dir / "checkpoints" / "last.pt"))
        self.client.set_terminated(self.id, {"finished": "FINISHED", "failed": "FAILED"}.get(how, "KILLED"))


class WandB(Tracker):
    """One W&B run, grouped by sweep, its files in <run dir>/wandb: offline (`wandb sync` uploads it later)
    unless WANDB_MODE or logger.wandb.mode says online, or WANDB_API_KEY is set. A resumed training continues
    its run (the same id, resume="allow")."""

    def __init__(self, run: Run, settings: dict, resumed: str | None = None):
        import wandb

        self.wandb, self.last_step = wandb, 0
        self.run_dir = run.run_dir
        mode = settings.get("mode") or "auto"
        if mode == "auto":  # online only where W&B could reach its server with a key; WANDB_MODE decides first
            mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.run = wandb.init(project=settings.get("project") or "gantrain", name=run.name, dir=str(run.run_dir),
                              group=str(run.sweep) if run.sweep else None, config=run.config, mode=mode,
                              id=resumed, resume="allow" if resumed else None, allow_val_change=bool(resumed),
                              tags=[o for o in run.overrides if len(o) <= 64][:64] or None, reinit="create_new", settings=wandb.Settings(
                                  console="off", silent=True, x_disable_stats=True))
        self.id = self.run.id

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.last_step = max(self.last_step, step)
        self.run.log(dict(values), step=step)

    def image(self, tag: str, png: Path, step: int) -> None:
        self.run.log({tag: self.wandb.Image(str(png))}, step=self.last_step)  # W&B's steps only go forward

    def notes(self, values: dict[str, str]) -> None:
        self.run.summary.update(values)

    def finish(self, how: str) -> None:
        if (self.run_dir / "curves.png").exists():
            self.run.log({"curves": self.wandb.Image(str(self.run_dir / "curves.png"))}, step=self.last_step)
        self.run.summary["checkpoint"] = str(self.run_dir / "checkpoints" / "last.pt")
        if how == "preempted":  # Slurm requeues it: W&B shows it as preempted, not crashed
            self.run.mark_preempting()
        self.run.finish(exit_code=1 if how == "failed" else 0)


TRACKERS = {"csv": (Tracker, None, None), "tensorboard": (TensorBoard, "tensorboard", "sweep"),  # name: class,
            "mlflow": (MLflow, "mlflow", "trackers"), "wandb": (WandB, "wandb", "trackers")}  # its package, extra


def logger_names(logger) -> list[str]:
    """The trackers a config's logger node selects: {csv: {}, mlflow: {...}} (several may be chosen), or
    {name: csv} as checkpoints written before several could be."""
    names = [logger.name] if "name" in logger else list(logger)
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise UserError(f"unknown logger '{unknown[0]}': valid names are {', '.join(TRACKERS)} "
                        f"(e.g. logger=mlflow, or several: logger=[tensorboard,mlflow])")
    return names


class Trackers:
    """Every tracker the config names, each told everything; one that fails warns once and stops.
    resumed: {tracker: id} of the runs an earlier part of this training opened (the checkpoint's);
    logged_up_to: the last step that earlier part logged, of "train/" rows and of "eval/" metrics, which they
    already hold."""

    def __init__(self, cfg, run_dir: Path, overrides: list[str], resumed: dict | None = None,
                 logged_up_to: dict | None = None):
        self.live: dict[str, Tracker] = {}
        self.logged_up_to = logged_up_to or {}
        run = Run(cfg, run_dir, overrides)
        for name in logger_names(cfg.logger):
            kind, package, extra = TRACKERS[name]
            node = None if "name" in cfg.logger else cfg.logger[name]
            settings = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else {}
            try:
                self.live[name] = kind(run, settings, (resumed or {}).get(name))
            except ImportError:
                raise UserError(f"logger={name} needs the {package} package: pip install 'gantrain[{extra}]'") from None
            except Exception as e:  # noqa: BLE001  (a store that cannot be reached: warn, train on)
                self.failed(name, e)

    def failed(self, name: str, error: Exception) -> None:
        self.live.pop(name, None)
        detail = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        log.warning(f"logger={name} failed and is off for this run ({detail}); training goes on, and "
                    f"metrics.csv and metrics.json have every number")

    def call(self, method: str, *args) -> None:
        for name in list(self.live):
            self.call_one(name, method, *args)

    def call_one(self, name: str, method: str, *args) -> None:
        try:
            getattr(self.live[name], method)(*args)
        except Exception as e:  # noqa: BLE001
            self.failed(name, e)

    @classmethod
    def none(cls) -> "Trackers":
        """No tracker at all (a rank that writes nothing)."""
        trackers = cls.__new__(cls)
        trackers.live, trackers.logged_up_to = {}, {}
        return trackers

    def ids(self) -> dict[str, str]:
        """{tracker: its run's id}, for the checkpoint: a resumed training continues these runs."""
        return {name: t.id for name, t in self.live.items() if t.id is not None}

    def scalars(self, values: dict[str, float], step: int) -> None:
        kind = next(iter(values), "").split("/")[0]  # train/... or eval/...
        for name, tracker in list(self.live.items()):  # what the earlier part of a resumed training logged is there
            if step > (tracker.logged or self.logged_up_to).get(kind, 0):
                self.call_one(name, "scalars", values, step)

    def image(self, tag: str, png: Path, step: int) -> None:
        self.call("image", tag, png, step)

    def notes(self, values: dict[str, str]) -> None:
        self.call("notes", values)

    def finish(self, how: str = "finished") -> None:
        self.call("finish", how)
        self.live.clear()  # finished once: a second call (training stopped by an error) does nothing
