"""The table of estimates versus S."""

import torch

from cvae import CVAE, BaselineNet, QuadrantTask
from cvae.paper.convergence import estimates_versus_samples, markdown_table


def test_estimates_versus_samples_tighten_with_more_samples():
    torch.manual_seed(0)
    model = CVAE(BaselineNet(2, hidden=(16,)), z_dim=2, hidden=(16,)).double()
    x, y = QuadrantTask(2).split(torch.rand(200, 784, dtype=torch.float64))
    table = estimates_versus_samples(model, x, y, [1, 10, 1000])
    assert list(table) == ["1", "10", "1000"]
    assert set(table["1"]) == {"cvae_elbo", "cvae_mc", "cvae_is"}
    # with one sample, importance sampling is the single-sample ELBO (same draws): equal in expectation
    assert abs(table["1"]["cvae_is"]["mean"] - table["1"]["cvae_elbo"]["mean"]) < 3 * table["1"]["cvae_is"]["sem"]
    for key in ("cvae_mc", "cvae_is"):
        assert table["1000"][key]["mean"] < table["10"][key]["mean"] < table["1"][key]["mean"]
    assert table["1000"]["cvae_is"]["mean"] < table["1000"]["cvae_elbo"]["mean"]
    assert "| 1000 |" in markdown_table(table, "caption")
