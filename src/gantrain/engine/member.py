"""One run inside a stack: its config, its random generator, its run dir and the files it writes there
(train.log, metrics.csv, a tracker, checkpoints, best.pt), whatever the stack it trains in. A member that
resumes continues its training: its random state, its best evaluation so far (and best.pt) and its tracker
runs come from the checkpoint."""
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from gantrain.config import user_path
from gantrain.errors import naming
from gantrain.ranks import ALONE, Ranks
from gantrain.engine.step import STATS
from gantrain.evaluation.evaluate import headline, protocol, write_metrics
from gantrain.evaluation.protocol import describe
from gantrain.outputs import artifacts
from gantrain.outputs.checkpoint import rng_state, save_checkpoint, set_rng_state
from gantrain.outputs.tracking import Trackers
from gantrain.processes import log_file

log = logging.getLogger("gantrain")


@dataclass
class Where:
    """A stack's position in training: completed epochs, global steps, steps done in the current epoch."""

    epoch: int = 0
    step: int = 0
    position: int = 0


def best_record(score: float, epoch: int, step: int, measured: dict) -> dict:
    """What a checkpoint says of the best evaluation so far: its score, when, and how it was measured."""
    return {"score": float(score), "epoch": epoch, "step": step, "protocol": measured}


class Member:
    """A member's bookkeeping: alive or failed, its best evaluation, its last checkpoint, and its outputs.

    own_log: write train.log here (in a stack); a lone run's train.log is written by Hydra's job logging.
    prefix: what its console lines start with (its job name in a stack, nothing for a lone run).
    ckpt: the checkpoint it resumes from (read from cfg.resume), whose random state, best evaluation and tracker
    runs it continues; logged_up_to: the last step its earlier run logged, {"train": ..., "eval": ...} (its
    trackers have those already). ranks: the processes the run spreads over; only rank 0 writes the member's
    files and lines (its random state and decisions are the same on every rank).
    """

    def __init__(self, cfg, run_dir: Path, device: torch.device, evaluating: bool, own_log: bool = False,
                 prefix: str = "", overrides: list[str] = (), ckpt: dict | None = None, logged_up_to: dict | None = None,
                 ranks: Ranks = ALONE):
        self.cfg, self.run_dir, self.evaluating, self.prefix = cfg, run_dir, evaluating, prefix
        self.writes, self.world = ranks.writes, ranks.world
        writes = self.writes
        self.gen = torch.Generator(device).manual_seed(cfg.seed)  # data order, noise and the loss's draws
        self.alive, self.failure, self.score = True, None, None
        self.best = None  # the best evaluation so far: {score, epoch, step, protocol} (best_record)
        self.notes: dict = {}  # the protocol of each metric, as last told to the trackers
        self.last_ckpt = f"{user_path(cfg.resume)}" if cfg.resume else None  # where a diverged run can resume from
        self.file_log = self.csv = None
        if writes:
            run_dir.mkdir(parents=True, exist_ok=True)
            if own_log:
                self.file_log = logging.Logger(f"gantrain.member.{run_dir}")  # outside the hierarchy: this file only
                self.file_log.addHandler(log_file(run_dir / "train.log"))
            self.csv = artifacts.open_metrics(run_dir / "metrics.csv", ("epoch", "step_in_epoch", "step", *STATS))
        if ckpt is not None:
            set_rng_state(self.gen, ckpt["rng"])
            self.best = self.best_so_far(ckpt, user_path(cfg.resume)) if writes else None
        self.tracker = (Trackers(cfg, run_dir, list(overrides), (ckpt or {}).get("trackers"), logged_up_to) if writes
                        else Trackers.none())

    def say(self, message: str, level: int = logging.INFO) -> None:
        """A line on the console (and in the run's train.log); nothing on a rank that does not write."""
        if not self.writes:
            return
        log.log(level, f"{self.prefix}{message}")
        if self.file_log is not None:
            self.file_log.log(level, message)

    def due(self, every_key: str, epoch: int, last: bool) -> bool:
        """Whether an every-N-epochs task (sample_every, ckpt_every, eval_every) runs after `epoch` (always
        after the last; every=0 means only then)."""
        every = self.cfg[every_key]
        return last or (every > 0 and epoch % every == 0)

    def log_stats(self, where: Where, steps_per_epoch: int, values: list[float], skipped: int) -> None:
        """The reference's log line, with the same values as a row of metrics.csv and the tracker's scalars.
        metrics.csv first: it is what a resumed run's trackers go by (a kill -9 between the two writes costs a
        tracker that one row, never a row twice)."""
        d_loss, g_loss, d_x, d_g_z = values
        if not self.writes:
            return
        with naming(self.run_dir / "metrics.csv"):
            self.csv.write(f"{where.epoch + 1},{where.position},{where.step},{d_loss:.6g},{g_loss:.6g},{d_x:.6g},{d_g_z:.6g}\n")
        self.tracker.scalars({f"train/{name}": v for name, v in zip(STATS, values)}, where.step)
        note = f" (skipped {skipped} non-finite updates)" if skipped else ""
        self.say(f"Epoch[{where.epoch + 1}/{self.cfg.epochs}] Step[{where.position}/{steps_per_epoch}] "
                 f"d_loss {d_loss:.4f} g_loss {g_loss:.4f} D(x) {d_x:.2f} D(G(z)) {d_g_z:.2f}{note}")

    def checkpoint_state(self, nets_state: dict, where: Where, order: torch.Tensor | None, data_shape,
                         num_classes: int, class_names: list[str] | None = None) -> dict:
        """What a checkpoint holds: tensors and plain values only (see checkpoint.py). `order` is this
        member's data order when the checkpoint is taken mid-epoch (where.position > 0)."""
        return {"config": OmegaConf.to_container(self.cfg, resolve=True), "data_shape": list(data_shape),
                "num_classes": num_classes, "class_names": class_names, "epoch": where.epoch, "step": where.step, "position": where.position,
                "order": order.cpu() if where.position else None, **nets_state, "rng": rng_state(self.gen),
                "best": self.best, "trackers": self.tracker.ids(), "world_size": self.world}

    def record_eval(self, results: dict, state: dict, where: Where) -> None:
        """An evaluation's metrics.json, tracker scalars and log line; checkpoints/best.pt when it is the best so
        far of the whole training under the same protocol (state["best"] then says so, for last.pt too)."""
        score = headline(results, self.cfg.eval.metric)
        if score is None or not self.writes:
            return
        self.score = score
        write_metrics(self.run_dir / "metrics.json", results, epoch=where.epoch, step=where.step)
        self.tracker.scalars({f"eval/{k}": v["value"] for k, v in results.items() if math.isfinite(v["value"])}, where.step)
        notes = {f"protocol/{k}": describe(v["protocol"]) for k, v in results.items() if "protocol" in v}
        if notes != self.notes:  # the tracker keeps the latest: told when it changes (once, in most runs)
            self.tracker.notes(notes)
            self.notes = notes
        first = next(iter(results.values()))
        self.say(f"eval at epoch {where.epoch}: " + ", ".join(f"{k} {v['value']:.4g}" for k, v in results.items())
                 + f" (n_real {first['n_real']}, n_fake {first['n_fake']}"
                 + (f", in {first['features']} features)" if "features" in first else ")"))
        measured = protocol(results, self.cfg.eval.metric)
        if self.best is not None and self.best["protocol"] != measured:
            self.say(f"best.pt starts anew: its best ({self.best['score']:.4g} at epoch {self.best['epoch']}) was "
                     f"measured as {self.best['protocol']}, this evaluation as {measured}")
            self.best = None
        if self.best is None or score < self.best["score"]:
            self.best = state["best"] = best_record(score, where.epoch, where.step, measured)
            save_checkpoint(self.run_dir / "checkpoints" / "best.pt", state)

    def best_so_far(self, ckpt: dict, resumed_from: Path) -> dict | None:
        """The best evaluation of the training this member continues: the checkpoint's, or that of the best.pt
        beside it where that is better (an evaluation after the checkpoint was written). A member in a new run
        dir starts it with that best.pt (a hard link, else a copy), so its best.pt is the whole training's."""
        best = ckpt.get("best")
        beside = resumed_from.parent / "best.pt"
        if not beside.is_file():
            return best
        try:
            theirs = torch.load(beside, map_location="cpu", weights_only=True, mmap=True).get("best")
        except Exception:  # noqa: BLE001  (an unreadable best.pt is not this run's best)
            return best
        if theirs is not None and (best is None or (theirs["protocol"] == best["protocol"] and theirs["score"] <= best["score"])):
            best = theirs
        mine = self.run_dir / "checkpoints" / "best.pt"
        if best is theirs and beside.resolve() != mine.resolve():
            mine.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(beside, mine)  # no second copy on disk
            except OSError:
                shutil.copy2(beside, mine)
        return best

    def finish(self, how: str) -> None:
        """Its tracker runs end: finished, failed, interrupted (it will resume) or preempted (Slurm's requeue)."""
        self.tracker.finish("failed" if how == "finished" and not self.alive else how)

    def close(self) -> None:
        """Its files; its trackers finish after the run's curves are drawn (loop.finish), or at once on an error."""
        if self.csv is not None:
            self.csv.close()
        for handler in self.file_log.handlers if self.file_log else ():
            handler.close()
