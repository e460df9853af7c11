"""gantrain stats: the mean and covariance of a data set's features, written in pytorch-fid's npz layout (mu,
sigma) with the protocol they were measured under, so that FIDs against them (gantrain eval ref=, pytorch-fid,
clean-fid) say what they compared with."""
import logging

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from gantrain.components.data import load_data
from gantrain.config import check_features, is_int, kwargs_of, pick_device, user_path
from gantrain.errors import UserError
from gantrain.evaluation.evaluate import CHUNK, feature_space, fixed_order
from gantrain.evaluation.cards import network_card, real_card
from gantrain.evaluation.protocol import describe
from gantrain.evaluation.stats_files import write_stats
from gantrain.processes import console_logging

log = logging.getLogger("gantrain")


def stats_command(cfg) -> None:
    console_logging()
    if OmegaConf.is_missing(cfg, "out") or not cfg.out:
        raise UserError("out is required: the .npz to write, e.g. gantrain stats data=mnist_sample out=mnist_sample.npz")
    out = user_path(cfg.out)
    if out.exists():
        raise UserError(f"{out} exists, and gantrain stats never overwrites a file; pass another out= or remove it")
    if cfg.n != "all" and (not is_int(cfg.n) or cfg.n < 2):
        raise UserError(f"n must be all or an integer >= 2, got {cfg.n!r}; e.g. n=10000")
    check_features(cfg, "", cfg.data.name in ("ring8", "grid25"))
    data = load_data(cfg.data.name, **kwargs_of(cfg.data, paths=("root",))).to(pick_device(cfg.device))
    if data.x.dim() != 4:
        raise UserError(f"data={cfg.data.name} holds 2D points; statistics files are for image features")
    n = len(data) if cfg.n == "all" else min(cfg.n, len(data))
    idx = fixed_order(data)[:n]  # eval's real side at n
    net, _, space = feature_space(data, cfg.features, cfg.inception_weights)
    with torch.no_grad():
        feats = torch.cat([net(data.floats(chunk)) for chunk in tqdm(idx.split(CHUNK), desc=f"{space} features",
                                                                      unit="chunk", disable=None)])
    card = network_card(net, space) | real_card(cfg.data.name, data, n)
    write_stats(out, feats, card)
    log.info(f"wrote {out}: mu {tuple(feats.shape[1:])} and sigma {(feats.shape[1],) * 2} of {n} images; "
             f"pytorch-fid reads it, gantrain eval ref={out} compares with it")
    log.info(f"protocol: {describe(card)}")
