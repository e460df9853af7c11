"""K members as one model: their parameters stacked along a leading K axis and the same G and D modules
run over them with torch.func (functional_call + vmap), each member with its own parameters, buffers
(BatchNorm statistics, spectral-norm vectors), optimizer state and hyperparameters. Members never mix:
the summed loss gives each member exactly its own gradient.

Each network's parameters live in one (K, N) tensor (checkpoints, the EMA, member access and the optimizer
read it in one piece); the forward passes see it through one (K, *shape) leaf view per parameter, made
once. Gradients accumulate into the leaves' .grad, views of one (K, N) buffer laid out as the parameters
are (StackedParams, ranks.GradientBuffer), which the optimizer reads as it is and a run on several devices
all-reduces in one call. Nothing in a step asks the host anything, so on CUDA the whole step can be
captured once as a CUDA graph and replayed (cuda_graph.py), as a lone run's step is.
"""
import copy
import math

import torch
from torch.func import functional_call, stack_module_state, vmap

from gantrain.components.networks import has_batch_statistics
from gantrain.components.registry import lookup
from gantrain.config import kwargs_of
from gantrain.ranks import ALONE, GradientBuffer, Ranks
from gantrain.outputs.checkpoint import weights_mismatch


def why_not_stacked(cfg) -> str | None:
    """None if a job's settings can run as a member of a stack, else why it trains alone. Components say
    what they cannot do themselves (a model builder's `stackable`, an optimizer's why_not_stacked); this
    backend's own limit is bf16."""
    if cfg.trainer.precision == "bf16":
        return "trainer.precision=bf16: autocast does not reach inside torch.func's batched layers"
    if not getattr(lookup("model", cfg.model.name), "stackable", True):
        return f"model={cfg.model.name} declares that it cannot be stacked"
    return lookup("optim", cfg.optim.name).why_not_stacked(kwargs_of(cfg.optim))


def vmapped(module: torch.nn.Module):
    """f(params, buffers, *inputs) over a leading K axis of all of them, running `module`'s own forward;
    also the module whose code it runs (its train/eval mode decides BatchNorm's behaviour)."""
    base = copy.deepcopy(module).to("meta")  # only its code is used; the weights come from the stacks

    def one(params, buffers, *inputs):
        return functional_call(base, (params, buffers), inputs)

    return vmap(one), base


class StackedParams:
    """One network's parameters for K members in a single (K, N) tensor, seen as named (K, ...) leaf views.

    A Linear's weight is stored transposed, (in, out) within a member: vmap runs a Linear as x @ W^T, so the
    batched backward makes W's gradient as a contiguous (K, in, out) and hands it over transposed. Stored the
    same way, parameters, gradients and moments are read in one order (coalesced on a GPU) and the
    gradients flatten into (K, N) as views.
    """

    def __init__(self, modules: list[torch.nn.Module]):
        params, buffers = stack_module_state(modules)
        self.buffers = {name: b.detach() for name, b in buffers.items()}
        self.names = list(params)  # named_parameters() order, which state dicts and optimizers use too
        self.shapes = [tuple(p.shape[1:]) for p in params.values()]
        linear = {f"{name}.weight".lstrip(".") for name, m in modules[0].named_modules() if isinstance(m, torch.nn.Linear)}
        self.transposed = [name in linear for name in self.names]
        self.flat = torch.cat(self.flatten(list(params.values())), dim=1).detach()  # (K, N)
        # leaves that share flat's memory: the optimizer updates flat in place, the forward passes read these
        self.params = {name: view.requires_grad_() for name, view in zip(self.names, self.split(self.flat))}

    def flatten(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """One (K, *shape) tensor per parameter -> (K, n) each, in storage order (views, for gradients)."""
        return [(t.transpose(1, 2) if tr else t).reshape(len(t), -1) for t, tr in zip(tensors, self.transposed)]

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """(K, N) -> one (K, *shape) view per parameter."""
        parts = flat.split([math.prod(s) for s in self.shapes], dim=1)
        return [part.view(len(flat), *shape[::-1]).transpose(1, 2) if tr else part.view(len(flat), *shape)
                for part, shape, tr in zip(parts, self.shapes, self.transposed)]

    def member(self, k: int, flat: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Member k's state dict (parameters from `flat`, then buffers), as a lone run's module holds it."""
        views = self.split(self.flat if flat is None else flat)
        return {**{n: v[k].detach().clone(memory_format=torch.contiguous_format) for n, v in zip(self.names, views)},
                **{n: b[k].clone() for n, b in self.buffers.items()}}

    @torch.no_grad()
    def load_member(self, k: int, state: dict[str, torch.Tensor], flat: torch.Tensor | None = None) -> None:
        """Member k from a lone run's state dict (its buffers too unless `flat` is another copy, the EMA's)."""
        for name, view in zip(self.names, self.split(self.flat if flat is None else flat)):
            view[k] = state[name]
        for name, b in self.buffers.items() if flat is None else ():
            b[k] = state[name]


class StackedMembers:
    """K members of identical shapes. G(z, y) and D(x, y) run every member over its own slice of the
    leading axis; update_d / update_g step each member's optimizer from the sum of the members' losses.

    optimizer: the optimizer class (components/optimizers.py); optim_kwargs: each member's keys for it;
    ema_decays: each member's decay (0 = no average: that member's row just tracks G, exactly).
    """

    def __init__(self, Gs, Ds, optimizer, optim_kwargs: list[dict], ema_decays: list[float],
                 skip_nonfinite: bool = False, fast: bool = True, ranks: Ranks = ALONE):
        self.K, self.device = len(Gs), next(Gs[0].parameters()).device
        self.templates = (Gs[0], Ds[0])  # modules with the members' shapes: checkpoints take their key order
        self.g, self.d = StackedParams(Gs), StackedParams(Ds)
        (self.G_fn, self.G_base), (self.D_fn, self.D_base) = vmapped(Gs[0]), vmapped(Ds[0])
        self.batch_statistics = has_batch_statistics(Ds[0])
        self.optimizer, self.optim_kwargs, self.fast, self.ranks = optimizer, optim_kwargs, fast, ranks
        compile = self.device.type == "cuda"  # one compiled kernel per network; CPU runs stay eager
        self.opt_g = optimizer(self.g.flat, self.g.split, optim_kwargs, compile)
        self.opt_d = optimizer(self.d.flat, self.d.split, optim_kwargs, compile)
        self.grads = {id(stack): GradientBuffer(list(stack.params.values()), stack.split, self.K, ranks)
                      for stack in (self.g, self.d)}
        self.stop = 0  # the signal this rank caught, which the next updates tell the others (ranks.py)
        self.ema_decays, self.ema = ema_decays, None
        if any(d > 0 for d in ema_decays):
            self.ema = self.g.flat.clone()  # (K, N_g)
            self.ema_weight = torch.tensor([[1 - d] for d in ema_decays], dtype=self.ema.dtype, device=self.device)
        self.skip_nonfinite = skip_nonfinite
        self.skipped = torch.zeros(self.K, dtype=torch.long, device=self.device)  # updates skipped, per member

    def G(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.G_fn(self.g.params, self.g.buffers, z, *([] if y is None else [y]))

    def D(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.D_fn(self.d.params, self.d.buffers, x, *([] if y is None else [y]))

    def update_d(self, loss: torch.Tensor) -> None:
        self.update(self.opt_d, self.d, loss)

    def update_g(self, loss: torch.Tensor) -> None:
        self.update(self.opt_g, self.g, loss)

    def update(self, opt, stack: StackedParams, loss: torch.Tensor) -> None:
        grads = self.grads[id(stack)]
        bad = grads.backward(loss, list(stack.params.values()), self.skip_nonfinite, self.stop)
        ok = None
        if bad is not None:  # decided on the device: a member with a NaN/Inf loss keeps its state
            ok = ~bad.unsqueeze(1)
            self.skipped += bad
        opt.step(grads.grad, ok)

    def agreed_stop(self) -> int:
        """The stop signal any rank caught during this step (0: none), the same on every rank."""
        return self.grads[id(self.g)].agreed_stop()

    @torch.no_grad()
    def share(self) -> None:
        """Rank 0's weights, statistics and averages on every rank (at the start)."""
        self.ranks.broadcast_([self.g.flat, self.d.flat, *self.g.buffers.values(), *self.d.buffers.values(),
                               *([] if self.ema is None else [self.ema])])

    @torch.no_grad()
    def average_batch_statistics(self) -> None:
        """Each rank's BatchNorm statistics averaged over the ranks (see PlainMembers)."""
        for name, b in (*self.g.buffers.items(), *self.d.buffers.items()) if not self.ranks.alone else ():
            if name.endswith(("running_mean", "running_var")):
                self.ranks.mean_(b)

    @torch.no_grad()
    def update_ema(self) -> None:
        if self.ema is not None:  # ema <- lerp(ema, G, 1 - decay); BatchNorm statistics are G's (lone runs copy them)
            self.ema.lerp_(self.g.flat, self.ema_weight)

    @torch.no_grad()
    def sample(self, z: torch.Tensor, y: torch.Tensor | None, members: list[int]) -> torch.Tensor:
        """G (its EMA where kept) of `members` in eval mode: z (len(members), n, latent) -> (len(members), n, ...)."""
        idx = torch.tensor(members, device=self.device)
        params = {n: v[idx] for n, v in zip(self.g.names, self.g.split(self.g.flat if self.ema is None else self.ema))}
        buffers = {n: b[idx] for n, b in self.g.buffers.items()}
        self.G_base.eval()
        try:
            return self.G_fn(params, buffers, z.to(self.g.flat.dtype), *([] if y is None else [y]))
        finally:
            self.G_base.train()

    def member_state(self, k: int) -> dict:
        """Member k's networks and optimizers exactly as a lone run's checkpoint holds them (copies)."""
        G, D = self.templates
        ema = None
        if self.ema is not None and self.ema_decays[k] > 0:
            ema = {**self.g.member(k, self.ema), **{n: b[k].clone() for n, b in self.g.buffers.items()}}
        opts = []
        for stacked, net in ((self.opt_g, G), (self.opt_d, D)):
            opt = self.optimizer.build_torch(net.parameters(), self.optim_kwargs[k], self.fast)
            stacked.export_member(k, opt)
            opts.append(opt.state_dict())
        return {"G": self.g.member(k), "D": self.d.member(k), "G_ema": ema, "opt_g": opts[0], "opt_d": opts[1]}

    def load_member(self, k: int, ckpt: dict) -> None:
        """Member k from a checkpoint (written by a lone run or a stack: the same format)."""
        try:
            self.g.load_member(k, ckpt["G"])
            self.d.load_member(k, ckpt["D"])
        except (KeyError, RuntimeError) as e:  # a missing key, or a shape that does not fit
            raise weights_mismatch(e, ckpt["version"]) from None
        if self.ema is not None:  # ema_decay switched on at resume: the average starts from G
            self.g.load_member(k, ckpt["G_ema"] if ckpt.get("G_ema") is not None else ckpt["G"], self.ema)
        self.opt_g.restore_member(k, ckpt["opt_g"])
        self.opt_d.restore_member(k, ckpt["opt_d"])
