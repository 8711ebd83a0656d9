"""The quadrant task: masks, the tutorial's convention, and rejection of bad settings."""

import pytest
import torch

from cvae import QuadrantTask

QUADRANT_PIXELS = 14 * 14


@pytest.mark.parametrize("k", [1, 2, 3])
def test_input_and_output_pixels_are_disjoint_and_cover_the_image(k):
    task = QuadrantTask(k)
    assert not (task.input_mask & task.output_mask).any()
    assert (task.input_mask | task.output_mask).all()
    assert int(task.input_mask.sum()) == k * QUADRANT_PIXELS
    assert task.num_output_pixels == (4 - k) * QUADRANT_PIXELS


@pytest.mark.parametrize("k, quadrants", [
    (1, ["bottom-left"]),
    (2, ["top-left", "bottom-left"]),
    (3, ["top-left", "top-right", "bottom-left"]),
])
def test_input_quadrants_follow_the_tutorial_convention(k, quadrants):
    mask = QuadrantTask(k).input_mask.reshape(28, 28)
    corners = {"top-left": mask[:14, :14], "top-right": mask[:14, 14:],
               "bottom-left": mask[14:, :14], "bottom-right": mask[14:, 14:]}
    for name, block in corners.items():
        assert bool(block.all()) == (name in quadrants)
        assert bool(block.any()) == (name in quadrants)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_split_marks_missing_pixels_with_minus_one(k):
    task = QuadrantTask(k)
    images = torch.rand(5, 28, 28)
    x, y = task.split(images)
    flat = images.reshape(5, 784)
    assert x.shape == (5, 784) and y.shape == (5, 196 * (4 - k)) == (5, task.num_output_pixels)
    assert torch.equal(x[:, task.input_mask], flat[:, task.input_mask])
    assert (x[:, task.output_mask] == -1).all()
    assert torch.equal(y, flat[:, task.output_mask])
    x2, y2 = task.split(flat)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_combine_puts_predicted_pixels_into_the_output_quadrants():
    task = QuadrantTask(2)
    images = torch.rand(3, 784)
    x, y = task.split(images)
    whole = task.combine(x, y.expand(4, 3, -1))
    assert whole.shape == (4, 3, 784)
    assert torch.equal(whole[2], images)


@pytest.mark.parametrize("bad", [0, 4, -1, "2", 2.0, True, None])
def test_bad_numbers_of_quadrants_are_rejected(bad):
    with pytest.raises(ValueError, match="must be 1, 2 or 3"):
        QuadrantTask(bad)


def test_images_of_the_wrong_shape_are_rejected():
    with pytest.raises(ValueError, match=r"\(N, 28, 28\) or \(N, 784\)"):
        QuadrantTask(1).split(torch.rand(2, 27, 28))
