"""The training loop: K >= 1 members stepped together, each with its own data order and noise, log lines,
metrics.csv, tracker, samples, checkpoints, evaluation and status, as its lone run would write them.
A lone `gantrain train` is K = 1 of this loop. The loop sees the members through `stack.nets` (plain
modules or stacked parameters: it does not know which) and runs `stack.step` (step.py) on their inputs.
"""
import logging
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
from tqdm import tqdm

from gantrain.engine.inputs import epoch_order, fixed_latents
from gantrain.engine.member import Member, Where
from gantrain.engine.step import STATS
from gantrain.evaluation.evaluate import evaluate_stack
from gantrain.outputs import artifacts, curves
from gantrain.outputs.checkpoint import save_checkpoint
from gantrain.outputs.status import write_status

log = logging.getLogger("gantrain")
# top-level keys the loop (or the members' networks and optimizers) honours for each member on its own,
# so they may differ within a stack; every other key must be equal in a stack (plan.py)
MEMBER_KEYS = ("seed", "log_every", "sample_every", "ckpt_every", "eval_every", "eval", "ema_decay", "resume", "logger")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; a scheduler's pre-emption (under submitit: SIGUSR2)


@contextmanager
def deferred_signals(signals: tuple = STOP_SIGNALS):
    """`signals` are noted, for the loop to stop at the next step boundary; a second Ctrl-C stops at once."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield caught
        return

    def note(signum, frame):
        if caught and signum == signal.SIGINT:
            raise KeyboardInterrupt
        caught.append(signum)

    previous = {s: signal.signal(s, note) for s in signals}
    try:
        yield caught
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def fit(stack, members: list[Member], data, num_classes: int, where: Where,
        orders: torch.Tensor | None = None, stop_signals: tuple = STOP_SIGNALS) -> None:
    """Train the members from `where` to their epochs (orders: each member's data order when resuming
    mid-epoch, (K, N)). A member whose loss goes NaN/Inf stops alone (on_nan=stop); one of stop_signals
    stops all of them with a checkpoint each, mid-epoch, that resumes exactly. On several devices every rank
    runs this loop over its slice of each batch, and every decision (a stop, a diverged member) comes from
    values all ranks share, at the same step."""
    cfg, K, device, ranks = members[0].cfg, len(members), data.device, stack.ranks  # shared: batch_size, epochs, ...
    steps_per_epoch = len(data) // (cfg.batch_size * cfg.n_critic)  # a last partial batch is dropped
    last_step = cfg.epochs * steps_per_epoch
    history = torch.zeros(K, steps_per_epoch, len(STATS), device=device)  # this epoch's stats, read at log time
    nets = stack.nets
    outputs_are = "samples, checkpoints and eval" if any(m.evaluating for m in members) else "samples and checkpoints"
    seconds, first_step = {"steps": 0.0, outputs_are: 0.0}, where.step
    where_ = f"{device}" if ranks.alone else (
        f"{ranks.world} ranks ({device.type}), {cfg.batch_size // ranks.world} images each"
        + ("" if not stack.batch_norm else "; BatchNorm over the whole batch (SyncBatchNorm)" if cfg.trainer.get("sync_batchnorm")
           else f"; BatchNorm statistics per rank ({cfg.batch_size // ranks.world} images)"))
    for m in members:
        m.say(f"training {cfg.model.name}/{cfg.loss.name} on {cfg.data.name} ({len(data)} examples, {steps_per_epoch} "
              f"steps/epoch) on {where_}, epochs {where.epoch + 1}..{cfg.epochs}; run dir {m.run_dir}")
    try:
        with deferred_signals(stop_signals) as caught, ThreadPoolExecutor(8, thread_name_prefix="gantrain-writer") as writer:
            outputs = EpochOutputs(nets, members, data, num_classes, writer, ranks)  # real_images.png: written meanwhile
            while where.epoch < cfg.epochs and any(m.alive for m in members):
                tick = time.perf_counter()
                if orders is None:
                    orders = torch.stack([epoch_order(len(data), m.gen) for m in members])  # (K, N)
                steps, shared = range(where.position, steps_per_epoch), where.position  # history rows before `shared`: all ranks'
                for i in tqdm(steps, initial=where.position, total=steps_per_epoch, leave=False,
                              disable=not sys.stderr.isatty() or not ranks.writes, desc=f"epoch {where.epoch + 1}/{cfg.epochs}"):
                    inputs = stack.inputs(data, orders, i, [m.gen for m in members])
                    nets.stop = caught[0] if caught else 0  # told to the other ranks in this step's all-reduces
                    history[:, i] = stack.step(inputs, r1=stack.loss.r1_due(where.step))
                    where.step, where.position = where.step + 1, i + 1
                    stopping = (caught[0] if caught else 0) if ranks.alone else nets.agreed_stop()
                    logging_now = [k for k, m in enumerate(members) if m.alive and (
                        where.step % m.cfg.log_every == 0 or where.step == last_step or stopping)]
                    if logging_now:  # a host sync, once per log line (and at the last step, and at a signal)
                        shared = share_history(history, shared, i + 1, ranks)
                        stop_diverged(history[:, :i + 1], where, members)
                        log_rows(history[:, i], nets.skipped, where, steps_per_epoch, members, logging_now)
                    if stopping:
                        interrupt(stopping, nets, members, where, orders, data, num_classes)
                share_history(history, shared, steps_per_epoch, ranks)
                stop_diverged(history, where, members)  # before anything of this epoch is saved
                seconds["steps"] += time.perf_counter() - tick
                tick = time.perf_counter()
                where.epoch, where.position, orders = where.epoch + 1, 0, None
                outputs.write(where, where.epoch == cfg.epochs, writer)
                seconds[outputs_are] += time.perf_counter() - tick
    except SystemExit as e:  # a signal: every member saved a checkpoint and continues when resumed
        for m in members:
            m.finish("preempted" if e.code == 128 + signal.SIGUSR2 else "interrupted")
        raise
    except KeyboardInterrupt:  # a second Ctrl-C: no new checkpoint, but last.pt resumes
        for m in members:
            m.finish("interrupted")
        raise
    except BaseException:
        for m in members:
            m.finish("failed")
        raise
    finally:
        for m in members:
            m.close()
    finish(members, where, first_step, seconds)


def share_history(history: torch.Tensor, start: int, end: int, ranks) -> int:
    """Rows start..end of this epoch's stats averaged over the ranks (each rank logged its slice's means): one
    reduction per log line. Returns the first row not yet shared."""
    if not ranks.alone and end > start:
        history[:, start:end] = ranks.mean_(history[:, start:end].contiguous())
    return end


def stop_diverged(history: torch.Tensor, where: Where, members: list[Member]) -> None:
    """on_nan=stop: a member whose d_loss or g_loss went NaN/Inf in `history` (its steps of this epoch so far,
    (K, steps, 4)) stops and is marked failed, naming the step and its last good checkpoint; the others go on."""
    if members[0].cfg.on_nan != "stop":
        return
    bad = ~torch.isfinite(history[:, :, :2]).all(dim=2)  # (K, steps)
    for k in bad.any(dim=1).nonzero().flatten().tolist():
        m = members[k]
        if m.alive:
            i = int(bad[k].nonzero()[0])
            d_loss, g_loss = history[k, i, :2].tolist()
            fix = (f"last good checkpoint: {m.last_ckpt}; resume from it with a lower optim.lr" if m.last_ckpt else
                   "no checkpoint was written yet; start again with a lower optim.lr")
            m.alive, m.failure = False, (f"loss became non-finite at step {where.step - where.position + i + 1} (d_loss "
                                         f"{d_loss:.4g}, g_loss {g_loss:.4g}); {fix}, or set on_nan=skip")
            if m.writes:
                write_status(m.run_dir, "failed", reason=m.failure)
            if len(members) > 1:  # a lone run's failure ends the command with this line (jobs.py)
                m.say(f"stopped: {m.failure}", logging.ERROR)


def log_rows(stats: torch.Tensor, skipped: torch.Tensor, where: Where, steps_per_epoch: int,
             members: list[Member], which: list[int]) -> None:
    """Log lines of the members in `which` from one copy of (K, 4) stats and (K,) skip counts to the host."""
    rows = torch.cat([stats, skipped.unsqueeze(1).to(stats.dtype)], dim=1).tolist()
    for k in which:
        if members[k].alive:
            members[k].log_stats(where, steps_per_epoch, rows[k][:4], int(rows[k][4]))


def interrupt(signum: int, nets, members: list[Member], where: Where, orders, data, num_classes: int):
    """A mid-epoch checkpoint for every member, holding its epoch's data order and position, then exit
    128 + signum (the members' status becomes `interrupted`: jobs.py). Every rank stops here; rank 0 writes."""
    name = signal.Signals(signum).name
    nets.average_batch_statistics()
    for k, m in enumerate(members):
        if m.alive and m.writes:
            path = m.run_dir / "checkpoints" / "last.pt"
            save_checkpoint(path, m.checkpoint_state(nets.member_state(k), where, orders[k], data.shape, num_classes,
                                                     data.classes if num_classes else None))
            # a lone run says how to resume it; a sweep's jobs resume together (the command says how: cli.py)
            m.say(f"{name}: stopped at epoch {where.epoch + 1}, step {where.step}; saved {path}"
                  + ("" if m.prefix else f"\nresume with: gantrain train resume={path}"))
    raise SystemExit(128 + signum)


class EpochOutputs:
    """What members leave at the end of an epoch: sample grids (or scatter plots), checkpoints, and
    evaluations with best.pt. Generation and evaluation run for all due members at once; files are
    written by threads (numpy arrays and tensors already copied; no torch op runs on them: artifacts.py says
    why) while the device work stays on the loop's thread. On several devices every rank averages its
    BatchNorm statistics and takes its share of the evaluation; rank 0 alone samples and writes."""

    def __init__(self, nets, members: list[Member], data, num_classes: int, writer: ThreadPoolExecutor, ranks):
        self.nets, self.members, self.data, self.num_classes, self.ranks = nets, members, data, num_classes, ranks
        device = data.device
        self.fixed_z = torch.stack([fixed_latents(m.cfg, data) for m in members]).to(device)  # (K, n, latent)
        n = self.fixed_z.shape[1]
        self.fixed_y = (torch.arange(n, device=device) % num_classes).expand(len(members), n) if num_classes else None
        self.real_points = artifacts.pixels(data.floats(torch.arange(min(n, len(data))))) if data.x.dim() == 2 else None  # 2D plots show the real mixture behind
        self.pending = [writer.submit(self.save_real_images, artifacts.pixels(artifacts.real_examples(data)))
                        ] if ranks.writes else []  # off the path to the first step

    def save_real_images(self, picture) -> None:
        """real_images.png, the same for every member: drawn once, copied."""
        artifacts.write_picture(picture, self.members[0].run_dir / "real_images.png")
        for m in self.members[1:]:
            shutil.copyfile(self.members[0].run_dir / "real_images.png", m.run_dir / "real_images.png")

    def write(self, where: Where, last: bool, writer: ThreadPoolExecutor) -> None:
        members, nets, writes_files = self.members, self.nets, self.ranks.writes
        nets.average_batch_statistics()  # every rank's G is then the same G
        alive = [k for k, m in enumerate(members) if m.alive]
        sample = [k for k in alive if members[k].due("sample_every", where.epoch, last)] if writes_files else []
        keep = [k for k in alive if members[k].due("ckpt_every", where.epoch, last)] if writes_files else []
        evaluate = [k for k in alive if members[k].evaluating and members[k].due("eval_every", where.epoch, last)]
        writes, pngs, self.pending = self.pending, {}, []
        if sample:
            images = nets.sample(self.fixed_z[sample], None if self.fixed_y is None else self.fixed_y[sample], sample).cpu()
            for j, k in enumerate(sample):
                pngs[k] = members[k].run_dir / "samples" / f"epoch_{where.epoch:04d}.png"
                writes.append(writer.submit(artifacts.write_picture, artifacts.pixels(images[j]), pngs[k], self.real_points))
        # RNG reads, config resolving, optimizer state copies: only for the members that need a state
        names = self.data.classes if self.num_classes else None
        states = {k: members[k].checkpoint_state(nets.member_state(k), where, None, self.data.shape, self.num_classes, names)
                  for k in sorted(set(keep) | set(evaluate))} if writes_files else {}
        spaces: dict[tuple, list[int]] = {}  # members due, by the feature space (and real side) they are judged in
        for k in evaluate:
            ev = members[k].cfg.eval
            spaces.setdefault((ev.features, ev.inception_weights, ev.ref, ev.ref_protocol), []).append(k)
        for (features, weights, ref, ref_protocol), due in spaces.items():
            cfgs = [members[k].cfg for k in due]
            sample = lambda z, y, which, due=due: nets.sample(z, y, [due[j] for j in which])
            results = evaluate_stack(sample, self.data, cfgs[0].data.name, cfgs[0].latent_size, self.num_classes,
                                     [c.seed for c in cfgs], [c.eval.n for c in cfgs], features, weights, self.ranks,
                                     ref, ref_protocol)
            for k, result in zip(due, results):
                if writes_files:
                    members[k].record_eval(result, states[k], where)
        for k in keep:  # after the evaluations: last.pt says which is the best so far, this epoch's included
            path = members[k].run_dir / "checkpoints" / "last.pt"
            writes.append(writer.submit(save_checkpoint, path, states[k]))
            members[k].last_ckpt = f"{path} (epoch {where.epoch})"
        for w in writes:
            w.result()  # a failed write stops training here, as it would have unthreaded
        for k, png in pngs.items():
            members[k].tracker.image("samples", png, where.epoch)
        self.ranks.wait()  # the others waited for rank 0's metrics and files without the step's timeout


def finish(members: list[Member], where: Where, first_step: int, seconds: dict) -> None:
    if not members[0].writes:
        return
    try:
        curves.plot_curves_of([m.run_dir for m in members])
    except OSError as e:  # training is done and metrics.csv holds every number: a missing picture is a warning
        log.warning(f"could not write curves.png ({e.strerror or e}{f': {e.filename}' if e.filename else ''}); "
                    f"metrics.csv holds the same numbers (gantrain report draws them)")
    for m in members:  # their trackers take curves.png and metrics.json with them
        m.finish("finished")
    steps, K = where.step - first_step, len(members)
    if K > 1:  # what a stack bought: steps/s of the whole stack, and what its files cost
        log.info(f"stack of {K} members: {steps} steps in {seconds['steps']:.1f} s ({steps / max(seconds['steps'], 1e-9):.1f} "
                 f"stacked steps/s, {K * steps / max(seconds['steps'], 1e-9):.0f} member-steps/s); "
                 + ", ".join(f"{what} {s:.1f} s" for what, s in seconds.items() if what != "steps"))
    for m in members:
        if m.alive:
            write_status(m.run_dir, "done", **({} if m.score is None else {"metric": m.score}))
            m.say(f"done: {where.step} steps; checkpoint, samples and curves in {m.run_dir}")
