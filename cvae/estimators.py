"""Estimators of the negative conditional log-likelihood -log p(y|x) of a ConditionalVAE, per example, in nats.

With S samples of z, from the prior (Monte Carlo) or from the recognition net (importance sampling):

    CLL_MC = -log (1/S) sum_s p(y|x,z_s),                              z_s ~ p(z|x)
    CLL_IS = -log (1/S) sum_s p(y|x,z_s) p(z_s|x) / q(z_s|x,y),        z_s ~ q(z|x,y)
    -ELBO  = KL(q(z|x,y) || p(z|x)) - (1/S) sum_s log p(y|x,z_s),      z_s ~ q(z|x,y)

(Sohn et al. 2015, section 5.1 and eq. 4; Rezende et al. 2014, appendix E, for the importance-sampled
estimate.) The first two are computed in log space with log-sum-exp. All three are upper bounds on
-log p(y|x) in expectation, and the first two tighten as S grows. Examples are processed in blocks and
samples in chunks, made one at a time, and the chunks' partial results are folded together every
PENDING_ELEMENTS values, so memory stays bounded for any number of examples and any S. A long evaluation
shows a progress bar over the samples on a terminal.

Each runs where the model is: x and y are moved to its device (the values returned are there too), and a
``generator`` must be on that device. x and y may be numpy arrays (floating ones converted to the model's dtype),
and in place of x and y each takes a torch Dataset or DataLoader of (x, y) pairs, ``estimator(model, data,
num_samples=S)``: read batch by batch, never whole (a Dataset in consecutive blocks of EXAMPLE_BLOCK, the blocks
the tensors would give, so the values are the same; a DataLoader in its own batches), the values per example in
the data's order. ``precision`` is the arithmetic of the networks' matrix products, as in
training (``cvae.precision``): "fp32" (the default), "bf16" (autocast; every log-density and sum stays in the
data's dtype) or "auto" (bf16 where the device multiplies it natively and fast).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .conditional_vae import ConditionalVAE, Context
from .distributions import DiagonalGaussian, GaussianMixture
from .inputs import check_data, check_generator, check_num_samples, from_numpy
from .objectives import latent_kl
from .precision import autocast, resolve
from .streams import Stream, is_stream

# Example-samples evaluated in one pass of the generation net. Kept small enough that every activation
# stays under glibc's 32 MB mmap threshold: larger buffers are mapped fresh and page-faulted on every
# chunk, which made evaluation 3.6x slower on CPU (benchmarks/bench_eval.py).
MAX_ROWS = 4096
EXAMPLE_BLOCK = 2048
# Per-chunk partial results (one value per example) kept before they are folded into one: bounds the memory of any
# S (2**22 values, 16 MB in float32). Below it, the reduction is that of every chunk at once, as before.
PENDING_ELEMENTS = 1 << 22
# Image-samples (examples x S) from which an estimate shows a progress bar on a terminal: about 10 s of CPU time.
PROGRESS_WORK = 10**7

# log-weight of each sample: (model, x, y, context, posterior, prior, z) -> (chunk, N)
LogWeight = Callable[[ConditionalVAE, torch.Tensor, torch.Tensor, Context, DiagonalGaussian,
                      DiagonalGaussian | GaussianMixture, torch.Tensor], torch.Tensor]


def _blocks(n: int, size: int) -> Iterator[slice]:
    """slice(0, size), slice(size, 2 size), ... up to n, made one at a time (bounded memory for any n)."""
    return (slice(start, min(start + size, n)) for start in range(0, n, size))


@torch.inference_mode()
def _reduce_samples(
    model: ConditionalVAE,
    x: torch.Tensor,
    y: torch.Tensor,
    num_samples: int,
    proposal: str,
    log_weight: LogWeight,
    reduce: str,
    generator: torch.Generator | None,
    progress: bool = True,
    precision: str = "fp32",
) -> torch.Tensor:
    """Per image, log-mean-exp (reduce="logmeanexp") or mean (reduce="mean") of the log-weights of
    num_samples draws of z from the proposal ("prior" or "posterior"). x, y: (N, x_dim), (N, y_dim) -> (N,), on
    the model's device; or x a Dataset or DataLoader of (x, y) pairs and y None. With progress, a bar over the
    samples when the work is large (PROGRESS_WORK) and stderr is a terminal. precision: of the networks' matrix
    products (``cvae.precision.resolve``)."""
    if is_stream(x):
        if y is not None:
            raise ValueError(f"with a {type(x).__name__} of (x, y) pairs give no y (it comes from the data): "
                             "estimator(model, data, num_samples=S)")
        num_samples = check_num_samples(num_samples)
        device = next(model.parameters()).device
        generator = check_generator(generator, device)
        stream = Stream(x, "data", model)
        with autocast(resolve(precision, device), device), _bar(stream.size * num_samples, progress) as bar:
            return torch.cat([_reduce_blocks(model, xb, yb, num_samples, proposal, log_weight, reduce, generator, bar)
                              for xb, yb in stream.sequential(EXAMPLE_BLOCK)])
    num_samples = check_num_samples(num_samples)
    dtype = next(model.parameters()).dtype
    x, y = from_numpy(x, dtype), from_numpy(y, dtype)
    check_data(model, x, y)
    device = next(model.parameters()).device
    generator = check_generator(generator, device)
    x, y = x.to(device), y.to(device)
    with autocast(resolve(precision, device), device), _bar(x.shape[0] * num_samples, progress) as bar:
        return _reduce_blocks(model, x, y, num_samples, proposal, log_weight, reduce, generator, bar)


def _bar(work: int, progress: bool) -> tqdm:
    """A progress bar over ``work`` example-samples, shown on a terminal when it is large (PROGRESS_WORK)."""
    return tqdm(total=work, disable=True if not progress or work < PROGRESS_WORK else None, leave=False,
                unit="z", unit_scale=True, desc="samples of z")


def _reduce_blocks(model: ConditionalVAE, x: torch.Tensor, y: torch.Tensor, num_samples: int, proposal: str,
                   log_weight: LogWeight, reduce: str, generator: torch.Generator | None,
                   bar: tqdm) -> torch.Tensor:
    """``_reduce_samples`` on checked x, y on the model's device, block by block."""

    def combine(values: torch.Tensor) -> torch.Tensor:  # (chunks, N) -> (N,)
        return torch.logsumexp(values, dim=0) if reduce == "logmeanexp" else values.sum(0)

    results = []
    for block in _blocks(x.shape[0], EXAMPLE_BLOCK):
        xb, yb = x[block], y[block]
        context = model.context(xb, y=yb)
        prior = model.prior(xb, context)
        posterior = model.posterior(xb, yb)
        source = prior if proposal == "prior" else posterior
        chunk = max(1, MAX_ROWS // xb.shape[0])
        partial = []
        for samples in _blocks(num_samples, chunk):
            z = source.rsample((samples.stop - samples.start,), generator=generator)
            partial.append(combine(log_weight(model, xb, yb, context, posterior, prior, z)))
            if len(partial) * xb.shape[0] >= PENDING_ELEMENTS:
                partial = [combine(torch.stack(partial))]
            bar.update((samples.stop - samples.start) * xb.shape[0])
        total = combine(torch.stack(partial))
        results.append(total - math.log(num_samples) if reduce == "logmeanexp" else total / num_samples)
    return torch.cat(results)


def _log_likelihood(model, x, y, context, posterior, prior, z):
    return model.log_likelihood(x, y, z, context)


def _importance_log_weight(model, x, y, context, posterior, prior, z):
    """log [ p(y|x,z) p(z|x) / q(z|x,y) ]."""
    return model.log_likelihood(x, y, z, context) + prior.log_prob(z) - posterior.log_prob(z)


def cll_monte_carlo(
    model: ConditionalVAE, x: torch.Tensor | Dataset | DataLoader, y: torch.Tensor | None = None,
    num_samples: int | None = None, generator: torch.Generator | None = None, progress: bool = True, *,
    precision: str = "fp32",
) -> torch.Tensor:
    """-log (1/S) sum_s p(y|x,z_s), z_s ~ p(z|x): x, y (N, x_dim), (N, y_dim) -> (N,) nats; or (model, data,
    num_samples=S) with data a Dataset or DataLoader of (x, y) pairs. progress: a bar on a terminal when N x S is
    large (PROGRESS_WORK); False for none."""
    return -_reduce_samples(model, x, y, num_samples, "prior", _log_likelihood,
                            "logmeanexp", generator, progress, precision)


def cll_importance(
    model: ConditionalVAE, x: torch.Tensor | Dataset | DataLoader, y: torch.Tensor | None = None,
    num_samples: int | None = None, generator: torch.Generator | None = None, progress: bool = True, *,
    precision: str = "fp32",
) -> torch.Tensor:
    """-log (1/S) sum_s p(y|x,z_s) p(z_s|x) / q(z_s|x,y), z_s ~ q(z|x,y): x, y (N, x_dim), (N, y_dim) -> (N,) nats;
    or (model, data, num_samples=S) with data a Dataset or DataLoader of (x, y) pairs. progress: a bar on a terminal
    when N x S is large (PROGRESS_WORK); False for none."""
    return -_reduce_samples(model, x, y, num_samples, "posterior", _importance_log_weight,
                            "logmeanexp", generator, progress, precision)


def _elbo_term(model, x, y, context, posterior, prior, z):
    """log p(y|x,z) - KL(q(z|x,y) || p(z|x)), whose mean over z ~ q is the ELBO (eq. 4); the KL in closed form
    for a Gaussian prior, log q(z) - log p(z) on the same draw for a mixture (objectives.latent_kl)."""
    return model.log_likelihood(x, y, z, context) - latent_kl(posterior, prior, z)


def negative_elbo(
    model: ConditionalVAE, x: torch.Tensor | Dataset | DataLoader, y: torch.Tensor | None = None,
    num_samples: int | None = None, generator: torch.Generator | None = None, progress: bool = True, *,
    precision: str = "fp32",
) -> torch.Tensor:
    """KL(q || p) - (1/S) sum_s log p(y|x,z_s), z_s ~ q(z|x,y) (the KL in closed form for a Gaussian prior, on the
    same draws for a mixture): (N,) nats; or (model, data, num_samples=S) with data a Dataset or DataLoader of (x, y)
    pairs. progress: a bar on a terminal when N x S is large; False for none."""
    return -_reduce_samples(model, x, y, num_samples, "posterior", _elbo_term, "mean", generator, progress, precision)


def mean_and_sem(values: torch.Tensor) -> dict[str, float]:
    """Mean and standard error of the mean of per-example values, std / sqrt(N) with the unbiased std."""
    n = values.numel()
    sem = values.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": values.mean().item(), "sem": sem}
