"""The quadrant task of the paper's section 5.1: predict the unseen quadrants of an MNIST digit.

Each 28x28 image is split into four 14x14 quadrants. With k input quadrants, x is the whole image with the
pixels of the other 4 - k quadrants marked -1 (as in the Pyro tutorial), and y holds the pixels of those
4 - k quadrants, in raster order. The input quadrants follow the tutorial's convention:

    k = 1: bottom-left            k = 2: left half            k = 3: all but bottom-right
"""

from __future__ import annotations

import torch

from cvae.settings import is_integer

from .choices import IMAGE_SIDE

NUM_PIXELS = IMAGE_SIDE * IMAGE_SIDE
MISSING = -1.0

# (row, column) of the input quadrants for each k; 0 = top/left half, 1 = bottom/right half.
INPUT_QUADRANTS = {1: ((1, 0),), 2: ((0, 0), (1, 0)), 3: ((0, 0), (0, 1), (1, 0))}


def check_num_quadrants(k: object) -> int:
    """Return k as an int when it is 1, 2 or 3; raise ValueError saying what is allowed otherwise."""
    if not is_integer(k) or k not in INPUT_QUADRANTS:
        raise ValueError(
            f"the number of input quadrants must be 1, 2 or 3 (got {k!r}): the model sees k of the "
            "four 14x14 quadrants of a digit and predicts the other 4 - k."
        )
    return int(k)


class QuadrantTask:
    """Split images into the input x (k quadrants) and the output y (the other 4 - k).

    Attributes:
        num_quadrants: k.
        input_mask: (784,) bool, True on the pixels of x.
        output_mask: (784,) bool, True on the pixels of y (the complement of input_mask).
    """

    def __init__(self, num_quadrants: int):
        self.num_quadrants = check_num_quadrants(num_quadrants)
        mask = torch.zeros(IMAGE_SIDE, IMAGE_SIDE, dtype=torch.bool)
        half = IMAGE_SIDE // 2
        for row, col in INPUT_QUADRANTS[self.num_quadrants]:
            mask[row * half:(row + 1) * half, col * half:(col + 1) * half] = True
        self.input_mask = mask.flatten()
        self.output_mask = ~self.input_mask

    @property
    def num_output_pixels(self) -> int:
        return int(self.output_mask.sum())

    def split(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images: (N, 28, 28) or (N, 784) in [0, 1] -> x (N, 784) with -1 on the output pixels, and the output
        pixels y (N, num_output_pixels)."""
        if images.dim() == 3 and images.shape[1:] == (IMAGE_SIDE, IMAGE_SIDE):
            images = images.reshape(images.shape[0], NUM_PIXELS)
        if images.dim() != 2 or images.shape[1] != NUM_PIXELS:
            raise ValueError(
                f"images must have shape (N, 28, 28) or (N, 784); got {tuple(images.shape)}."
            )
        input_mask = self.input_mask.to(images.device)
        return torch.where(input_mask, images, MISSING), images[:, ~input_mask]

    def combine(self, x: torch.Tensor, y_pixels: torch.Tensor) -> torch.Tensor:
        """Fill the output pixels of x: x (N, 784), y_pixels (..., N, num_output_pixels) -> (..., N, 784)."""
        full = x.expand(*y_pixels.shape[:-1], NUM_PIXELS).clone()
        full[..., self.output_mask.to(x.device)] = y_pixels
        return full

    def __repr__(self) -> str:
        return f"QuadrantTask({self.num_quadrants})"
