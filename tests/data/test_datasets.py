"""Tests of :mod:`vaelab.data`: file resolution, parsers, data sets, preprocessing, batching.

No test touches the network: downloads are simulated with ``file://`` URLs into a temporary cache.
The test that reads the real files runs only when ``VAELAB_DATA`` points at them.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import re
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab.config import DataConfig
from vaelab.data import (
    DATASETS,
    ChecksumError,
    DataError,
    DataSplits,
    DataUnavailableError,
    Preprocessor,
    RemoteFile,
    batch_indices,
    bits_per_dim,
    check_binary,
    datasets,
    files,
    formats,
    iterate_batches,
    load_dataset,
    num_batches,
    resolve_file,
    split_indices,
)
from vaelab.data.subsets import spread_indices
from vaelab.registry import ConfigError

REAL_DATA = os.environ.get("VAELAB_DATA")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Every test gets an empty cache, no VAELAB_DATA, and downloads of ``file://`` URLs only."""
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VAELAB_DATA", raising=False)
    monkeypatch.delenv("VAELAB_OFFLINE", raising=False)
    real_urlopen = urllib.request.urlopen

    def local_only(url, *args, **kwargs):
        if not str(url).startswith("file:"):
            raise urllib.error.URLError(f"tests never use the network (asked for {url})")
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", local_only)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def publish(tmp_path: Path, relpath: str, data: bytes) -> RemoteFile:
    """Write ``data`` to a fake server folder and describe it as a published file."""
    src = tmp_path / "server" / relpath
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(data)
    return RemoteFile(relpath, src.as_uri(), sha256(data), len(data))


def amat_bytes(rows: np.ndarray) -> bytes:
    return "".join(" ".join(str(v) for v in row) + "\n" for row in rows).encode()


# --------------------------------------------------------------------------------------------
# .amat


def test_read_amat_values(tmp_path):
    rows = np.array([[0, 1, 1, 0, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=np.uint8)
    path = tmp_path / "tiny.amat"
    path.write_bytes(amat_bytes(rows))
    x = formats.read_amat(path, dim=5)
    assert x.dtype == np.uint8 and x.shape == (3, 5)
    np.testing.assert_array_equal(x, rows)
    path.write_bytes(amat_bytes(rows)[:-1])  # no final newline
    np.testing.assert_array_equal(formats.read_amat(path, dim=5), rows)


@pytest.mark.parametrize(
    "text, where",
    [
        ("0 1 1\n1 2 0\n0 0 0\n", "line 2, column 3"),  # a digit other than 0/1
        ("0 1 1\n1 1\n0 0 0\n", "line 2"),  # short line
        ("0 1 1\n1  1 0\n0 0 0\n", "line 2"),  # double space: long line
        ("0 1 1\n1,1,0\n0 0 0\n", "line 2, column 2"),  # wrong separator
        ("", "empty"),
    ],
)
def test_read_amat_corrupt(tmp_path, text, where):
    path = tmp_path / "corrupt.amat"
    path.write_text(text)
    with pytest.raises(DataError, match="corrupt.amat") as err:
        formats.read_amat(path, dim=3)
    assert where in str(err.value)


def test_amat_binary_cache(tmp_path, monkeypatch):
    rows = np.random.default_rng(0).integers(0, 2, size=(7, 6)).astype(np.uint8)
    remote = publish(tmp_path, "binarized_mnist/tiny.amat", amat_bytes(rows))
    np.testing.assert_array_equal(datasets.load_amat_cached(remote, 6), rows)
    cached = list((tmp_path / "cache" / "binarized_mnist").glob("tiny.amat.*.u8.npy"))
    assert len(cached) == 1 and remote.sha256[:16] in cached[0].name

    def no_parse(*args):
        raise AssertionError("parsed again instead of reading the cached copy")

    monkeypatch.setattr(datasets, "read_amat", no_parse)
    np.testing.assert_array_equal(datasets.load_amat_cached(remote, 6), rows)


# --------------------------------------------------------------------------------------------
# file resolution


def test_resolve_prefers_vaelab_data_and_caches_verification(tmp_path, monkeypatch):
    data = b"local copy"
    local = tmp_path / "local"
    (local / "set").mkdir(parents=True)
    (local / "set" / "f.bin").write_bytes(data)
    monkeypatch.setenv("VAELAB_DATA", str(local))
    url = "http://example.invalid/f.bin"  # never contacted
    assert resolve_file("set/f.bin", url, sha256(data), len(data)) == local / "set" / "f.bin"

    calls = []
    real_hash = files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda p: calls.append(p) or real_hash(p))
    resolve_file("set/f.bin", url, sha256(data), len(data))
    assert calls == [], "a verified, unchanged file was hashed again"

    (local / "set" / "f.bin").write_bytes(b"local copx")  # same size, new content and mtime
    os.utime(local / "set" / "f.bin", ns=(1, 1))
    with pytest.raises(ChecksumError):
        resolve_file("set/f.bin", url, sha256(data), len(data))
    assert len(calls) == 1


def test_checksum_mismatch_message(tmp_path, monkeypatch):
    local = tmp_path / "local"
    (local / "set").mkdir(parents=True)
    (local / "set" / "f.bin").write_bytes(b"tampered")
    monkeypatch.setenv("VAELAB_DATA", str(local))
    expected = sha256(b"original")
    url = "https://example.invalid/f.bin"
    with pytest.raises(ChecksumError) as err:
        resolve_file("set/f.bin", url, expected, None)
    msg = str(err.value)
    for part in ("set/f.bin", str(local / "set" / "f.bin"), url, expected, sha256(b"tampered"),
                 "export VAELAB_DATA="):
        assert part in msg, f"{part!r} missing from: {msg}"


def test_offline_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("VAELAB_OFFLINE", "1")
    url = "https://example.invalid/missing.bin"
    with pytest.raises(DataUnavailableError) as err:
        resolve_file("set/missing.bin", url, "ab" * 32, 10)
    msg = str(err.value)
    assert url in msg and "ab" * 32 in msg and "VAELAB_OFFLINE" in msg
    assert "export VAELAB_DATA=/path/to/data" in msg and "/path/to/data/set/missing.bin" in msg


def test_download_file_url(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)  # several read chunks
    remote = publish(tmp_path, "set/blob.bin", data)
    path = remote.resolve()
    assert path == tmp_path / "cache" / "set" / "blob.bin"
    assert path.read_bytes() == data
    assert list(path.parent.iterdir()) == [path], "temporary download left behind"
    assert (tmp_path / "cache" / ".verified" / "set" / "blob.bin.sha256-ok").is_file()
    (tmp_path / "server" / "set" / "blob.bin").unlink()  # now served from the cache
    assert remote.resolve() == path


def test_download_mismatch_is_removed(tmp_path):
    remote = publish(tmp_path, "set/blob.bin", b"served bytes")
    expected = sha256(b"published bytes")
    with pytest.raises(ChecksumError) as err:
        resolve_file(remote.relpath, remote.url, expected, None)
    msg = str(err.value)
    assert remote.url in msg and expected in msg and sha256(b"served bytes") in msg
    assert "deleted" in msg and "VAELAB_DATA" in msg
    cache = tmp_path / "cache" / "set"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_unreachable_url(tmp_path):
    url = (tmp_path / "nowhere.bin").as_uri()
    with pytest.raises(DataUnavailableError, match="could not be downloaded") as err:
        resolve_file("set/nowhere.bin", url, "cd" * 32, None)
    assert url in str(err.value) and "VAELAB_DATA" in str(err.value)


def test_corrupt_cache_is_downloaded_again(tmp_path, capsys):
    remote = publish(tmp_path, "set/blob.bin", b"good bytes")
    cached = tmp_path / "cache" / "set" / "blob.bin"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"bad bytes")
    assert remote.resolve().read_bytes() == b"good bytes"
    assert_one_note(capsys.readouterr().err, "fails its checksum")


def assert_one_note(err: str, text: str) -> None:
    """``err`` (captured stderr) is one ``vaelab: note:`` line holding ``text``: no Python
    warning (``UserWarning``, a source line) and no log record (``INFO``) reaches the user."""
    lines = [line.strip() for line in re.split(r"[\r\n]", err)]  # a progress bar's frames too
    notes = [line for line in lines if line.startswith("vaelab: note: ")]
    assert len(notes) == 1 and text in notes[0], err  # (besides a download's progress bar)
    assert "Warning" not in err and "INFO" not in err and "warn(" not in err, err


# --------------------------------------------------------------------------------------------
# restricted unpickling


class _Evil:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return os.system, (f"echo pwned > {self.target}",)


def test_unpickler_loads_numpy_arrays(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(4, 6)
    for protocol in (3, 4):
        path = tmp_path / f"arrays{protocol}.pkl"
        path.write_bytes(pickle.dumps([array, {"b": array.astype(np.float32)}], protocol=protocol))
        obj = formats.load_numpy_pickle(path)
        np.testing.assert_array_equal(obj[0], array)
        assert obj[1]["b"].dtype == np.float32


@pytest.mark.parametrize("wrap", [lambda e: e, lambda e: [np.zeros(3), {"x": e}]])
def test_unpickler_refuses_code(tmp_path, wrap):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(wrap(_Evil(target)), protocol=4))
    with pytest.raises(DataError, match=r"refusing to unpickle global (posix|nt)\.system"):
        formats.load_numpy_pickle(path)
    assert not target.exists(), "the payload ran"


def test_unpickler_refuses_builtins(tmp_path):
    path = tmp_path / "eval.pkl"
    path.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(DataError, match="refusing to unpickle global builtins.eval"):
        formats.load_numpy_pickle(path)


def test_frey_faces_from_fake_file(tmp_path, monkeypatch):
    faces = np.random.default_rng(1).integers(0, 256, size=(50, 560)).astype(np.uint8)
    remote = publish(tmp_path, "frey_faces/freyfaces.pkl", pickle.dumps([faces], protocol=4))
    monkeypatch.setitem(datasets.FILES, "frey_faces/freyfaces.pkl", remote)
    splits = load_dataset(DataConfig(name="frey_faces", valid_fraction=0.2, test_fraction=0.1))
    assert splits.sizes() == {"train": 35, "valid": 10, "test": 5}
    assert splits.image_shape == (28, 20) and splits.levels == 256 and not splits.binary
    together = torch.cat([splits.train, splits.valid, splits.test]) * 255
    assert sorted(map(tuple, together.round().to(torch.uint8).tolist())) == sorted(
        map(tuple, faces.tolist()))


# --------------------------------------------------------------------------------------------
# MNIST (IDX)


def idx_gz(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def publish_mnist(tmp_path, monkeypatch, prefix: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
        relpath = f"mnist/{prefix}-{kind}-ubyte.gz"
        monkeypatch.setitem(datasets.FILES, relpath, publish(tmp_path, relpath, idx_gz(array)))


def test_mnist_test_files_only(tmp_path, monkeypatch, capsys):
    """Issue 29, item 12: the fallback is said in one short note (it was a 700-character
    ``UserWarning`` with its source line)."""
    publish_mnist(tmp_path, monkeypatch, "t10k", 20, seed=0)
    for relpath in ("mnist/train-images-idx3-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz"):
        missing = datasets.FILES[relpath]
        monkeypatch.setitem(datasets.FILES, relpath, RemoteFile(
            relpath, (tmp_path / "absent.gz").as_uri(), missing.sha256, missing.size))
    splits = load_dataset(DataConfig(name="mnist", valid_fraction=0.25, test_fraction=0.25))
    err = capsys.readouterr().err
    assert_one_note(err, "carved out of the 10,000 test images")
    assert "mnist/train-*-ubyte.gz" in err and "could not be downloaded" in err, err
    assert splits.sizes() == {"train": 10, "valid": 5, "test": 5}
    assert splits.levels == 256 and splits.image_shape == (28, 28)
    assert all(splits.labels[s].dtype == torch.int64 for s in ("train", "valid", "test"))
    assert 0.0 <= splits.train.min() and splits.train.max() <= 1.0


def test_mnist_with_train_files(tmp_path, monkeypatch):
    publish_mnist(tmp_path, monkeypatch, "t10k", 4, seed=0)
    publish_mnist(tmp_path, monkeypatch, "train", 6, seed=1)
    monkeypatch.setattr(datasets, "_MNIST_TRAIN", 5)
    splits = load_dataset(DataConfig(name="mnist"))
    assert splits.sizes() == {"train": 5, "valid": 1, "test": 4}


@pytest.mark.parametrize(
    "raw, match",
    [
        (b"\x00\x00\x08", "magic"),
        (b"\x01\x00\x08\x01" + struct.pack(">I", 2) + b"ab", "magic"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"ab", "declares shape"),
    ],
)
def test_idx_corrupt(tmp_path, raw, match):
    path = tmp_path / "bad-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(DataError, match=match):
        formats.read_idx(path)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="gzip"):
        formats.read_idx(path)


# --------------------------------------------------------------------------------------------
# the array data set


def test_array_npy_float(tmp_path):
    x = np.random.default_rng(0).random((100, 5)).astype(np.float64)
    np.save(tmp_path / "x.npy", x)
    splits = load_dataset(DataConfig(name="array", path=str(tmp_path / "x.npy"),
                                     valid_fraction=0.1, test_fraction=0.2))
    assert splits.sizes() == {"train": 70, "valid": 10, "test": 20}
    assert splits.dim == 5 and splits.image_shape is None and splits.levels is None
    assert splits.train.dtype == torch.float32 and not splits.binary
    together = torch.cat([splits.train, splits.valid, splits.test])
    expected = torch.tensor(x, dtype=torch.float32)
    assert torch.allclose(together.sort(0).values, expected.sort(0).values)


def test_array_uint8_images(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(30, 4, 3)).astype(np.uint8)
    np.save(tmp_path / "img.npy", x)
    splits = load_dataset(DataConfig(name="array", path=str(tmp_path / "img.npy")))
    assert splits.levels == 256 and splits.image_shape == (4, 3) and splits.dim == 12
    assert splits.train.max() <= 1.0
    levels = torch.cat([splits.train, splits.valid, splits.test]) * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert sorted(levels.round().to(torch.uint8).flatten().tolist()) == sorted(x.flatten().tolist())


def test_array_npz_splits(tmp_path):
    rng = np.random.default_rng(0)
    train, test = rng.random((40, 16)), rng.random((8, 16))
    np.savez(tmp_path / "d.npz", train=train, test=test)
    splits = load_dataset(DataConfig(name="array", path=str(tmp_path / "d.npz"),
                                     valid_fraction=0.25, test_fraction=0.5))
    assert splits.sizes() == {"train": 30, "valid": 10, "test": 8}  # test kept, valid carved
    assert torch.allclose(splits.test, torch.tensor(test, dtype=torch.float32))
    assert splits.image_shape == (4, 4)  # D = 16 is a perfect square

    np.savez(tmp_path / "all.npz", train=train, valid=test, test=test)
    assert load_dataset(DataConfig(name="array", path=str(tmp_path / "all.npz"))).sizes() == {
        "train": 40, "valid": 8, "test": 8}

    np.savez(tmp_path / "one.npz", anything=(train > 0.5))
    splits = load_dataset(DataConfig(name="array", path=str(tmp_path / "one.npz")))
    assert splits.binary and splits.levels == 2 and sum(splits.sizes().values()) == 40

    np.savez(tmp_path / "two.npz", a=train, b=train)
    with pytest.raises(DataError, match="two.npz"):
        load_dataset(DataConfig(name="array", path=str(tmp_path / "two.npz")))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_array_rejects_non_finite(tmp_path, bad):
    x = np.zeros((10, 3))
    x[4, 1] = bad
    np.save(tmp_path / "bad.npy", x)
    with pytest.raises(DataError, match="bad.npy.*NaN or infinite"):
        load_dataset(DataConfig(name="array", path=str(tmp_path / "bad.npy")))


def test_array_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.path"):
        load_dataset(DataConfig(name="array"))
    with pytest.raises(ConfigError, match="data.path.*does not exist"):
        load_dataset(DataConfig(name="array", path=str(tmp_path / "none.npy")))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="obj.npy"):
        load_dataset(DataConfig(name="array", path=str(tmp_path / "obj.npy")))
    np.save(tmp_path / "text.npy", np.array([["a", "b"]] * 10))
    with pytest.raises(DataError, match=r"text\.npy.*unsupported dtype <U1"):
        load_dataset(DataConfig(name="array", path=str(tmp_path / "text.npy")))
    with pytest.raises(ConfigError, match=r"data\.path.*\.csv or \.h5ad"):
        load_dataset(DataConfig(name="array", path=str(tmp_path / "x.txt")))


# --------------------------------------------------------------------------------------------
# data.values, CSV, AnnData, the scikit-learn data sets


def _load(path, capsys=None, **kw):
    splits = load_dataset(DataConfig(name="array", path=str(path), **kw))
    said = capsys.readouterr().err if capsys is not None else ""
    return splits, said


@pytest.mark.parametrize("array,values,kind,levels,said", [
    (np.array([[0, 1], [1, 1]] * 10, dtype=bool), "auto", "binary", 2, "all 0 or 1"),
    (np.array([[0, 1], [1, 0]] * 10, dtype=np.uint8), "auto", "binary", 2,
     "not as 8-bit grey levels"),
    (np.array([[0, 7], [200, 255]] * 10, dtype=np.uint8), "auto", "levels", 256,
     "uint8 values read as 8-bit grey levels"),
    (np.array([[0, 7], [16, 3]] * 10, dtype=np.int32), "auto", "counts", None,
     "int32 values read as counts 0..16"),
    (np.array([[0.0, 7.0], [16.0, 3.0]] * 10), "auto", "counts", None, "read as counts 0..16"),
    (np.array([[-1, 7], [16, 3]] * 10, dtype=np.int64), "auto", "real", None,
     "read as real numbers in [-1, 16]"),
    (np.array([[0.5, 7.25], [16.0, 3.0]] * 10), "auto", "real", None, "real numbers"),
    (np.array([[0, 7], [16, 3]] * 10, dtype=np.int64), "levels", "levels", 17,
     "17 levels k/16"),
    (np.array([[0, 7], [200, 3]] * 10, dtype=np.uint8), "levels", "levels", 256, ""),
    (np.array([[0, 1], [1, 0]] * 10, dtype=np.int64), "levels", "binary", 2, ""),
    (np.array([[0, 7], [200, 3]] * 10, dtype=np.uint8), "counts", "counts", None, ""),
    (np.array([[0, 7], [200, 3]] * 10, dtype=np.uint8), "real", "real", None, ""),
])
def test_values_say_how_numbers_are_read(tmp_path, capsys, array, values, kind, levels, said):
    np.save(tmp_path / "x.npy", array)
    splits, err = _load(tmp_path / "x.npy", capsys, values=values)
    assert splits.values == kind and splits.levels == levels
    assert (said in err) if said else ("note" not in err), err
    everything = torch.cat([splits.train, splits.valid, splits.test])
    expected = torch.tensor(array.astype(np.float64), dtype=torch.float32)
    if kind == "levels":
        expected = expected / (levels - 1)
    assert torch.allclose(everything.sort(0).values, expected.sort(0).values, atol=1e-7)


@pytest.mark.parametrize("values,array,match", [
    ("counts", np.array([[-1, 2]] * 10), r"data.values = 'counts'.*negative values"),
    ("counts", np.array([[0.5, 2.0]] * 10), r"non-integer values.*data.values = 'real'"),
    ("levels", np.array([[0.25, 1.0]] * 10), r"levels are integers 0..L-1"),
    ("counts", np.array([[2.0**25, 1.0]] * 10), r"exceed 2\^24"),
    ("real", np.array([[1e39, 1.0]] * 10), r"NaN or infinite \(in float32\).*row 1, column 1"),
])
def test_values_that_a_reading_refuses(tmp_path, values, array, match):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError, match=match):
        load_dataset(DataConfig(name="array", path=str(tmp_path / "bad.npy"), values=values))


def test_splits_of_one_file_are_read_the_same_way(tmp_path):
    """Levels L = max + 1 over all splits (here the test split holds the maximum)."""
    np.savez(tmp_path / "d.npz", train=np.array([[0, 3]] * 8), test=np.array([[9, 1]] * 2))
    splits = load_dataset(DataConfig(name="array", path=str(tmp_path / "d.npz"), values="levels"))
    assert splits.levels == 10 and float(splits.test.max()) == 1.0
    assert torch.allclose(splits.train[0], torch.tensor([0.0, 3 / 9]))


@pytest.mark.parametrize("text,header", [
    ("a,b,c\n1,2.5,-3\n4,5,6e2\n", ["a", "b", "c"]),
    ('"x 1";"y";"z"\n1;2.5;-3\n4;5;6e2\n', ["x 1", "y", "z"]),
    ("1\t2.5\t-3\n4\t5\t6e2\n\n", None),
    ("\ufeff1,2.5,-3\r\n4,5,600\r\n", None),  # a byte-order mark and Windows line ends
])
def test_read_csv_with_and_without_a_header(tmp_path, text, header):
    path = tmp_path / "t.csv"
    path.write_text(text, encoding="utf-8")
    array, names = formats.read_csv(path)
    assert names == header
    assert np.array_equal(array, np.array([[1, 2.5, -3], [4, 5, 600]]))


@pytest.mark.parametrize("text,match", [
    ("a,b\n1,2\n3,M\n", r"line 3, column 2 \('b'\): 'M' is not a number"),
    ("1,2\n3,\n", r"line 2, column 2: '' is not a number"),
    ("a,b\n1,2\n3\n", r"line 3: 1 fields, the rows before it have 2"),
    ("a,b,c\n1,2\n", r"the header names 3 columns, the rows hold 2"),
    ("a,b\n", r"has a header and no rows"),
    ("", r"is empty"),
])
def test_read_csv_errors_name_the_line_and_column(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=match):
        formats.read_csv(path)


def test_array_csv_is_a_table(tmp_path, capsys):
    """A CSV of 16 columns stays a table (no 4×4 image is guessed), counts read as counts."""
    rng = np.random.default_rng(0)
    x = rng.poisson(2.0, (50, 16))
    np.savetxt(tmp_path / "c.csv", x, delimiter=",", fmt="%d",
               header=",".join(f"gene{i}" for i in range(16)), comments="")
    splits, err = _load(tmp_path / "c.csv", capsys)
    assert splits.values == "counts" and splits.image_shape is None and splits.shape == (16,)
    assert "read as counts" in err
    everything = torch.cat([splits.train, splits.valid, splits.test])
    assert torch.equal(everything.sort(0).values, torch.tensor(x, dtype=torch.float32).sort(0)
                       .values)


def test_array_h5ad_reads_the_counts_layer(tmp_path, capsys):
    anndata = pytest.importorskip("anndata", reason="the [anndata] extra is not installed")
    import scipy.sparse

    rng = np.random.default_rng(0)
    counts = rng.poisson(1.5, (40, 7)).astype(np.float32)
    adata = anndata.AnnData(X=scipy.sparse.csr_matrix(np.log1p(counts)))
    adata.layers["counts"] = scipy.sparse.csr_matrix(counts)
    adata.write_h5ad(tmp_path / "cells.h5ad")
    splits, err = _load(tmp_path / "cells.h5ad", capsys, valid_fraction=0.25, test_fraction=0.25)
    assert "layers['counts'] matrix, 40 cells × 7 genes" in err and "read as counts" in err
    assert splits.values == "counts" and splits.shape == (7,) and splits.sizes() == {
        "train": 20, "valid": 10, "test": 10}
    everything = torch.cat([splits.train, splits.valid, splits.test])
    assert torch.equal(everything.sort(0).values, torch.from_numpy(counts).sort(0).values)
    anndata.AnnData(X=counts).write_h5ad(tmp_path / "x_only.h5ad")  # no layer: X is read
    splits, err = _load(tmp_path / "x_only.h5ad", capsys)
    assert "AnnData X matrix" in err and splits.values == "counts"
    (tmp_path / "junk.h5ad").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match=r"cannot read .h5ad file .*junk\.h5ad"):
        _load(tmp_path / "junk.h5ad")


def test_scikit_learn_data_sets_carry_their_shape_values_and_labels():
    pytest.importorskip("sklearn", reason="the [sklearn] extra is not installed")
    digits = load_dataset(DataConfig(name="digits"))
    assert sum(digits.sizes().values()) == 1797 and digits.shape == (1, 8, 8)
    assert digits.values == "counts" and digits.levels is None
    everything = torch.cat([digits.train, digits.valid, digits.test])
    assert float(everything.min()) == 0.0 and float(everything.max()) == 16.0
    assert torch.equal(everything, everything.round())
    assert set(digits.labels["test"].tolist()) == set(range(10))
    levels = load_dataset(DataConfig(name="digits", values="levels"))
    assert levels.values == "levels" and levels.levels == 17
    assert torch.allclose(levels.train * 16, digits.train)  # same split, k/16
    cancer = load_dataset(DataConfig(name="breast_cancer", split_seed=1))
    assert sum(cancer.sizes().values()) == 569 and cancer.shape == (30,)
    assert cancer.values == "real" and cancer.image_shape is None
    assert float(cancer.train.max()) > 1000 and set(cancer.labels["train"].tolist()) == {0, 1}
    with pytest.raises(DataError, match="breast_cancer.*non-integer values"):
        load_dataset(DataConfig(name="breast_cancer", values="counts"))
    with pytest.raises(ConfigError, match="data.values = 'counts'.*binary"):
        load_dataset(DataConfig(name="synthetic", values="counts"))


def test_standardization_from_the_training_split(capsys):
    """y = (x − m) / s with the training split's mean and population standard deviation;
    log-Jacobian −Σ log s; a constant feature keeps s = 1 (with a note); deterministic."""
    g = torch.Generator().manual_seed(0)
    train = torch.randn(500, 3, generator=g) * torch.tensor([10.0, 0.1, 1.0]) + 5
    train[:, 2] = 7.0  # constant
    test = torch.randn(20, 3, generator=g)
    splits = DataSplits(train, test, test, name="t")
    pre = Preprocessor(DataConfig(standardize=True), splits)
    assert "1 feature(s)" in capsys.readouterr().err
    x = train.double()
    m, s = x.mean(0), x.std(0, correction=0)
    s[2] = 1.0
    assert torch.allclose(pre.mean.double(), m, atol=1e-5)
    assert torch.allclose(pre.scale.double(), s, rtol=1e-6)
    y = pre.eval_split(test)
    assert torch.allclose(y, ((test - m.float()) / s.float()), atol=1e-6)
    assert torch.equal(pre.train_batch(test, torch.Generator()), y)  # no random draw
    assert pre.log_jacobian_per_point(3) == pytest.approx(-float(s.log().sum()), rel=1e-6)
    standardized = pre.eval_split(train)
    assert torch.allclose(standardized[:, :2].mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(standardized[:, :2].std(0, correction=0), torch.ones(2), atol=1e-5)
    again = Preprocessor(DataConfig(standardize=True), splits)  # recomputed: the same numbers
    assert torch.equal(again.mean, pre.mean) and torch.equal(again.scale, pre.scale)
    with pytest.raises(ConfigError, match="standardize=true and data.dequantize=true"):
        Preprocessor(DataConfig(standardize=True, dequantize=True), grey_splits())


def test_dequantization_of_levels_other_than_256():
    """17 levels k/16: x' = (k + u)/17 stays in level k's cube; log-Jacobian −D log 17."""
    k = torch.arange(17, dtype=torch.float32).repeat(4).unsqueeze(1)  # (68, 1)
    splits = DataSplits(k / 16, k[:5] / 16, k[:5] / 16, name="l17", levels=17)
    pre = Preprocessor(DataConfig(dequantize=True), splits)
    x = pre.eval_split(splits.train)
    assert torch.equal(torch.floor(x * 17), k)
    assert pre.log_jacobian_per_point(64) == pytest.approx(-64 * math.log(17))
    counts = DataSplits(k, k[:5], k[:5], name="c", values="counts")
    with pytest.raises(ConfigError, match="counts data, not levels"):
        Preprocessor(DataConfig(dequantize=True), counts)


# --------------------------------------------------------------------------------------------
# load_dataset


def test_unknown_dataset_suggests():
    with pytest.raises(ConfigError, match=r"data.name.*did you mean 'binarized_mnist'"):
        load_dataset(DataConfig(name="binarised_mnist"))
    assert {"array", "binarized_mnist", "frey_faces", "mnist", "synthetic"} <= set(DATASETS.names())


def test_synthetic_limit_and_static_binarization(tmp_path):
    a = load_dataset(DataConfig(name="synthetic", split_seed=3))
    b = load_dataset(DataConfig(name="synthetic", split_seed=3, limit=50))
    c = load_dataset(DataConfig(name="synthetic", split_seed=4))
    assert a.sizes() == {"train": 400, "valid": 100, "test": 100} and a.image_shape == (8, 8)
    assert a.binary and check_binary(a.train)
    assert b.sizes() == {"train": 50, "valid": 50, "test": 50}
    # data.limit keeps points spread evenly over each split (issue 9: the first N of a file
    # sorted by class would be one class); data.subset = "first" is what version-1 configs meant
    assert torch.equal(a.train[spread_indices(400, 50)], b.train)
    assert torch.equal(a.valid[spread_indices(100, 50)], b.valid)
    assert not torch.equal(a.train[:50], b.train) and not torch.equal(a.train, c.train)
    first = load_dataset(DataConfig(name="synthetic", split_seed=3, limit=50, subset="first"))
    assert torch.equal(a.train[:50], first.train) and torch.equal(a.test[:50], first.test)

    x = np.random.default_rng(0).random((200, 9)).astype(np.float32)
    np.save(tmp_path / "g.npy", x)
    cfg = DataConfig(name="array", path=str(tmp_path / "g.npy"), binarize="static", split_seed=1)
    s1, s2 = load_dataset(cfg), load_dataset(cfg)
    assert s1.binary and s1.levels == 2 and check_binary(s1.train)
    assert torch.equal(s1.train, s2.train)
    small = load_dataset(cfg.model_copy(update={"limit": 10}))
    # a limited run sees a subset of the same static binarization
    assert torch.equal(small.train, s1.train[spread_indices(s1.train.shape[0], 10)])


def test_split_indices_partition():
    train, valid, test = split_indices(103, 0.1, 0.2, seed=5)
    assert (len(train), len(valid), len(test)) == (72, 10, 21)
    assert torch.equal(torch.cat([train, valid, test]).sort().values, torch.arange(103))
    assert torch.equal(split_indices(103, 0.1, 0.2, seed=5)[1], valid)
    with pytest.raises(ConfigError, match="no training points"):
        split_indices(10, 0.5, 0.5, seed=0)


def test_datasplits_validates_shapes():
    x = torch.zeros(3, 4)
    with pytest.raises(DataError, match="one D"):
        DataSplits(x, x, torch.zeros(3, 5), name="bad")
    with pytest.raises(DataError, match="image_shape"):
        DataSplits(x, x, x, name="bad", image_shape=(3, 3))


# --------------------------------------------------------------------------------------------
# preprocessing


def grey_splits(n: int = 256) -> DataSplits:
    x = (torch.arange(n) % 256).to(torch.float32).div(255.0).unsqueeze(1).repeat(1, 3)  # (n, 3)
    return DataSplits(x, x[:10], x[:10], name="grey", levels=256)


def test_dequantization_range_and_determinism():
    splits = grey_splits()
    pre = Preprocessor(DataConfig(dequantize=True), splits)
    k = torch.round(splits.train * 255)  # (256, 3), levels 0..255
    x1 = pre.train_batch(splits.train, torch.Generator().manual_seed(0))
    x2 = pre.train_batch(splits.train, torch.Generator().manual_seed(0))
    x3 = pre.train_batch(splits.train, torch.Generator().manual_seed(1))
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)
    assert ((x1 >= k / 256) & (x1 < (k + 1) / 256)).all()  # each point stays in its level's cube
    assert torch.equal(torch.floor(x1 * 256), k)
    assert torch.equal(pre.eval_split(splits.train), pre.eval_split(splits.train))
    assert pre.log_jacobian_per_point(784) == pytest.approx(-784 * math.log(256))
    # an 8-bit model at 8 bits/dim: nats = D log 256
    assert bits_per_dim(784 * math.log(256), 784) == pytest.approx(8.0)


def test_dynamic_binarization():
    probs = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    x = probs.repeat(20000, 1)  # (20000, 5)
    splits = DataSplits(x, x[:5], x[:5], name="p")
    pre = Preprocessor(DataConfig(binarize="dynamic"), splits)
    g = torch.Generator().manual_seed(0)
    b1, b2 = pre.train_batch(x, g), pre.train_batch(x, g)
    assert check_binary(b1) and not torch.equal(b1, b2)  # a fresh draw each batch
    # mean of 20000 Bernoulli(p) draws: standard error <= 0.0036; tolerance 5 standard errors
    assert torch.allclose(b1.mean(0), probs, atol=5 * math.sqrt(0.25 / 20000))
    assert pre.log_jacobian_per_point(5) == 0.0
    g_eval = pre.eval_generator()
    assert torch.equal(pre.eval_batch(x, g_eval), pre.eval_batch(x, pre.eval_generator()))


def test_preprocess_refusals():
    binary = load_dataset(DataConfig(name="synthetic"))
    with pytest.raises(ConfigError, match="data.dequantize.*binary"):
        Preprocessor(DataConfig(dequantize=True), binary)
    with pytest.raises(ConfigError, match="exclude each other"):
        Preprocessor(DataConfig(dequantize=True, binarize="dynamic"), grey_splits())
    pre = Preprocessor(DataConfig(binarize="dynamic"), binary)  # binary data: a no-op
    assert pre.is_identity
    assert pre.train_batch(binary.train, torch.Generator()) is binary.train
    wide = DataSplits(torch.full((4, 2), 2.0), torch.zeros(1, 2), torch.zeros(1, 2), name="w")
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        Preprocessor(DataConfig(binarize="dynamic"), wide)


# --------------------------------------------------------------------------------------------
# batching


def test_batches_reproducible_and_cover_every_index():
    x = torch.arange(103).unsqueeze(1)  # (103, 1)
    def epoch(e, **kw):
        return [b.squeeze(1) for b in iterate_batches(x, 10, shuffle=True, seed=7, epoch=e, **kw)]

    torch.manual_seed(0)
    first = epoch(0)
    torch.manual_seed(123)  # the global RNG plays no part
    torch.rand(5)
    again = epoch(0)
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and len(first) == len(again) == 11
    assert torch.equal(torch.cat(first).sort().values, torch.arange(103))
    assert not torch.equal(torch.cat(first), torch.cat(epoch(1)))
    assert not torch.equal(torch.cat(first), torch.arange(103))

    dropped = epoch(0, drop_last=True)
    assert len(dropped) == 10 and all(len(b) == 10 for b in dropped)
    resumed = epoch(0, start_batch=4)
    assert all(torch.equal(a, b) for a, b in zip(first[4:], resumed)) and len(resumed) == 7

    ordered = list(iterate_batches(x, 50, shuffle=False, seed=7, epoch=0))
    assert torch.equal(torch.cat(ordered).squeeze(1), torch.arange(103))


def test_num_batches_matches_iteration():
    for n in (0, 1, 99, 100, 101):
        for drop_last in (False, True):
            count = sum(1 for _ in batch_indices(n, 25, shuffle=True, seed=0, epoch=0,
                                                  drop_last=drop_last))
            assert num_batches(n, 25, drop_last) == count


# --------------------------------------------------------------------------------------------
# the real files (only when VAELAB_DATA points at them)


def _real(relpath: str) -> bool:
    return REAL_DATA is not None and (Path(REAL_DATA) / relpath).is_file()


@pytest.mark.skipif(not _real("binarized_mnist/binarized_mnist_train.amat"),
                    reason="VAELAB_DATA does not hold the real data files")
def test_real_data_sets(monkeypatch):
    monkeypatch.setenv("VAELAB_DATA", REAL_DATA)
    monkeypatch.setenv("VAELAB_OFFLINE", "1")
    bm = load_dataset(DataConfig(name="binarized_mnist"))
    assert bm.sizes() == {"train": 50000, "valid": 10000, "test": 10000} and bm.dim == 784
    assert bm.binary and check_binary(bm.train) and check_binary(bm.test)

    if _real("frey_faces/freyfaces.pkl"):
        ff = load_dataset(DataConfig(name="frey_faces"))
        assert sum(ff.sizes().values()) == 1965 and ff.dim == 560 and ff.levels == 256

    if _real("mnist/t10k-images-idx3-ubyte.gz"):
        if _real("mnist/train-images-idx3-ubyte.gz") and _real("mnist/train-labels-idx1-ubyte.gz"):
            mn = load_dataset(DataConfig(name="mnist"))
            assert mn.sizes() == {"train": 50000, "valid": 10000, "test": 10000}
        else:
            mn = load_dataset(DataConfig(name="mnist"))  # says so in a note
            assert sum(mn.sizes().values()) == 10000
        assert mn.dim == 784 and 0.0 <= mn.test.min() and mn.test.max() == 1.0
        assert mn.labels["test"].dtype == torch.int64
        assert set(mn.labels["test"].tolist()) == set(range(10))
