"""A data set as training sees it: one tensor of examples (images as uint8 pixels) whose batches are index
slices, served as floats on the device from memory or streamed from a memory-mapped prepared copy. The loop
and the step ask for batches (floats) and never know which."""
from dataclasses import dataclass, replace

import numpy as np
import torch


@dataclass
class TensorData:
    """A whole data set: x (N, C, H, W) uint8 pixels, or (N, 2) float points; y (N,) int64 labels or None;
    the class names behind the labels, when known. Batches come from floats(): on the device, images in
    [-1, 1]. In memory, x lives on the device (4x less of it as uint8 than as floats); streamed, x stays in
    the host's memory-mapped prepared copy and each batch is gathered there and copied over."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    classes: list[str] | None = None
    split: str = "train"  # which of its source's images these are (evaluations say what they compared with)
    in_memory: str = "true"  # what the reader was asked (data.in_memory): auto | true | false
    streamed: bool = False
    mapped: bool = False  # x is a memory-mapped file (a prepared copy)
    device: torch.device | None = None  # where batches go (x's own device unless streamed)

    def __post_init__(self):
        self.device = self.x.device if self.device is None else torch.device(self.device)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. (1, 28, 28)."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return self.x.shape[0]

    def floats(self, idx: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The examples x[idx] (all of them without idx) as floats on the device: uint8 pixels become
        x / 127.5 - 1, as ToTensor + Normalize(0.5, 0.5) make them."""
        x = self.x if idx is None else self.x[idx.to(self.x.device)]  # streamed: gathered on the host
        if self.streamed and self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        x = x.to(self.device)
        return x.to(dtype).div_(127.5).sub_(1.0) if x.dtype == torch.uint8 else x.to(dtype)

    def to(self, device) -> "TensorData":
        """The whole set in `device`'s memory. On the CPU a memory-mapped copy stays mapped: once read, its pages
        are that memory, and a second copy would double it."""
        x = self.x.to(device)
        return replace(self, x=x, y=None if self.y is None else self.y.to(device), streamed=False,
                       mapped=self.mapped and x.data_ptr() == self.x.data_ptr(), device=device)

    def streamed_to(self, device) -> "TensorData":
        """Batches for `device` gathered from the host's copy of x (labels go to the device: they are small)."""
        return replace(self, y=None if self.y is None else self.y.to(device), streamed=True, device=device)


def from_uint8(images: np.ndarray | torch.Tensor, labels=None, **kwargs) -> TensorData:
    """uint8 pixels (N, H, W) or (N, C, H, W) in 0..255 -> TensorData (copied: IDX buffers are read-only;
    a memory-mapped array stays mapped)."""
    mapped = isinstance(images, np.memmap)
    x = torch.from_numpy(images) if mapped else torch.tensor(np.asarray(images))
    if x.dim() == 3:
        x = x.unsqueeze(1)
    y = None if labels is None else torch.tensor(np.asarray(labels)).long()
    return TensorData(x, y, mapped=mapped, **kwargs)
