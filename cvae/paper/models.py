"""The paper's quadrant experiment on the general model: the baseline and the CVAE of section 5.1.

Sohn, Lee, Yan (2015), section 4 and figure 1(d). x is the whole 784-pixel image with -1 on the pixels it
does not have (the tutorial's convention) and y the output pixels only, in raster order. The baseline network
predicts y_hat from x; the conditional prior network p(z|x) and the generation network p(y|x,z) both receive x
with its unknown pixels filled by y_hat (the "recurrent connection"), and the recognition network q(z|x,y)
the whole image: both are ``QuadrantImage``, the task's way of combining x and y. All networks are MLPs with
ReLU hidden layers (default 500-500, z of 200).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cvae import likelihoods
from cvae.checkpoints import CheckpointError
from cvae.conditional_vae import ConditionalVAE
from cvae.inputs import check_device
from cvae.records import encode, qualified_name
from cvae.regressor import Regressor

from .cli import UserError
from .config import RunConfig
from .quadrants import IMAGE_SIDE, NUM_PIXELS, QuadrantTask, check_num_quadrants
from .runs import read_run, setting_paths


class QuadrantImage(nn.Module):
    """Combine x (..., 784) and the output pixels y (..., N, num_output_pixels) into the whole image: x's pixels
    where x has them, y's elsewhere. For the recognition net y is the truth; for the prior and generation nets it
    is the baseline's prediction y_hat (x_filled)."""

    def __init__(self, task: QuadrantTask):
        super().__init__()
        self.task, self.out_dim = task, NUM_PIXELS

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.task.combine(x, y)


class Autoregression(nn.Module):
    """An autoregressive term added to the generation net's logits, for the strong preset:

        p(y|x,z) = prod_i Bernoulli(y_i; sigmoid(g_i(z, x) + a_i)),   a_i = sum_{j < i} W_ij image_j,

    with i over y's pixels and j over the pixels before i in raster order, of the whole image (x's pixels and
    y's; with a window, only those in the window x window square centred on i): a masked linear layer, as in
    the fully visible sigmoid belief net (Frey 1998) and NADE / MADE (Larochelle & Murray 2011, Germain et
    al. 2015). Each factor is a Bernoulli given earlier pixels, so the
    product is still a normalized distribution of y; with W = 0 (its initial value) it is the paper's
    factorized decoder. a does not depend on z, so it is computed once per image for all samples of z.
    """

    def __init__(self, task: QuadrantTask, window: int = 0):
        super().__init__()
        self.window = int(window)
        self.image = QuadrantImage(task)
        outputs = task.output_mask.nonzero()[:, 0]
        self.weight = nn.Parameter(torch.zeros(len(outputs), NUM_PIXELS))
        # mask[i, j] = 1 where pixel j comes before output pixel i in raster order (and, with a window, lies in
        # the window x window square centred on it)
        pixels = torch.arange(NUM_PIXELS)
        mask = pixels < outputs[:, None]
        if self.window:
            near = lambda a, b: (a[:, None] - b[None, :]).abs() <= self.window // 2  # noqa: E731
            mask &= near(outputs // IMAGE_SIDE, pixels // IMAGE_SIDE) & near(outputs % IMAGE_SIDE, pixels % IMAGE_SIDE)
        self.register_buffer("mask", mask.float(), persistent=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (N, 784) and y (..., N, num_output_pixels) -> a (..., N, num_output_pixels)."""
        return F.linear(self.image(x, y), self.weight * self.mask)


# what a checkpoint of an earlier version, written before an option existed, was made with
LEGACY_DEFAULTS = {"autoregressive": False, "ar_window": 0, "likelihood": "bernoulli"}


def autoregression_options(model: nn.Module) -> dict:
    """The constructor options that rebuild a model's autoregressive term: {"autoregressive", "ar_window"}."""
    term = model.autoregression
    return {"autoregressive": term is not None, "ar_window": term.window if term is not None else 0}


class BaselineNet(Regressor):
    """The deterministic baseline: an MLP from x (N, 784) to the logits of the output pixels,

    p(y|x) = prod_i Bernoulli(y_i; sigmoid(f(x)_i)) over the output pixels i (or another likelihood). With
    autoregressive (only the control of the strong preset, cvae-sohn autoregressive-baseline) the logits get an
    Autoregression term a_i, and the likelihood is still exact.
    """

    LEGACY_KINDS = ("baseline",)  # the checkpoints of earlier versions (cvae.records.legacy_record)

    def __init__(self, num_quadrants: int, hidden: Sequence[int] = (500, 500), autoregressive: bool = False,
                 ar_window: int = 0, likelihood: likelihoods.Likelihood | None = None):
        task = QuadrantTask(num_quadrants)
        likelihood = likelihood if likelihood is not None else likelihoods.Bernoulli()
        super().__init__(NUM_PIXELS, task.num_output_pixels, hidden, likelihood)
        self.task = task
        self.autoregression = Autoregression(task, ar_window) if autoregressive else None

    def arguments(self) -> dict:
        return {"num_quadrants": self.task.num_quadrants, "hidden": list(self.hidden), "likelihood": self.likelihood,
                **autoregression_options(self)}

    def user_modules(self) -> list[str]:
        return []

    @classmethod
    def legacy_record(cls, config: dict) -> dict:
        """The record of a checkpoint of an earlier version, {"kind": "baseline", "config": config}."""
        config = LEGACY_DEFAULTS | config
        return {"class": qualified_name(cls), "args": {
            "num_quadrants": config["num_quadrants"], "hidden": config["hidden"], "likelihood":
                encode(likelihoods.by_name(config["likelihood"])),
            "autoregressive": config["autoregressive"], "ar_window": config["ar_window"]}}

    @classmethod
    def from_run(cls, run_dir: str | Path, quadrants: int, device: str | torch.device = "cpu") -> BaselineNet:
        """The baseline of a finished run (the directory train.py --out wrote) for the setting with that many input
        quadrants: its best checkpoint (lowest validation loss), in eval mode, on the device. A UserError says why
        when run_dir is not a finished run or did not train that setting."""
        return _from_run(run_dir, quadrants, "baseline", device)


class CVAE(ConditionalVAE):
    """The conditional VAE of Sohn et al. (2015) on the quadrant task, with the baseline-fed prior:

    recognition q(z|x,y): MLP on the whole image -> Gaussian (loc, scale)
    prior       p(z|x):   MLP on x_filled -> Gaussian (loc, scale)
    generation  p(y|x,z): MLP on [z, x_filled] -> Bernoulli logits of the output pixels
    The baseline is frozen: it is trained first and only supplies y_hat. With autoregressive (the strong
    preset; the paper's model has none) the logits get an Autoregression term.
    """

    LEGACY_KINDS = ("cvae",)  # the checkpoints of earlier versions (cvae.records.legacy_record)

    def __init__(self, baseline: BaselineNet, z_dim: int = 200, hidden: Sequence[int] = (500, 500),
                 autoregressive: bool = False, ar_window: int = 0):
        task = baseline.task
        super().__init__(NUM_PIXELS, task.num_output_pixels, z_dim, hidden, baseline.likelihood, baseline=baseline,
                         combine=QuadrantImage(task), prior_components=1)
        self.task = task
        self.autoregression = Autoregression(task, ar_window) if autoregressive else None

    def arguments(self) -> dict:
        return {"baseline": self.baseline, "z_dim": self.z_dim, "hidden": list(self.hidden),
                **autoregression_options(self)}

    def user_modules(self) -> list[str]:
        return []

    @classmethod
    def legacy_record(cls, config: dict) -> dict:
        """The record of a checkpoint of an earlier version, {"kind": "cvae", "config": config}."""
        config = LEGACY_DEFAULTS | config
        baseline = BaselineNet.legacy_record({"num_quadrants": config["num_quadrants"],
                                              "hidden": config["baseline_hidden"], "likelihood": config["likelihood"]})
        return {"class": qualified_name(cls), "args": {
            "baseline": {"model": baseline}, "z_dim": config["z_dim"], "hidden": config["hidden"],
            "autoregressive": config["autoregressive"], "ar_window": config["ar_window"]}}

    @classmethod
    def from_run(cls, run_dir: str | Path, quadrants: int, device: str | torch.device = "cpu") -> CVAE:
        """The CVAE (with its frozen baseline) of a finished run (the directory train.py --out wrote) for the
        setting with that many input quadrants: its best checkpoint (lowest validation loss), in eval mode, on the
        device. A UserError says why when run_dir is not a finished run or did not train that setting."""
        return _from_run(run_dir, quadrants, "cvae", device)


def _from_run(run_dir: str | Path, quadrants: int, kind: str, device: str | torch.device) -> BaselineNet | CVAE:
    """The best checkpoint of kind "baseline" or "cvae" of a finished run for setting quadrants, in eval mode on
    device (``BaselineNet.from_run``, ``CVAE.from_run``)."""
    k, run_dir, device = check_num_quadrants(quadrants), Path(run_dir), check_device(device)
    saved = read_run(run_dir)
    if not saved.get("finished"):
        raise UserError(f"{run_dir} has not finished training (it was interrupted, or is still running), so its "
                        "checkpoints are not final. Continue it first with: python train.py --resume "
                        f"{run_dir}")
    config = RunConfig.from_dict(saved["config"])
    if k not in config.quadrants:
        trained, one = " ".join(map(str, config.quadrants)), len(config.quadrants) == 1
        raise UserError(f"{run_dir} did not train the setting with {k} input quadrant{'s' if k > 1 else ''}: it "
                        f"trained {'only ' if one else ''}--quadrants {trained}. Use "
                        f"{'that' if one else 'one of those'}, or train a run with --quadrants {k}.")
    path = getattr(setting_paths(run_dir, k), kind)
    return load_model(path, kind, k, config, device).eval()


def expected_arguments(kind: str, k: int, config: RunConfig) -> dict:
    """The constructor arguments (as a record holds them, cvae.records) of a run's model of kind "baseline" or "cvae"
    for setting k: the baseline never has the autoregressive term (cvae-sohn autoregressive-baseline's control is not
    a run's model). Made from the configuration alone, without building a model (which would draw from torch's
    global generator)."""
    likelihood = encode(likelihoods.by_name(config.likelihood))
    baseline = {"num_quadrants": k, "hidden": list(config.hidden), "likelihood": likelihood, "autoregressive": False,
                "ar_window": 0}
    if kind == "baseline":
        return baseline
    return {"baseline": {"model": {"class": qualified_name(BaselineNet), "args": baseline}}, "z_dim": config.z_dim,
            "hidden": list(config.hidden), "autoregressive": config.autoregressive,
            "ar_window": config.ar_window if config.autoregressive else 0}


MODEL_CLASSES = {"baseline": BaselineNet, "cvae": CVAE}  # a run's models by kind


def load_model(path: Path, kind: str, k: int, config: RunConfig, device: torch.device) -> BaselineNet | CVAE:
    """Load a run's best checkpoint of kind "baseline" or "cvae" and check that it is the model the run's
    configuration makes for setting k (CheckpointError naming what differs)."""
    model = MODEL_CLASSES[kind].load(path)
    saved, expected = flat_arguments(model.record()["args"]), flat_arguments(expected_arguments(kind, k, config))
    wrong = [f"{key} is {saved.get(key)!r} but the run says {value!r}" for key, value in expected.items()
             if saved.get(key) != value]
    if wrong:
        raise CheckpointError(f"checkpoint {path} was made for another configuration: {', '.join(wrong)}. Point at the "
                              "run that made it, or re-run training.")
    return model.to(device)


def flat_arguments(arguments: dict, prefix: str = "") -> dict:
    """A record's arguments with those of the models inside it under "name.": {"baseline.hidden": [...], ...}; a
    likelihood by its name."""
    flat = {}
    for key, value in arguments.items():
        if isinstance(value, dict) and "model" in value:
            flat |= flat_arguments(value["model"]["args"], f"{prefix}{key}.")
        elif isinstance(value, dict) and "likelihood" in value:
            flat[prefix + key] = value["likelihood"].get("name")
        else:
            flat[prefix + key] = value
    return flat
