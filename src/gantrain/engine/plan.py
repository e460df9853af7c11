"""Which jobs train together as one stack, and how many members fit on the device at once.

Members of a stack share every config key except the member keys: the loop's (loop.MEMBER_KEYS) and those
each component lists itself (an optimizer's or a loss's `member_keys`), which may differ per member. Any
other difference (a tensor shape, a code path, the data) splits the jobs into separate stacks. A job whose
settings the stacked backend cannot run (stacked.why_not_stacked) trains alone, and the plan says why.
"""
import json
import re
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from gantrain.components.registry import lookup
from gantrain.config import kwargs_of
from gantrain.engine.build import build_networks, param_dtype
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


class CountCreated(TorchDispatchMode):
    """Counts the elements of every new tensor the ops under it return (views share memory: not counted)."""

    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            self.elements += sum(t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


def member_bytes(cfg, data_shape, num_classes: int) -> int:
    """A member's memory: its parameters, their gradients and two optimizer moments, plus a step's
    activations, counted in one pass through G and D built on the meta device (shapes only, no compute):
    everything G(z), D(G(z)) and D(x) create, twice (their gradients), per sample of the batch."""
    with torch.device("meta"):
        G, D = build_networks(cfg, data_shape, num_classes)
        created = []
        for n in (2, 4):  # what grows with the batch; ops on the weights alone (spectral norm's) cancel out
            n *= cfg.model.get("pack", 1)  # PacGAN's D takes a multiple of its pack
            z, y = torch.zeros(n, cfg.latent_size), torch.zeros(n, dtype=torch.long) if num_classes else None
            with CountCreated() as in_g:
                x = G(z, y)
            with CountCreated() as in_d:
                D(x, y)
            created.append((in_g.elements + 2 * in_d.elements, n))  # D sees the fakes and the reals
    per_sample = (created[1][0] - created[0][0]) / (created[1][1] - created[0][1])
    n_params = sum(p.numel() for p in [*G.parameters(), *D.parameters()])
    itemsize = torch.finfo(param_dtype(cfg.trainer.precision)).bits // 8
    return int(itemsize * (4 * n_params + 2 * cfg.batch_size * per_sample))


def free_bytes(device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        meminfo = Path("/proc/meminfo").read_text()
        return int(re.search(r"MemAvailable:\s+(\d+) kB", meminfo).group(1)) * 1024
    except (OSError, AttributeError):
        return 8 * 2**30
