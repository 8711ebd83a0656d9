"""Devices and precision from Python: ``cvae.devices.resolve`` (shared with the commands' --device), fit(device=...,
precision=...), and the estimators and ``sample`` following the model's device with a precision of their own.

The tests marked ``cuda`` run the library on a GPU and are skipped without one."""

from __future__ import annotations

import pytest
import torch

from cvae import ConditionalVAE, Regressor, estimators, fit
from cvae.devices import available, resolve
from cvae.paper import cli

pytestmark = pytest.mark.usefixtures("one_thread")
ESTIMATORS = (estimators.cll_importance, estimators.cll_monte_carlo, estimators.negative_elbo)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=generator)
    return x, torch.cat([2 * x[:, :1], x[:, 1:2].abs()], dim=1) + 0.3 * torch.randn(n, 2, generator=generator)


TRAIN, VAL = data(96, 0), data(32, 1)
FAST = {"epochs": 2, "batch_size": 32, "lr": 0.01, "progress": False}


def small_model(seed: int = 0) -> ConditionalVAE:
    torch.manual_seed(seed)
    return ConditionalVAE(3, 2, z_dim=2, hidden=(16,))


# ------------------------------------------------------------------------------------------------ resolve
def test_auto_is_cuda_then_mps_then_cpu_and_names_and_devices_resolve():
    found = available()
    assert resolve("auto").type == next(kind for kind in ("cuda", "mps", "cpu") if found[kind])
    assert resolve("cpu") == resolve(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name, says", [
    ("gpu", "device='gpu' is not a device name: use auto, cpu, cuda"),
    (3, "device must be 'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or a torch.device, got a int"),
])
def test_an_unknown_device_is_a_value_error_that_says_what_to_give(name, says: str):
    with pytest.raises(ValueError, match=says):
        resolve(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_device_this_machine_lacks_is_refused_in_the_caller_s_words():
    with pytest.raises(ValueError, match=r"device='cuda' was asked for, but cuda is not available .* Use "
                                         r"device='cpu' or device='auto'"):
        resolve("cuda")
    with pytest.raises(cli.UserError, match="--device cuda:1 was asked for, but cuda is not available .* Use "
                                            "--device cpu or --device auto"):
        cli.resolve_device("cuda:1")
    with pytest.raises(ValueError, match="device='cuda' was asked for"):
        fit(small_model(), TRAIN, VAL, device="cuda", **FAST)


# ------------------------------------------------------------------------------------------------ fit
def test_fit_trains_where_it_is_told_and_keeps_the_model_s_device_by_default():
    model = small_model()
    history = fit(model, TRAIN, VAL, device="auto", **FAST)
    assert next(model.parameters()).device.type == resolve("auto").type and len(history) == 2
    plain, on_cpu = small_model(), small_model()
    fit(plain, TRAIN, VAL, **FAST)
    fit(on_cpu, TRAIN, VAL, device=torch.device("cpu"), **FAST)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), on_cpu.parameters()))


def test_fit_takes_the_precision_of_train_s_option():
    fp32, bf16, auto = small_model(), small_model(), small_model()
    fp32_history = fit(fp32, TRAIN, VAL, precision="fp32", **FAST)
    bf16_history = fit(bf16, TRAIN, VAL, precision="bf16", **FAST)
    fit(auto, TRAIN, VAL, precision="auto", **FAST)  # bf16 or fp32, by the CPU (cvae.precision)
    assert bf16_history[-1]["val_loss"] != fp32_history[-1]["val_loss"]
    assert bf16_history[-1]["val_loss"] == pytest.approx(fp32_history[-1]["val_loss"], rel=0.05)
    with pytest.raises(ValueError, match="precision must be one of 'auto', 'fp32', 'bf16', got 'fp16'"):
        fit(small_model(), TRAIN, VAL, precision="fp16", **FAST)


# ------------------------------------------------------------------------------------------------ estimators, sample
@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: e.__name__)
def test_estimators_take_a_precision(estimator):
    model = small_model()
    fp32 = estimator(model, *VAL, 16, torch.Generator().manual_seed(0))
    assert torch.equal(fp32, estimator(model, *VAL, 16, torch.Generator().manual_seed(0), precision="fp32"))
    bf16 = estimator(model, *VAL, 16, torch.Generator().manual_seed(0), precision="bf16")
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    assert bf16.mean().item() == pytest.approx(fp32.mean().item(), rel=0.05)
    with pytest.raises(ValueError, match="precision 'half' is not one of auto, fp32, bf16"):
        estimator(model, *VAL, 4, precision="half")


def test_sample_takes_a_precision():
    model = small_model()
    fp32 = model.sample(VAL[0], 8, generator=torch.Generator().manual_seed(0), mean=True)
    bf16 = model.sample(VAL[0], 8, generator=torch.Generator().manual_seed(0), mean=True, precision="bf16")
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert torch.allclose(bf16, fp32, atol=0.1) and not torch.equal(bf16, fp32)


def test_a_generator_that_is_not_one_is_refused():
    with pytest.raises(ValueError, match="generator must be a torch.Generator or None, got a int"):
        small_model().sample(VAL[0], 2, generator=0)


# ------------------------------------------------------------------------------------------------ on a GPU
@pytest.mark.cuda
@needs_cuda
def test_fit_moves_the_model_and_the_data_to_the_gpu_and_trains_like_the_cpu():
    on_gpu, on_cpu = small_model(), small_model()
    gpu_history = fit(on_gpu, TRAIN, VAL, device="cuda", **FAST)  # CPU data, a CPU model: both moved
    cpu_history = fit(on_cpu, TRAIN, VAL, device="cpu", **FAST)
    assert all(p.device.type == "cuda" for p in on_gpu.parameters())
    # the noise differs between devices (their generators differ): close, not equal
    assert gpu_history[-1]["val_loss"] == pytest.approx(cpu_history[-1]["val_loss"], rel=0.2)
    torch.manual_seed(0)
    baseline = Regressor(3, 2, hidden=(16,))
    fit(baseline, TRAIN, VAL, device=torch.device("cuda", 0), **FAST)
    assert next(baseline.parameters()).device == torch.device("cuda", 0)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: e.__name__)
def test_estimators_run_where_the_model_is(estimator):
    model = small_model().cuda()
    values = estimator(model, *VAL, 16, torch.Generator("cuda").manual_seed(0))  # CPU x, y: moved to the GPU
    assert values.device.type == "cuda" and values.shape == (32,) and torch.isfinite(values).all()
    on_cpu = estimator(small_model(), *VAL, 2000, torch.Generator().manual_seed(0))
    values = estimator(model, *VAL, 2000, torch.Generator("cuda").manual_seed(0))
    assert values.mean().item() == pytest.approx(on_cpu.mean().item(), rel=0.05)
    bf16 = estimator(model, *VAL, 16, torch.Generator("cuda").manual_seed(0), precision="auto")
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    with pytest.raises(ValueError, match="generator is on cpu but the model is on cuda:0"):
        estimator(model, *VAL, 4, torch.Generator())


@pytest.mark.cuda
@needs_cuda
def test_sample_runs_where_the_model_is():
    model = small_model().cuda()
    samples = model.sample(VAL[0], 3, generator=torch.Generator("cuda").manual_seed(0), precision="bf16")
    assert samples.device.type == "cuda" and samples.shape == (3, 32, 2) and samples.dtype == torch.float32
    with pytest.raises(ValueError, match="generator is on cpu but the model is on cuda:0"):
        model.sample(VAL[0], 1, generator=torch.Generator())
