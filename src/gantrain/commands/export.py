"""gantrain export: a checkpoint's generator as one file that runs with plain torch (or onnxruntime), no
gantrain needed: TorchScript (torch.jit.save; load with torch.jit.load), torch.export (.pt2; torch.export.load)
or ONNX (torch's dynamo exporter; onnxruntime). The file holds G (its moving average when the run kept one) in
eval mode, takes z (batch, latent_size) float32, and y (batch,) int64 classes for a conditional G, with the
batch dimension free, and returns images in [-1, 1]. What it takes and makes travels inside it as JSON under
"gantrain.json" (TorchScript's and torch.export's extra files, ONNX's metadata_props). No jit.freeze or
optimize_for_inference: they fold BatchNorm into the convolutions and change the numbers.

Every file is loaded back once it is written and must give G's own output on a batch of another size, or it
is removed and refused in one line naming a format that works.
"""
import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from gantrain.config import user_path
from gantrain.engine.generator import Generator, generator_from_checkpoint
from gantrain.errors import UserError, naming
from gantrain.outputs.checkpoint import load_checkpoint
from gantrain.version import __version__

log = logging.getLogger("gantrain")
FORMATS = {"torchscript": ".pt", "exported": ".pt2", "onnx": ".onnx"}
META = "gantrain.json"


class Unconditional(nn.Module):
    """What an exported file runs: z -> images."""

    def __init__(self, G: Generator):
        super().__init__()
        self.net = G.net

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z, None)


class Conditional(Unconditional):
    """z, y -> images, for a conditional G (its own signature: y is required)."""

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(z, y)


def metadata(G: Generator, ckpt: dict, path: Path, fmt: str) -> dict:
    return {"gantrain_version": __version__, "format": fmt, "latent_size": G.latent_size,
            "num_classes": G.num_classes, "class_names": G.class_names, "image_shape": list(G.image_shape),
            "value_range": [-1, 1] if len(G.image_shape) == 3 else None, "ema": G.ema,
            "inputs": ["z: (batch, latent_size) float32"] + (["y: (batch,) int64 class index"] if G.num_classes else []),
            "checkpoint": str(path), "epoch": ckpt["epoch"], "step": ckpt["step"]}


def example(G: Generator, n: int, seed: int) -> tuple[torch.Tensor, ...]:
    z = G.latents(n, seed).to(G.device)
    return (z, (torch.arange(n) % G.num_classes).to(G.device)) if G.num_classes else (z,)


def write_torchscript(module: nn.Module, inputs: tuple, out: Path, meta: str) -> None:
    with warnings.catch_warnings():  # torch calls TorchScript deprecated; it is still what most torch users load
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.trace(module, inputs), str(out), _extra_files={META: meta})


def load_torchscript(out: Path) -> tuple:
    extra = {META: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(out), _extra_files=extra), json.loads(extra[META])


def dynamic(inputs: tuple) -> dict:
    """The batch dimension of every input, free (and the same for z and y)."""
    batch = torch.export.Dim("batch", min=1)
    return {name: {0: batch} for name, _ in zip(("z", "y"), inputs)}


def write_exported(module: nn.Module, inputs: tuple, out: Path, meta: str) -> None:
    program = torch.export.export(module, inputs, dynamic_shapes=dynamic(inputs))
    with open(out, "wb") as f:  # a file object: torch.export takes any name then (its own wants .pt2)
        torch.export.save(program, f, extra_files={META: meta})


def load_exported(out: Path) -> tuple:
    extra = {META: ""}
    with open(out, "rb") as f:
        return torch.export.load(f, extra_files=extra).module(), json.loads(extra[META])


def write_onnx(module: nn.Module, inputs: tuple, out: Path, meta: str) -> None:
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's dynamo exporter needs it)
    except ImportError:
        raise UserError("format=onnx needs onnx and onnxscript (and onnxruntime to run it): pip install 'gantrain[onnx]'") from None
    chatty = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [logger.level for logger in chatty]
    try:  # the exporter and its optimizer report their progress: print()s and INFO lines
        for logger in chatty:
            logger.setLevel(logging.WARNING)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name: batch will not be used")  # z's and y's: one batch
            torch.onnx.export(module, inputs, str(out), dynamo=True, dynamic_shapes=dynamic(inputs),
                              input_names=["z", "y"][:len(inputs)], output_names=["images"])
    finally:
        for logger, level in zip(chatty, levels):
            logger.setLevel(level)
    model = onnx.load(str(out))
    model.metadata_props.add(key=META, value=meta)
    onnx.save(model, str(out))


def load_onnx(out: Path) -> tuple:
    import onnx
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    run = lambda *inputs: torch.from_numpy(session.run(None, {i.name: x.cpu().numpy() for i, x in
                                                              zip(session.get_inputs(), inputs)})[0])
    props = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    return run, json.loads(props[META])


WRITERS = {"torchscript": (write_torchscript, load_torchscript), "exported": (write_exported, load_exported),
           "onnx": (write_onnx, load_onnx)}
ONNX_TOLERANCE = 1e-4  # onnxruntime's kernels round differently: the largest difference allowed, of images in [-1, 1]


def export_generator(G: Generator, ckpt: dict, ckpt_path: Path, fmt: str, out: Path) -> dict:
    """Write G in `fmt` to `out`, load it back, check it against G; returns its metadata."""
    write, load = WRITERS[fmt]
    module = (Conditional(G) if G.num_classes else Unconditional(G)).eval()
    meta = metadata(G, ckpt, ckpt_path, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with naming(out), torch.no_grad():
            write(module, example(G, 2, 0), out, json.dumps(meta))
        loaded, saved = load(out)
        check = example(G, 5, 1)  # another batch size than the one exported
        with torch.no_grad():
            gap = float((loaded(*check).float().cpu() - module(*check).float().cpu()).abs().max())
    except (UserError, OSError):
        out.unlink(missing_ok=True)
        raise
    except Exception as e:  # noqa: BLE001  (an exporter that cannot take this network fails in many ways)
        out.unlink(missing_ok=True)
        works = [f for f in FORMATS if f != fmt and f != "onnx"]
        raise UserError(f"format={fmt} cannot take this generator ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                        f"use format={works[0]}") from None
    if gap > (ONNX_TOLERANCE if fmt == "onnx" else 0.0) or saved != meta:
        out.unlink(missing_ok=True)
        raise UserError(f"format={fmt} wrote a file whose output differs from the generator's by {gap:.3g}; nothing "
                        f"was kept; use format={'torchscript' if fmt != 'torchscript' else 'exported'}")
    return meta


def check_export_config(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.ckpt:
        raise UserError("ckpt is required: pass the checkpoint, e.g. gantrain export ckpt=outputs/train/<date>/<time>/checkpoints/last.pt")
    if cfg.format not in FORMATS:
        raise UserError(f"format must be one of {', '.join(FORMATS)}, got {cfg.format!r}; e.g. format=torchscript")
    if str(cfg.ema) not in ("auto", "True", "False"):
        raise UserError(f"ema must be auto, true or false, got {cfg.ema!r}; e.g. ema=auto")


def export_command(cfg: DictConfig, run_dir: Path) -> Path:
    check_export_config(cfg)
    ckpt_path = user_path(cfg.ckpt)
    out = user_path(cfg.out) if cfg.out else run_dir / f"generator{FORMATS[cfg.format]}"
    if out.exists() and not cfg.overwrite:
        raise UserError(f"{out} already exists; pass overwrite=true or another out=FILE")
    ckpt = load_checkpoint(ckpt_path)
    G, _ = generator_from_checkpoint(ckpt, ckpt_path, cfg.ema, torch.device("cpu"))  # exported from the CPU
    meta = export_generator(G, ckpt, ckpt_path, cfg.format, out)
    log.info(f"wrote {out}: the generator of {ckpt_path} (epoch {meta['epoch']}, {'EMA' if G.ema else 'G'}), "
             f"z ({meta['latent_size']})" + (f" and y ({G.num_classes} classes)" if G.num_classes else "")
             + f" -> {'x'.join(map(str, G.image_shape))} in [-1, 1]; metadata in {META}")
    return out
