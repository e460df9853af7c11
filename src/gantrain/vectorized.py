"""K members of a sweep trained as one batched model: their parameters stacked along a leading K axis and
the existing G and D modules run over them with torch.func (stack_module_state + functional_call + vmap).

The maths of a member is the maths of `make_step` with trainer.fast: one D pass over [real; fake], D frozen
in the G step, Adam per member (its own lr, betas, eps, weight decay), EMA per member. Members never mix:
the summed loss gives each member exactly its own gradient.

Each network's parameters live in one (K, N) tensor (checkpoints, the EMA, member access and the optimizer
read it in one piece); the forward passes see it as one (K, *shape) view per parameter. Gradients arrive
per parameter; stored in the layout they arrive in (StackedParams), they flatten into (K, N) without a copy.
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
    """One network's parameters for K members in a single (K, N) leaf tensor, seen as named (K, ...) views.

    A Linear's weight is stored transposed, (in, out) within a member: vmap runs a Linear as x @ W^T, so the
    batched backward makes W's gradient as a contiguous (K, in, out) and hands it over transposed. Stored the
    same way, parameters, gradients and moments are read in one order (coalesced on a GPU: on the H100 at
    K=64 the update takes 0.33 ms a step, its memory traffic's time, against 0.77 ms when they were stored
    in different orders) and the gradients flatten into (K, N) as views.
    """

    def __init__(self, modules: list[torch.nn.Module]):
        params, self.buffers = stack_module_state(modules)
        self.names = list(params)  # named_parameters() order, which state dicts and optimizers use too
        self.shapes = [tuple(p.shape[1:]) for p in params.values()]
        linear = {f"{name}.weight".lstrip(".") for name, m in modules[0].named_modules() if isinstance(m, torch.nn.Linear)}
        self.transposed = [name in linear for name in self.names]
        self.flat = torch.cat(self.flatten(list(params.values())), dim=1).detach().requires_grad_()

    def flatten(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """One (K, *shape) tensor per parameter -> (K, n) each, in storage order (views, for gradients)."""
        return [(t.transpose(1, 2) if tr else t).reshape(len(t), -1) for t, tr in zip(tensors, self.transposed)]

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """(K, N) -> one (K, *shape) view per parameter."""
        parts = flat.split([math.prod(s) for s in self.shapes], dim=1)
        return [part.view(len(flat), *shape[::-1]).transpose(1, 2) if tr else part.view(len(flat), *shape)
                for part, shape, tr in zip(parts, self.shapes, self.transposed)]

    def views(self, flat: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.split(self.flat if flat is None else flat)))

    def member(self, flat: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        """Member k's state dict (parameters from `flat`, then buffers), as a standalone module holds it."""
        return {**{n: v[k].detach().clone(memory_format=torch.contiguous_format) for n, v in self.views(flat).items()},
                **{n: v[k].clone() for n, v in self.buffers.items()}}


def adam_step_(p, grads, m, v, step_size, w1, w2, bc2_sqrt, eps, wd):
    """torch.optim.Adam's update of one network's stacked (K, N) parameters p and moments m, v; grads: its
    gradients as (K, n) pieces in p's order; every hyperparameter a (K, 1) tensor, one value per member:
    g += wd p; m <- lerp(m, g, 1 - b1); v <- lerp(v, g^2, 1 - b2); p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)."""
    g = torch.cat(grads, dim=1)  # compiled, the concatenation is read inside the update's kernel, never written
    if wd is not None:
        g = g + wd * p
    m.lerp_(g, w1)
    v.lerp_(g.square(), w2)
    p.addcdiv_(m * step_size, v.sqrt().div_(bc2_sqrt).add_(eps), value=-1)  # in place where it can: fewer temporaries


def fused(fn):
    """fn compiled by torch.compile (one kernel a network instead of about ten passes over the stacked
    tensors); if compiling fails, fn itself, with one line in the log. Used on CUDA only (CPU runs stay
    eager). dynamic=False: G's and D's steps (and a chunk of another K) get kernels of their own shapes."""
    compiled, chosen = torch.compile(fn, fullgraph=True, dynamic=False), []

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
    values). `split` cuts a (K, N) tensor into one (K, *shape) view per parameter (the moments, for
    checkpoints); `flatten` turns per-parameter gradients into (K, n) pieces in the (K, N) order.

    The step count and the bias corrections live on the device and the weight-decay branch is decided
    once, so a step never syncs with the host and can be captured in a CUDA graph. The constant
    hyperparameters are cast once, here, and the bias corrections once a step, outside the compiled update
    (in it, float64 powers were recomputed per element): at K=64 a step's kernel count and the update's
    memory traffic, not its arithmetic, are what a graph replay waits on.
    """

    def __init__(self, flat: torch.Tensor, split, flatten, lr, beta1, beta2, eps, weight_decay, compile: bool = False):
        f64 = lambda v: torch.as_tensor(v, dtype=torch.float64, device=flat.device).unsqueeze(1)  # (K, 1)
        self.flat, self.flatten = flat, flatten
        self.lr, self.beta1, self.beta2 = f64(lr), f64(beta1), f64(beta2)
        self.w1, self.w2 = (1 - self.beta1).to(flat.dtype), (1 - self.beta2).to(flat.dtype)  # in the parameters' dtype
        self.eps = f64(eps).to(flat.dtype)
        self.weight_decay = f64(weight_decay).to(flat.dtype) if any(float(w) != 0 for w in weight_decay) else None
        self.m, self.v = torch.zeros_like(flat), torch.zeros_like(flat)  # (K, N) moments
        self.exp_avg, self.exp_avg_sq = split(self.m), split(self.v)  # their per-parameter views
        self.t = torch.zeros((), dtype=torch.float64, device=flat.device)  # steps taken
        self.update = fused(adam_step_) if compile else adam_step_

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        self.t += 1
        bc1, bc2 = 1 - self.beta1 ** self.t, 1 - self.beta2 ** self.t  # (K, 1) in float64, as torch computes them
        step_size, bc2_sqrt = (self.lr / bc1).to(self.m.dtype), bc2.sqrt().to(self.m.dtype)
        self.update(self.flat, self.flatten(grads), self.m, self.v, step_size, self.w1, self.w2, bc2_sqrt, self.eps,
                    self.weight_decay)


class VectorizedGAN:
    """K (G, D) pairs with identical shapes, stacked; step(real (K, B, ...), z (K, 2, B, L)) -> stats (K, 4)."""

    def __init__(self, Gs, Ds, loss, optim_hyper: dict, ema_decays: list[float]):
        self.g, self.d = StackedParams(Gs), StackedParams(Ds)
        self.G, self.D = batched(Gs[0]), batched(Ds[0])
        self.loss = loss
        compile = self.g.flat.device.type == "cuda"
        # the optimizers write through detached views of the flat tensors
        self.opt_g = StackedAdam(self.g.flat.detach(), self.g.split, self.g.flatten, **optim_hyper, compile=compile)
        self.opt_d = StackedAdam(self.d.flat.detach(), self.d.split, self.d.flatten, **optim_hyper, compile=compile)
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
        steps = float(stacked.t)  # one read from the device, not one per parameter
        for p, m, v in zip(module.parameters(), exp_avg, exp_avg_sq):
            step = torch.tensor(steps, device=p.device if opt.defaults.get("fused") else "cpu")
            opt.state[p] = {"step": step, "exp_avg": m[k].detach().clone(memory_format=torch.contiguous_format),
                            "exp_avg_sq": v[k].detach().clone(memory_format=torch.contiguous_format)}

    def restore_member_optimizer(self, k: int, which: str, saved: dict) -> None:
        """Member k's Adam moments and step count from a standalone optimizer's state dict."""
        stacked, exp_avg, exp_avg_sq = self.moments(which)
        for j, (m, v) in enumerate(zip(exp_avg, exp_avg_sq)):
            m[k], v[k] = saved["state"][j]["exp_avg"], saved["state"][j]["exp_avg_sq"]
            stacked.t.fill_(float(saved["state"][j]["step"]))
