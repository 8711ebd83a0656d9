"""bf16 autocast (cvae.precision): what auto picks on which hardware, that every number stays float32, and that
bf16 estimates of trained models are those of float32 within 0.05 nats per setting mean."""

from pathlib import Path

import pytest
import torch

from cvae import fit, precision
from cvae.conditional_vae import ConditionalVAE
from cvae.paper.data import load_splits
from cvae.paper.evaluation import per_image_cll
from cvae.paper.models import CVAE, BaselineNet
from cvae.paper.quadrants import QuadrantTask

DATA = Path(__file__).resolve().parents[1] / "data"
CPU = torch.device("cpu")


@pytest.mark.parametrize(("vendor", "flags", "expected"), [
    ("GenuineIntel", {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, "bf16"),
    ("AuthenticAMD", {"avx512f", "avx512_bf16"}, "bf16"),
    ("GenuineIntel", {"avx512f", "avx512_bf16"}, "fp32"),
    ("AuthenticAMD", {"avx2"}, "fp32"),
    ("", set(), "fp32"),
])
def test_auto_picks_bf16_only_where_the_cpu_multiplies_it_natively(vendor, flags, expected):
    chosen, reason = precision.cpu_precision(vendor, flags)
    assert chosen == expected and reason


def test_resolve_passes_explicit_choices_and_refuses_unknown_ones():
    assert precision.resolve("fp32", CPU) == "fp32" and precision.resolve("bf16", CPU) == "bf16"
    assert precision.resolve("auto", CPU) == precision.cpu_choice()[0]
    with pytest.raises(ValueError, match="'fp16' is not one of auto, fp32, bf16"):
        precision.resolve("fp16", CPU)


def test_under_bf16_the_matmuls_are_bf16_and_every_output_float32():
    torch.manual_seed(0)
    model = ConditionalVAE(6, 5, z_dim=2, hidden=(8,))
    x, y, z = torch.randn(4, 6), torch.rand(4, 5), torch.randn(3, 4, 2)
    with precision.autocast("bf16", CPU):
        assert model.prior_net(x).dtype == torch.bfloat16  # the network itself runs in bf16
        prior, posterior = model.prior(x), model.posterior(x, y)  # the default prior: a mixture of Gaussians
        for tensor in (prior.log_weights, prior.components.loc, prior.components.scale, posterior.loc,
                       posterior.scale, model.params(x, z), model.log_likelihood(x, y, z)):
            assert tensor.dtype == torch.float32
    with precision.autocast("fp32", CPU):
        assert model.prior_net(x).dtype == torch.float32


@pytest.fixture(scope="module")
def trained_settings():
    """A small baseline and CVAE per setting, trained briefly on real MNIST, and 1000 test images each."""
    splits = load_splits(DATA, "mnist")
    settings = {}
    for k in (1, 2, 3):
        task = QuadrantTask(k)
        train, val = task.split(splits.train[:3000]), task.split(splits.val[:500])
        torch.manual_seed(k)
        baseline = BaselineNet(k, [128, 128])
        fit(baseline, train, val, epochs=2, kl_warmup=0, progress=False)
        cvae = CVAE(baseline, 16, [128, 128])
        fit(cvae, train, val, epochs=2, kl_warmup=0, progress=False)
        settings[k] = (baseline, cvae, *task.split(splits.test[:1000]))
    return settings


@pytest.mark.parametrize("k", [1, 2, 3])
def test_bf16_estimates_equal_float32_within_five_hundredths_of_a_nat(trained_settings, k):
    baseline, cvae, x, y = trained_settings[k]
    fp32, bf16 = (per_image_cll(baseline, cvae, x, y, 20, seed=0, progress=False, arithmetic=arithmetic)
                  for arithmetic in ("fp32", "bf16"))
    for key in ("nn", "cvae_elbo", "cvae_mc", "cvae_is"):
        assert bf16[key].dtype == fp32[key].dtype
        assert not torch.equal(bf16[key], fp32[key]), key  # the bf16 path did run
        assert abs(bf16[key].mean() - fp32[key].mean()) < 0.05, (key, bf16[key].mean(), fp32[key].mean())
