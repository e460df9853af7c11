"""K members of a sweep trained as one batched model: their parameters stacked along a leading K axis and
the existing G and D modules run over them with torch.func (stack_module_state + functional_call + vmap).

The maths of a member is the maths of `make_step` with trainer.fast: one D pass over [real; fake], D frozen
in the G step, Adam per member (its own lr, betas, eps, weight decay), EMA per member. Members never mix:
the summed loss gives each member exactly its own gradient.

Each network's parameters live in one (K, N) tensor (checkpoints, the EMA and member access read it in one
piece); the forward passes see it as one (K, *shape) view per parameter, so gradients arrive per parameter
in whatever layout the backward pass made them, and the optimizer reads them there, with no copy into
a flat buffer.
Nothing in a step asks the host anything: on CUDA the whole step is captured once as a CUDA graph and
replayed (cuda_graph.py), as a standalone run's step is.
"""
import copy
import logging
import math

import torch
from torch.func import functional_call, stack_module_state, vmap

log = logging.getLogger("gantrain")


def batched(module: torch.nn.Module):
    """f(params, buffers, x) over a leading K axis of all three, running `module`'s own forward."""
    base = copy.deepcopy(module).to("meta")  # only its code is used; the weights come from the stacks

    def one(params, buffers, x):
        return functional_call(base, (params, buffers), (x,))

    return vmap(one)


class StackedParams:
    """One network's parameters for K members in a single (K, N) leaf tensor, seen as named (K, ...) views."""

    def __init__(self, modules: list[torch.nn.Module]):
        params, self.buffers = stack_module_state(modules)
        self.names = list(params)  # named_parameters() order, which state dicts and optimizers use too
        self.shapes = [tuple(p.shape[1:]) for p in params.values()]
        self.flat = torch.cat([p.detach().flatten(1) for p in params.values()], dim=1).requires_grad_()

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """(K, N) -> one (K, *shape) view per parameter."""
        parts = flat.split([math.prod(s) for s in self.shapes], dim=1)
        return [part.view(len(flat), *shape) for part, shape in zip(parts, self.shapes)]

    def views(self, flat: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.split(self.flat if flat is None else flat)))

    def member(self, flat: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        """Member k's state dict (parameters from `flat`, then buffers), as a standalone module holds it."""
        return {**{n: v[k].detach().clone() for n, v in self.views(flat).items()},
                **{n: v[k].clone() for n, v in self.buffers.items()}}


def adam_update_(p, g, m, v, step_size, w1, w2, bc2_sqrt, eps, wd):
    """torch.optim.Adam's update of one stacked parameter, every hyperparameter a tensor broadcast over p (one
    value per member): g += wd p; m <- lerp(m, g, 1 - b1); v <- lerp(v, g^2, 1 - b2);
    p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps). One parameter per call, so the compiled kernel can tile
    a gradient that arrives transposed (a Linear weight's, from the batched backward) and read it coalesced."""
    if wd is not None:
        g = g + wd * p
    m.lerp_(g, w1)
    v.lerp_(g.square(), w2)
    p.addcdiv_(m * step_size, v.sqrt().div_(bc2_sqrt).add_(eps), value=-1)  # in place where it can: fewer temporaries


def fused(fn):
    """fn compiled by torch.compile (one kernel instead of about ten passes over the stacked tensors); if
    compiling fails, fn itself, with one line in the log. Used on CUDA only (CPU runs stay eager)."""
    compiled, chosen = torch.compile(fn, fullgraph=True), []  # shapes become dynamic after the first recompile

    def call(*args):
        if not chosen:
            try:
                out = compiled(*args)
                chosen.append(compiled)
                return out
            except Exception as e:  # an optimisation: never let it stop training
                log.warning(f"torch.compile of the stacked optimizer failed ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120] if str(e) else ''}); using eager kernels")
                chosen.append(fn)
        return chosen[0](*args)

    return call


class StackedAdam:
    """Adam over one network's stacked (K, N) parameters with per-member hyperparameters (each a list of K
    values); `split` cuts a (K, N) tensor into one (K, *shape) view per parameter.

    The step count and the bias corrections live on the device and the weight-decay branch is decided
    once, so a step never syncs with the host and can be captured in a CUDA graph. The constant
    hyperparameters are cast once, here: at K=64 a step's kernel count, not its arithmetic, is what a graph
    replay waits on, and casting them every step cost ~60 tiny kernels a network.
    """

    def __init__(self, flat: torch.Tensor, split, lr, beta1, beta2, eps, weight_decay, compile: bool = False):
        f64 = lambda v: torch.as_tensor(v, dtype=torch.float64, device=flat.device)  # (K,)
        own = lambda v: f64(v).to(flat.dtype)  # (K,) in the parameters' dtype
        self.lr, self.beta1, self.beta2 = f64(lr), f64(beta1), f64(beta2)
        self.w1, self.w2, self.eps = own(1 - self.beta1), own(1 - self.beta2), own(eps)
        self.weight_decay = own(weight_decay) if any(float(w) != 0 for w in weight_decay) else None
        self.params = split(flat)
        self.m, self.v = torch.zeros_like(flat), torch.zeros_like(flat)  # (K, N) moments
        self.exp_avg, self.exp_avg_sq = split(self.m), split(self.v)  # their per-parameter views
        self.t = torch.zeros((), dtype=torch.float64, device=flat.device)  # steps taken
        self.update = fused(adam_update_) if compile else adam_update_

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        self.t += 1
        bc1, bc2 = 1 - self.beta1 ** self.t, 1 - self.beta2 ** self.t  # (K,) in float64, as torch computes them
        step_size, bc2_sqrt = (self.lr / bc1).to(self.m.dtype), bc2.sqrt().to(self.m.dtype)
        for p, g, m, v in zip(self.params, grads, self.exp_avg, self.exp_avg_sq):
            per = lambda x: None if x is None else x.view((-1,) + (1,) * (p.dim() - 1))  # (K,) -> over a member
            self.update(p, g, m, v, per(step_size), per(self.w1), per(self.w2), per(bc2_sqrt), per(self.eps),
                        per(self.weight_decay))


class VectorizedGAN:
    """K (G, D) pairs with identical shapes, stacked; step(real (K, B, ...), z (K, 2, B, L)) -> stats (K, 4)."""

    def __init__(self, Gs, Ds, loss, optim_hyper: dict, ema_decays: list[float]):
        self.g, self.d = StackedParams(Gs), StackedParams(Ds)
        self.G, self.D = batched(Gs[0]), batched(Ds[0])
        self.loss = loss
        compile = self.g.flat.device.type == "cuda"
        # the optimizers write through detached views of the flat tensors
        self.opt_g = StackedAdam(self.g.flat.detach(), self.g.split, **optim_hyper, compile=compile)
        self.opt_d = StackedAdam(self.d.flat.detach(), self.d.split, **optim_hyper, compile=compile)
        self.ema = self.ema_weight = None
        if any(d > 0 for d in ema_decays):
            self.ema = self.g.flat.detach().clone()  # (K, N_g); members without EMA just track G (weight 1)
            self.ema_weight = torch.tensor([[1 - d] for d in ema_decays], dtype=self.ema.dtype, device=self.ema.device)

    def step(self, real: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # ---------------------------------------------------------------- #
        # (1) update D on [real; G(z)] for every member at once; G fixed.
        # ---------------------------------------------------------------- #
        with torch.no_grad():
            fake = self.G(self.g.views(), self.g.buffers, z[:, 0])  # (K, B, ...)
        d_params = self.d.views()
        logits = self.D(d_params, self.d.buffers, torch.cat([real, fake], dim=1))  # (K, 2B)
        real_logits, fake_logits = logits.chunk(2, dim=1)
        d_loss = vmap(self.loss.d_loss)(real_logits, fake_logits)  # (K,)
        self.opt_d.step(torch.autograd.grad(d_loss.sum(), list(d_params.values())))

        # ---------------------------------------------------------------- #
        # (2) update G on fresh noise; D's stacked weights enter detached.
        # ---------------------------------------------------------------- #
        frozen_d, g_params = self.d.views(self.d.flat.detach()), self.g.views()
        g_loss = vmap(self.loss.g_loss)(self.D(frozen_d, self.d.buffers, self.G(g_params, self.g.buffers, z[:, 1])))
        self.opt_g.step(torch.autograd.grad(g_loss.sum(), list(g_params.values())))
        if self.ema is not None:
            with torch.no_grad():
                self.ema.lerp_(self.g.flat, self.ema_weight)
        return torch.stack([d_loss.detach(), g_loss.detach(), real_logits.detach().sigmoid().mean(1),
                            fake_logits.detach().sigmoid().mean(1)], dim=1)

    def member_weights(self, k: int) -> tuple[dict, dict, dict | None]:
        """Member k's G, D (and EMA G) state dicts, as a standalone run's modules hold them."""
        ema = None if self.ema is None else self.g.member(self.ema, k)
        return self.g.member(self.g.flat, k), self.d.member(self.d.flat, k), ema

    def moments(self, which: str) -> tuple[StackedAdam, list[torch.Tensor], list[torch.Tensor]]:
        """G's or D's optimizer and its two moments, one (K, *shape) tensor per parameter."""
        opt = self.opt_g if which == "g" else self.opt_d
        return opt, opt.exp_avg, opt.exp_avg_sq

    def member_optimizer_state(self, k: int, which: str, module: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        """Fill a real torch Adam over `module` with member k's moments, so its checkpoint resumes anywhere."""
        stacked, exp_avg, exp_avg_sq = self.moments(which)
        for p, m, v in zip(module.parameters(), exp_avg, exp_avg_sq):
            step = torch.tensor(float(stacked.t), device=p.device if opt.defaults.get("fused") else "cpu")
            opt.state[p] = {"step": step, "exp_avg": m[k].detach().clone(), "exp_avg_sq": v[k].detach().clone()}

    def restore_member_optimizer(self, k: int, which: str, saved: dict) -> None:
        """Member k's Adam moments and step count from a standalone optimizer's state dict."""
        stacked, exp_avg, exp_avg_sq = self.moments(which)
        for j, (m, v) in enumerate(zip(exp_avg, exp_avg_sq)):
            m[k], v[k] = saved["state"][j]["exp_avg"], saved["state"][j]["exp_avg_sq"]
            stacked.t.fill_(float(saved["state"][j]["step"]))
