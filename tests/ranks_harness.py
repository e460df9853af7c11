"""Run several training cases inside ONE process group (gloo, on the CPU), as every rank of it:

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ranks_harness.py CASES.json

CASES.json: {"cases": [{"name": ..., "members": [[override, ...], ...], "nan_on_rank": r or null}, ...],
"out": DIR}. Each case trains its members (a stack when several) on every rank through the engine's own
train_group; rank 0 writes the run dirs DIR/<name>/<k>, and every rank saves its own final networks and
optimizer states as DIR/<name>/rank<r>.pt, so a test can check that the ranks hold the same model (or, for a
case refused with a UserError, its message). A case with nan_on_rank makes that rank's d_loss NaN at the third
step (its slice only), to check both ranks decide alike.
"""
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from hydra import compose, initialize_config_module

from gantrain.components import losses
from gantrain.components.registry import REGISTRIES
from gantrain.engine import jobs
from gantrain.engine.jobs import Job, train_group
from gantrain.errors import UserError
from gantrain.processes import console_logging


def nan_loss_on(rank: int):
    """BCE whose d_loss is NaN on one rank at its third D update: a bad slice of one rank's batch."""

    class NaNOnOneRank(losses.BCELoss):
        calls = 0

        def d_loss(self, real, fake):
            out = super().d_loss(real, fake)
            NaNOnOneRank.calls += 1
            return out * float("nan") if NaNOnOneRank.calls == 3 and dist.get_rank() == rank else out

    return NaNOnOneRank


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(spec["out"])
    dist.init_process_group("gloo", init_method="env://")
    torch.set_num_threads(1)
    rank = dist.get_rank()
    if rank == 0:
        console_logging()  # rank 0's lines, as a lone run prints them
    captured = {}
    fit = jobs.fit
    jobs.fit = lambda stack, *args, **kwargs: (captured.update(stack=stack), fit(stack, *args, **kwargs))[1]
    for case in spec["cases"]:
        if case.get("nan_on_rank") is not None:
            REGISTRIES["loss"]["bce"] = nan_loss_on(case["nan_on_rank"])
        with initialize_config_module("gantrain.conf", version_base=None):
            cfgs = [compose("train", overrides=overrides) for overrides in case["members"]]
        stack = [Job(c, out / case["name"] / str(k), [], str(k), own_log=len(cfgs) > 1) for k, c in enumerate(cfgs)]
        try:
            members = train_group(stack)
        except UserError as e:
            (out / case["name"]).mkdir(parents=True, exist_ok=True)
            torch.save({"refused": str(e)}, out / case["name"] / f"rank{rank}.pt")
            continue
        finally:
            REGISTRIES["loss"]["bce"] = losses.BCELoss
        nets = captured["stack"].nets
        torch.save({"states": [nets.member_state(k) for k in range(len(cfgs))], "alive": [m.alive for m in members],
                    "skipped": nets.skipped.tolist()}, out / case["name"] / f"rank{rank}.pt")
        dist.barrier()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
