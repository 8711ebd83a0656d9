"""The peer: the Pyro 1.9.1 CVAE tutorial's models and data pipeline (examples/cvae in the Pyro repository,
https://pyro.ai/examples/cvae.html), written here with Pyro's public API, and its whole training process.

    python benchmarks/pyro_tutorial.py [--quadrants 1] [--epochs 1] [--train-subset 50000]

runs the tutorial's training as one process: its per-item data pipeline (torchvision's MNIST with the ToTensor
and MaskImages transforms, DataLoader, batch 128), the baseline MLP trained on the masked binary cross-entropy
with a validation phase over the 10,000 test images each epoch (as the tutorial validates), then the CVAE with
SVI and Trace_ELBO and its validation phase, each model's weights saved at the end. No progress bars (the
tutorial shows tqdm bars; leaving them out favours the peer). ``benchmarks/whole_process.py`` times it against
``train.py``; ``benchmarks/compare_pyro.py`` imports the models. This module does not import cvae.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
import torchvision
from pyro.infer import SVI, Trace_ELBO
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

DATA_DIR = Path(__file__).resolve().parent.parent / "data"  # the repository's data/, wherever we run from
BATCH_SIZE = 128


class PeerBaselineNet(nn.Module):
    def __init__(self, hidden_1: int = 500, hidden_2: int = 500):
        super().__init__()
        self.fc1 = nn.Linear(784, hidden_1)
        self.fc2 = nn.Linear(hidden_1, hidden_2)
        self.fc3 = nn.Linear(hidden_2, 784)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.relu(self.fc1(x.view(-1, 784)))
        hidden = self.relu(self.fc2(hidden))
        return torch.sigmoid(self.fc3(hidden))


def masked_bce_sum(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The tutorial's MaskedBCELoss(reduction="sum"): BCE over the pixels that are not -1 in the target.

    torch >= 2.14 rejects targets outside [0, 1], so the -1 pixels are clamped to 0 before the BCE (they
    are zeroed right after, as in the tutorial): the same value, one extra elementwise op.
    """
    target = target.view(probs.shape)
    loss = F.binary_cross_entropy(probs, target.clamp(min=0), reduction="none")
    loss[target == -1] = 0
    return loss.sum()


class Encoder(nn.Module):
    """The tutorial's prior and recognition nets: the image with y's pixels put into x's -1 pixels."""

    def __init__(self, z_dim: int = 200, hidden_1: int = 500, hidden_2: int = 500):
        super().__init__()
        self.fc1 = nn.Linear(784, hidden_1)
        self.fc2 = nn.Linear(hidden_1, hidden_2)
        self.fc31 = nn.Linear(hidden_2, z_dim)
        self.fc32 = nn.Linear(hidden_2, z_dim)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xc = x.clone()
        xc[x == -1] = y[x == -1]
        hidden = self.relu(self.fc1(xc.view(-1, 784)))
        hidden = self.relu(self.fc2(hidden))
        return self.fc31(hidden), torch.exp(self.fc32(hidden))


class Decoder(nn.Module):
    """The tutorial's generation net: z only -> pixel probabilities of the whole image."""

    def __init__(self, z_dim: int = 200, hidden_1: int = 500, hidden_2: int = 500):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_1)
        self.fc2 = nn.Linear(hidden_1, hidden_2)
        self.fc3 = nn.Linear(hidden_2, 784)
        self.relu = nn.ReLU()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.fc1(z))
        y = self.relu(self.fc2(y))
        return torch.sigmoid(self.fc3(y))


class PeerCVAE(nn.Module):
    def __init__(self, baseline_net: PeerBaselineNet, z_dim: int = 200, hidden_1: int = 500, hidden_2: int = 500):
        super().__init__()
        self.baseline_net = baseline_net
        self.prior_net = Encoder(z_dim, hidden_1, hidden_2)
        self.generation_net = Decoder(z_dim, hidden_1, hidden_2)
        self.recognition_net = Encoder(z_dim, hidden_1, hidden_2)

    def model(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> torch.Tensor:
        pyro.module("generation_net", self)
        batch_size = xs.shape[0]
        with pyro.plate("data"):
            with torch.no_grad():
                y_hat = self.baseline_net(xs).view(xs.shape)
            prior_loc, prior_scale = self.prior_net(xs, y_hat)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            loc = self.generation_net(zs)
            if ys is not None:
                mask_loc = loc[(xs == -1).view(-1, 784)].view(batch_size, -1)
                mask_ys = ys[xs == -1].view(batch_size, -1)
                pyro.sample("y", dist.Bernoulli(mask_loc, validate_args=False).to_event(1), obs=mask_ys)
            else:
                pyro.deterministic("y", loc.detach())
            return loc

    def guide(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        with pyro.plate("data"):
            if ys is None:
                y_hat = self.baseline_net(xs).view(xs.shape)
                loc, scale = self.prior_net(xs, y_hat)
            else:
                loc, scale = self.recognition_net(xs, ys)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


class TutorialMNIST(Dataset):
    """The tutorial's CVAEMNIST with its ToTensor and MaskImages transforms, item by item."""

    def __init__(self, root: Path, num_quadrant_inputs: int, train: bool = True):
        self.original = torchvision.datasets.MNIST(str(root), train=train, download=False)
        self.num = num_quadrant_inputs

    def __len__(self) -> int:
        return len(self.original)

    def __getitem__(self, item: int) -> dict:
        image, digit = self.original[item]
        sample = {"original": torchvision.transforms.functional.to_tensor(image),
                  "digit": torch.as_tensor(np.asarray(digit), dtype=torch.int64)}
        tensor = sample["original"].squeeze()
        out = tensor.detach().clone()
        h, w = tensor.shape
        out[h // 2:, :w // 2] = -1
        if self.num == 2:
            out[:, :w // 2] = -1
        if self.num == 3:
            out[:h // 2, :] = -1
        inp = tensor.clone()
        inp[out != -1] = -1
        sample["input"], sample["output"] = inp, out
        return sample


def train_baseline(baseline: PeerBaselineNet, loaders: dict[str, DataLoader], epochs: int) -> None:
    """The tutorial's baseline training: Adam 1e-3 on the masked BCE per image, a validation phase each epoch."""
    optimizer = torch.optim.Adam(baseline.parameters(), lr=1e-3)
    for _ in range(epochs):
        for phase, loader in loaders.items():
            baseline.train(phase == "train")
            running = 0.0
            for batch in loader:
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    loss = masked_bce_sum(baseline(batch["input"]), batch["output"]) / batch["input"].size(0)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                running += loss.item()


def train_cvae(cvae: PeerCVAE, loaders: dict[str, DataLoader], epochs: int) -> None:
    """The tutorial's CVAE training: SVI with Trace_ELBO and pyro.optim.Adam 1e-3, a validation phase each epoch."""
    pyro.clear_param_store()
    svi = SVI(cvae.model, cvae.guide, pyro.optim.Adam({"lr": 1e-3}), loss=Trace_ELBO())
    for _ in range(epochs):
        for phase, loader in loaders.items():
            running = 0.0
            for batch in loader:
                step = svi.step if phase == "train" else svi.evaluate_loss
                running += step(batch["input"], batch["output"]) / batch["input"].size(0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quadrants", type=int, choices=(1, 2, 3), default=1)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-subset", type=int, default=50_000, help="the first N training images (ours: 50,000)")
    args = p.parse_args()
    train = Subset(TutorialMNIST(DATA_DIR, args.quadrants), range(args.train_subset))
    loaders = {"train": DataLoader(train, batch_size=BATCH_SIZE, shuffle=True, num_workers=0),
               "val": DataLoader(TutorialMNIST(DATA_DIR, args.quadrants, train=False), batch_size=BATCH_SIZE)}
    baseline = PeerBaselineNet()
    train_baseline(baseline, loaders, args.epochs)
    baseline.eval()
    cvae = PeerCVAE(baseline)
    train_cvae(cvae, loaders, args.epochs)
    with tempfile.TemporaryDirectory() as out:
        torch.save(baseline.state_dict(), Path(out) / "baseline_net.pth")
        torch.save(cvae.state_dict(), Path(out) / "cvae_net.pth")


if __name__ == "__main__":
    main()
