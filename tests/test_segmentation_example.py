"""examples/segmentation_under_occlusion.py: the task (occluded inputs, label maps), the scores (pixel accuracy, mean
IoU, each image's IoU) against counts by hand, and the whole example on a small setting."""

import contextlib
import io
from pathlib import Path

import pytest
import torch
from conftest import load_script

pytestmark = pytest.mark.usefixtures("one_thread")

seg = load_script("examples/segmentation_under_occlusion")


def test_occlusion_hides_one_square_of_the_given_side_per_image_and_keeps_the_rest():
    images = torch.rand(50, 784)
    x = seg.occlude(images, 9, torch.Generator().manual_seed(0))
    assert x.shape == (50, 1, 28, 28)
    hidden = x[:, 0] == seg.MISSING
    assert (hidden.sum((1, 2)) == 81).all()
    rows, cols = hidden.any(2), hidden.any(1)  # the rows and the columns the block spans
    assert (rows.sum(1) == 9).all() and (cols.sum(1) == 9).all()
    assert torch.equal(x[:, 0][~hidden], images.reshape(50, 28, 28)[~hidden])
    corners = torch.stack([rows.float().argmax(1), cols.float().argmax(1)], 1)
    assert len(corners.unique(dim=0)) > 30  # positions vary
    assert torch.equal(seg.occlude(images, 9, torch.Generator().manual_seed(0)), x)


def test_label_maps_mark_ink_with_one_plus_the_class_and_the_rest_background():
    images = torch.zeros(2, 784)
    images[0, 0], images[0, 1], images[1, 783] = 0.5, 0.49, 1.0
    y = seg.label_maps(images, torch.tensor([3, 9]))
    assert y.dtype == torch.int64 and y.shape == (2, 1, 28, 28)
    assert y[0, 0, 0, 0] == 4 and y[0, 0, 0, 1] == 0 and y[1, 0, 27, 27] == 10
    assert y.count_nonzero() == 2


def test_pixel_accuracy_and_mean_iou_match_counts_by_hand():
    truth = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    scores = seg.scores(seg.confusion(predicted, truth))
    assert scores["accuracy"] == pytest.approx(6 / 8)
    # class 0: 3 / 4; class 1: 1 / 3 (pixels 3, 4, 5); class 2: 2 / 3 (pixels 5, 6, 7); the 8 absent classes skipped
    assert scores["iou"] == pytest.approx((3 / 4 + 1 / 3 + 2 / 3) / 3)
    perfect = seg.scores(seg.confusion(truth, truth))
    assert perfect == {"accuracy": 1.0, "iou": 1.0}


def test_each_images_iou_is_the_mean_over_its_own_classes_and_picks_the_best_sample():
    truth = torch.zeros(2, 1, 28, 28, dtype=torch.long)
    truth[0, 0, :14] = 5  # image 0: half class 5
    right = truth.clone()
    wrong = truth.clone()
    wrong[0, 0, :14] = 7  # image 0 with the wrong class: IoU 0 for 5 and 7, 1 for the background (the bottom half)
    ious = seg.image_ious(torch.stack([wrong, right]), truth)
    assert ious.shape == (2, 2)
    assert ious[1].tolist() == [1.0, 1.0]
    assert ious[0, 0].item() == pytest.approx((1 + 0 + 0) / 3)
    assert ious[0, 1].item() == 1.0  # image 1 is all background in both
    assert ious.argmax(0).tolist() == [1, 0]


def test_the_example_reports_cll_accuracy_and_iou_of_the_baseline_and_the_cvae(mnist_dir: Path, tmp_path: Path):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        table = seg.main(["--data-dir", str(mnist_dir), "--train-subset", "256", "--val-subset", "64",
                          "--test-subset", "40", "--epochs", "2", "--kl-warmup", "1", "--hidden", "8", "16",
                          "--num-samples", "4", "--best-of", "3", "--no-progress", "--out", str(tmp_path)])
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]
             if line.startswith("| ")]
    rows = {row[0]: row[1:] for row in cells}
    assert list(rows) == ["NN baseline", "CVAE, mean of S=4", "CVAE, best of K=3 (oracle)", "NN - CVAE (paired)"]
    assert rows["NN baseline"][0].endswith("(exact)") and "importance sampling" in rows["CVAE, mean of S=4"][0]
    for name in ("NN baseline", "CVAE, mean of S=4", "CVAE, best of K=3 (oracle)"):
        accuracy, iou = (float(cell.rstrip("%")) for cell in rows[name][1:3])
        assert 0 <= accuracy <= 100 and 0 < iou <= 100
    nn, cvae, difference = (float(rows[name][0].split(" ± ")[0]) for name in (
        "NN baseline", "CVAE, mean of S=4", "NN - CVAE (paired)"))
    assert nn > 0 and cvae > 0 and difference == pytest.approx(nn - cvae, abs=0.011)
    assert "40 test images" in table and (tmp_path / "results.md").read_text(encoding="utf-8") == table
    assert (tmp_path / "samples.png").stat().st_size > 10_000


def test_the_example_refuses_a_block_larger_than_the_image(capsys):
    with pytest.raises(SystemExit):
        seg.main(["--block", "29"])
    assert "--block must be from 1 to 28" in capsys.readouterr().err
