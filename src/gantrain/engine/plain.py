"""One member as plain modules and torch's own optimizers: a lone run's fast path (fused optimizers, the
CUDA graph with capturable ones), seen through the leading K = 1 axis the step expects. Its gradients live in
one flat buffer per network (ranks.GradientBuffer), all-reduced over the ranks of a run on several devices."""
import copy

import torch

from gantrain.components.networks import has_batch_statistics
from gantrain.ranks import ALONE, GradientBuffer, Ranks
from gantrain.outputs.checkpoint import load_weights


def views_of(params: list[torch.Tensor]):
    """(1, N) -> one view per parameter, shaped as it is (the parameters are contiguous)."""
    sizes = [p.numel() for p in params]

    def split(flat: torch.Tensor) -> list[torch.Tensor]:
        return [part.view_as(p) for part, p in zip(flat[0].split(sizes), params)]

    return split


class PlainMembers:
    """G and D modules of a single member; the same interface as StackedMembers with K = 1."""

    K = 1

    def __init__(self, G: torch.nn.Module, D: torch.nn.Module, opt_g, opt_d, ema_decay: float = 0.0,
                 skip_nonfinite: bool = False, ranks: Ranks = ALONE):
        self.G_net, self.D_net, self.opt_g, self.opt_d = G, D, opt_g, opt_d
        self.device = next(G.parameters()).device
        self.batch_statistics = has_batch_statistics(D)
        self.g_params, self.d_params = list(G.parameters()), list(D.parameters())
        self.G_ema = copy.deepcopy(G).requires_grad_(False) if ema_decay > 0 else None
        self.ema_decay, self.skip_nonfinite, self.ranks = ema_decay, skip_nonfinite, ranks
        self.skipped = torch.zeros(1, dtype=torch.long, device=self.device)
        self.grads = {id(params): GradientBuffer(params, views_of(params), 1, ranks) for params in (self.g_params, self.d_params)}
        self.stop = 0  # the signal this rank caught, which the next updates tell the others (ranks.py)

    def G(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.G_net(z[0], None if y is None else y[0]).unsqueeze(0)

    def D(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.D_net(x[0], None if y is None else y[0]).unsqueeze(0)

    def update_d(self, loss: torch.Tensor) -> None:
        self.update(self.opt_d, self.d_params, loss)

    def update_g(self, loss: torch.Tensor) -> None:
        self.update(self.opt_g, self.g_params, loss)

    def update(self, opt, params: list[torch.Tensor], loss: torch.Tensor) -> None:
        # gradients of these parameters only: in the G step D's weights get none, as if frozen. backward (not
        # autograd.grad) accumulates them into each parameter's .grad, a view in its own memory layout, which
        # torch's fused optimizers assume: a double backward (R1, GP) returns conv weight gradients transposed
        bad = self.grads[id(params)].backward(loss, params, self.skip_nonfinite, self.stop)
        if bad is not None and bool(bad.any()):  # one host sync per update (on_nan=skip only)
            self.skipped += 1
            return
        opt.step()

    def agreed_stop(self) -> int:
        """The stop signal any rank caught during this step (0: none), the same on every rank."""
        return self.grads[id(self.g_params)].agreed_stop()

    @torch.no_grad()
    def share(self) -> None:
        """Rank 0's weights and statistics on every rank (at the start: a fresh or resumed run starts the same)."""
        self.ranks.broadcast_([t for net in (self.G_net, self.D_net, self.G_ema) if net is not None
                               for t in net.state_dict().values()])

    @torch.no_grad()
    def average_batch_statistics(self) -> None:
        """Each rank's BatchNorm normalises over its own slice of the batch, and keeps its own running statistics:
        averaged before anything samples or saves them, so every rank's G is the same G."""
        for net in (self.G_net, self.D_net, self.G_ema):
            for name, b in net.named_buffers() if net is not None and not self.ranks.alone else ():
                if name.endswith(("running_mean", "running_var")):
                    self.ranks.mean_(b)

    @torch.no_grad()
    def update_ema(self) -> None:
        if self.G_ema is not None:  # ema <- decay * ema + (1 - decay) * G, buffers (BatchNorm statistics) copied
            torch._foreach_lerp_(list(self.G_ema.parameters()), self.g_params, 1 - self.ema_decay)
            for b_ema, b in zip(self.G_ema.buffers(), self.G_net.buffers()):
                b_ema.copy_(b)

    @torch.no_grad()
    def sample(self, z: torch.Tensor, y: torch.Tensor | None, members: list[int]) -> torch.Tensor:
        """G (its EMA if kept) in eval mode, BatchNorm on its running statistics: z (1, n, latent) -> (1, n, ...)."""
        G = self.G_ema or self.G_net
        was_training = G.training
        G.eval()
        try:
            return G(z[0].to(self.g_params[0].dtype), None if y is None else y[0]).unsqueeze(0)
        finally:
            G.train(was_training)

    def member_state(self, k: int = 0) -> dict:
        """The networks and optimizers as a checkpoint holds them (copies: a writer thread may save them)."""
        clone = lambda state: {n: t.detach().clone() for n, t in state.items()}
        return {"G": clone(self.G_net.state_dict()), "D": clone(self.D_net.state_dict()),
                "G_ema": None if self.G_ema is None else clone(self.G_ema.state_dict()),
                "opt_g": copy.deepcopy(self.opt_g.state_dict()), "opt_d": copy.deepcopy(self.opt_d.state_dict())}

    def load_member(self, k: int, ckpt: dict) -> None:
        for net, key in ((self.G_net, "G"), (self.D_net, "D"), (self.opt_g, "opt_g"), (self.opt_d, "opt_d")):
            load_weights(net, ckpt[key], ckpt["version"])
        if self.G_ema is not None:  # ema_decay switched on at resume: the average starts from G
            load_weights(self.G_ema, ckpt["G_ema"] if ckpt.get("G_ema") is not None else ckpt["G"], ckpt["version"])
