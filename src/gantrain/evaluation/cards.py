"""The protocol card of an image metric (read by protocol.py): the feature network behind it (implementation,
weights' sha256, resize) and the real images it compared with."""
import torchmetrics

from gantrain.data.tensors import TensorData
from gantrain.evaluation.features import VERSION, content_hash
from gantrain.evaluation.inception import RESIZE, implementation
from gantrain.evaluation.inception_weights import fingerprint
from gantrain.version import __version__

SUBSET = "the first n of one fixed shuffle (seed 0): the same for every run and checkpoint"


def network_card(net, space: str, with_output: bool = False) -> dict:
    """The network behind a metric: Inception (torch-fidelity's port; with_output: the weights the Inception
    Score's logits add), or the classifier / encoder gantrain trained on the data. The metrics on its features
    are computed by gantrain (FID and KID through torchmetrics, the Inception Score through torch-fidelity)."""
    computed = f"gantrain {__version__}, torchmetrics {torchmetrics.__version__}"
    if space == "inception":
        w = net.weights
        return {"features": space, "implementation": implementation(), "computed_by": computed,
                "weights": ("FID Inception 2015-12-05" if w.recognised else "unrecognised") + f", from {w.path.name} ({w.source})",
                "weights_sha256": w.sha256 if with_output else w.features_sha256, "resize": RESIZE}
    if "_sha256" not in net.__dict__:
        state = net.state_dict()
        net.__dict__["_sha256"] = fingerprint(state, list(state))
    return {"features": space, "implementation": f"gantrain {__version__} {space} network (v{VERSION}, trained on the data)", "computed_by": computed,
            "weights_sha256": net.__dict__["_sha256"], "resize": "none: the data set's own size"}


def real_card(data_name: str, data: TensorData, n: int) -> dict:
    """The real images a metric compared with."""
    return {"real": {"data": data_name, "split": data.split, "images": len(data), "content_hash": content_hash(data),
                     "used": n, "chosen": SUBSET}}
