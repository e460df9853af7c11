"""Optimizers by name. Each entry is one optimizer two ways: torch's own class, which a lone run steps, and
the same update written over K members' parameters stacked in one (K, N) tensor, each member with its own
hyperparameters, which a stack of members steps (engine/stacked.py).

Every config key but `name` is an argument of torch's class (a key it does not take is refused). A key
listed in `member_keys` may differ between the members of a stack; the others must be equal in a stack.
The stacked updates never ask the host anything (the step count lives on the device), so a stack's step
can be captured in a CUDA graph; on CUDA each update is compiled into one kernel per network.
"""
import inspect
import logging

import torch

from gantrain.components.registry import register
from gantrain.errors import UserError

log = logging.getLogger("gantrain")
EXECUTION_KEYS = ("foreach", "fused", "capturable", "differentiable")  # how torch runs an update, not what it computes


def compiled(fn):
    """fn compiled by torch.compile (one kernel a network instead of about ten passes over the stacked
    tensors); if compiling fails, fn itself, with one line in the log. dynamic=False: G's and D's updates
    get kernels of their own shapes."""
    compiled_fn, chosen = torch.compile(fn, fullgraph=True, dynamic=False), []

    def call(*args):
        if not chosen:
            try:
                out = compiled_fn(*args)
                chosen.append(compiled_fn)
                return out
            except Exception as e:  # an optimisation: never let it stop training
                log.warning(f"torch.compile of the stacked optimizer failed ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120] if str(e) else ''}); using eager kernels")
                chosen.append(fn)
        return chosen[0](*args)

    return call


def gradient(p: torch.Tensor, g: torch.Tensor, a: dict) -> torch.Tensor:
    """What every stacked update starts from: the (K, N) gradient, negated to maximise, plus L2 weight decay
    (wd None: none)."""
    g = -g if a["maximize"] else g
    return g if a["wd"] is None else g + a["wd"] * p


class StackedOptimizer:
    """Base of the stacked optimizers. `flat` is one network's (K, N) parameters; `split` cuts a (K, N)
    tensor into one (K, *shape) view per parameter; `members` holds each member's optimizer keys from its
    config. step() takes the (K, N) gradient in the same order."""

    torch_class: type[torch.optim.Optimizer]
    member_keys: tuple[str, ...] = ()  # hyperparameters that may differ between the members of a stack
    fused = capturable = False  # torch's class has a fused kernel / can keep its step count on the device

    @classmethod
    def settings(cls, kwargs: dict) -> dict:
        """torch's defaults, then the config's keys; an unknown key or a bad value is one UserError."""
        known = {n: p.default for n, p in inspect.signature(cls.torch_class.__init__).parameters.items()
                 if n not in ("self", "params")}
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise UserError(f"optim has no option {unknown[0]!r}: torch.optim.{cls.torch_class.__name__} takes "
                            f"{', '.join(known)}; drop optim.{unknown[0]}")
        try:  # torch's own checks of the values (lr >= 0, betas in [0, 1), ...), on a throwaway parameter
            cls.torch_class([torch.zeros(1, requires_grad=True)], **kwargs)
        except (TypeError, ValueError, RuntimeError) as e:
            raise UserError(f"optim rejected its options: {e}; drop or fix that optim.* override") from None
        return {**known, **kwargs}

    @classmethod
    def stack_key(cls, kwargs: dict) -> dict:
        """What the members of one stack must share: every setting but member_keys, and each code path."""
        s = cls.settings(kwargs)
        return {k: v for k, v in s.items() if k not in cls.member_keys} | cls.paths(s)

    @classmethod
    def paths(cls, s: dict) -> dict:
        """Switches derived from member keys that change which update runs (none by default)."""
        return {}

    @classmethod
    def why_not_stacked(cls, kwargs: dict) -> str | None:
        """None if members with these keys can share a stack, else why each trains alone."""
        defaults = cls.settings({})
        set_here = [k for k in EXECUTION_KEYS if k in kwargs and kwargs[k] != defaults.get(k)]
        if set_here:
            return f"optim.{set_here[0]} says how torch runs its update; a stack runs its own (drop it to stack)"
        return None

    @classmethod
    def build_torch(cls, params, kwargs: dict, fast: bool = False, capturable: bool = False):
        """torch's optimizer over `params`, as a lone run steps it (fused when fast, capturable for a CUDA graph)."""
        cls.settings(kwargs)
        kwargs = dict(kwargs)
        if fast and cls.fused:
            kwargs.setdefault("fused", True)
        if capturable and cls.capturable:
            kwargs.setdefault("capturable", True)
        try:
            return cls.torch_class(params, **kwargs)
        except (TypeError, ValueError, RuntimeError) as e:
            raise UserError(f"optim rejected its options: {e}; drop or fix that optim.* override") from None

    def __init__(self, flat: torch.Tensor, split, members: list[dict], compile: bool = False):
        s = [self.settings(m) for m in members]
        self.flat, self.split, self.flags = flat, split, s[0]
        f64 = lambda values: torch.tensor([[float(v)] for v in values], dtype=torch.float64, device=flat.device)
        self.hyper = {key: f64(m[key] for m in s) for key in self.member_keys if key != "betas"}  # (K, 1) each
        if "betas" in self.member_keys:
            self.hyper |= {f"beta{i + 1}": f64(m["betas"][i] for m in s) for i in (0, 1)}
        self.nonzero = {k: bool((v != 0).any()) for k, v in self.hyper.items()}  # decided once: no host sync later
        self.state = {name: torch.zeros_like(flat) for name in self.state_names()}  # (K, N) each
        self.t = torch.zeros(len(members), 1, dtype=torch.float64, device=flat.device)  # each member's steps
        # hyperparameters cast to the parameters' dtype once: at K=64 a step's many tiny kernels are what it waits on
        self.constants = self.constant_arguments()
        self.update = compiled(type(self).update) if compile else type(self).update

    def state_names(self) -> list[str]:
        """The per-parameter state this setting keeps, as torch's state dict names it."""
        raise NotImplementedError

    def step(self, grad: torch.Tensor, ok: torch.Tensor | None = None) -> None:
        """One update from the (K, N) gradient. ok (K, 1) bool: members whose update counts (on_nan=skip);
        the others keep their parameters, state and step count."""
        with torch.no_grad():
            before = None if ok is None else [t.clone() for t in (self.flat, *self.state.values())]
            self.t += 1 if ok is None else ok
            self.update(self.flat, grad, self.state, self.constants | self.step_arguments())
            if ok is not None:
                for now, then in zip((self.flat, *self.state.values()), before):
                    now.copy_(torch.where(ok, now, then))

    def constant_arguments(self) -> dict:
        """update()'s fixed hyperparameters: (K, 1) tensors in the parameters' dtype (None: unused), and flags."""
        raise NotImplementedError

    def step_arguments(self) -> dict:
        """update()'s arguments that follow the step count (bias corrections), on the device."""
        return {}

    def per_member(self, value: torch.Tensor) -> torch.Tensor:
        return value.to(self.flat.dtype)

    # a member's state as torch's optimizer holds it (checkpoints), and back
    counts_steps = True  # torch keeps a "step" per parameter

    def export_member(self, k: int, opt: torch.optim.Optimizer) -> None:
        """Fill `opt` (torch's class over member k's module) with member k's state."""
        steps, views = float(self.t[k]), {name: self.split(t) for name, t in self.state.items()}
        for j, p in enumerate(opt.param_groups[0]["params"]):
            state = {name: v[j][k].detach().clone(memory_format=torch.contiguous_format) for name, v in views.items()}
            if self.counts_steps:
                on_device = opt.defaults.get("fused") or opt.defaults.get("capturable")
                state["step"] = torch.tensor(steps, device=p.device if on_device else "cpu")
            opt.state[p] = state

    def restore_member(self, k: int, saved: dict) -> None:
        """Member k's state from torch's optimizer state dict (a checkpoint's opt_g / opt_d)."""
        views = {name: self.split(t) for name, t in self.state.items()}
        with torch.no_grad():
            for j, state in saved["state"].items():
                for name, v in views.items():
                    v[int(j)][k] = state[name]
                self.t[k] = float(state["step"]) if self.counts_steps else float(bool(state))


@register("optim", "adam")
class Adam(StackedOptimizer):
    """torch.optim.Adam (the reference: lr 2e-4, default betas)."""

    torch_class = torch.optim.Adam
    member_keys = ("lr", "betas", "eps", "weight_decay")
    fused = capturable = True

    def state_names(self):
        return ["exp_avg", "exp_avg_sq"] + ["max_exp_avg_sq"] * bool(self.flags["amsgrad"])

    def constant_arguments(self):
        h, f = self.hyper, self.per_member
        decoupled = self.flags.get("decoupled_weight_decay", False) or self.torch_class is torch.optim.AdamW
        wd = self.nonzero["weight_decay"]
        return {"w1": f(1 - h["beta1"]), "w2": f(1 - h["beta2"]), "eps": f(h["eps"]),
                "wd": f(h["weight_decay"]) if wd and not decoupled else None,
                "decay": f(1 - h["lr"] * h["weight_decay"]) if wd and decoupled else None,
                "maximize": self.flags["maximize"]}

    def step_arguments(self):
        h = self.hyper
        bc1, bc2 = 1 - h["beta1"] ** self.t, 1 - h["beta2"] ** self.t  # (K, 1) in float64, as torch computes them
        return {"step_size": self.per_member(h["lr"] / bc1), "bc2_sqrt": self.per_member(bc2.sqrt())}

    @staticmethod
    def update(p, grad, state, a):
        """torch.optim.Adam on (K, N) tensors: g (+ wd p); m <- lerp(m, g, 1 - b1); v <- lerp(v, g^2, 1 - b2);
        p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps); AMSGrad divides by the largest v so far."""
        g = gradient(p, grad, a)  # wd is None when the decay is decoupled, so g does not read p below
        if a["decay"] is not None:
            p.mul_(a["decay"])  # decoupled weight decay (AdamW): p <- p (1 - lr wd)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.lerp_(g, a["w1"])
        v.lerp_(g.square(), a["w2"])
        if "max_exp_avg_sq" in state:
            v = state["max_exp_avg_sq"].copy_(torch.maximum(state["max_exp_avg_sq"], v))
        p.addcdiv_(m * a["step_size"], v.sqrt().div_(a["bc2_sqrt"]).add_(a["eps"]), value=-1)  # few temporaries


@register("optim", "adamw")
class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay."""

    torch_class = torch.optim.AdamW


@register("optim", "sgd")
class SGD(StackedOptimizer):
    """torch.optim.SGD, with momentum from the config."""

    torch_class = torch.optim.SGD
    member_keys = ("lr", "momentum", "dampening", "weight_decay")
    fused = True
    counts_steps = False

    @classmethod
    def paths(cls, s):
        return {"with_momentum": s["momentum"] != 0}  # torch keeps no buffer without it

    def state_names(self):
        return ["momentum_buffer"] if self.flags["momentum"] != 0 else []

    def constant_arguments(self):
        h, f = self.hyper, self.per_member
        return {"lr": f(h["lr"]), "momentum": f(h["momentum"]), "keep": f(1 - h["dampening"]),
                "wd": f(h["weight_decay"]) if self.nonzero["weight_decay"] else None,
                "nesterov": self.flags["nesterov"], "maximize": self.flags["maximize"]}

    def step_arguments(self):
        return {"first": self.t == 1}  # torch starts the momentum buffer at the first gradient

    @staticmethod
    def update(p, grad, state, a):
        """torch.optim.SGD: g (+ wd p); buf <- g on the first step, else momentum buf + (1 - dampening) g;
        g <- g + momentum buf (Nesterov) or buf; p -= lr g."""
        g = gradient(p, grad, a)
        if "momentum_buffer" in state:
            buf = state["momentum_buffer"]
            buf.copy_(torch.where(a["first"], g, buf * a["momentum"] + a["keep"] * g))
            g = g + a["momentum"] * buf if a["nesterov"] else buf
        p.sub_(a["lr"] * g)


@register("optim", "rmsprop")
class RMSprop(StackedOptimizer):
    """torch.optim.RMSprop (as in the original WGAN)."""

    torch_class = torch.optim.RMSprop
    member_keys = ("lr", "alpha", "eps", "weight_decay", "momentum")
    capturable = True

    @classmethod
    def paths(cls, s):
        return {"with_momentum": s["momentum"] > 0}

    def state_names(self):
        return (["square_avg"] + ["momentum_buffer"] * (self.flags["momentum"] > 0)
                + ["grad_avg"] * bool(self.flags["centered"]))

    def constant_arguments(self):
        h, f = self.hyper, self.per_member
        return {"lr": f(h["lr"]), "alpha": f(h["alpha"]), "eps": f(h["eps"]), "momentum": f(h["momentum"]),
                "wd": f(h["weight_decay"]) if self.nonzero["weight_decay"] else None, "maximize": self.flags["maximize"]}

    @staticmethod
    def update(p, grad, state, a):
        """torch.optim.RMSprop: g (+ wd p); s <- alpha s + (1 - alpha) g^2 (centred: less the squared mean
        gradient); p -= lr g / (sqrt(s) + eps), through a momentum buffer when momentum > 0."""
        g = gradient(p, grad, a)
        square_avg = state["square_avg"]
        square_avg.mul_(a["alpha"]).addcmul_(g, g * (1 - a["alpha"]))
        if "grad_avg" in state:
            state["grad_avg"].lerp_(g, 1 - a["alpha"])
            avg = (square_avg - state["grad_avg"].square()).sqrt() + a["eps"]
        else:
            avg = square_avg.sqrt() + a["eps"]
        if "momentum_buffer" in state:
            buf = state["momentum_buffer"].mul_(a["momentum"]).add_(g / avg)
            p.sub_(a["lr"] * buf)
        else:
            p.sub_(a["lr"] * g / avg)
