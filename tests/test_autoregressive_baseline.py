"""The strong preset's control: the NN baseline with the autoregressive term, trained and evaluated exactly."""

from pathlib import Path

import pytest
import torch
from conftest import command_module, invoke

from cvae import CVAE, BaselineNet, QuadrantTask, checkpoints
from cvae.distributions import bernoulli_log_likelihood

pytestmark = pytest.mark.usefixtures("one_thread")


def test_autoregressive_baseline_is_exact_and_sees_only_earlier_pixels():
    torch.manual_seed(0)
    model = BaselineNet(2, hidden=(16,), autoregressive=True)
    torch.nn.init.normal_(model.autoregression.weight, std=0.1)
    x, y = QuadrantTask(2).split(torch.rand(3, 784, generator=torch.Generator().manual_seed(0)))
    whole = QuadrantTask(2).combine(x, y)
    masked = model.autoregression.weight * model.autoregression.mask
    expected = bernoulli_log_likelihood(model.net(x) + whole @ masked.T, y)
    torch.testing.assert_close(model.log_likelihood(x, y), expected)
    last = y.shape[1] - 1
    changed = y.clone()
    changed[:, last] = 1 - changed[:, last]  # only the last pixel's own factor may change
    diff = model.log_likelihood(x, changed) - model.log_likelihood(x, y)
    logit = model.net(x)[:, -1] + model.autoregression(x, y)[:, -1]
    own = (bernoulli_log_likelihood(logit[:, None], changed[:, last, None])
           - bernoulli_log_likelihood(logit[:, None], y[:, last, None]))
    torch.testing.assert_close(diff, own)
    rebuilt = BaselineNet.from_checkpoint(model.checkpoint())
    torch.testing.assert_close(rebuilt.log_likelihood(x, y), model.log_likelihood(x, y))
    assert CVAE(BaselineNet(2, hidden=(16,)), 3, (16,)).baseline.autoregression is None


def test_the_control_script_trains_and_reports(mnist_dir: Path, tmp_path: Path):
    script = command_module("autoregressive_baseline")
    argv = ["--quadrants", "3", "--epochs", "2", "--data-dir", str(mnist_dir), "--device", "cpu", "--no-progress",
            "--out", str(tmp_path / "run")]
    status, err = invoke(script.main, argv)
    assert status == 0, err
    table = (tmp_path / "run/results.md").read_text()
    assert "| NN + autoregressive term (exact CLL) |" in table and "100 test images" in table
    assert "| NN + autoregressive term, true CLL of binarized outputs (exact) |" in table and "T = 1" in table
    assert checkpoints.load(tmp_path / "run/q3/baseline.pt")["model"]["args"]["autoregressive"] is True
    status, err = invoke(script.main, [*argv[:-1], str(tmp_path / "run"), "--seed", "1"])
    assert status == 2 and "holds another run" in err


def test_the_control_trains_on_binarized_targets_when_asked(mnist_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    script, seen = command_module("autoregressive_baseline"), []
    real = script.train_loop

    def recording(model, train, val, settings, *rest, **more):
        seen.append((settings.sample_targets, bool(((train[1] == 0) | (train[1] == 1)).all())))
        return real(model, train, val, settings, *rest, **more)

    monkeypatch.setattr(script, "train_loop", recording)
    base = ["--quadrants", "3", "--epochs", "1", "--data-dir", str(mnist_dir), "--device", "cpu", "--no-progress"]
    for flag, out in (("--sample-targets", "sampled"), ("--binarize", "thresholded")):
        status, err = invoke(script.main, [*base, flag, "--out", str(tmp_path / out)])
        assert status == 0, err
        assert checkpoints.read_json(tmp_path / out / "config.json", "config.json", "")[flag[2:].replace("-", "_")]
    # sampled: gray targets, binarized at every step by the loop's settings; thresholded: binary targets
    assert seen == [(True, False), (False, True)]
