"""One member as plain modules and torch's own optimizers: a lone run's fast path (fused optimizers, the
CUDA graph with capturable ones), seen through the leading K = 1 axis the step expects."""
import copy

import torch

from gantrain.components.networks import has_batch_statistics
from gantrain.outputs.checkpoint import load_weights


class PlainMembers:
    """G and D modules of a single member; the same interface as StackedMembers with K = 1."""

    K = 1

    def __init__(self, G: torch.nn.Module, D: torch.nn.Module, opt_g, opt_d, ema_decay: float = 0.0,
                 skip_nonfinite: bool = False):
        self.G_net, self.D_net, self.opt_g, self.opt_d = G, D, opt_g, opt_d
        self.device = next(G.parameters()).device
        self.batch_statistics = has_batch_statistics(D)
        self.g_params, self.d_params = list(G.parameters()), list(D.parameters())
        self.G_ema = copy.deepcopy(G).requires_grad_(False) if ema_decay > 0 else None
        self.ema_decay, self.skip_nonfinite = ema_decay, skip_nonfinite
        self.skipped = torch.zeros(1, dtype=torch.long, device=self.device)

    def G(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.G_net(z[0], None if y is None else y[0]).unsqueeze(0)

    def D(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.D_net(x[0], None if y is None else y[0]).unsqueeze(0)

    def update_d(self, loss: torch.Tensor) -> None:
        self.update(self.opt_d, self.d_params, loss)

    def update_g(self, loss: torch.Tensor) -> None:
        self.update(self.opt_g, self.g_params, loss)

    def update(self, opt, params: list[torch.Tensor], loss: torch.Tensor) -> None:
        if self.skip_nonfinite and not torch.isfinite(loss).all():  # one host sync per update (on_nan=skip only)
            self.skipped += 1
            return
        # gradients of these parameters only: in the G step D's weights get none, as if frozen. backward (not
        # autograd.grad) stores them in each parameter's own memory layout, which torch's fused optimizers
        # assume: a double backward (R1, GP) returns conv weight gradients transposed
        opt.zero_grad(set_to_none=True)
        loss.sum().backward(inputs=params)
        opt.step()

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
