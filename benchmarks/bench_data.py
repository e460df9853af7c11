"""Photos at the scale people train GANs on: preparing a folder once, starting from the prepared copy, and
serving batches (in memory, streamed), against pytorch/examples' dcgan pipeline (ImageFolder + DataLoader),
all in one run on a folder of N JPEGs of CelebA's shape (178x218) in 4 class sub-folders, made from the real
photographs that installed packages ship (random crops, flips and colour changes).

    python benchmarks/bench_data.py                          # 20,000 JPEGs, 64 and 128 px, 2 cores
    python benchmarks/bench_data.py --images 2000 --sizes 64 --steps 5
    python benchmarks/bench_data.py --device cuda            # on a GPU the data path is what matters

Prints: preparation rate at each size, and the DataLoader pipeline's epoch over the same folder; the time from
a second `gantrain train` command to its first step (the prepared copy found) with its peak RSS; batches served
per second with no networks; steps/s of a 64-px DCGAN fed each way (same networks, same batch).
"""
import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

CELEBA = (178, 218)  # width, height of CelebA's aligned images


def sources() -> list[Path]:
    import matplotlib
    import sklearn.datasets

    images = Path(sklearn.datasets.__file__).parent / "images"
    return [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg", images / "china.jpg",
            images / "flower.jpg"]


def make_jpegs(args: tuple[Path, int, int]) -> None:
    """JPEGs start..start+count-1 of the folder: a random crop of a photo at CelebA's aspect, flipped at random,
    colour and brightness changed, resized to 178x218; class sub-folder by index."""
    from PIL import Image, ImageEnhance, ImageOps

    root, start, count = args
    rng = np.random.default_rng(start)
    photos = [Image.open(p).convert("RGB") for p in sources()]
    for i in range(start, start + count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        ch = int(rng.integers(h // 4, h))
        cw = min(w, int(ch * CELEBA[0] / CELEBA[1]))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = photo.crop((x, y, x + cw, y + ch)).resize(CELEBA, Image.BICUBIC)
        if rng.random() < 0.5:
            img = ImageOps.mirror(img)
        img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.5, 1.5)))
        img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.7, 1.3)))
        folder = root / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i:06d}.jpg", quality=90)


def make_folder(root: Path, n: int) -> None:
    chunks = [(root, s, min(500, n - s)) for s in range(0, n, 500)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(make_jpegs, chunks))


def dataloader(root: Path, size: int, batch: int, workers: int = 2):
    """pytorch/examples' dcgan data pipeline."""
    import torchvision.datasets as dset
    import torchvision.transforms as transforms
    from torch.utils.data import DataLoader

    dataset = dset.ImageFolder(root=str(root), transform=transforms.Compose([
        transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]))
    return DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                      persistent_workers=workers > 0)


def first_step(root: Path, size: int, batch: int, cache: Path, work: Path) -> tuple[float, float]:
    """Seconds from a `gantrain train data=folder` command to its first step's log line, and the process's peak
    RSS (GiB) up to then."""
    command = [sys.executable, "-m", "gantrain", "train", "data=folder", f"data.root={root}", f"data.image_size={size}",
               "model=dcgan", f"batch_size={batch}", "log_every=1", "eval.enabled=false", "device=cpu",
               f"hydra.run.dir={work}"]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "GANTRAIN_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"})
    seconds, lines = None, []
    for line in proc.stdout:
        lines.append(line)
        if "Epoch[1/" in line:
            seconds = time.perf_counter() - start
            break
    proc.kill()
    proc.wait()
    if seconds is None:
        raise SystemExit("gantrain train did not reach its first step: " + "".join(lines[-3:]))
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20


def forever(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def rate(fn, n: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(n):
        out = fn()
    out.flatten()[0].item()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50, help="timed DCGAN steps per feeding")
    parser.add_argument("--batches", type=int, default=200, help="timed batches per way of serving them")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keep", help="make (or reuse) the JPEG folder here instead of a temp dir")
    args = parser.parse_args()

    import torch

    from gantrain.data.prepared import prepare_folder
    from gantrain.components.data import folder as folder_data

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = Path(args.keep) if args.keep else tmp / "photos"
        if not (root / "class0").is_dir():
            start = time.perf_counter()
            make_folder(root, args.images)
            print(f"made {args.images} JPEGs of {CELEBA[0]}x{CELEBA[1]} in {time.perf_counter() - start:.0f} s")
        print(f"{args.images} JPEGs, {os.cpu_count()} cores, torch {torch.__version__}, device {device}")
        for size in args.sizes:
            os.environ["GANTRAIN_CACHE_DIR"] = str(tmp / f"cache{size}")
            start = time.perf_counter()
            images, _, classes = prepare_folder(str(root), size, 3)
            seconds = time.perf_counter() - start
            print(f"prepare at {size:>3} px : {args.images / seconds:8.0f} images/s ({seconds:.1f} s, "
                  f"{images.nbytes / 2**30:.2f} GiB uint8, {len(classes)} classes)")
            loader = dataloader(root, size, args.batch_size)
            start, seen = time.perf_counter(), 0
            for x, _ in loader:
                seen += len(x)
            seconds = time.perf_counter() - start
            print(f"DataLoader epoch {size:>3} px: {seen / seconds:8.0f} images/s ({seconds:.1f} s; ImageFolder, 2 workers)")
        size = args.sizes[0]
        cache = tmp / f"cache{size}"
        seconds, rss = first_step(root, size, args.batch_size, cache, tmp / "run")
        uint8 = args.images * 3 * size * size / 2**30
        print(f"second run to its first step: {seconds:.1f} s; peak RSS {rss:.2f} GiB (the uint8 set is {uint8:.2f} GiB)")

        os.environ["GANTRAIN_CACHE_DIR"] = str(cache)
        ways = {"in memory": folder_data(str(root), size, 3, in_memory="true").to(device),
                "streamed": folder_data(str(root), size, 3, in_memory="false").streamed_to(device)}
        B, gen = args.batch_size, torch.Generator(device).manual_seed(0)
        served = {name: rate(lambda d=d: d.floats(torch.randint(len(d), (B,), generator=gen, device=device)), args.batches)
                  for name, d in ways.items()}
        batches = forever(dataloader(root, size, B))
        next_batch = lambda: next(batches)[0].to(device)
        served["DataLoader"] = rate(next_batch, args.batches)
        for name, r in served.items():
            print(f"batches served, {name:<10}: {r:8.1f}/s ({r * B:.0f} images/s)")
        print(f"ratios: in memory / DataLoader {served['in memory'] / served['DataLoader']:.1f}x, "
              f"streamed / DataLoader {served['streamed'] / served['DataLoader']:.1f}x")
        steps = dcgan_rates(ways, next_batch, size, B, device, args.steps)
        for name, r in steps.items():
            print(f"DCGAN {size} px fed {name:<10}: {r:6.2f} steps/s")
        print(f"streamed / in memory: {steps['streamed'] / steps['in memory']:.2f}x")


def dcgan_rates(ways: dict, next_batch, size: int, B: int, device, steps: int) -> dict:
    """Steps/s of gantrain's 64-px DCGAN step on batches from each way of serving them (the same networks)."""
    import torch
    from hydra import compose, initialize_config_module

    from gantrain.engine.build import build_stack
    from gantrain.engine.inputs import epoch_order

    with initialize_config_module("gantrain.conf", version_base=None):
        cfg = compose("train", overrides=["model=dcgan", f"batch_size={B}", f"device={device}", "latent_size=100",
                                          "hidden_size=64"])
    out = {}
    for name, data in [*ways.items(), ("DataLoader", None)]:
        stack = build_stack([cfg], ways["in memory"], 0, device)
        gen = torch.Generator(device).manual_seed(0)
        if data is None:  # the DataLoader's batch in place of the step's own real batch
            one = lambda: stack.step({**stack.inputs(ways["in memory"], orders, 0, [gen]), "real": next_batch()[None, None]})
        else:
            one = lambda data=data: stack.step(stack.inputs(data, orders, 0, [gen]))
        orders = epoch_order(len(ways["in memory"]), gen).unsqueeze(0)
        out[name] = rate(one, steps)
    return out


if __name__ == "__main__":
    main()
