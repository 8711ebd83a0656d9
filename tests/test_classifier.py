"""The digit classifier's mechanics on the synthetic MNIST: shapes, seeded training, the cache and what loading it
returns, and the completed images it classifies (the full training is not run here)."""

from __future__ import annotations

import shutil

import pytest
import torch

from cvae.checkpoints import CheckpointError, save
from cvae.paper import classifier
from cvae.paper.classifier import (
    DigitClassifier,
    class_probabilities,
    classifier_and_record,
    completed_images,
    digit_classifier,
    load_classifier,
    train_classifier,
)
from cvae.paper.quadrants import QuadrantTask

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shapes():
    model = DigitClassifier((4, 8), 16).eval()
    assert model(torch.rand(5, 784)).shape == (5, 10)
    assert model(torch.rand(5, 28, 28)).shape == (5, 10)
    probs = class_probabilities(model, torch.rand(3, 5, 784))
    assert probs.shape == (3, 5, 10)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the evaluation's bf16: the softmax still in float32
        probs = class_probabilities(model, torch.rand(3, 5, 784))
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 5), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="images must have shape"):
        model(torch.rand(5, 700))
    with pytest.raises(ValueError, match="channels"):
        DigitClassifier((4,), 16)
    with pytest.raises(ValueError, match="hidden"):
        DigitClassifier((4, 8), 0)


def test_training_is_seeded_and_leaves_the_callers_random_state_alone():
    images, labels = torch.rand(64, 784), torch.arange(64) % 10
    state = torch.random.get_rng_state()
    first = train_classifier(images, labels, epochs=1, batch_size=16, seed=3, progress=False, channels=(4, 8),
                             hidden=16)
    assert torch.equal(torch.random.get_rng_state(), state)
    second = train_classifier(images, labels, epochs=1, batch_size=16, seed=3, progress=False, channels=(4, 8),
                              hidden=16)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="images must be"):
        train_classifier(images, labels[:10], epochs=1)


def test_trained_once_then_loaded_from_the_cache(mnist_dir, tmp_path, capsys, monkeypatch):
    data_dir = tmp_path / "data"
    # the cache is written into the data directory (the synthetic data's tiny one is left out of the copy)
    shutil.copytree(mnist_dir, data_dir, ignore=shutil.ignore_patterns("classifier"))
    model = digit_classifier(data_dir, "cpu", progress=False, epochs=1)
    said = capsys.readouterr()
    path = data_dir / "classifier" / "mnist_cnn.pt"
    assert said.out == "" and said.err.startswith("note: training a mnist classifier on the 256 training images")
    assert "once per data directory" in said.err and "test accuracy" in said.err and str(path) in said.err
    assert path.is_file() and not model.training
    loaded, record = load_classifier(path)
    assert 0 <= record["test_accuracy"] <= 1 and record["train_images"] == 256 and record["epochs"] == 1
    assert classifier_and_record(data_dir, progress=False)[1] == record

    def no_training(*_, **__):
        raise AssertionError("the cached classifier was trained again")

    monkeypatch.setattr(classifier, "train_classifier", no_training)
    again = digit_classifier(data_dir, "cpu", progress=False)
    assert capsys.readouterr() == ("", "")
    for (name, a), b, c in zip(model.state_dict().items(), loaded.state_dict().values(),
                               again.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c), name
    images = torch.rand(4, 784)
    torch.testing.assert_close(class_probabilities(again, images), class_probabilities(model, images))


def test_an_explicit_path_and_a_foreign_file(mnist_dir, tmp_path):
    path, cached = tmp_path / "elsewhere" / "cnn.pt", mnist_dir / "classifier" / "mnist_cnn.pt"
    before = cached.read_bytes()
    digit_classifier(mnist_dir, progress=False, path=path, epochs=1)
    assert path.is_file() and cached.read_bytes() == before
    save({"kind": "baseline", "config": {}, "state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a digit_classifier"):
        load_classifier(tmp_path / "other.pt")


@pytest.mark.parametrize("k", [1, 2, 3])
def test_completed_images_put_the_predicted_pixels_back(k):
    task = QuadrantTask(k)
    images = torch.rand(6, 784)
    x, y = task.split(images)
    samples = torch.stack([y, torch.zeros_like(y)])  # (K = 2, N, D)
    completed = completed_images(x, samples, task)
    assert completed.shape == (2, 6, 784)
    torch.testing.assert_close(completed[0], images)
    assert bool((completed[1][:, task.output_mask] == 0).all())
    torch.testing.assert_close(completed[1][:, task.input_mask], images[:, task.input_mask])
    with pytest.raises(ValueError, match="y_samples must have shape"):
        completed_images(x, samples[..., :-1], task)
    with pytest.raises(ValueError, match="x must have shape"):
        completed_images(x[:, :100], samples, task)
