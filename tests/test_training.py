"""The training loop's parts: ``train_step``, ``EarlyStopping``, ``TrainingState`` (save and resume), ``Processes``
in one process, training in bf16, and ``fit``'s flushing of denormals."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from conftest import SMALL_TRAIN as TRAIN
from conftest import SMALL_VAL as VAL

from cvae import ConditionalVAE, fit
from cvae.checkpoints import CheckpointError
from cvae.settings import TrainingSettings
from cvae.training import (
    EarlyStopping,
    Processes,
    StopFlag,
    TrainingState,
    batch_loss,
    train_loop,
    train_step,
    validation_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread is faster than a busy machine's two




def small_model(seed: int = 0) -> ConditionalVAE:
    torch.manual_seed(seed)
    return ConditionalVAE(3, 2, z_dim=2, hidden=(16,))


def noise(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------ the schedules of the settings
@pytest.mark.parametrize("warmup, batches", [(3, 7), (1, 4), (4, 1)])
def test_the_kl_weight_rises_linearly_in_the_global_step_from_0_to_1_over_the_warmup(warmup, batches):
    """beta(t) = min(1, t / (W B)) at global step t = epoch B + step (Bowman et al. 2016's linear warm-up over W epochs
    of B steps): 0 at the first step, the same slope across an epoch's end, 1 from step W B on."""
    settings = TrainingSettings(kl_warmup=warmup)
    betas = [settings.kl_weight_at(epoch, step, batches) for epoch in range(warmup + 2) for step in range(batches)]
    assert betas == pytest.approx([min(1.0, t / (warmup * batches)) for t in range(len(betas))], abs=1e-12)
    assert betas[0] == 0.0 and betas[warmup * batches - 1] < 1.0 and betas[warmup * batches:] == [1.0] * (2 * batches)


def test_without_warmup_the_kl_weight_is_1_and_the_learning_rate_decays_geometrically():
    assert {TrainingSettings().kl_weight_at(epoch, step, 3) for epoch in range(3) for step in range(3)} == {1.0}
    settings = TrainingSettings(lr=0.01, lr_decay=0.5)
    assert [settings.lr_at(epoch) for epoch in range(4)] == pytest.approx([0.01, 0.005, 0.0025, 0.00125], rel=1e-12)


# ------------------------------------------------------------------------------------------------ train_step
def test_train_step_is_one_optimizer_step_on_the_weighted_loss_and_returns_it_detached():
    """Two steps of train_step and two written out (zero_grad, backward, step) give the same losses and weights;
    with SGD the weight scales the step, and a missing zero_grad would add the first step's gradient."""
    settings = TrainingSettings(objective="elbo")
    stepped, by_hand = small_model(), small_model()
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (stepped, by_hand)]
    generators = [noise(), noise()]
    for kl_weight, weight in ((0.3, 0.5), (1.0, 2.0)):
        step_loss = partial(batch_loss, settings, stepped)
        loss = train_step(step_loss, optimizers[0], TRAIN, generators[0], kl_weight, weight)
        expected = batch_loss(settings, by_hand, *TRAIN, generator=generators[1], kl_weight=kl_weight) * weight
        optimizers[1].zero_grad()
        expected.backward()
        optimizers[1].step()
        assert not loss.requires_grad and torch.equal(loss, expected.detach())
        for a, b in zip(stepped.parameters(), by_hand.parameters()):
            assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(stepped.parameters(), small_model().parameters()))


# ------------------------------------------------------------------------------------------------ EarlyStopping
def test_early_stopping_counts_epochs_without_improvement_and_halves_the_learning_rate():
    stopping = EarlyStopping(patience=5, lr_halving=2)
    decisions = []
    for epoch, val_loss in enumerate([3.0, 4.0, 4.0, 2.0, 5.0, 2.0, 5.0, 5.0, 5.0]):
        improved = stopping.update(epoch, val_loss)
        decisions.append((improved, stopping.bad_epochs, stopping.lr_scale, stopping.stop))
    assert decisions == [
        (True, 0, 1.0, False), (False, 1, 1.0, False), (False, 2, 0.5, False),  # halved after 2 bad epochs
        (True, 0, 0.5, False),  # an improvement resets the count, not the learning rate
        (False, 1, 0.5, False), (False, 2, 0.25, False),  # 2.0 again is no improvement
        (False, 3, 0.25, False), (False, 4, 0.125, False), (False, 5, 0.125, True)]
    assert stopping.best_val == 2.0


def test_epochs_within_the_kl_warm_up_always_improve():
    stopping = EarlyStopping(patience=1, kl_warmup=3)
    assert stopping.update(0, 5.0) and stopping.update(1, 9.0)  # worse, but the KL weight is still below 1
    assert stopping.best_val == 9.0 and not stopping.stop
    assert not stopping.update(2, 9.5)  # the warm-up's last epoch ends with the KL weight at 1
    assert stopping.stop


# ------------------------------------------------------------------------------------------------ TrainingState
def trained_state(model: ConditionalVAE) -> tuple[torch.optim.Optimizer, torch.Generator, TrainingState]:
    """An optimizer with moments, a noise generator that has drawn, and a state in mid-epoch."""
    optimizer, generator = torch.optim.Adam(model.parameters(), lr=0.01), noise()
    settings = TrainingSettings()
    step_loss = partial(batch_loss, settings, model)
    losses = torch.stack([train_step(step_loss, optimizer, TRAIN, generator) for _ in range(3)])
    state = TrainingState(seed=7, early_stopping=EarlyStopping(3, best_val=1.5, bad_epochs=1, lr_scale=0.5),
                          epoch=2, step=3, partial_losses=losses, history=[{"epoch": 1, "val_loss": 1.5}])
    return optimizer, generator, state


def test_a_saved_training_state_resumes_the_model_optimizer_noise_and_position(tmp_path):
    model = small_model()
    optimizer, generator, state = trained_state(model)
    state.save(tmp_path / "state.pt", model, optimizer, generator, Processes())
    assert list(torch.load(tmp_path / "state.pt", weights_only=True)) == [
        "epoch", "step", "best_val", "bad_epochs", "history", "finished", "partial_losses", "seed", "lr_scale",
        "model", "optimizer", "noise_rng"]

    other = small_model(seed=1)
    other_optimizer, other_generator = torch.optim.Adam(other.parameters(), lr=0.01), noise(5)
    resumed = TrainingState(seed=0, early_stopping=EarlyStopping(3))
    resumed.resume(tmp_path / "state.pt", other, other_optimizer, other_generator, Processes())
    assert (resumed.seed, resumed.epoch, resumed.step, resumed.history, resumed.finished) == (
        7, 2, 3, [{"epoch": 1, "val_loss": 1.5}], False)
    assert torch.equal(resumed.partial_losses, state.partial_losses)
    assert resumed.early_stopping == state.early_stopping
    assert torch.equal(torch.rand(4, generator=other_generator), torch.rand(4, generator=generator))
    settings = TrainingSettings()  # the next step is the same: weights and Adam's moments were restored
    for m, opt, gen in ((model, optimizer, generator), (other, other_optimizer, other_generator)):
        train_step(partial(batch_loss, settings, m), opt, TRAIN, gen)
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)


def test_a_state_from_before_the_learning_rate_halving_resumes_with_the_full_learning_rate(tmp_path):
    model = small_model()
    optimizer, generator, state = trained_state(model)
    state.save(tmp_path / "state.pt", model, optimizer, generator, Processes())
    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    del saved["lr_scale"]
    torch.save(saved, tmp_path / "old.pt")
    resumed = TrainingState(seed=0, early_stopping=EarlyStopping(3, lr_scale=0.25))
    resumed.resume(tmp_path / "old.pt", small_model(), torch.optim.Adam(model.parameters()), noise(), Processes())
    assert resumed.early_stopping.lr_scale == 1.0 and resumed.early_stopping.bad_epochs == 1


@pytest.mark.parametrize("keys, hidden, says", [
    (("bad_epochs", "history"), 16, "no bad_epochs, history"),
    (("model",), 16, "'model'"),
    ((), 8, "size mismatch"),  # the state of another model
])
def test_a_state_that_does_not_fit_is_refused_with_what_to_do(tmp_path, keys, hidden, says):
    model = small_model()
    optimizer, generator, state = trained_state(model)
    state.save(tmp_path / "state.pt", model, optimizer, generator, Processes())
    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    for key in keys:
        del saved[key]
    torch.save(saved, tmp_path / "state.pt")
    other = ConditionalVAE(3, 2, z_dim=2, hidden=(hidden,))
    with pytest.raises(CheckpointError) as caught:
        TrainingState(0, EarlyStopping(3)).resume(tmp_path / "state.pt", other, torch.optim.Adam(other.parameters()),
                                                   noise(), Processes())
    message = str(caught.value)
    assert "is not a training state for this model and configuration" in message and says in message
    assert "Delete it to restart this stage from scratch, or resume the run that wrote it." in message


# ------------------------------------------------------------------------------------------------ Processes
def test_in_one_process_processes_change_nothing():
    processes, settings, model = Processes(), TrainingSettings(), small_model()
    batch = torch.arange(10)
    part, weight = processes.shard(batch)
    assert torch.equal(part, batch) and weight == 1.0 and processes.is_main
    assert [torch.equal(a, b) for a, b in zip(processes.share(TRAIN), TRAIN)] == [True, True]
    assert torch.equal(processes.noise(torch.device("cpu"), 3).get_state(), noise(3).get_state())
    losses, stop = torch.tensor([1.0, 2.0]), StopFlag()
    assert processes.agree(losses, stop) == (losses, False)
    assert processes.noise_states(noise()) is None
    assert torch.equal(processes.loss_function(model, settings)(*TRAIN, generator=noise()),
                       batch_loss(settings, model, *TRAIN, generator=noise()))
    assert not processes.stop_now(stop)
    stop()
    assert processes.stop_now(stop) and processes.agree(losses, stop)[1]


# ------------------------------------------------------------------------------------------------ bf16
def trained(precision: str) -> tuple[ConditionalVAE, list[dict]]:
    model = small_model()
    settings = TrainingSettings(epochs=2, batch_size=32, lr=0.01, precision=precision)
    return model, train_loop(model, TRAIN, VAL, settings, None, None, progress=False)


def test_training_in_bf16_keeps_float32_weights_and_comes_close_to_fp32():
    fp32_model, fp32 = trained("fp32")
    bf16_model, bf16 = trained("bf16")
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in bf16_model.parameters())
    for a, b in zip(fp32, bf16):
        for key in ("train_loss", "val_loss"):
            assert a[key] != b[key] and b[key] == pytest.approx(a[key], rel=0.05), (key, a, b)
    assert not all(torch.equal(a, b) for a, b in zip(fp32_model.parameters(), bf16_model.parameters()))
    fp32_val, bf16_val = (validation_loss(fp32_model, VAL, TrainingSettings(precision=p)) for p in ("fp32", "bf16"))
    assert fp32_val != bf16_val and bf16_val == pytest.approx(fp32_val, rel=0.05)


def test_training_settings_take_auto_and_refuse_an_unknown_precision():
    assert TrainingSettings(precision="auto").precision == "auto"  # resolved for the device by the loop
    with pytest.raises(ValueError, match="precision must be one of 'auto', 'fp32', 'bf16', got 'half'"):
        TrainingSettings(precision="half")


# ------------------------------------------------------------------------------------------------ denormals
def flushes_denormals() -> bool:
    """Whether a product that is a denormal float32 (1e-40) comes out as 0."""
    return (torch.tensor([1e-30]) * 1e-10).item() == 0.0


def test_fit_flushes_denormals_to_zero():
    before = flushes_denormals()
    torch.set_flush_denormal(False)
    try:
        assert not flushes_denormals()
        fit(small_model(), TRAIN, VAL, epochs=1, batch_size=32, progress=False)
        assert flushes_denormals()
    finally:
        torch.set_flush_denormal(before)
