"""cvae-sohn sample on a finished tiny run (settings 1 and 2): the grid it writes, the completions it draws, the
note on dark-on-light images, and a clear error (exit status 2, nothing written) for each bad input."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, unchanged
from PIL import Image

from cvae.paper import cli, figures
from cvae.paper.commands import sample
from cvae.paper.quadrants import QuadrantTask

GRAY = figures.MISSING_SHADE


def digit(dark_on_light: bool = False) -> torch.Tensor:
    """A 28x28 digit-like image in [0, 1], on 8-bit levels so that a PNG round trip keeps it exactly."""
    pixels = torch.zeros(28, 28)
    pixels[6:22, 9:12] = 1.0  # a vertical stroke through the left and right quadrants' border region
    pixels[6:9, 9:20] = 200 / 255
    pixels[12:14, 14:20] = 90 / 255
    return 1 - pixels if dark_on_light else pixels


def save_png(pixels: torch.Tensor, path: Path) -> Path:
    Image.fromarray((pixels * 255).round().to(torch.uint8).numpy(), mode="L").save(path)
    return path


@pytest.fixture
def workspace(tmp_path: Path, finished_run: Path) -> Path:
    """tmp_path with a copy of the run (run/) and a digit (digit.png)."""
    shutil.copytree(finished_run, tmp_path / "run")
    save_png(digit(), tmp_path / "digit.png")
    return tmp_path


def run_sample(argv: list[str]) -> tuple[int, str, str]:
    """cvae-sohn sample with argv, as the command line runs it: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.run(lambda: sample.main(argv))
        except SystemExit as stop:  # argparse errors
            status = stop.code
    return status, out.getvalue(), err.getvalue()


def tile(png: Path, index: int, title: bool = True) -> np.ndarray:
    """The 28x28 gray levels (0..1) that tile index of completion_grid's PNG shows (of the first row): the centre
    of each 3x3 square that draws a digit pixel."""
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float32) / 255
    top = (figures.TITLE_PIXELS if title else 0) + figures.LABEL_PIXELS
    left = figures.GAP_PIXELS + index * (figures.TILE_PIXELS + figures.GAP_PIXELS)
    return pixels[top + 1:top + figures.TILE_PIXELS:3, left + 1:left + figures.TILE_PIXELS:3]


@pytest.mark.parametrize("num_samples, columns, rows", [(3, 5, 1), (11, 12, 2)])
def test_writes_a_grid_of_the_input_the_nn_and_n_cvae_completions(workspace: Path, num_samples: int, columns: int,
                                                                  rows: int) -> None:
    status, out, err = run_sample([str(workspace / "run"), "--image", str(workspace / "digit.png"),
                                   "--quadrants", "2", "-n", str(num_samples), "--device", "cpu"])
    assert status == 0, err
    written = workspace / "digit_completed_q2.png"
    assert out.strip() == str(written)
    assert "note" not in err
    cell = figures.TILE_PIXELS + figures.GAP_PIXELS
    assert Image.open(written).size == (
        figures.GAP_PIXELS + columns * cell, figures.TITLE_PIXELS + rows * (figures.LABEL_PIXELS + cell))
    # the first tile is the input as the model sees it: the left half as given, the right half gray
    left = QuadrantTask(2).input_mask.reshape(28, 28).numpy()
    expected = np.where(left, digit().numpy(), GRAY)
    np.testing.assert_allclose(tile(written, 0), expected, atol=1.5 / 255)


@pytest.mark.parametrize("k", [1, 2])
def test_every_completion_keeps_the_input_quadrants_of_the_image(finished_run: Path, k: int) -> None:
    image = digit()
    completion = sample.complete(finished_run, image, k, num_samples=4, seed=3, device="cpu")
    mask = QuadrantTask(k).input_mask.reshape(28, 28)
    assert completion.input.shape == completion.nn.shape == (28, 28) and completion.cvae.shape == (4, 28, 28)
    assert torch.equal(completion.input[mask], image[mask])
    assert (completion.input[~mask] == -1).all()
    for completed in (completion.nn, *completion.cvae):
        assert torch.equal(completed[mask], image[mask])
        assert ((completed[~mask] >= 0) & (completed[~mask] <= 1)).all()
    # the samples are draws of z: distinct, and the same again for the same seed only
    assert not torch.allclose(completion.cvae[0], completion.cvae[1])
    again = sample.complete(finished_run, image, k, num_samples=4, seed=3, device="cpu")
    other = sample.complete(finished_run, image, k, num_samples=4, seed=4, device="cpu")
    assert torch.equal(again.cvae, completion.cvae) and torch.equal(again.nn, completion.nn)
    assert not torch.allclose(other.cvae, completion.cvae)


def test_dark_ink_on_light_gets_a_note_and_invert_turns_it_into_the_digit(workspace: Path) -> None:
    save_png(digit(dark_on_light=True), workspace / "dark.png")
    base = [str(workspace / "run"), "--image", str(workspace / "dark.png"), "--quadrants", "1", "-n", "1"]
    status, _, err = run_sample([*base, "--out", str(workspace / "as_is.png")])
    assert status == 0, err
    assert "dark ink on a light background" in err and "--invert" in err
    as_is = tile(workspace / "as_is.png", 0)
    bottom_left = QuadrantTask(1).input_mask.reshape(28, 28).numpy()
    np.testing.assert_allclose(as_is, np.where(bottom_left, 1 - digit().numpy(), GRAY), atol=1.5 / 255)

    status, out, err = run_sample([*base, "--invert"])
    assert status == 0, err
    assert "note" not in err
    assert out.strip() == str(workspace / "dark_completed_q1.png")
    np.testing.assert_allclose(tile(workspace / "dark_completed_q1.png", 0),
                               np.where(bottom_left, digit().numpy(), GRAY), atol=1.5 / 255)


def _unfinished(ws: Path) -> None:
    saved = json.loads((ws / "run" / "config.json").read_text())
    (ws / "run" / "config.json").write_text(json.dumps(saved | {"finished": False}))


ERROR_CASES: list[tuple[str, Callable[[Path], object], dict[str, str], tuple[str, ...]]] = [
    # (name, prepare(workspace), arguments replaced, needles of the error)
    ("image-missing", lambda ws: None, {"--image": "none.png"}, ("--image", "none.png does not exist")),
    ("image-directory", lambda ws: None, {"--image": "run"}, ("--image", "is a directory")),
    ("image-not-an-image", lambda ws: (ws / "notes.png").write_text("not a picture"), {"--image": "notes.png"},
     ("--image", "notes.png is not an image", "PNG, JPEG")),
    ("image-truncated", lambda ws: (ws / "cut.png").write_bytes((ws / "digit.png").read_bytes()[:60]),
     {"--image": "cut.png"}, ("--image", "cut.png cannot be")),
    ("image-not-28x28", lambda ws: Image.new("L", (32, 30)).save(ws / "big.png"), {"--image": "big.png"},
     ("big.png is 32x30 pixels", "takes 28x28 digits", 'convert("L").resize((28, 28))')),
    ("run-missing", lambda ws: None, {"RUN_DIR": "nowhere"}, ("nowhere is not a run directory", "config.json")),
    ("run-unfinished", _unfinished, {}, ("has not finished training", "--resume")),
    ("setting-not-trained", lambda ws: None, {"--quadrants": "3"},
     ("did not train the setting with 3 input quadrants", "it trained --quadrants 1 2")),
    ("quadrants-4", lambda ws: None, {"--quadrants": "4"}, ("--quadrants", "'4'", "must be 1, 2 or 3")),
    ("n-0", lambda ws: None, {"-n": "0"}, ("-n", "'0'", "at least 1")),
    ("n-negative", lambda ws: None, {"-n": "-2"}, ("-n", "'-2'", "at least 1")),
    ("out-not-png", lambda ws: None, {"--out": "grid.jpg"}, ("--out", "grid.jpg does not end in .png")),
    ("out-directory", lambda ws: (ws / "grids.png").mkdir(), {"--out": "grids.png"}, ("--out", "is a directory")),
    ("out-is-the-image", lambda ws: None, {"--out": "digit.png"}, ("--out", "is the --image itself")),
    ("image-eps", lambda ws: Image.fromarray(np.zeros((28, 28), np.uint8)).save(ws / "digit.eps"),
     {"--image": "digit.eps"}, ("--image", "digit.eps is not an image in a format this command reads", "PNG")),
    ("image-float-0-255", lambda ws: Image.fromarray(digit().numpy() * 255).save(ws / "digit.tif"),
     {"--image": "digit.tif"}, ("digit.tif holds floating-point pixels from 0 to 255", "gray levels in [0, 1]")),
    ("image-float-nan", lambda ws: Image.fromarray(np.full((28, 28), np.nan, np.float32)).save(ws / "nan.tif"),
     {"--image": "nan.tif"}, ("nan.tif holds floating-point pixels", "non-finite")),
    ("image-negative-integers", lambda ws: Image.fromarray(np.full((28, 28), -5, np.int32)).save(ws / "neg.tif"),
     {"--image": "neg.tif"}, ("neg.tif holds negative gray levels", "-5")),
    ("image-transparent", lambda ws: Image.new("RGBA", (28, 28)).save(ws / "clear.png"), {"--image": "clear.png"},
     ("clear.png is transparent everywhere",)),
    ("n-too-many", lambda ws: None, {"-n": "1000000"}, ("-n", "'1000000'", "at most 1000", "pixels")),
]


@pytest.mark.parametrize("name, prepare, replaced, needles", ERROR_CASES, ids=[case[0] for case in ERROR_CASES])
def test_bad_input_exits_2_naming_the_problem_and_writes_nothing(workspace: Path, name: str,
                                                                 prepare: Callable[[Path], object],
                                                                 replaced: dict[str, str],
                                                                 needles: tuple[str, ...]) -> None:
    prepare(workspace)
    options = {"RUN_DIR": "run", "--image": "digit.png", "--quadrants": "2", "-n": "2"} | replaced
    argv = [str(workspace / options.pop("RUN_DIR")), "--device", "cpu"]
    for option, value in options.items():
        argv += [option, str(workspace / value) if option in ("--image", "--out") else value]
    with unchanged(workspace):
        status, out, err = run_sample(argv)
    assert status == 2, err
    assert out == "" and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert "error: " in line, err
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"


def test_the_module_runs_as_a_program_and_exits_2_on_bad_input(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "cvae.paper.commands.sample", str(tmp_path / "run"), "--image",
                           str(tmp_path / "digit.png"), "--quadrants", "2"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "error: --image" in proc.stderr and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ images on other scales, other formats
def _written(workspace: Path, name: str, pixels: np.ndarray, **save: object) -> Path:
    Image.fromarray(pixels).save(workspace / name, **save)
    return workspace / name


@pytest.mark.parametrize("name, pixels", [
    ("digit16.png", lambda d: (d * 65535).round().astype(np.uint16)),
    ("digit16.tif", lambda d: (d * 65535).round().astype(np.uint16)),
    ("float32.tif", lambda d: d.astype(np.float32)),
    ("int32.tif", lambda d: (d.astype(np.float64) * (2**31 - 1)).round().astype(np.int32)),
], ids=["png-16-bit", "tiff-16-bit", "tiff-float32", "tiff-int32"])
def test_images_of_more_than_8_bits_are_read_on_their_own_scale(tmp_path: Path, name: str,
                                                                 pixels: Callable[[np.ndarray], np.ndarray]) -> None:
    """Read on their own scale, not clipped to white (as converting them to 8-bit gray did)."""
    path = _written(tmp_path, name, pixels(digit().numpy()))
    np.testing.assert_allclose(sample.read_image(path).numpy(), digit().numpy(), atol=1e-6)


@pytest.mark.parametrize("ink, expected", [(0, "dark"), (255, "light")])
def test_ink_on_a_transparent_background_is_laid_on_the_background_it_stands_out_from(tmp_path: Path, ink: int,
                                                                                     expected: str) -> None:
    """Black ink on transparent (which reading the gray channel alone made all black: the digit vanished) is laid
    on white, white ink on black: the digit shows, and dark ink gets the --invert note as on paper."""
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = ink
    rgba[..., 3] = (digit().numpy() * 255).round()
    path = _written(tmp_path, "ink.png", rgba)
    read = sample.read_image(path).numpy()
    np.testing.assert_allclose(read, digit().numpy() if expected == "light" else 1 - digit().numpy(), atol=1.5 / 255)


def test_a_transparent_dark_digit_gets_the_invert_note_and_invert_reads_it(workspace: Path) -> None:
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = (digit().numpy() * 255).round()
    _written(workspace, "ink.png", rgba)
    base = [str(workspace / "run"), "--image", str(workspace / "ink.png"), "--quadrants", "1", "-n", "1"]
    status, _, err = run_sample(base)
    assert status == 0 and "dark ink on a light background" in err and "--invert" in err, err
    status, _, err = run_sample([*base, "--invert", "--out", str(workspace / "inverted.png")])
    assert status == 0 and "note" not in err, err
    bottom_left = QuadrantTask(1).input_mask.reshape(28, 28).numpy()
    np.testing.assert_allclose(tile(workspace / "inverted.png", 0), np.where(bottom_left, digit().numpy(), GRAY),
                               atol=2.5 / 255)


def test_a_16_bit_png_completes_without_a_misleading_invert_note(workspace: Path) -> None:
    _written(workspace, "digit16.png", (digit().numpy() * 65535).round().astype(np.uint16))
    status, _, err = run_sample([str(workspace / "run"), "--image", str(workspace / "digit16.png"), "--quadrants",
                                 "2", "-n", "1", "--device", "cpu"])
    assert status == 0 and "note" not in err, err
    left = QuadrantTask(2).input_mask.reshape(28, 28).numpy()
    np.testing.assert_allclose(tile(workspace / "digit16_completed_q2.png", 0), np.where(left, digit().numpy(), GRAY),
                               atol=1.5 / 255)


def test_an_eps_file_starts_no_outside_program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Formats whose reading needs another program (EPS: Ghostscript) are not opened at all."""
    def no_program(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a program was started: {args}")

    Image.fromarray((digit().numpy() * 255).astype(np.uint8)).save(tmp_path / "digit.eps")
    monkeypatch.setattr(subprocess, "Popen", no_program)
    monkeypatch.setattr(subprocess, "check_call", no_program)
    with pytest.raises(cli.UserError, match="not an image in a format this command reads"):
        sample.read_image(tmp_path / "digit.eps")


def test_a_missing_decoder_is_not_called_corruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_png(digit(), tmp_path / "digit.png")

    def no_decoder(self: Image.Image, *args: object, **kwargs: object) -> None:
        raise OSError("decoder zip not available")

    monkeypatch.setattr(Image.Image, "convert", no_decoder)
    with pytest.raises(cli.UserError) as error:
        sample.read_image(path)
    assert "lacks what its format needs" in str(error.value) and "corrupt" not in str(error.value)


def test_a_write_failure_says_run_again_not_train_resume(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    import matplotlib.figure

    def denied(self: object, path: object, *args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", denied)
    status, _, err = run_sample([str(workspace / "run"), "--image", str(workspace / "digit.png"), "--quadrants",
                                 "2", "-n", "1", "--device", "cpu"])
    line = err.strip().splitlines()[-1]
    assert status == cli.EXIT_FAILED and "Permission denied" in line and "run the command again" in line, err
    assert "train.py" not in line and "--resume" not in line


def test_running_out_of_memory_names_n(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_memory(*args: object, **kwargs: object) -> None:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(figures, "completions", no_memory)
    status, _, err = run_sample([str(workspace / "run"), "--image", str(workspace / "digit.png"), "--quadrants",
                                 "2", "-n", "7", "--device", "cpu"])
    line = err.strip().splitlines()[-1]
    assert status == cli.EXIT_FAILED and line.startswith("error: out of memory") and "-n 7" in line, err
    assert "--batch-size" not in line and "--hidden" not in line


def test_complete_names_a_seed_too_large_and_takes_numpy_integers(finished_run: Path) -> None:
    with pytest.raises(ValueError, match="seed must be an integer of at least 0 and at most 4294967295"):
        sample.complete(finished_run, digit(), 2, num_samples=1, seed=2**64)
    completion = sample.complete(finished_run, digit(), np.int64(2), num_samples=np.int64(2), seed=np.int64(1))
    assert completion.cvae.shape == (2, 28, 28)
