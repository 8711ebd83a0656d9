"""fit returns the model it was asked to train, or says why not: a checkpoint directory belongs to one training (its
data, settings and model) and to one process at a time; half-precision weights, a validation loss that is not
finite and a KL warm-up longer than the training are refused, stopped or warned about."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from cvae import ConditionalVAE, Regressor, fit, locks, training
from cvae.checkpoints import CheckpointError
from cvae.training import NonFiniteLoss

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = {"batch_size": 16, "kl_warmup": 0, "progress": False}


def data(seed: int, n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=generator)
    return x, x @ torch.tensor([[1.0, -1.0, 0.5], [0.3, 0.2, -0.4]]) + 0.1 * torch.randn(n, 3, generator=generator)


def small_model(seed: int = 0) -> ConditionalVAE:
    torch.manual_seed(seed)
    return ConditionalVAE(2, 3, z_dim=2, hidden=(8,))


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def test_a_checkpoint_directory_resumes_only_the_training_that_wrote_it(tmp_path):
    first = fit(small_model(), data(0), data(1), epochs=2, checkpoint_dir=tmp_path, **FAST)
    assert fit(small_model(), data(0), data(1), epochs=2, checkpoint_dir=tmp_path, **FAST) == first  # the same
    with pytest.raises(CheckpointError, match="state of another training: its data differ") as error:
        fit(small_model(), data(2), data(1), epochs=2, checkpoint_dir=tmp_path, **FAST)
    assert f"delete {tmp_path} to start afresh" in str(error.value)
    with pytest.raises(CheckpointError, match=r"its settings differ: lr 0\.001 \(now 0\.01\)"):
        fit(small_model(), data(0), data(1), epochs=2, lr=0.01, checkpoint_dir=tmp_path, **FAST)
    with pytest.raises(CheckpointError, match="its model differs"):
        fit(ConditionalVAE(2, 3, z_dim=3, hidden=(8,)), data(0), data(1), epochs=2, checkpoint_dir=tmp_path, **FAST)
    with pytest.raises(CheckpointError, match="its model differs"):
        fit(Regressor(2, 3, hidden=(8,)), data(0), data(1), epochs=2, checkpoint_dir=tmp_path, **FAST)


def test_a_checkpoint_directory_in_use_by_another_fit_is_refused_and_left_alone(tmp_path):
    model = small_model()
    before = weights(model)
    with locks.hold(tmp_path, command="another fit"):
        with pytest.raises(locks.DirectoryInUse, match="another fit"):
            fit(model, data(0), data(1), epochs=1, checkpoint_dir=tmp_path, **FAST)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert list(tmp_path.iterdir()) == []  # nothing written (the holder removed its lock file as it let go)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_refused_with_what_to_do(dtype):
    model = small_model().to(dtype)
    x, y = data(0)
    with pytest.raises(ValueError, match=rf"parameters are {dtype}.*model\.float\(\).*precision='bf16'"):
        fit(model, (x.to(dtype), y.to(dtype)), (x.to(dtype), y.to(dtype)), epochs=1, **FAST)


@pytest.mark.parametrize("in_a_directory", [False, True])
def test_a_validation_loss_that_is_not_finite_stops_with_the_best_weights(tmp_path, monkeypatch, in_a_directory):
    """Epoch 1 is the best; epoch 2's validation loss is NaN (as a diverged model's): fit stops there, and the
    model holds epoch 1's weights, not epoch 2's."""
    seen, losses = [], iter([5.0, math.nan])
    real = training.validation_loss

    def validation(model, *args, **kwargs):
        real(model, *args, **kwargs)
        seen.append(weights(model))
        return next(losses)

    monkeypatch.setattr(training, "validation_loss", validation)
    model = small_model()
    with pytest.raises(NonFiniteLoss, match="validation loss became nan at epoch 2.*best epoch before it.*lr"):
        fit(model, data(0), data(1), epochs=4, checkpoint_dir=tmp_path if in_a_directory else None, **FAST)
    assert len(seen) == 2 and not all(torch.equal(seen[0][key], seen[1][key]) for key in seen[0])
    assert all(torch.equal(seen[0][key], value) for key, value in model.state_dict().items())


def test_a_kl_warm_up_as_long_as_the_training_is_warned_about():
    with pytest.warns(UserWarning, match="epochs=3 ends within the KL warm-up .kl_warmup=3.*full ELBO is never"):
        fit(small_model(), data(0), data(1), epochs=3, batch_size=16, kl_warmup=3, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(small_model(), data(0), data(1), epochs=3, batch_size=16, kl_warmup=2, progress=False)
        fit(Regressor(2, 3, hidden=(8,)), data(0), data(1), epochs=3, batch_size=16, progress=False)  # no KL term
    assert not any("KL warm-up" in str(record.message) for record in caught)
