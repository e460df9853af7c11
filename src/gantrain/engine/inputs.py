"""A step's inputs for K members: each member's data order and random numbers come from its own generator,
in the same order whatever the stack, so a member's batches are those of its lone run.

The data set lives on the device as one tensor (data.py); an epoch is a fresh permutation per member and
a step's real batch is an index slice of it. An epoch has N // (batch_size * n_critic) steps: a last
partial batch is dropped (as DataLoader(drop_last=True)), and the dropped examples differ every epoch.
"""
import torch

from gantrain.data.tensors import TensorData
from gantrain.ranks import BATCH_AXIS


def epoch_order(n: int, gen: torch.Generator) -> torch.Tensor:
    """A fresh permutation of the data set's n examples for one epoch (on the generator's device)."""
    return torch.randperm(n, generator=gen, device=gen.device)


def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """(K, ...) from K tensors; a view for one (a lone run pays no copy)."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def member_draws(gen: torch.Generator, batch_size: int, latent_size: int, n_critic: int, num_classes: int,
                 loss, augment) -> dict[str, torch.Tensor]:
    """One member's random numbers for one step: noise z (n_critic + 1, B, latent) for the n_critic D updates
    and the G update, fake labels drawn uniformly for a conditional GAN, what the loss draws, and what the
    augmentation draws."""
    draws = {"z": torch.randn(n_critic + 1, batch_size, latent_size, generator=gen, device=gen.device)}
    if num_classes:
        draws["y_fake"] = torch.randint(num_classes, (n_critic + 1, batch_size), generator=gen, device=gen.device)
    return draws | loss.draw(n_critic, batch_size, gen) | augment.draw(n_critic, batch_size, gen)


def step_inputs(data: TensorData, orders: torch.Tensor, i: int, gens: list[torch.Generator], *, batch_size: int,
                latent_size: int, n_critic: int, num_classes: int, loss, augment,
                dtype: torch.dtype = torch.float32, part: slice | None = None) -> dict[str, torch.Tensor]:
    """Step i of an epoch for every member: real (K, n_critic, B, ...) from each member's order (K, N), with
    labels y_real for a conditional GAN, and each member's draws stacked along K (see step.py). Floats come
    in the networks' dtype; draws are made in float32 whatever it is, so an fp64 run sees the fp32 run's.

    part: this rank's rows of the batch, on several devices (ranks.py): the whole step's numbers are drawn
    (the generators advance as in a lone run) and every input keeps its slice along BATCH_AXIS; only that
    slice of the real images is gathered."""
    per_step = batch_size * n_critic
    idx = orders[:, i * per_step:(i + 1) * per_step].view(len(orders), n_critic, batch_size)
    draws = [member_draws(gen, batch_size, latent_size, n_critic, num_classes, loss, augment) for gen in gens]
    draws = {name: stack([d[name] for d in draws]) for name in draws[0]}
    if part is not None:
        assert all(d.shape[BATCH_AXIS] == batch_size for d in (idx, *draws.values())), "a draw without its batch there"
        idx, draws = idx[:, :, part], {name: d[:, :, part] for name, d in draws.items()}
    inputs = {"real": data.floats(idx, dtype)}
    if num_classes:
        inputs["y_real"] = data.y[idx]
    return inputs | {name: d.to(dtype) if d.is_floating_point() else d for name, d in draws.items()}


def fixed_latents(cfg, data: TensorData) -> torch.Tensor:
    """The fixed latent batch behind samples/epoch_NNNN.png: 64 images or 2,500 points, drawn on the CPU
    from the seed (the same on any device)."""
    n = 2500 if data.x.dim() == 2 else 64
    return torch.randn(n, cfg.latent_size, generator=torch.Generator().manual_seed(cfg.seed))
