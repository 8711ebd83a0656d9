"""fit under torchrun: a script that calls fit, started by ``torchrun --nproc_per_node 2`` on the CPU (gloo, one
thread each), against the same script in one process. fit joins the process group itself; training runs through
the training loop's ``Processes`` (the experiment's own torchrun path), rank 0 alone writes the checkpoints and
the callbacks' logs.

The data: 300 training examples in global batches of 64 (shares of 32; the last batch of 44 in shares of 22). A
Regressor has no noise, so two processes give its one-process weights up to the order of sums; the CVAE on top of
it draws its noise per process (seed + rank * stride), so it agrees within a tolerance.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

SCRIPT = '''
import sys
from pathlib import Path

import torch

from cvae import ConditionalVAE, Regressor, distributed, fit
from cvae.callbacks import CSVLogger

torch.set_num_threads(1)
out = Path(sys.argv[1])
generator = torch.Generator().manual_seed(0)
x = torch.randn(400, 3, generator=generator)
sign = torch.randint(0, 2, (400, 1), generator=generator) * 2 - 1
y = torch.cat([2 * x[:, :1], sign * x[:, 1:2].abs()], dim=1) + 0.3 * torch.randn(400, 2, generator=generator)
train, val = (x[:300], y[:300]), (x[300:], y[300:])
options = dict(epochs=3, batch_size=64, lr=0.01, progress=False)

torch.manual_seed(0)
baseline = Regressor(3, 2, hidden=(16,))
baseline_history = fit(baseline, train, val, checkpoint_dir=out / "baseline",
                       callbacks=[CSVLogger(out / "baseline.csv")], **options)
torch.manual_seed(1)
cvae = ConditionalVAE(3, 2, z_dim=2, hidden=(16,), baseline=baseline)
cvae_history = fit(cvae, train, val, checkpoint_dir=out / "cvae", callbacks=[CSVLogger(out / "cvae.csv")], **options)
torch.save({"world": distributed.world_size(), "baseline": baseline.state_dict(), "cvae": cvae.state_dict(),
            "baseline_history": baseline_history, "cvae_history": cvae_history},
           out / f"result{distributed.rank()}.pt")
'''


def run(script: Path, out: Path, processes: int) -> subprocess.CompletedProcess:
    out.mkdir()
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] \
        if processes > 1 else [sys.executable]
    result = subprocess.run([*launch, str(script), str(out)], env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_fit_under_torchrun_trains_like_one_process_and_writes_once(tmp_path: Path):
    script = tmp_path / "my_script.py"
    script.write_text(SCRIPT)
    run(script, tmp_path / "one", 1)
    result = run(script, tmp_path / "two", 2)

    one = torch.load(tmp_path / "one" / "result0.pt", weights_only=True)
    two = [torch.load(tmp_path / "two" / f"result{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert one["world"] == 1 and [r["world"] for r in two] == [2, 2]
    for key in ("baseline", "cvae"):  # the processes hold the same weights
        assert all(torch.equal(two[0][key][name], two[1][key][name]) for name in two[0][key])
    # the Regressor: one process's weights, up to the order of sums
    assert all(torch.allclose(two[0]["baseline"][name], value, atol=1e-5) for name, value in one["baseline"].items())
    for a, b in zip(one["baseline_history"], two[0]["baseline_history"]):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
    # the CVAE: its noise differs per process, so close, not equal
    for a, b in zip(one["cvae_history"], two[0]["cvae_history"]):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=0.05)

    # rank 0 alone writes: one row per epoch, one epoch line per epoch
    for stage in ("baseline", "cvae"):
        with (tmp_path / "two" / f"{stage}.csv").open(newline="") as file:
            assert [row["epoch"] for row in csv.DictReader(file)] == ["1", "2", "3"]
        assert {path.name for path in (tmp_path / "two" / stage).iterdir()} == {"best.pt", "state.pt"}
    assert result.stderr.count("Regressor epoch 1:") == 1 and result.stderr.count("ConditionalVAE epoch 3:") == 1
    # the checkpoint fit loaded at the end is the best epoch's
    best = torch.load(tmp_path / "two" / "baseline" / "best.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(best[name], value) for name, value in two[1]["baseline"].items())


DATASET_SCRIPT = '''
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from cvae import ConditionalVAE, Regressor, distributed, fit

torch.set_num_threads(1)
out = Path(sys.argv[1])
generator = torch.Generator().manual_seed(0)
x = torch.randn(400, 3, generator=generator)
y = 2 * x[:, :2] + 0.3 * torch.randn(400, 2, generator=generator)


class Counting(Dataset):
    def __init__(self, x, y):
        self.x, self.y, self.reads = x, y, Counter()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        self.reads[index] += 1
        return self.x[index], self.y[index]


options = dict(epochs=2, batch_size=64, lr=0.01, kl_warmup=0, progress=False)
result = {"world": distributed.world_size()}
for kind in ("regressor", "cvae"):
    models = {}
    for data in ("tensors", "dataset"):
        torch.manual_seed(0)
        model = Regressor(3, 2, hidden=(16,)) if kind == "regressor" else ConditionalVAE(3, 2, z_dim=2, hidden=(16,))
        train = (x[:300], y[:300]) if data == "tensors" else Counting(x[:300], y[:300])
        val = (x[300:], y[300:]) if data == "tensors" else Counting(x[300:], y[300:])
        fit(model, train, val, **options)
        models[data] = model.state_dict()
        if data == "dataset":
            result[kind + "_reads"] = [dict(train.reads), dict(val.reads)]
    result[kind] = models
try:
    fit(Regressor(3, 2, hidden=(16,)), DataLoader(TensorDataset(x[:300], y[:300]), batch_size=32), (x[300:], y[300:]),
        **options)
except ValueError as error:
    result["refused"] = str(error)
loader = DataLoader(TensorDataset(x[:300], y[:300]), batch_size=32, sampler=DistributedSampler(TensorDataset(x[:300])))
result["sampler_history"] = fit(Regressor(3, 2, hidden=(16,)), loader, (x[300:], y[300:]), **options)
torch.save(result, out / f"result{distributed.rank()}.pt")
'''


def test_fit_under_torchrun_shares_out_a_dataset_as_it_shares_tensors_and_wants_a_distributed_sampler(tmp_path: Path):
    script = tmp_path / "dataset_script.py"
    script.write_text(DATASET_SCRIPT)
    run(script, tmp_path / "two", 2)
    two = [torch.load(tmp_path / "two" / f"result{rank}.pt", weights_only=True) for rank in (0, 1)]
    for rank in (0, 1):
        for kind in ("regressor", "cvae"):  # each process its share of every batch: the tensors' weights, bit for bit
            models = two[rank][kind]
            assert all(torch.equal(models["dataset"][name], value) for name, value in models["tensors"].items())
    for kind in ("regressor", "cvae"):  # the processes read the examples between them, each once per epoch
        for part, size in ((0, 300), (1, 100)):
            reads = [two[rank][kind + "_reads"][part] for rank in (0, 1)]
            ends = {0: 1, size - 1: 1}  # every process checks the first and the last item before training
            total = {i: sum(r.get(i, 0) for r in reads) - 2 * ends.get(i, 0) for i in range(size)}
            assert total == {i: 2 for i in range(size)}
            assert all(max(r.values()) <= 3 and len(r) < size for r in reads)
    assert two[0]["refused"].startswith("under torchrun a DataLoader for train needs a DistributedSampler")
    assert [e["epoch"] for e in two[0]["sampler_history"]] == [1, 2]
    losses = [[(e["train_loss"], e["val_loss"]) for e in two[rank]["sampler_history"]] for rank in (0, 1)]
    assert losses[0] == losses[1]  # the losses agreed on
