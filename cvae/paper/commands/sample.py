"""cvae-sohn sample: complete your own 28x28 digit with a trained run's NN baseline and CVAE.

    cvae-sohn sample runs/default --image digit.png --quadrants 2          # writes digit_completed_q2.png
    cvae-sohn sample runs/default --image scan.jpg --quadrants 1 -n 20 --invert --out scan_grid.png

The image is read as grayscale in [0, 1], on its own scale (8 or 16 bits, a TIFF's integers, floats in [0, 1]); a
transparent background is laid under the digit as white for dark ink and black for light ink (MNIST's digits are
white on black: --invert turns dark ink on a light background into that). Of its four 14x14 quadrants the model
keeps the K inputs of the setting (1: bottom-left, 2: left half, 3: all but bottom-right) and completes the rest.
One PNG is written: the input as the model sees it (the quadrants it does not see gray), the NN baseline's
completion and n CVAE completions (the means of p(y|x,z) for z ~ p(z|x)), drawn as in the run's samples_q{K}.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

import numpy
import torch

from cvae.inputs import check_num_samples, naming
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


def num_completions(text: str) -> int:
    """-n: 1 .. MAX_COMPLETIONS, each a tile of the grid."""
    value = cli.positive_int("-n")(text)
    if value > MAX_COMPLETIONS:
        width, height = figures.grid_pixels(MAX_COMPLETIONS + 2)
        raise argparse.ArgumentTypeError(
            f"{text!r} is not valid: -n must be at most {MAX_COMPLETIONS}: each completion is drawn as a tile of the "
            f"grid, and {MAX_COMPLETIONS} already make a PNG of {width} x {height} pixels. Run the command again "
            "with another --seed and --out for more.")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The arguments of cvae-sohn sample."""
    parser = argparse.ArgumentParser(prog="cvae-sohn sample", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run: the directory train.py --out wrote")
    parser.add_argument("--image", required=True, metavar="FILE",
                        help=f"a 28x28 image of a digit ({FORMAT_NAMES}; 8 or 16 bits, or floats in [0, 1]; a "
                        "transparent background is laid under the digit as white for dark ink, black for light ink)")
    parser.add_argument("--quadrants", required=True, type=cli.quadrants, metavar="K",
                        help="the setting: how many quadrants of the image the model sees (1, 2 or 3; one the run "
                             "trained)")
    parser.add_argument("-n", "--num-samples", type=num_completions, default=10, metavar="N",
                        help=f"CVAE completions to draw, at most {MAX_COMPLETIONS} (default: 10)")
    parser.add_argument("--out", metavar="FILE.png",
                        help="the PNG to write (default: <image stem>_completed_q<K>.png beside the image)")
    parser.add_argument("--seed", type=cli.seed, default=0, help="seed of the CVAE's samples of z (default: 0)")
    parser.add_argument("--invert", action="store_true",
                        help="invert the image first (for dark ink on a light background)")
    cli.add_device_argument(parser)
    return parser


# The formats read: PIL decodes each itself, with no outside program (EPS would start Ghostscript, for instance).
FORMATS = ("PNG", "JPEG", "MPO", "BMP", "GIF", "TIFF", "PPM", "WEBP")
FORMAT_NAMES = "PNG, JPEG, BMP, GIF, TIFF, WebP or PGM/PPM"
MAX_COMPLETIONS = 1000  # -n: each completion is a tile of the grid


def read_image(path: str | Path, invert: bool = False) -> torch.Tensor:
    """The image at path as grayscale in [0, 1], (28, 28), inverted (1 - gray) with invert. The gray levels are
    read on the image's own scale (8 bits, 16 bits, the bits of a TIFF's integers, floats in [0, 1]); a
    transparent image is laid on the background its ink stands out from (white for dark ink, black for light ink),
    as a viewer shows it. A UserError when the file is missing, is not an image of FORMATS, is not 28x28, or holds
    values this command cannot read as gray levels (and says which)."""
    from PIL import Image, UnidentifiedImageError, features

    path = Path(path)
    if not path.exists():
        raise UserError(f"--image {path} does not exist. Give the path of a 28x28 image of a digit (PNG, JPEG, ...).")
    if path.is_dir():
        raise UserError(f"--image {path} is a directory. Give the path of a 28x28 image file of a digit.")
    Image.init()  # registers the plugins (importing one starts nothing)
    formats = [name for name in FORMATS if name in Image.OPEN and (name != "WEBP" or features.check("webp"))]
    try:
        image = Image.open(path, formats=formats)
    except UnidentifiedImageError:
        raise UserError(f"--image {path} is not an image in a format this command reads ({FORMAT_NAMES}). Give a "
                        "28x28 image in one of those, e.g. saved as PNG.") from None
    except (OSError, Image.DecompressionBombError) as error:
        raise UserError(f"--image {path} cannot be read ({error}). Check the file and its permissions.") from None
    with image:
        if image.size != (IMAGE_SIDE, IMAGE_SIDE):
            width, height = image.size
            raise UserError(f"--image {path} is {width}x{height} pixels, but the model takes 28x28 digits (MNIST's "
                            f"size). Resize it first, e.g. with PIL: {RESIZE_HINT}.save(...), ideally with the "
                            "digit centred and filling about 20x20 pixels, as in MNIST.")
        try:
            gray, alpha = _gray_and_alpha(image, path)
        except (OSError, ValueError, SyntaxError) as error:  # what PIL raises for a truncated or corrupt file
            if isinstance(error, OSError) and ("decoder" in str(error) or "encoder" in str(error)):
                raise UserError(f"--image {path} cannot be decoded: this machine's PIL lacks what its format needs "
                                f"({error}). Save the image as PNG.") from None
            if isinstance(error, ValueError) and "conversion" in str(error):
                raise UserError(f"--image {path} holds pixels of PIL's mode {image.mode}, which this command cannot "
                                f"read as gray levels ({error}). Save the image as a grayscale or RGB PNG.") from None
            raise UserError(f"--image {path} cannot be decoded ({error}): it is truncated or corrupt. Save the "
                            "image again, as PNG for instance.") from None
    if alpha is not None:
        gray = _lay_on_background(gray, alpha, path)
    pixels = torch.from_numpy(numpy.ascontiguousarray(gray, dtype=numpy.float32))
    return 1 - pixels if invert else pixels


def _gray_and_alpha(image, path: Path) -> tuple[numpy.ndarray, numpy.ndarray | None]:
    """The gray levels in [0, 1] (float64) and the opacity in [0, 1] (None for an opaque image) of a PIL image,
    each on its own scale; a UserError for values that are no gray levels."""
    mode = image.mode
    if mode.startswith("I;16"):  # 16-bit gray (PNG, TIFF)
        values = numpy.asarray(image).astype(numpy.float64)
        return _with_transparency(values / 65535, values, image)
    if mode == "I":  # 32-bit integers: a TIFF says how many bits are used, and whether they are signed
        bits, signed = _tiff_bits(image)
        values = numpy.asarray(image).astype(numpy.int64)
        values = (values if signed else values & 0xFFFFFFFF).astype(numpy.float64)  # PIL holds unsigned bits as int32
        if bits is None or not 1 <= bits <= 32:
            raise UserError(f"--image {path} holds {image.format} integer pixels whose range this command cannot "
                            "tell (not a TIFF that records its bits per sample). Save it as an 8- or 16-bit PNG.")
        if signed and values.min() < 0:
            raise UserError(f"--image {path} holds negative gray levels (down to {values.min():g}): this command "
                            "reads 0 as black. Save it as an 8- or 16-bit PNG.")
        top = 2 ** (bits - 1 if signed else bits) - 1
        return _with_transparency(values / top, values, image)
    if mode == "F":  # 32-bit floats: read as gray levels in [0, 1] only
        values = numpy.asarray(image).astype(numpy.float64)
        if not numpy.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            finite = values[numpy.isfinite(values)]
            span = f"from {finite.min():g} to {finite.max():g}" if finite.size else "none finite"
            raise UserError(f"--image {path} holds floating-point pixels {span}"
                            f"{'' if finite.size == values.size else ' and non-finite ones'}, not gray levels in "
                            "[0, 1] (0 black, 1 white), the only floating-point images this command reads. Scale it to "
                            "[0, 1], or save it as an 8- or 16-bit PNG.")
        return values, None
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        gray = numpy.asarray(rgba.convert("L"), dtype=numpy.float64) / 255
        alpha = numpy.asarray(rgba.getchannel("A"), dtype=numpy.float64) / 255
        return gray, None if bool((alpha == 1).all()) else alpha
    return numpy.asarray(image.convert("L"), dtype=numpy.float64) / 255, None


def _with_transparency(gray: numpy.ndarray, values: numpy.ndarray, image) -> tuple[numpy.ndarray, numpy.ndarray | None]:
    """A 16- or 32-bit gray image's transparent value (a PNG's tRNS), as an opacity of 0 where the pixel has it."""
    transparent = image.info.get("transparency")
    if not isinstance(transparent, int) or not bool((values == transparent).any()):
        return gray, None
    return gray, (values != transparent).astype(numpy.float64)


def _tiff_bits(image) -> tuple[int | None, bool]:
    """(bits per sample, whether signed) of a TIFF image; (None, False) when not told."""
    tags = getattr(image, "tag_v2", None)
    if tags is None:
        return None, False
    bits = tags.get(258)
    bits = bits[0] if isinstance(bits, tuple) and bits else bits
    sample_format = tags.get(339)
    sample_format = sample_format[0] if isinstance(sample_format, tuple) and sample_format else sample_format
    return (bits if isinstance(bits, int) else None), sample_format == 2


def _lay_on_background(gray: numpy.ndarray, alpha: numpy.ndarray, path: Path) -> numpy.ndarray:
    """A transparent image's gray levels laid on the background its ink (the opaque part, weighted by opacity)
    stands out from: white under dark ink, black under light ink, so that the digit shows either way."""
    if not bool((alpha > 0).any()):
        raise UserError(f"--image {path} is transparent everywhere: there is no digit to read. Give an image whose "
                        "digit is opaque.")
    ink = float((gray * alpha).sum() / alpha.sum())
    background = 1.0 if ink < 0.5 else 0.0
    return alpha * gray + (1 - alpha) * background


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
    num_samples = check_num_samples(num_samples)
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
    with naming(f"-n {args.num_samples}: {args.num_samples:,} completions of the image; lower -n"):
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
