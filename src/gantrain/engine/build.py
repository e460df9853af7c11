"""Build what a stack trains from its members' configs: the networks (each from its member's seed), the loss,
the optimizers and the step. One member gets plain modules (plain.py), several get stacked parameters
(stacked.py); both run the same step (step.py)."""
from dataclasses import dataclass

import torch

from gantrain.data.prepared import image_size
from gantrain.data.tensors import TensorData
from gantrain.components.networks import has_batch_statistics
from gantrain.components.registry import lookup
from gantrain.config import bad_option, kwargs_of
from gantrain.engine.cuda_graph import graphed
from gantrain.engine.inputs import step_inputs
from gantrain.engine.plain import PlainMembers
from gantrain.ranks import ALONE, Ranks
from gantrain.engine.stacked import StackedMembers
from gantrain.engine.step import make_step
from gantrain.errors import UserError


def param_dtype(precision: str) -> torch.dtype:
    """The dtype of the weights, batches and noise: float64 for trainer.precision=fp64 (numerical checks: the
    same maths as fp32 from the same initial weights and draws, rounded ~1e9x less), else float32."""
    return torch.float64 if precision == "fp64" else torch.float32


def set_matmul_precision(precision: str) -> None:
    """trainer.precision=tf32: float32 matrix products on CUDA's TF32 tensor cores (inputs rounded to a 10-bit
    mantissa, fp32 sums), several times faster on Ampere and later; fp32 and bf16 keep them in full fp32."""
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"


def build_networks(cfg, data_shape, num_classes: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """G and D from the model registry, with sizes from the top level of the config."""
    builder = lookup("model", cfg.model.name)
    kwargs = kwargs_of(cfg.model)
    kwargs.pop("conditional", None)  # decided by the caller, who knows the data's classes
    kwargs.pop("seed_heads", None)  # needs the data: seed_heads() does it
    try:
        return builder(data_shape=tuple(data_shape), latent_size=cfg.latent_size, hidden_size=cfg.hidden_size,
                       num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise bad_option("model", cfg.model.name, e) from None


def check_model_takes_data(cfg) -> None:
    """A folder's image shape is known before it is prepared: a model that cannot take it is refused now, in one
    line, not after minutes of decoding (the networks are built on the meta device: shapes only)."""
    if cfg.data.name == "folder":
        with torch.device("meta"):
            build_networks(cfg, (cfg.data.channels, *image_size(cfg.data.image_size)))


def seed_heads(G: torch.nn.Module, cfg, data: TensorData) -> None:
    """model.seed_heads: G's heads start at data points (k-means++ seeding over 10,000 of them), from the seed."""
    if cfg.model.get("seed_heads", False):  # 2D data and heads > 1: check_train_config made sure
        G.heads.seed_(data.floats(torch.arange(min(len(data), 10_000))).cpu(), torch.Generator().manual_seed(cfg.seed))


def classes_of(cfg, data: TensorData) -> int:
    """How many classes a conditional model sees (0 when unconditional)."""
    if not cfg.model.get("conditional", False):
        return 0
    if data.y is None:
        raise UserError(f"model.conditional=true needs a labelled data set, and {cfg.data.name} has no labels")
    return int(data.y.max()) + 1


def member_networks(cfg, data: TensorData, num_classes: int, device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A member's G and D, initialised from its own seed exactly as its lone run initialises them (in
    float32 whatever the precision, then cast: an fp64 run starts from the fp32 run's weights)."""
    torch.manual_seed(cfg.seed)
    G, D = build_networks(cfg, data.shape, num_classes)
    seed_heads(G, cfg, data)
    dtype = param_dtype(cfg.trainer.precision)
    return G.to(device, dtype), D.to(device, dtype)


def per_member_kwargs(component, kwargs: list[dict], device, dtype: torch.dtype) -> dict:
    """One component's keyword arguments for a stack: its member_keys as (K,) tensors, the rest shared."""
    shared = dict(kwargs[0])
    for key in component.member_keys:
        if key in shared:
            shared[key] = torch.tensor([float(kw[key]) for kw in kwargs], dtype=dtype, device=device)
    return shared


def build_component(kind: str, cfgs: list, device) -> object:
    """A loss or an augmentation for the stack: its member keys as (K,) tensors when there are several."""
    component, name = lookup(kind, cfgs[0][kind].name), cfgs[0][kind].name
    kwargs = kwargs_of(cfgs[0][kind]) if len(cfgs) == 1 else per_member_kwargs(
        component, [kwargs_of(c[kind]) for c in cfgs], device, param_dtype(cfgs[0].trainer.precision))
    try:
        return component(**kwargs)
    except TypeError as e:
        raise bad_option(kind, name, e) from None


@dataclass
class Stack:
    """What trains: the members' networks and optimizers (plain.py or stacked.py), their loss and
    augmentation, the step over them, and what one step's inputs look like."""

    nets: PlainMembers | StackedMembers
    loss: object
    augment: object
    step: object  # step(inputs, r1=...) -> stats (K, 4): make_step, graphed on CUDA
    shapes: dict  # batch_size, latent_size, n_critic, num_classes, dtype
    ranks: Ranks = ALONE  # the processes this run spreads over (ranks.py)
    batch_norm: bool = False  # G or D normalises over the batch (on several devices: each rank over its slice)

    def inputs(self, data: TensorData, orders: torch.Tensor, i: int, gens: list[torch.Generator]) -> dict:
        """Step i of an epoch for every member: its data and its own random numbers, this rank's slice (inputs.py)."""
        part = None if self.ranks.alone else self.ranks.part(self.shapes["batch_size"])
        return step_inputs(data, orders, i, gens, loss=self.loss, augment=self.augment, part=part, **self.shapes)


def build_stack(configs: list, data: TensorData, num_classes: int, device: torch.device, ranks: Ranks = ALONE) -> Stack:
    """The members (plain for one, stacked for several), their loss, augmentation and step (graphed on CUDA,
    by one process: a step with collectives in it is not captured)."""
    cfg = configs[0]  # everything but member keys is the same in every member (plan.py)
    nets = [member_networks(c, data, num_classes, device) for c in configs]
    batch_norm = any(has_batch_statistics(net) for net in nets[0])
    check_ranks(cfg, ranks, batch_norm)
    if cfg.trainer.get("sync_batchnorm", False):
        nets = [sync_batchnorm(G, D, configs, device, ranks) for G, D in nets]
    optimizer = lookup("optim", cfg.optim.name)
    optim_kwargs = [kwargs_of(c.optim) for c in configs]
    skip, fast = cfg.on_nan == "skip", cfg.trainer.fast
    graph = cfg.trainer.cuda_graph and device.type == "cuda" and ranks.alone
    if len(configs) == 1:
        G, D = nets[0]
        graph = graph and not skip and optimizer.capturable  # skipping syncs with the host; the graph cannot
        opt_g, opt_d = (optimizer.build_torch(net.parameters(), optim_kwargs[0], fast, capturable=graph) for net in (G, D))
        members = PlainMembers(G, D, opt_g, opt_d, cfg.ema_decay, skip, ranks)
    else:
        members = StackedMembers([G for G, _ in nets], [D for _, D in nets], optimizer, optim_kwargs,
                                 [c.ema_decay for c in configs], skip, fast, ranks)
    loss, augment = build_component("loss", configs, device), build_component("augment", configs, device)
    step = make_step(members, loss, augment, n_critic=cfg.n_critic, joint_d_pass=fast, precision=cfg.trainer.precision)
    shapes = dict(batch_size=cfg.batch_size, latent_size=cfg.latent_size, n_critic=cfg.n_critic, num_classes=num_classes,
                  dtype=param_dtype(cfg.trainer.precision))
    return Stack(members, loss, augment, graphed(step) if graph else step, shapes, ranks, batch_norm)


def sync_batchnorm(G: torch.nn.Module, D: torch.nn.Module, configs: list, device: torch.device, ranks: Ranks):
    """trainer.sync_batchnorm=true: G's and D's BatchNorm normalise over the whole batch, every rank's slice
    (torch's SyncBatchNorm), where torch supports it: on CUDA, in a lone run (it does not run under vmap), and
    not where a penalty differentiates D twice through its BatchNorm (R1, WGAN-GP)."""
    cfg = configs[0]
    why = ("is for a run on several devices (trainer.devices, torchrun, srun): alone, BatchNorm sees the whole batch"
           if ranks.alone else
           "runs on CUDA only (torch's SyncBatchNorm); on the CPU each rank normalises over its own slice"
           if device.type != "cuda" else
           "runs in a lone run only (it does not run under torch.func's vmap, which trains a stack)" if len(configs) > 1 else
           "cannot take the double backward of R1 or WGAN-GP through D's BatchNorm" if has_batch_statistics(D) and (
               cfg.loss.name == "wgan_gp" or cfg.loss.get("r1_gamma", 0)) else None)
    if why:
        raise UserError(f"trainer.sync_batchnorm=true {why}; drop it")
    return (torch.nn.SyncBatchNorm.convert_sync_batchnorm(G, process_group=ranks.group),
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(D, process_group=ranks.group))


def check_ranks(cfg, ranks: Ranks, batch_norm: bool) -> None:
    """batch_size is the global batch: each of R ranks takes B / R of it, which must be whole, a multiple of
    model.pack, and at least 2 where BatchNorm normalises over each rank's slice."""
    if ranks.alone:
        return
    per_rank, left = divmod(cfg.batch_size, ranks.world)
    pack = cfg.model.get("pack", 1)
    if left or per_rank % pack or (batch_norm and per_rank < 2):
        need = ranks.world * max(pack, 2 if batch_norm else 1)
        why = ("BatchNorm needs at least 2 images a rank" if batch_norm and per_rank < 2 and not left else
               f"model.pack={pack} needs whole packs on each rank" if not left and per_rank % pack else
               "each rank takes an equal slice")
        raise UserError(f"batch_size={cfg.batch_size} is the global batch, split among {ranks.world} ranks, and {why}; "
                        f"use a multiple of {need}, e.g. batch_size={need * max(1, round(cfg.batch_size / need))}")
