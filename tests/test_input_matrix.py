"""Every way in, every likelihood, every kind of network, on shaped x and y: tensors, numpy arrays, a numpy memmap on
disk, a torch Dataset and a DataLoader; Bernoulli, Gaussian, continuous Bernoulli, Laplace and Categorical; the
default MLPs, networks="conv" and modules of the user's own; x (1, 4, 4) and y (1, 4, 4). The four that fit reads
in its own order train the same weights bit for bit; the estimators and sample give the same values from every
kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cvae import ConditionalVAE, estimators, fit, likelihoods

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 4, 4)
Z_DIM = 2
LIKELIHOODS = {"bernoulli": likelihoods.Bernoulli(), "gaussian": likelihoods.Gaussian(),
               "continuous-bernoulli": likelihoods.ContinuousBernoulli(), "laplace": likelihoods.Laplace(),
               "categorical": likelihoods.Categorical(3)}
KINDS = ("tensors", "numpy", "memmap", "dataset", "dataloader")
SETTINGS = dict(epochs=2, batch_size=16, kl_warmup=0, lr_halving=0, seed=0, progress=False)


def make_data(likelihood: likelihoods.Likelihood, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, 1, 4, 4) and y (n, 1, 4, 4) in the likelihood's support, y depending on x."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *SHAPE, generator=g)
    if isinstance(likelihood, likelihoods.Categorical):
        return x, (x * 3).long().clamp(max=2).flip(-1)
    if isinstance(likelihood, likelihoods.Bernoulli):
        return x, (torch.rand(n, *SHAPE, generator=g) < x.flip(-1)).float()
    if isinstance(likelihood, likelihoods.ContinuousBernoulli):
        return x, (x.flip(-1) + 0.1 * torch.rand(n, *SHAPE, generator=g)).clamp(0, 1)
    return x, x.flip(-1) + 0.1 * torch.randn(n, *SHAPE, generator=g)


def as_kind(kind: str, x: torch.Tensor, y: torch.Tensor, folder: Path):
    """(x, y) as the given kind of input: a pair of tensors or arrays, a Dataset or a DataLoader."""
    if kind == "tensors":
        return x, y
    if kind == "numpy":
        return x.numpy(), y.numpy()
    if kind == "memmap":
        arrays = []
        for name, values in (("x", x.numpy()), ("y", y.numpy())):
            stored = np.memmap(folder / f"{name}_{len(x)}.npy", dtype=values.dtype, mode="w+", shape=values.shape)
            stored[:] = values
            stored.flush()
            arrays.append(np.memmap(folder / f"{name}_{len(x)}.npy", dtype=values.dtype, mode="r",
                                    shape=values.shape))
        return tuple(arrays)
    if kind == "dataset":
        return TensorDataset(x, y)
    return DataLoader(TensorDataset(x, y), batch_size=16)


class UserGeneration(nn.Module):
    """A generation module of the user's own for an image c: module(z, c) -> the likelihood's parameters."""

    def __init__(self, c_size: int, num_outputs: int):
        super().__init__()
        self.linear = nn.Linear(Z_DIM + c_size, num_outputs)

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat([z, c.flatten(1)], 1))


def build(likelihood: likelihoods.Likelihood, networks: str) -> ConditionalVAE:
    torch.manual_seed(0)
    if networks != "user":
        return ConditionalVAE(SHAPE, SHAPE, z_dim=Z_DIM, hidden=(8,), likelihood=likelihood, networks=networks,
                              prior_components=1)
    y_channels = likelihood.num_classes if likelihood.discrete else 1  # y enters one-hot under a Categorical
    recognition = nn.Sequential(nn.Flatten(), nn.Linear((1 + y_channels) * 16, 2 * Z_DIM))
    prior = nn.Sequential(nn.Flatten(), nn.Linear(16, 2 * Z_DIM))
    return ConditionalVAE(SHAPE, SHAPE, z_dim=Z_DIM, likelihood=likelihood, recognition=recognition, prior=prior,
                          generation=UserGeneration(16, likelihood.num_params * 16))


@pytest.mark.parametrize("networks", ["mlp", "conv", "user"])
@pytest.mark.parametrize("name", list(LIKELIHOODS))
def test_every_kind_of_input_trains_samples_and_evaluates_alike(name: str, networks: str, tmp_path: Path):
    likelihood = LIKELIHOODS[name]
    (x, y), (vx, vy) = make_data(likelihood, 64, 0), make_data(likelihood, 32, 1)
    models = {}
    for kind in KINDS:
        models[kind] = build(likelihood, networks)
        history = fit(models[kind], as_kind(kind, x, y, tmp_path), as_kind(kind, vx, vy, tmp_path), **SETTINGS)
        assert len(history) == 2 and all(np.isfinite(entry["val_loss"]) for entry in history), kind
    reference = models["tensors"].state_dict()
    for kind in ("numpy", "memmap", "dataset"):  # fit reads these in the tensors' own batches and order
        assert all(torch.equal(reference[k], v) for k, v in models[kind].state_dict().items()), kind
    trained = models["dataloader"]  # read in the DataLoader's order: other weights, the same model to evaluate
    assert any(not torch.equal(reference[k], v) for k, v in trained.state_dict().items())

    def per_batch(call, size: int) -> torch.Tensor:
        """call(x, y, generator) on the tensors' batches of ``size`` in turn, one generator through them all."""
        generator = torch.Generator().manual_seed(0)
        return torch.cat([call(vx[i:i + size], vy[i:i + size], generator) for i in range(0, len(vx), size)],
                         dim=-1 if call is importance else 1)

    def importance(xs, ys, generator):
        return estimators.cll_importance(trained, xs, ys, num_samples=5, generator=generator, progress=False)

    def draws(xs, ys, generator):
        return trained.sample(xs, 3, generator=generator)

    # a DataLoader is read in its batches (16 here), the others as one block of 32: the same draws where alike
    expected = {kind: per_batch(importance, 16 if kind == "dataloader" else 32) for kind in KINDS}
    expected_draws = {kind: per_batch(draws, 16 if kind == "dataloader" else 32) for kind in KINDS}
    for kind in KINDS:
        data = as_kind(kind, vx, vy, tmp_path)
        streamed = kind in ("dataset", "dataloader")
        values = importance(*((data, None) if streamed else data), torch.Generator().manual_seed(0))
        assert values.shape == (32,) and torch.isfinite(values).all(), kind
        torch.testing.assert_close(values, expected[kind], msg=kind)
        drawn = trained.sample(data if streamed else data[0], 3, generator=torch.Generator().manual_seed(0))
        assert drawn.shape == (3, 32, *SHAPE), kind
        assert drawn.dtype == (torch.int64 if likelihood.discrete else torch.float32), kind
        assert torch.equal(drawn, expected_draws[kind]), kind
