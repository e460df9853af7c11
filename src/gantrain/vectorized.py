"""K members of a sweep trained as one batched model: their parameters stacked along a leading K axis and
the existing G and D modules run over them with torch.func (stack_module_state + functional_call + vmap).

The maths of a member is the maths of `make_step` with trainer.fast: one D pass over [real; fake], D frozen
in the G step, Adam per member (its own lr, betas, eps, weight decay), EMA per member. Members never mix:
the summed loss gives each member exactly its own gradient.
"""
import copy

import torch
from torch.func import functional_call, stack_module_state, vmap


def batched(module: torch.nn.Module):
    """f(params, buffers, x) over a leading K axis of all three, running `module`'s own forward."""
    base = copy.deepcopy(module).to("meta")  # only its code is used; the weights come from the stacks

    def one(params, buffers, x):
        return functional_call(base, (params, buffers), (x,))

    return vmap(one)


class StackedAdam:
    """Adam over stacked (K, ...) parameters with per-member hyperparameters (each a (K,) tensor).

    Written as torch.optim.Adam's single-tensor update: m <- lerp(m, g, 1 - b1); v <- b2 v + (1 - b2) g^2;
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps); L2 weight decay adds wd * p to g.
    """

    def __init__(self, params: list[torch.Tensor], lr, beta1, beta2, eps, weight_decay):
        self.params = params
        self.hyper = {name: torch.as_tensor(v, dtype=torch.float64, device=params[0].device)
                      for name, v in dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay).items()}
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.t = 0

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        self.t += 1
        h = self.hyper
        bc1, bc2_sqrt = 1 - h["beta1"] ** self.t, (1 - h["beta2"] ** self.t).sqrt()  # (K,) in float64
        for p, g, m, v in zip(self.params, grads, self.exp_avg, self.exp_avg_sq):
            shape = (-1,) + (1,) * (p.dim() - 1)  # broadcast a (K,) value over one member's tensor
            per = lambda x: x.to(p.dtype).view(shape)
            if bool((h["weight_decay"] != 0).any()):
                g = g + per(h["weight_decay"]) * p
            m.lerp_(g, per(1 - h["beta1"]))
            v.mul_(per(h["beta2"])).add_(per(1 - h["beta2"]) * g * g)
            denom = (v.sqrt() / per(bc2_sqrt)).add_(per(h["eps"]))
            p.sub_(per(h["lr"] / bc1) * m / denom)


class VectorizedGAN:
    """K (G, D) pairs with identical shapes, stacked; step(real (K, B, ...), z (K, 2, B, L)) -> stats (K, 4)."""

    def __init__(self, Gs, Ds, loss, optim_hyper: dict, ema_decays: list[float]):
        self.template_g, self.template_d = Gs[0], Ds[0]
        self.pg, self.bg = stack_module_state(Gs)  # name -> (K, ...) leaf tensors
        self.pd, self.bd = stack_module_state(Ds)
        self.G, self.D = batched(Gs[0]), batched(Ds[0])
        self.loss = loss
        self.opt_g = StackedAdam(list(self.pg.values()), **optim_hyper)
        self.opt_d = StackedAdam(list(self.pd.values()), **optim_hyper)
        decays = torch.tensor(ema_decays, dtype=torch.float64)
        self.ema_decay = decays if bool((decays > 0).any()) else None
        self.ema = {k: v.detach().clone() for k, v in self.pg.items()} if self.ema_decay is not None else None

    def step(self, real: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # ---------------------------------------------------------------- #
        # (1) update D on [real; G(z)] for every member at once; G fixed.
        # ---------------------------------------------------------------- #
        with torch.no_grad():
            fake = self.G(self.pg, self.bg, z[:, 0])  # (K, B, ...)
        logits = self.D(self.pd, self.bd, torch.cat([real, fake], dim=1))  # (K, 2B)
        real_logits, fake_logits = logits.chunk(2, dim=1)
        d_loss = vmap(self.loss.d_loss)(real_logits, fake_logits)  # (K,)
        self.opt_d.step(torch.autograd.grad(d_loss.sum(), list(self.pd.values())))

        # ---------------------------------------------------------------- #
        # (2) update G on fresh noise; D's stacked weights enter detached.
        # ---------------------------------------------------------------- #
        frozen_d = {k: v.detach() for k, v in self.pd.items()}
        g_loss = vmap(self.loss.g_loss)(self.D(frozen_d, self.bd, self.G(self.pg, self.bg, z[:, 1])))
        self.opt_g.step(torch.autograd.grad(g_loss.sum(), list(self.pg.values())))
        if self.ema is not None:
            with torch.no_grad():
                for name, p in self.pg.items():
                    w = (1 - self.ema_decay).to(p.dtype).to(p.device).view((-1,) + (1,) * (p.dim() - 1))
                    self.ema[name].lerp_(p, w)
        return torch.stack([d_loss.detach(), g_loss.detach(), real_logits.detach().sigmoid().mean(1),
                            fake_logits.detach().sigmoid().mean(1)], dim=1)

    def member_weights(self, k: int) -> tuple[dict, dict, dict | None]:
        """Member k's G, D (and EMA G) state dicts, as a standalone run's modules hold them."""
        g = {**{n: v[k].detach().clone() for n, v in self.pg.items()}, **{n: v[k].clone() for n, v in self.bg.items()}}
        d = {**{n: v[k].detach().clone() for n, v in self.pd.items()}, **{n: v[k].clone() for n, v in self.bd.items()}}
        ema = None if self.ema is None else {**{n: v[k].clone() for n, v in self.ema.items()},
                                            **{n: v[k].clone() for n, v in self.bg.items()}}
        return g, d, ema

    def member_optimizer_state(self, k: int, which: str, module: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        """Fill a real torch Adam over `module` with member k's moments, so its checkpoint resumes anywhere."""
        stacked = self.opt_g if which == "g" else self.opt_d
        for p, m, v in zip(module.parameters(), stacked.exp_avg, stacked.exp_avg_sq):
            step = torch.tensor(float(stacked.t), device=p.device if opt.defaults.get("fused") else "cpu")
            opt.state[p] = {"step": step, "exp_avg": m[k].detach().clone(), "exp_avg_sq": v[k].detach().clone()}
