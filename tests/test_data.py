import numpy as np
import pytest
import torch

from conftest import tiny_images, write_idx, write_mnist
from gantrain.components.data import load_data, read_idx
from gantrain.errors import UserError


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_loader_reads_idx_files(tmp_path, gz):
    write_mnist(tmp_path, n=30, gz=gz)
    images, labels = tiny_images(30)
    data = load_data("mnist", root=str(tmp_path))
    assert data.x.shape == (30, 1, 28, 28) and data.x.dtype == torch.uint8  # held as pixels: 4x less than floats
    assert torch.equal(data.x, torch.from_numpy(images).unsqueeze(1))
    x = data.floats()  # what a batch becomes: 0 -> -1, 255 -> 1, as Normalize(0.5, 0.5)
    assert x.min() == -1.0 and x.max() == 1.0 and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(images).float().div(127.5).sub(1).unsqueeze(1))
    assert torch.equal(data.floats(torch.tensor([3, 1])), x[[3, 1]])
    assert torch.equal(data.y, torch.from_numpy(labels).long())


def test_mnist_sample_is_the_bundled_5000_images():
    data = load_data("mnist_sample")
    assert data.x.shape == (5000, 1, 28, 28)
    assert -1.0 <= data.floats().min() < -0.99 and 0.99 < data.floats().max() <= 1.0
    assert sorted(data.y.unique().tolist()) == list(range(10))


def test_missing_mnist_names_the_path_and_the_fallback(tmp_path):
    with pytest.raises(UserError) as e:
        load_data("mnist", root=str(tmp_path))
    message = str(e.value)
    assert str(tmp_path / "MNIST" / "raw") in message and "train-images-idx3-ubyte" in message
    assert "data=mnist_sample" in message


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((10, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated or corrupt"):
        read_idx(path)


def test_non_idx_file_is_a_clear_error(tmp_path):
    path = tmp_path / "x"
    path.write_text("this is not an IDX file")
    with pytest.raises(UserError, match="not an IDX file"):
        read_idx(path)


def test_corrupt_gzip_is_a_clear_error(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(UserError, match="cannot read"):
        read_idx(path)
