"""Your data as it is: fit, the estimators and sample take tensors, numpy arrays, a torch Dataset of (x, y) pairs or
a DataLoader (cvae.streams). A Dataset is read once per epoch (plus validation), in the tensors' own batches and
order (so the same weights, bit for bit), never whole; a DataLoader as given; a dataset on disk several times the
memory the process may take trains; bad items are named by their index."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from cvae import ConditionalVAE, Regressor, fit, likelihoods
from cvae.checkpoints import CheckpointError
from cvae.estimators import EXAMPLE_BLOCK, cll_importance, cll_monte_carlo, negative_elbo
from cvae.settings import TrainingSettings
from cvae.streams import Stream
from cvae.training import StopFlag, TrainingInterrupted, train_loop

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
ESTIMATORS = (cll_importance, cll_monte_carlo, negative_elbo)
PLAIN = dict(kl_warmup=0, lr_halving=0, patience=10, lr=0.01, seed=0, progress=False)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, 3); y (n, 2) with two answers per x."""
    x = torch.randn(n, 3, generator=gen(seed))
    sign = torch.randint(0, 2, (n, 1), generator=gen(seed + 100)) * 2 - 1
    return x, torch.cat([2 * x[:, :1], sign * x[:, 1:2].abs()], 1) + 0.2 * torch.randn(n, 2, generator=gen(seed + 200))


TRAIN, VAL = data(150, 0), data(40, 1)


def model(seed: int = 0, **kwargs) -> ConditionalVAE:
    torch.manual_seed(seed)
    return ConditionalVAE(3, 2, z_dim=2, hidden=(16,), **kwargs)


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


class Counting(Dataset):
    """(x, y) pairs of tensors, counting every read of every item; ``spoil`` changes items as they are read."""

    def __init__(self, pair: tuple[torch.Tensor, torch.Tensor], spoil=None):
        self.x, self.y, self.spoil = pair[0], pair[1], spoil
        self.reads: Counter = Counter()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        self.reads[index] += 1
        item = (self.x[index], self.y[index])
        return self.spoil(index, *item) if self.spoil is not None else item


# ----------------------------------------------------------------------------------------------------------
# fit: a Dataset is the tensors, batch for batch; numpy arrays are tensors
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cvae", "regressor"])
def test_fit_from_a_dataset_gives_the_weights_of_the_same_tensors_bit_for_bit(kind):
    def make() -> nn.Module:
        torch.manual_seed(0)
        return ConditionalVAE(3, 2, z_dim=2, hidden=(16,)) if kind == "cvae" else Regressor(3, 2, hidden=(16,))

    from_tensors, from_dataset = make(), make()
    expected = fit(from_tensors, TRAIN, VAL, epochs=3, batch_size=32, **PLAIN)
    history = fit(from_dataset, Counting(TRAIN), TensorDataset(*VAL), epochs=3, batch_size=32, **PLAIN)
    assert [(e["train_loss"], e["val_loss"]) for e in history] == [(e["train_loss"], e["val_loss"]) for e in expected]
    assert_same_state(from_dataset, from_tensors)


def test_numpy_arrays_are_taken_as_tensors_by_fit_the_estimators_and_sample():
    a, b = model(), model()
    fit(a, TRAIN, VAL, epochs=2, batch_size=32, **PLAIN)
    arrays = [tuple(t.double().numpy() for t in pair) for pair in (TRAIN, VAL)]  # float64, as numpy makes them
    fit(b, *arrays, epochs=2, batch_size=32, **PLAIN)
    assert_same_state(a, b)
    x, y = VAL
    for estimator in ESTIMATORS:
        assert torch.equal(estimator(a, x.numpy(), y.numpy(), num_samples=5, generator=gen(1)),
                           estimator(a, x, y, num_samples=5, generator=gen(1)))
    assert torch.equal(a.sample(x.double().numpy(), 3, generator=gen(2)), a.sample(x, 3, generator=gen(2)))
    shared = np.ascontiguousarray(x.numpy())
    assert torch.from_numpy(shared).data_ptr() == shared.ctypes.data  # what fit's conversion does: no copy


def test_a_dataset_is_read_once_per_epoch_plus_validation_and_its_ends_once_more():
    train, val = Counting(TRAIN), Counting(VAL)
    fit(model(), train, val, epochs=3, batch_size=32, **PLAIN)
    ends = Counter({0: 1, len(TRAIN[0]) - 1: 1})  # checked before training
    assert train.reads == Counter({i: 3 for i in range(len(TRAIN[0]))}) + ends
    assert val.reads == Counter({i: 3 for i in range(len(VAL[0]))}) + Counter({0: 1, len(VAL[0]) - 1: 1})


@pytest.mark.filterwarnings("ignore:.*pin_memory.*:UserWarning")  # no accelerator here to pin memory for
def test_a_dataloader_is_read_as_given_its_batches_its_sampler_and_its_workers():
    class Recording(torch.utils.data.Sampler):
        def __init__(self, n):
            self.n, self.epochs = n, []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

        def __len__(self):
            return self.n

        def __iter__(self):  # a fixed function of the epoch
            return iter(torch.randperm(self.n, generator=gen(self.epochs[-1])).tolist())

    train = Counting(TRAIN)
    sampler = Recording(len(train))
    loader = DataLoader(train, batch_size=50, sampler=sampler)
    history = fit(model(), loader, DataLoader(Counting(VAL), batch_size=7), epochs=3, batch_size=32, **PLAIN)
    assert sampler.epochs == [0, 1, 2] and len(history) == 3
    assert train.reads == Counter({i: 3 for i in range(len(TRAIN[0]))}) + Counter({0: 1, len(TRAIN[0]) - 1: 1})

    # workers and pinned memory change nothing of the batches, so nothing of the weights
    plain, with_workers = model(), model()
    fit(plain, DataLoader(TensorDataset(*TRAIN), batch_size=40), DataLoader(TensorDataset(*VAL)), epochs=2, **PLAIN)
    fit(with_workers, DataLoader(TensorDataset(*TRAIN), batch_size=40, num_workers=1, pin_memory=True),
        DataLoader(TensorDataset(*VAL), num_workers=1), epochs=2, **PLAIN)
    assert_same_state(plain, with_workers)


def test_a_baseline_predicts_each_batch_of_a_stream_and_trains_as_from_tensors():
    torch.manual_seed(0)
    baseline = Regressor(3, 2, hidden=(8,))
    fit(baseline, TRAIN, VAL, epochs=2, **PLAIN)
    sizes = []
    baseline.register_forward_hook(lambda module, args, out: sizes.append(args[0].shape[0]))
    a, b = model(baseline=baseline), model(baseline=baseline)
    fit(a, TRAIN, VAL, epochs=2, batch_size=32, **PLAIN)
    assert sizes == [150, 40]  # once per example of tensors
    sizes.clear()
    fit(b, Counting(TRAIN), Counting(VAL), epochs=2, batch_size=32, **PLAIN)
    assert max(sizes) <= 32 and sum(sizes) == 2 + 2 + 2 * (150 + 40)  # per batch (and the two ends checked)
    for key, value in a.state_dict().items():  # the same up to the order of sums in the baseline's products
        torch.testing.assert_close(b.state_dict()[key], value, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# Interruptions and the checkpoint directory
# ----------------------------------------------------------------------------------------------------------


def stopping_after(steps: int, pair) -> tuple[StopFlag, Counting]:
    """A stop flag and a Dataset that requests the stop when the steps'th batch of 32 is read."""
    stop = StopFlag()

    def spoil(index, x, y):
        spoil.reads += 1
        if spoil.reads == steps * 32:
            stop()
        return x, y

    spoil.reads = 0
    return stop, Counting(pair, spoil)


def streams(m: nn.Module, kind: str) -> tuple[Stream, Stream]:
    """TRAIN and VAL as fit makes them for a model: a Dataset, or a sequential DataLoader."""
    wrap = (lambda d: d) if kind == "dataset" else (lambda d: DataLoader(d, batch_size=32))
    return (Stream(wrap(Counting(TRAIN)), "train", m, batch_size=32),
            Stream(wrap(Counting(VAL)), "val", m, batch_size=32))


@pytest.mark.parametrize("kind", ["dataset", "dataloader"])
def test_a_stop_within_an_epoch_resumes_mid_epoch_from_a_dataset_and_from_the_epoch_end_from_a_dataloader(
        kind, tmp_path):
    settings = TrainingSettings(epochs=3, batch_size=32, lr=0.01, patience=10)
    straight = model()
    expected = train_loop(straight, *streams(straight, kind), settings, None, None, progress=False)

    stopped = model()
    train, val = streams(stopped, kind)
    stop, spoiled = stopping_after(7, TRAIN)  # epoch 2, step 2 of 5
    train = Stream(spoiled if kind == "dataset" else DataLoader(spoiled, batch_size=32), "train", stopped,
                   batch_size=32)
    with pytest.raises(TrainingInterrupted) as interrupted:
        train_loop(stopped, train, val, settings, tmp_path / "best.pt", tmp_path / "state.pt", stop, progress=False)
    saved = torch.load(tmp_path / "state.pt", weights_only=False)
    if kind == "dataset":  # within epoch 2, after its third step
        assert (saved["epoch"], saved["step"]) == (1, 3)
    else:  # the state of the end of epoch 1, and the message says so
        assert (saved["epoch"], saved["step"]) == (1, 0)
        assert "the saved state is that of the end of epoch 1" in str(interrupted.value)

    resumed = model(seed=1)
    history = train_loop(resumed, *streams(resumed, kind), settings, tmp_path / "best.pt", tmp_path / "state.pt",
                         progress=False)
    assert [(e["train_loss"], e["val_loss"]) for e in history] == [(e["train_loss"], e["val_loss"]) for e in expected]
    resumed.load_state_dict(torch.load(tmp_path / "best.pt", weights_only=False)["state_dict"])
    assert_same_state(resumed, straight)


def test_a_dataloader_refuses_a_state_saved_within_an_epoch(tmp_path):
    settings = TrainingSettings(epochs=2, batch_size=32, lr=0.01, patience=10)
    stopped = model()
    stop, spoiled = stopping_after(2, TRAIN)  # a Dataset's state within epoch 1
    with pytest.raises(TrainingInterrupted):
        train_loop(stopped, Stream(spoiled, "train", stopped, batch_size=32),
                   Stream(TensorDataset(*VAL), "val", stopped), settings, None, tmp_path / "state.pt", stop,
                   progress=False)
    again = model()
    with pytest.raises(CheckpointError, match="stopped within epoch 1, which a DataLoader .* cannot resume"):
        train_loop(again, *streams(again, "dataloader"), settings, None, tmp_path / "state.pt", progress=False)


def test_an_interrupted_fit_from_a_dataloader_resumes_from_the_last_epoch_end(tmp_path):
    options = dict(epochs=4, batch_size=32, **PLAIN)
    straight = model()
    fit(straight, DataLoader(Counting(TRAIN), batch_size=30), TensorDataset(*VAL),
        checkpoint_dir=tmp_path / "straight", **options)

    def interrupt(index, x, y):
        interrupt.reads += 1
        if interrupt.reads == 2 + 2 + 150 * 2 + 45:  # the ends checked and fingerprinted, two epochs, then the third
            raise KeyboardInterrupt
        return x, y

    interrupt.reads = 0
    with pytest.raises(KeyboardInterrupt):
        fit(model(), DataLoader(Counting(TRAIN, interrupt), batch_size=30), TensorDataset(*VAL),
            checkpoint_dir=tmp_path / "resumed", **options)
    assert torch.load(tmp_path / "resumed" / "state.pt", weights_only=False)["epoch"] == 2
    resumed = model(seed=1)
    history = fit(resumed, DataLoader(Counting(TRAIN), batch_size=30), TensorDataset(*VAL),
                  checkpoint_dir=tmp_path / "resumed", **options)
    assert [e["epoch"] for e in history] == [1, 2, 3, 4]
    assert_same_state(resumed, straight)


def test_the_checkpoint_dir_of_a_dataset_knows_its_data_by_length_and_first_and_last_items(tmp_path):
    options = dict(epochs=1, batch_size=32, checkpoint_dir=tmp_path / "run", **PLAIN)
    train = Counting(TRAIN)
    fit(model(), train, TensorDataset(*VAL), **options)
    assert train.reads[0] == 1 + 1 + 1  # checked, fingerprinted, trained on: no pass for the fingerprint
    assert fit(model(), Counting(TRAIN), TensorDataset(*VAL), **options)[0]["epoch"] == 1  # the same data: resumed

    def other_item(which):
        def spoil(index, x, y):
            return (x + 1, y) if index == which else (x, y)
        return spoil

    others = {"first item": Counting(TRAIN, other_item(0)), "last item": Counting(TRAIN, other_item(149)),
              "length": Counting((TRAIN[0][:149], TRAIN[1][:149])),
              "a DataLoader": DataLoader(TensorDataset(*TRAIN), batch_size=32)}
    for what, other in others.items():
        with pytest.raises(CheckpointError, match="its data differ"):
            fit(model(), other, TensorDataset(*VAL), **options)
            pytest.fail(f"another {what} was taken for the same data")
    # an item between the ends is not read: the fingerprint does not see it (documented)
    fit(model(), Counting(TRAIN, other_item(70)), TensorDataset(*VAL), **options)


def test_random_augmentations_neither_change_the_fingerprint_nor_draw_from_the_training(tmp_path):
    def augment(index, x, y):  # noise from the global generators, as random transforms draw it
        return x + 0.1 * torch.randn(3) + float(np.random.rand()) / 10, y

    options = dict(epochs=2, batch_size=32, **PLAIN)
    np.random.seed(5)
    with_dir = model()  # torch's generator seeded there
    fit(with_dir, Counting(TRAIN, augment), TensorDataset(*VAL), checkpoint_dir=tmp_path / "run", **options)
    np.random.seed(5)
    without = model()
    fit(without, Counting(TRAIN, augment), TensorDataset(*VAL), **options)
    assert_same_state(with_dir, without)  # the fingerprint's reads drew nothing from the augmentations' generators
    history = fit(model(), Counting(TRAIN, augment), TensorDataset(*VAL), checkpoint_dir=tmp_path / "run", **options)
    assert [e["epoch"] for e in history] == [1, 2]  # the same data: the finished fit is found, not refused


# ----------------------------------------------------------------------------------------------------------
# Bad items are named by their index
# ----------------------------------------------------------------------------------------------------------


def bernoulli_model() -> ConditionalVAE:
    torch.manual_seed(0)
    return ConditionalVAE(3, 2, z_dim=2, hidden=(8,), likelihood=likelihoods.Bernoulli())


BINARY = (TRAIN[0][:100], (TRAIN[1][:100] > 0).float())


def at(which, change):
    return lambda index, x, y: change(x, y) if index == which else (x, y)


BAD_ITEMS = {  # name: (spoil, the message's start, a detail it gives)
    "y-nan": (at(37, lambda x, y: (x, torch.tensor([math.nan, 0.0]))), "train item 37: y", "nan"),
    "y-outside-the-support": (at(99, lambda x, y: (x, torch.tensor([1.5, 0.0]))), "train item 99: y", "1.5"),
    "x-inf": (at(0, lambda x, y: (torch.tensor([0.0, math.inf, 0.0]), y)), "train item 0: x", "inf"),
    "x-too-narrow-once": (at(41, lambda x, y: (x[:2], y)), "train item 41: x has shape (2,)", "shape (3,)"),
    "y-too-wide-always": (lambda i, x, y: (x, torch.cat([y, y])), "train item 0: y has shape (4,)", "(2,)"),
    "x-int-always": (lambda i, x, y: (x.long(), y), "train item 0: x must be a floating-point", "torch.int64"),
    "not-a-pair": (at(64, lambda x, y: (x, y, y)), "train must give (x, y) pairs; item 64 is a tuple of 3", ""),
    "x-a-string": (at(99, lambda x, y: ("x", y)), "train item 99: x must be a torch.Tensor", "str"),
}


@pytest.mark.parametrize("case", list(BAD_ITEMS))
def test_a_bad_item_of_a_dataset_gets_a_value_error_naming_its_index(case):
    spoil, start, detail = BAD_ITEMS[case]
    with pytest.raises(ValueError) as error:
        fit(bernoulli_model(), Counting(BINARY, spoil), BINARY, epochs=2, batch_size=16, **PLAIN)
    assert str(error.value).startswith(start) and detail in str(error.value), str(error.value)


def test_a_bad_batch_of_a_dataloader_is_named_by_batch_and_row_and_the_estimators_name_items():
    spoil = at(37, lambda x, y: (x, torch.tensor([math.nan, 0.0])))
    loader = DataLoader(Counting(BINARY, spoil), batch_size=16)  # item 37: batch 2, row 5
    with pytest.raises(ValueError, match=r"^val batch 2, row 5: y holds a non-finite value, nan at column 0"):
        fit(bernoulli_model(), BINARY, loader, epochs=1, **PLAIN)
    for estimator in ESTIMATORS:
        with pytest.raises(ValueError, match=r"^data item 37: y holds a non-finite value, nan"):
            estimator(bernoulli_model(), Counting(BINARY, spoil), num_samples=2)
    with pytest.raises(ValueError, match="with a TensorDataset of .x, y. pairs give no y"):
        cll_importance(bernoulli_model(), TensorDataset(*BINARY), BINARY[1], num_samples=2)
    with pytest.raises(ValueError, match=r"^x item 0: x must have|^x item 0: x has shape \(2,\)"):
        bernoulli_model().sample(TensorDataset(BINARY[0][:, :2]), 2)


# ----------------------------------------------------------------------------------------------------------
# The estimators and sample over a Dataset or DataLoader
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: e.__name__)
def test_the_estimators_over_a_dataset_are_those_of_the_tensors_and_over_a_dataloader_in_its_order(estimator):
    m = model()
    x, y = data(EXAMPLE_BLOCK + 300, 5)  # two blocks
    expected = estimator(m, x, y, num_samples=4, generator=gen(3))
    assert torch.equal(estimator(m, TensorDataset(x, y), num_samples=4, generator=gen(3)), expected)
    # a DataLoader's batches, in its order: the values of each batch, one after the other
    order = torch.randperm(len(x), generator=gen(4))
    loader = DataLoader(TensorDataset(x, y), batch_size=500, sampler=order.tolist())
    generator, parts = gen(3), []
    for start in range(0, len(x), 500):
        batch = order[start:start + 500]
        parts.append(estimator(m, x[batch], y[batch], num_samples=4, generator=generator))
    assert torch.equal(estimator(m, loader, num_samples=4, generator=gen(3)), torch.cat(parts))


def test_sample_takes_a_dataset_of_pairs_or_of_x_and_a_dataloader():
    m = model()
    x, y = VAL
    expected = m.sample(x, 3, generator=gen(1))
    assert torch.equal(m.sample(TensorDataset(x, y), 3, generator=gen(1)), expected)  # y unused
    assert torch.equal(m.sample(TensorDataset(x), 3, generator=gen(1)), expected)
    loader = DataLoader(TensorDataset(x), batch_size=15)
    samples = m.sample(loader, 3, generator=gen(1), mean=True)
    assert samples.shape == (3, 40, 2)


# ----------------------------------------------------------------------------------------------------------
# A dataset on disk, several times the memory the process may take
# ----------------------------------------------------------------------------------------------------------

ON_DISK = '''
import resource, sys
import numpy as np, torch
from torch.utils.data import Dataset, Subset
from cvae import ConditionalVAE, estimators, fit

torch.set_num_threads(1)
path, n, d, allowed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rows = np.memmap(path, dtype=np.float32, mode="r", shape=(n, d + 1))

class OnDisk(Dataset):
    def __len__(self):
        return n

    def __getitem__(self, i):
        row = torch.from_numpy(np.array(rows[i]))
        return row[:d], row[d:]

data = OnDisk()
train, val = Subset(data, range(0, n - 1000)), Subset(data, range(n - 1000, n))
def new():
    torch.manual_seed(0)
    return ConditionalVAE(d, 1, z_dim=2, hidden=(16,), prior_components=1)
fit(new(), Subset(data, range(64)), Subset(data, range(64, 96)), epochs=1, progress=False)  # torch's lazy imports
def data_size():
    return next(int(l.split()[1]) << 10 for l in open("/proc/self/status") if l.startswith("VmData"))
resource.setrlimit(resource.RLIMIT_DATA, (data_size() + allowed, resource.RLIM_INFINITY))
try:
    np.array(rows)
    sys.exit("the limit does not bite: the file fits in it")
except MemoryError:
    pass
model = new()
history = fit(model, train, val, epochs=1, batch_size=256, kl_warmup=0, progress=False)
nll = estimators.cll_importance(model, val, num_samples=8)
print(history[-1]["val_loss"], nll.shape[0], nll.mean().item())
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA and /proc/self/status are Linux's")
def test_a_dataset_on_disk_four_times_the_memory_the_process_may_take_trains_and_is_evaluated(tmp_path):
    n, d, allowed = 32_000, 1023, 32 << 20  # 125 MiB of float32 rows on disk; 32 MiB more memory allowed
    rows = np.memmap(tmp_path / "rows.f32", dtype=np.float32, mode="w+", shape=(n, d + 1))
    rng = np.random.default_rng(0)
    for start in range(0, n, 4000):
        x = rng.standard_normal((4000, d), dtype=np.float32)
        rows[start:start + 4000, :d], rows[start:start + 4000, d] = x, x[:, :4].sum(1) / 2
    rows.flush()
    assert rows.nbytes >= 3.9 * allowed
    del rows
    (tmp_path / "on_disk.py").write_text(textwrap.dedent(ON_DISK))
    result = subprocess.run([sys.executable, str(tmp_path / "on_disk.py"), str(tmp_path / "rows.f32"), str(n), str(d),
                             str(allowed)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    val_loss, count, nll = result.stdout.split()
    assert int(count) == 1000 and math.isfinite(float(val_loss)) and math.isfinite(float(nll))
