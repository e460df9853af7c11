"""Experiment trackers beside the console and metrics.csv (which are always written): logger=tensorboard."""
from pathlib import Path

from gantrain.errors import UserError


class NoTracker:
    """logger=csv: the console, train.log and metrics.csv only."""

    def scalars(self, values: dict[str, float], step: int) -> None:
        pass

    def image(self, tag: str, png: Path, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoard(NoTracker):
    """Scalars and sample grids as TensorBoard events in <run dir>/tensorboard (tensorboard --logdir outputs)."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, png: Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(png) as img:
            self.writer.add_image(tag, np.asarray(img.convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


def open_tracker(name: str, run_dir: Path) -> NoTracker:
    if name == "csv":
        return NoTracker()
    if name == "tensorboard":
        try:
            return TensorBoard(run_dir)
        except ImportError:
            raise UserError("logger=tensorboard needs the tensorboard package: pip install 'gantrain[sweep]'") from None
    raise UserError(f"unknown logger '{name}': valid names are csv, tensorboard (e.g. logger=tensorboard)")
