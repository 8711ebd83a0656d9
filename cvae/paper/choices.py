"""The values a run's options may take: the names to choose from and the numeric limits.

Torch-free, so that the command-line parsers (``cvae.paper.cli``, ``cvae.paper.config``) import them without torch.
"""

from cvae.settings import PRECISIONS  # noqa: F401 (the networks' matrix products: --precision, --train-precision)

DATASETS = ("mnist", "fashion-mnist")
PIXEL_LIKELIHOODS = ("bernoulli", "continuous-bernoulli")  # the likelihoods for pixels in [0, 1] (train --likelihood)

IMAGE_SIDE = 28  # the images' side in pixels (MNIST, Fashion-MNIST)
# The largest seed: every seed derived from it (seed * 10 + k + 5 for the initial weights, seed * 1_000_003 + epoch
# for the order of an epoch, seed + rank * 1_000_003 for a process's noise) stays far inside the 64-bit range of
# torch's generators.
MAX_SEED = 2**32 - 1
MAX_EPOCHS = 1_000_000  # below the stride of the data-order seeds (seed * 1_000_003 + epoch, cvae.training)
MAX_AR_WINDOW = 2 * IMAGE_SIDE - 1  # a window this wide already reaches every pixel from every other
