"""cvae-sohn sample: complete your own 28x28 digit with a trained run's NN baseline and CVAE.

    cvae-sohn sample runs/default --image digit.png --quadrants 2          # writes digit_completed_q2.png
    cvae-sohn sample runs/default --image scan.jpg --quadrants 1 -n 20 --invert --out scan_grid.png

The image is read as grayscale in [0, 1] (MNIST's digits are white on black: --invert turns dark ink on a light
background into that). Of its four 14x14 quadrants the model keeps the K inputs of the setting (1: bottom-left,
2: left half, 3: all but bottom-right) and completes the rest. One PNG is written: the input as the model sees it
(the quadrants it does not see gray), the NN baseline's completion and n CVAE completions (the means of p(y|x,z)
for z ~ p(z|x)), drawn as in the run's samples_q{K}.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

import numpy
import torch

from cvae.paper import cli, figures
from cvae.paper.cli import UserError
from cvae.paper.models import CVAE, BaselineNet
from cvae.paper.quadrants import IMAGE_SIDE, NUM_PIXELS, QuadrantTask

RESIZE_HINT = 'Image.open(f).convert("L").resize((28, 28))'


class Completion(NamedTuple):
    """One image completed, each (28, 28) on the CPU: input is the image as the model sees it (its K input
    quadrants, -1 on the others); nn the image completed by the NN baseline; cvae (n, 28, 28) by n CVAE samples.
    All keep the input quadrants' pixels as they were."""

    input: torch.Tensor
    nn: torch.Tensor
    cvae: torch.Tensor


def build_parser() -> argparse.ArgumentParser:
    """The arguments of cvae-sohn sample."""
    parser = argparse.ArgumentParser(prog="cvae-sohn sample", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run: the directory train.py --out wrote")
    parser.add_argument("--image", required=True, metavar="FILE",
                        help="a 28x28 image of a digit (PNG, JPEG or another format PIL reads)")
    parser.add_argument("--quadrants", required=True, type=cli.quadrants, metavar="K",
                        help="the setting: how many quadrants of the image the model sees (1, 2 or 3; one the run "
                             "trained)")
    parser.add_argument("-n", "--num-samples", type=cli.positive_int("-n"), default=10, metavar="N",
                        help="CVAE completions to draw (default: 10)")
    parser.add_argument("--out", metavar="FILE.png",
                        help="the PNG to write (default: <image stem>_completed_q<K>.png beside the image)")
    parser.add_argument("--seed", type=cli.seed, default=0, help="seed of the CVAE's samples of z (default: 0)")
    parser.add_argument("--invert", action="store_true",
                        help="invert the image first (for dark ink on a light background)")
    cli.add_device_argument(parser)
    return parser


def read_image(path: str | Path, invert: bool = False) -> torch.Tensor:
    """The image at path as grayscale in [0, 1], (28, 28), inverted (1 - gray) with invert. A UserError when the
    file is missing, is not an image, or is not 28x28."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise UserError(f"--image {path} does not exist. Give the path of a 28x28 image of a digit (PNG, JPEG, ...).")
    if path.is_dir():
        raise UserError(f"--image {path} is a directory. Give the path of a 28x28 image file of a digit.")
    try:
        image = Image.open(path)
    except UnidentifiedImageError:
        raise UserError(f"--image {path} is not an image (PIL recognizes no image format in it). Give a 28x28 "
                        "PNG, JPEG or another image format PIL reads.") from None
    except (OSError, Image.DecompressionBombError) as error:
        raise UserError(f"--image {path} cannot be read ({error}). Check the file and its permissions.") from None
    with image:
        if image.size != (IMAGE_SIDE, IMAGE_SIDE):
            width, height = image.size
            raise UserError(f"--image {path} is {width}x{height} pixels, but the model takes 28x28 digits (MNIST's "
                            f"size). Resize it first, e.g. with PIL: {RESIZE_HINT}.save(...), ideally with the "
                            "digit centred and filling about 20x20 pixels, as in MNIST.")
        try:
            gray = numpy.asarray(image.convert("L"), dtype=numpy.float32) / 255
        except (OSError, ValueError, SyntaxError) as error:  # what PIL raises for a truncated or corrupt file
            raise UserError(f"--image {path} cannot be decoded ({error}): it is truncated or corrupt. Save the "
                            "image again, as PNG for instance.") from None
    pixels = torch.from_numpy(gray)
    return 1 - pixels if invert else pixels


def complete(run_dir: str | Path, image: torch.Tensor, quadrants: int, num_samples: int = 10, seed: int = 0,
             device: str | torch.device = "cpu") -> Completion:
    """Complete image ((28, 28) or (784,), in [0, 1]) from its input quadrants with the best NN baseline and CVAE
    that the finished run run_dir trained for that many input quadrants, drawing num_samples CVAE completions
    with a generator seeded with seed. A UserError when run_dir is not a finished run or did not train the
    setting (``CVAE.from_run``); a ValueError for an image of another shape or range, or num_samples below 1."""
    image = torch.as_tensor(image, dtype=torch.float32)
    if image.shape not in ((IMAGE_SIDE, IMAGE_SIDE), (NUM_PIXELS,)):
        raise ValueError(f"image must have shape (28, 28) or (784,); got {tuple(image.shape)}.")
    if not bool(((image >= 0) & (image <= 1)).all()):
        raise ValueError("image must hold gray levels in [0, 1] (0 black, 1 white).")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1 (got {num_samples}).")
    baseline = BaselineNet.from_run(run_dir, quadrants, device)
    cvae = CVAE.from_run(run_dir, quadrants, device)
    x, _ = QuadrantTask(quadrants).split(image.reshape(1, NUM_PIXELS).to(device))
    nn, samples = figures.completions(baseline, cvae, x, num_samples, seed)
    side = (IMAGE_SIDE, IMAGE_SIDE)
    return Completion(x[0].reshape(side).cpu(), nn[0].reshape(side).cpu(), samples[:, 0].reshape(-1, *side).cpu())


def output_path(image: Path, quadrants: int, out: str | None) -> Path:
    """Where the grid goes: out, or <image stem>_completed_q{quadrants}.png beside the image. A UserError for an
    out that is a directory, is not a .png, or is the image itself."""
    path = Path(out) if out else image.with_name(f"{image.stem}_completed_q{quadrants}.png")
    if path.is_dir():
        raise UserError(f"--out {path} is a directory. Give the name of the PNG file to write, e.g. --out "
                        f"{path / 'completed.png'}.")
    if path.suffix.lower() != ".png":
        raise UserError(f"--out {path} does not end in .png: the grid is written as a PNG. Give a name such as "
                        f"{path.with_suffix('.png')}.")
    if path.exists() and image.exists() and path.resolve() == image.resolve():
        raise UserError(f"--out {path} is the --image itself, which would be overwritten. Give another --out.")
    return path


def main(argv: list[str] | None = None) -> int:
    """cvae-sohn sample: complete --image from its K input quadrants, write the grid, print its path."""
    args = build_parser().parse_args(argv)
    device = cli.resolve_device(args.device)
    image_path = Path(args.image)
    out = output_path(image_path, args.quadrants, args.out)
    image = read_image(image_path, args.invert)
    completion = complete(args.run_dir, image, args.quadrants, args.num_samples, args.seed, device)
    if not args.invert and image.mean() > 0.5:
        print(f"note: {image_path} looks like dark ink on a light background (mean gray level "
              f"{image.mean():.2f}), but the model was trained on light digits on black, as in MNIST. If the digit "
              "is the dark part, run again with --invert.", file=sys.stderr)
    images = [figures.shown_input(completion.input), completion.nn, *completion.cvae]
    k = args.quadrants
    figures.completion_grid(images, figures.completion_labels(args.num_samples), out,
                            title=f"{k} input quadrant{'s' if k > 1 else ''}")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(lambda: main()))
