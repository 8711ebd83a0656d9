"""The general conditional VAE of Sohn, Lee, Yan (2015) for any x (N, x_dim) and y (N, y_dim).

    recognition q(z|x,y): a net on combine(x, y)  -> Gaussian (loc, scale) over z
    prior       p(z|x):   a net on c               -> a mixture of K Gaussians over z (K = 1: one Gaussian)
    generation  p(y|x,z): a net on [z, c]          -> the likelihood's parameters of y

where c = x, or, with a ``baseline`` (the paper's recurrent connection, section 4, figure 1(d)), c =
combine(x, y_hat) with y_hat = baseline(x) the prediction of a frozen deterministic net. ``combine`` is the
concatenation [x, y] unless the user gives another module. Every net is an MLP built from ``hidden`` unless the
user passes their own module, and the likelihood (``cvae.likelihoods``) is any of Bernoulli, Gaussian,
continuous Bernoulli, Laplace and Categorical (y of integer class indices, which the recognition net sees
one-hot). The estimators (``cvae.estimators``), the objectives (``cvae.objectives``) and the trainer
(``cvae.fit``) use only the methods below.

The prior is a mixture of ``prior_components`` Gaussians (8 by default; the paper's is one Gaussian): where y has
several separate answers for one x, each can take a component, and the decoder need not spread a Gaussian's mass
across the gaps between them (see examples/multimodal_regression.py, where a one-Gaussian prior stays far above
the true likelihood). The KL term of the ELBO is then estimated by Monte Carlo (``cvae.objectives.elbo``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from . import likelihoods
from .distributions import DiagonalGaussian, GaussianMixture
from .inputs import check_array, check_fits, check_generator, check_num_samples, from_numpy, naming, shape_of
from .networks import (
    Concatenate,
    ConcatGeneration,
    ConvGeneration,
    GenerationNet,
    ShapedGeneration,
    check_autoregression,
    check_networks,
    conv_encoder,
    fill_in_order,
    gaussian_head,
    mlp,
)
from .precision import autocast, resolve
from .records import Recorded, qualified_name
from .regressor import Regressor, check_shaped_autoregression, check_sizes, flat_event, shaped_event
from .streams import Stream, is_stream

SAMPLE_BLOCK = 2048  # examples of a Dataset or DataLoader read at a time by sample
CUSTOM_MODULES = ("recognition", "prior", "generation", "baseline", "combine", "autoregression")


class Context(NamedTuple):
    """What the model computes once per batch of examples and reuses for every sample of z."""

    condition: torch.Tensor  # (N, condition_dim): c, what the prior and the generation net see of x
    generation_input: torch.Tensor  # the generation net's prepared c (its first layer's c part)
    autoregressive: torch.Tensor | None = None  # the autoregressive term given y, when y is known


class ConditionalVAE(Recorded):
    """A conditional VAE: p(y|x) = integral p(y|x,z) p(z|x) dz, trained with the recognition net q(z|x,y).

    ``save(path)`` writes its record (class and constructor arguments) and weights; ``ConditionalVAE.load(path)``
    returns the model saved there (cvae.records).

    Args:
        x_dim, y_dim: widths of x and y; z_dim: of the latent z.
        hidden: hidden widths of the default MLPs.
        likelihood: p(y|x,z)'s family (``cvae.likelihoods``); Gaussian() with a learned scale by default.
        recognition: a module (N, combine.out_dim) -> (N, 2 z_dim): loc and raw scale of q(z|x,y).
        prior: a module (N, condition_dim) -> (N, 2 z_dim): loc and raw scale of p(z|x) (with K > 1 components:
            (N, K + 2 K z_dim), the K mixture logits, then loc and raw scale of each component); condition_dim is
            x_dim, or combine.out_dim with a baseline. The scales are softplus(raw) + 1e-4.
        prior_components: K, the number of Gaussians in the mixture p(z|x); by default 8 with the default prior
            net and 1 with a prior module of the user's own.
        generation: a module (M, z_dim + condition_dim) -> (M, likelihood.num_params * y_dim), applied to rows
            [z, c] (M = samples x examples).
        baseline: a trained module x (N, x_dim) -> y_hat (N, y_dim), e.g. a fitted ``Regressor``; frozen here.
        combine: a module (x, y) -> (N, out_dim) with an ``out_dim`` attribute; concatenation by default.
        autoregression: a module (x, y) -> a term added to the generation net's output, where the term of y's
            dimension i may depend on y's dimensions before i only (the quadrant task's strong preset); flat y only.
        networks: the default networks, "mlp", or "conv" for y of shape (C, H, W): convolutions of ``hidden``
            channels where a network takes or gives an image (``cvae.networks``).

    Examples of any shape: x_dim and y_dim may be shapes, x (N, *x_shape) and y (N, *y_shape) (e.g. (1, 28, 28)).
    log p(y|x,z) sums over all of y's dimensions; the default MLPs flatten their inputs; modules of the user's own
    take the shaped tensors: the recognition net combine(x, y) (``Concatenate``: images of the same size stacked as
    channels), the prior c (x itself, or combine(x, y_hat)), the generation net rows [z, c] when c is flat and
    otherwise the two, module(z, c), with z (M, z_dim) and c (M, *c_shape); the generation net's output is flattened
    to the likelihood's parameters of y.flatten(1), (M, num_params * prod(y_shape)).
    """

    LEGACY_KINDS = ("conditional_vae",)  # the checkpoints of earlier versions (cvae.records.legacy_record)

    def __init__(self, x_dim: int | Sequence[int], y_dim: int | Sequence[int], z_dim: int = 8,
                 hidden: Sequence[int] = (128, 128), likelihood: likelihoods.Likelihood | None = None, *,
                 recognition: nn.Module | None = None, prior: nn.Module | None = None,
                 generation: nn.Module | None = None, baseline: nn.Module | None = None,
                 combine: nn.Module | None = None, autoregression: nn.Module | None = None,
                 prior_components: int | None = None, networks: str = "mlp"):
        super().__init__()
        if prior_components is None:
            prior_components = 8 if prior is None else 1
        self.x_dim, self.y_dim, self.z_dim, self.prior_components, self.hidden = check_sizes(
            x_dim, y_dim, hidden, z_dim=z_dim, prior_components=prior_components)
        self.x_shape, self.y_shape = shape_of(self.x_dim), shape_of(self.y_dim)
        self.networks = check_networks(networks, self.y_shape)
        self.likelihood = likelihoods.check_likelihood(likelihood)
        check_autoregression(self.likelihood, autoregression)
        check_shaped_autoregression(self.y_shape, autoregression)
        _check_baseline_likelihood(baseline, self.likelihood)
        given = dict(recognition=recognition, prior=prior, generation=generation, baseline=baseline,
                     combine=combine, autoregression=autoregression)
        self.custom = sorted(name for name, module in given.items() if module is not None
                             and not (name == "baseline" and _rebuildable(module)))
        self.baseline = baseline.requires_grad_(False).eval() if baseline is not None else None
        conv = self.networks == "conv"
        self.combine = combine if combine is not None else Concatenate(self.x_dim, self.y_dim, self.likelihood,
                                                                       tile=conv)
        combined = tuple(getattr(self.combine, "out_shape", (self.combine.out_dim,)))
        condition = combined if baseline is not None else self.x_shape  # the shape of c
        num_outputs = self.likelihood.num_params * math.prod(self.y_shape)
        prior_outputs = 2 * self.z_dim if self.prior_components == 1 else self.prior_components * (1 + 2 * self.z_dim)
        if conv:
            default_recognition = conv_encoder(combined, self.hidden, 2 * self.z_dim)
            default_prior = conv_encoder(condition, self.hidden, prior_outputs)
            default_generation = ConvGeneration(self.z_dim, condition, self.hidden, self.y_shape, self.likelihood)
        else:
            default_recognition = mlp([math.prod(combined), *self.hidden, 2 * self.z_dim], flatten=len(combined) > 1)
            default_prior = mlp([math.prod(condition), *self.hidden, prior_outputs], flatten=len(condition) > 1)
            default_generation = GenerationNet(self.z_dim, math.prod(condition), self.hidden, num_outputs,
                                               flatten=len(condition) > 1)
        self.recognition_net = recognition if recognition is not None else default_recognition
        self.prior_net = prior if prior is not None else default_prior
        if generation is not None:
            self.generation_net = (ConcatGeneration(generation) if len(condition) == 1
                                   else ShapedGeneration(generation))
        else:
            self.generation_net = default_generation
        self.autoregression = autoregression

    def train(self, mode: bool = True) -> ConditionalVAE:
        super().train(mode)
        if self.baseline is not None:
            self.baseline.eval()  # frozen, whatever the mode of the rest
        return self

    # ---- the three networks -------------------------------------------------------------------------------
    def context(self, x: torch.Tensor, y_hat: torch.Tensor | None = None, y: torch.Tensor | None = None) -> Context:
        """Per-example work shared by the prior and every sample of the generation net. x: (N, x_dim).

        y_hat: the baseline's prediction when the caller has it already (the baseline is frozen, so training
        computes it once per example instead of once per step). y: the targets, when known, for the
        autoregressive term of log_likelihood (computed there otherwise).
        """
        if self.baseline is None:
            condition = x
        else:
            if y_hat is None:
                with torch.no_grad():
                    y_hat = self.baseline(x)
            condition = self.combine(x, y_hat)
        autoregressive = None if y is None or self.autoregression is None else self.autoregression(x, y).to(x.dtype)
        return Context(condition, self.generation_net.prepare(condition), autoregressive)

    def prior(self, x: torch.Tensor, context: Context | None = None) -> DiagonalGaussian | GaussianMixture:
        """p(z|x): a Gaussian with loc, scale (N, z_dim), or a mixture with logits (N, K) and loc, scale
        (N, K, z_dim)."""
        context = context if context is not None else self.context(x)
        out = self.prior_net(context.condition)
        k = self.prior_components
        width, meaning = (2 * self.z_dim, "loc and raw scale of p(z|x), 2 * z_dim columns") if k == 1 else (
            k * (1 + 2 * self.z_dim), f"the {k} mixture logits, then loc and raw scale of each component: "
            "K * (1 + 2 * z_dim) columns")
        _check_output(out, "prior", (context.condition.shape[0], width), meaning)
        out = out.to(x.dtype)  # networks' outputs in x's dtype (cvae.precision)
        if k == 1:
            return gaussian_head(out)
        components = gaussian_head(out[..., k:].unflatten(-1, (k, 2 * self.z_dim)))
        return GaussianMixture(out[..., :k], components.loc, components.scale)

    def posterior(self, x: torch.Tensor, y: torch.Tensor) -> DiagonalGaussian:
        """q(z|x,y): loc, scale of shape (N, z_dim)."""
        out = self.recognition_net(self.combine(x, y))
        _check_output(out, "recognition", (x.shape[0], 2 * self.z_dim), "loc and raw scale of q(z|x,y), 2 * z_dim "
                      "columns")
        return gaussian_head(out.to(x.dtype))

    def params(self, x: torch.Tensor, z: torch.Tensor, context: Context | None = None) -> torch.Tensor:
        """The generation net's output g(z, c): z (..., N, z_dim) -> (..., N, num_params * y_dim). Without an
        autoregressive term these are the parameters of p(y|x,z)."""
        context = context if context is not None else self.context(x)
        out = self.generation_net(z, context.generation_input)
        rows = tuple(z.shape[:-1])  # z's samples and examples, one example's z spread over all examples
        if rows and rows[-1] == 1:
            rows = (*rows[:-1], context.condition.shape[0])
        _check_output(out, "generation", (*rows, self.likelihood.num_params * math.prod(self.y_shape)),
                      f"the {self.likelihood!r} likelihood's {self.likelihood.num_params} parameter(s) per dimension "
                      "of y: num_params * y_dim columns")
        return out.to(x.dtype)

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
                       context: Context | None = None) -> torch.Tensor:
        """log p(y|x,z) summed over y's dimensions: z (..., N, z_dim) -> (..., N)."""
        context = context if context is not None else self.context(x, y=y)
        params = self.params(x, z, context)
        if self.autoregression is not None:
            term = context.autoregressive
            params = params + (term if term is not None else self.autoregression(x, y).to(x.dtype))
        return self.likelihood.log_prob(params, flat_event(y, self.y_shape))

    @torch.no_grad()
    def sample(self, x: torch.Tensor, num_samples: int = 1, *, generator: torch.Generator | None = None,
               mean: bool = False, precision: str = "fp32") -> torch.Tensor:
        """Draws of y from p(y|x): z ~ p(z|x), then y ~ p(y|x,z); with ``mean``, E[y|x,z] instead of a draw of y
        (with an autoregressive term, each dimension's mean given the earlier ones).

        x: (N, x_dim) -> (num_samples, N, y_dim); under a Categorical likelihood int64 class indices, and with
        ``mean`` the class probabilities (num_samples, N, y_dim, K). x is moved to the model's device, where the
        samples are (and ``generator`` must be); precision: "fp32", "bf16" or "auto", the arithmetic of the
        networks' matrix products (``cvae.precision``). Shaped x and y: x (N, *x_shape) -> (num_samples, N, *y_shape).

        x may also be a numpy array (converted, floating values to the model's dtype), or a torch Dataset or
        DataLoader whose items are (x, y) pairs (y unused) or x alone: the samples of every x, in the data's order,
        read batch by batch (``cvae.streams``).
        """
        parameter = next(self.parameters())
        if is_stream(x):
            num_samples = check_num_samples(num_samples)
            generator = check_generator(generator, parameter.device)
            stream = Stream(x, "x", self, pairs=False)
            with autocast(resolve(precision, parameter.device), parameter.device):
                parts = [self._sample(batch[0], num_samples, generator, mean)
                         for batch in stream.sequential(SAMPLE_BLOCK)]
            return torch.cat(parts, dim=1)
        x = from_numpy(x, parameter.dtype)
        check_array(x, "x", self.x_dim, "x_dim", parameter.dtype)
        num_samples = check_num_samples(num_samples)
        generator = check_generator(generator, parameter.device)
        x = x.to(parameter.device)
        what = f"num_samples={num_samples} draws for {x.shape[0]} row(s) of x"
        remedy = "draw fewer at a time (several calls, or fewer rows of x per call)"
        # z, the generation net's output and the draws, at the least
        outputs = (self.likelihood.num_params + 1) * math.prod(self.y_shape)
        check_fits(num_samples * x.shape[0] * (self.z_dim + outputs), parameter.dtype, x.device, what, remedy)
        with naming(f"{what}: {remedy}"), autocast(resolve(precision, x.device), x.device):
            return self._sample(x, num_samples, generator, mean)

    def _sample(self, x: torch.Tensor, num_samples: int, generator: torch.Generator | None,
                mean: bool) -> torch.Tensor:
        context = self.context(x)
        z = self.prior(x, context).rsample((num_samples,), generator=generator)
        params = self.params(x, z, context)
        if self.autoregression is not None:
            return fill_in_order(params, self.autoregression, x, self.likelihood, self.y_dim, mean, generator)
        values = self.likelihood.mean(params) if mean else self.likelihood.sample(params, generator)
        return shaped_event(values, self.y_shape, self.likelihood, mean)

    # ---- saving and loading: the model's record (cvae.records) ------------------------------------------------
    def arguments(self) -> dict:
        """The constructor's arguments that rebuild this model: sizes, likelihood, and a baseline that its own record
        rebuilds (``save`` / ``load``, cvae.records)."""
        arguments = {"x_dim": self.x_dim, "y_dim": self.y_dim, "z_dim": self.z_dim, "hidden": list(self.hidden),
                     "likelihood": self.likelihood, "prior_components": self.prior_components}
        if self.networks != "mlp":
            arguments["networks"] = self.networks
        if self.baseline is not None and "baseline" not in self.custom:
            arguments["baseline"] = self.baseline
        return arguments

    def user_modules(self) -> list[str]:
        return list(self.custom)

    @classmethod
    def legacy_record(cls, config: dict) -> dict:
        """The record of a checkpoint of an earlier version, {"kind": "conditional_vae", "config": config}."""
        arguments = {name: config[name] for name in ("x_dim", "y_dim", "z_dim", "hidden", "prior_components")}
        arguments["likelihood"] = {"likelihood": config["likelihood"]}
        if config.get("baseline") is not None:
            arguments["baseline"] = {"model": Regressor.legacy_record(config["baseline"])}
        return {"class": qualified_name(cls), "args": arguments,
                "modules": list(config.get("custom", []))}


def _check_output(out: object, module: str, shape: tuple[int, ...], meaning: str) -> None:
    """A ValueError naming the network (the user's module given as ``module``=, or the default one) that returned
    something other than a tensor of the shape the model reads (``meaning``: what its columns are)."""
    if isinstance(out, torch.Tensor) and tuple(out.shape) == tuple(shape):
        return
    got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
    raise ValueError(f"the {module} network ({module}=) returned {got}, expected shape {tuple(shape)}: {meaning}. "
                     f"Make the {module} module return that many columns.")


def _check_baseline_likelihood(baseline: nn.Module | None, likelihood: likelihoods.Likelihood) -> None:
    """A Regressor baseline predicts y in the form the model's networks take it: real values (N, y_dim) for a
    real-valued y, the class probabilities (N, y_dim, K) of the same K classes for a Categorical y."""
    if not isinstance(baseline, Regressor):
        return
    theirs = baseline.likelihood
    if theirs.discrete != likelihood.discrete or (likelihood.discrete and theirs != likelihood):
        raise ValueError(f"baseline= is a Regressor with the {theirs!r} likelihood, which does not predict y in the "
                         f"form that a ConditionalVAE with {likelihood!r} takes it: under a Categorical likelihood the "
                         "baseline must be a Regressor with the same Categorical likelihood (its prediction, the class "
                         "probabilities, enters flattened), and under a likelihood of real-valued y one of "
                         "real-valued y")


def _rebuildable(baseline: nn.Module) -> bool:
    """A baseline that save/load can rebuild from its record alone: a model of the package without modules of the
    user's own."""
    return isinstance(baseline, Recorded) and not baseline.user_modules()
