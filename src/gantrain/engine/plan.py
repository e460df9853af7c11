"""Which jobs train together as one stack, and how many members fit on the device at once.

Members of a stack share every config key except the member keys: the loop's (loop.MEMBER_KEYS) and those
each component lists itself (an optimizer's or a loss's `member_keys`), which may differ per member. Any
other difference (a tensor shape, a code path, the data) splits the jobs into separate stacks. A job whose
settings the stacked backend cannot run (stacked.why_not_stacked) trains alone, and the plan says why.
"""
import json
import math
import re
from pathlib import Path

import torch
from omegaconf import OmegaConf

from gantrain.components.registry import lookup
from gantrain.config import kwargs_of
from gantrain.engine.loop import MEMBER_KEYS
from gantrain.engine.stacked import why_not_stacked


def stack_key(cfg, resumed_at: tuple | None = None) -> str:
    """Equal for two jobs exactly when they may share a stack. resumed_at: where the job's checkpoint stands
    (epoch, step, position); members resume together only from the same point."""
    plain = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
             for k, v in cfg.items() if k not in ("hydra", *MEMBER_KEYS)}
    for group in ("optim", "loss", "augment"):  # each says itself which of its keys may differ per member
        component = lookup(group, cfg[group].name)
        plain[group] = {"name": cfg[group].name, **component.stack_key(kwargs_of(cfg[group]))}
    plain["resumed_at"] = resumed_at
    return json.dumps(plain, sort_keys=True, default=str)


def plan(configs: list, resumed_at: list[tuple | None] | None = None) -> list[tuple[list[int], str | None]]:
    """Groups of job indices that train as one stack (reason None), and jobs that train alone (with why)."""
    resumed_at = resumed_at or [None] * len(configs)
    groups: dict[str, list[int]] = {}
    alone = []
    for i, cfg in enumerate(configs):
        reason = why_not_stacked(cfg)
        if reason:
            alone.append(([i], reason))
        else:
            groups.setdefault(stack_key(cfg, resumed_at[i]), []).append(i)
    return [(members, None if len(members) > 1 else "the only job of its kind") for members in groups.values()] + alone


def member_bytes(cfg, data_shape, n_params: int) -> int:
    """A member's memory: parameters, gradients and two optimizer moments, plus a step's activations (rough)."""
    widths = 2 * (cfg.model.get("depth", 2) * cfg.hidden_size + math.prod(data_shape) + cfg.latent_size)
    return 4 * (4 * n_params + 6 * 2 * cfg.batch_size * cfg.n_critic * widths)


def free_bytes(device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        meminfo = Path("/proc/meminfo").read_text()
        return int(re.search(r"MemAvailable:\s+(\d+) kB", meminfo).group(1)) * 1024
    except (OSError, AttributeError):
        return 8 * 2**30
