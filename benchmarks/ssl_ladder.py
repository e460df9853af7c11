"""The sanity ladder of the self-supervised features (what unlabelled data gets) on a folder of real images.

    cd tests && python -c "from pathlib import Path; from conftest import write_photo_folder as w; w(Path('/tmp/photos300'), 300)"
    python benchmarks/ssl_ladder.py --root /tmp/photos300 --sizes 32 64 --steps 100 200 400

For each image size and number of contrastive training steps: trains the encoder exactly as `data=folder`
runs get it (evaluation/contrastive.py, on the training split), then compares the second half of the folder
with the first half through it: FD for the real split, lightly noised (+0.1 std), blurred (5x5, sigma 1.5
at 32x32, scaled with the size), collapsed (one image repeated) and uniform noise, which must come out in
that order, and recall of the real split and the collapsed set. Prints the training time and whether the
ladder holds.
"""
import argparse
import time

import torch
from torchvision.transforms.functional import gaussian_blur

from gantrain.components.data import load_data
from gantrain.evaluation import contrastive, metrics
from gantrain.evaluation.evaluate import features
from gantrain.evaluation.features import split


RUNGS = ["real split", "lightly noised", "blurred", "collapsed", "uniform noise"]


def ladder(x: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    scale = x.shape[-1] / 32  # the same blur relative to the image at every size: 5x5, sigma 1.5 at 32x32
    rungs = [x, (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1),
             gaussian_blur(x, int(5 * scale) | 1, 1.5 * scale),
             x[:1].expand_as(x), torch.rand(x.shape, generator=g) * 2 - 1]
    return dict(zip(RUNGS, rungs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="a folder of images (data=folder's data.root)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32])
    parser.add_argument("--steps", type=int, nargs="+", default=[contrastive.STEPS])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| size | steps | training | view matching | FD: " + " < ".join(RUNGS)
          + " | recall real / collapsed | order |")
    print("|---" * 7 + "|")
    for size in args.sizes:
        data = load_data("folder", root=args.root, image_size=size, channels=3)
        train_idx, held_idx = split(len(data))
        half = len(data) // 2
        for steps in args.steps:
            start = time.perf_counter()
            net, score = contrastive.train_contrastive(data.floats(train_idx), data.floats(held_idx), steps)
            seconds = time.perf_counter() - start
            with torch.no_grad():
                reference = metrics.real_reference(features(net, data.floats(torch.arange(half))))
                results = {name: metrics.image_metrics(reference, features(net, x), None, 0)
                           for name, x in ladder(data.floats(torch.arange(half, len(data)))).items()}
            fds = [r["fd"]["value"] for r in results.values()]
            recall = [results[name]["recall"]["value"] for name in ("real split", "collapsed")]
            print(f"| {size} | {steps} | {seconds:.1f} s | {score:.2f} | " + " / ".join(f"{v:.2f}" for v in fds)
                  + f" | {recall[0]:.2f} / {recall[1]:.2f} | {'holds' if fds == sorted(fds) else 'BROKEN'} |",
                  flush=True)


if __name__ == "__main__":
    main()
