r"""The data sets, each loaded into memory as three flattened float32 splits.

A data set is a builder ``(DataConfig) -> DataSplits`` registered in :data:`DATASETS`;
:func:`load_dataset` resolves ``data.name`` there, then applies the config's static binarization
and per-split ``limit``. How the numbers are read is ``data.values``
(:mod:`vaelab.data.values`): binary data as {0, 1}, grey levels ``k`` of L levels as
``k / (L - 1)`` (8-bit: ``k / 255``, see :mod:`vaelab.data.preprocess` for dequantization),
counts and real values as they are. Each data set carries its shape (``DataSplits.shape``:
``(C, H, W)`` for images, ``(D,)`` for tables).

===================  ==================  ============  ======  ==================================
name                 splits (N)          shape         values  source
===================  ==================  ============  ======  ==================================
``binarized_mnist``  50000/10000/10000   (1, 28, 28)   binary  Larochelle & Murray [1]
``mnist``            50000/10000/10000   (1, 28, 28)   8-bit   LeCun et al. [2]
``frey_faces``       by fractions, 1965  (1, 28, 20)   8-bit   Kingma & Welling [3]
``digits``           by fractions, 1797  (1, 8, 8)     counts  UCI pen digits [4], scikit-learn
``breast_cancer``    by fractions, 569   (30,)         real    UCI WDBC [5], scikit-learn
``array``            the user's file     any           any     ``data.path``: .npy .npz .csv .h5ad
``synthetic``        400/100/100         (1, 8, 8)     binary  a seeded generator
===================  ==================  ============  ======  ==================================

``digits`` (counts 0–16 of 4×4 blocks; ``data.values = "levels"`` reads them as 17 levels
k/16) and ``breast_cancer`` (30 real-valued features of cell nuclei, from 0.0008 to 4254) ship
inside scikit-learn, so they work offline: ``pip install 'vaelab[sklearn]'``. Their class labels
(digit, malignant/benign) are kept.

Files are found or downloaded by :func:`vaelab.data.files.resolve_file` (set ``VAELAB_DATA`` to a
folder of local copies). Splits carved "by fractions" hold ``round(N * data.test_fraction)`` test
and ``round(N * data.valid_fraction)`` validation points drawn by ``data.split_seed``; the rest is
training data.

Example::

    splits = load_dataset(DataConfig(name="binarized_mnist"))
    splits.train.shape  # torch.Size([50000, 784])

One topic: the registry of data sets, each builder its download, checksum and split, kept in
one module so that the files and splits of every data set are listed in one place.

References

1. H. Larochelle, I. Murray. *The Neural Autoregressive Distribution Estimator*. AISTATS 2011.
2. Y. LeCun, L. Bottou, Y. Bengio, P. Haffner. *Gradient-Based Learning Applied to Document
   Recognition*. Proc. IEEE 1998.
3. D. P. Kingma, M. Welling. *Auto-Encoding Variational Bayes*. ICLR 2014.
4. E. Alpaydin, C. Kaynak. *Optical Recognition of Handwritten Digits*. UCI Machine Learning
   Repository, 1998.
5. W. N. Street, W. H. Wolberg, O. L. Mangasarian. *Nuclear feature extraction for breast tumor
   diagnosis*. IS&T/SPIE 1993 (the Wisconsin Diagnostic Breast Cancer data).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from vaelab.config import DataConfig
from vaelab.data.errors import DataError, DataUnavailableError, missing_extra
from vaelab.data.files import RemoteFile, cache_dir
from vaelab.data.formats import (
    load_numpy_pickle,
    read_amat,
    read_array_file,
    read_csv,
    read_h5ad,
    read_idx,
)
from vaelab.data.preprocess import check_binary
from vaelab.data.splits import SPLITS, DataSplits
from vaelab.data.subsets import subset_indices
from vaelab.data.values import read_values
from vaelab.notes import note
from vaelab.registry import ConfigError, Entry, Registry
from vaelab.seed import derived_generator

__all__ = [
    "DATASETS",
    "FILES",
    "SPLITS",
    "DataSplits",
    "load_amat_cached",
    "load_dataset",
    "path_ignored",
    "split_indices",
]


# stream tags: keep the draws of different purposes unrelated under one split_seed
_SPLIT_STREAM = 0x5B117
_STATIC_BINARIZE_STREAM = 0xB1A
_SYNTHETIC_STREAM = 0x5E7


#: name → builder ``(DataConfig) -> DataSplits``; call :func:`load_dataset` rather than a builder
DATASETS: Registry[DataSplits] = Registry("data set")


def reads_path(builder):
    """Mark a built-in data set's builder as reading ``data.path``."""
    builder.reads_path = True
    return builder


def path_ignored(entry: Entry) -> bool:
    """Whether the data set of ``entry`` ignores ``data.path``: a built-in one not marked
    :func:`reads_path` (every one but ``array``). A user's data set may read the path."""
    return entry.origin == __name__ and not getattr(entry.builder, "reads_path", False)


# --------------------------------------------------------------------------------------------
# published files

_AMAT = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist"
_MNIST = "https://storage.googleapis.com/cvdf-datasets/mnist"

#: every published file a built-in data set reads, by relative path
FILES: dict[str, RemoteFile] = {
    f.relpath: f
    for f in [
        RemoteFile(
            "binarized_mnist/binarized_mnist_train.amat",
            f"{_AMAT}/binarized_mnist_train.amat",
            "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
            78_400_000,
        ),
        RemoteFile(
            "binarized_mnist/binarized_mnist_valid.amat",
            f"{_AMAT}/binarized_mnist_valid.amat",
            "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
            15_680_000,
        ),
        RemoteFile(
            "binarized_mnist/binarized_mnist_test.amat",
            f"{_AMAT}/binarized_mnist_test.amat",
            "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
            15_680_000,
        ),
        RemoteFile(
            "mnist/train-images-idx3-ubyte.gz",
            f"{_MNIST}/train-images-idx3-ubyte.gz",
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            9_912_422,
        ),
        RemoteFile(
            "mnist/train-labels-idx1-ubyte.gz",
            f"{_MNIST}/train-labels-idx1-ubyte.gz",
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            28_881,
        ),
        RemoteFile(
            "mnist/t10k-images-idx3-ubyte.gz",
            f"{_MNIST}/t10k-images-idx3-ubyte.gz",
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            1_648_877,
        ),
        RemoteFile(
            "mnist/t10k-labels-idx1-ubyte.gz",
            f"{_MNIST}/t10k-labels-idx1-ubyte.gz",
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            4_542,
        ),
        RemoteFile(
            "frey_faces/freyfaces.pkl",
            "https://github.com/y0ast/Variational-Autoencoder/raw/master/freyfaces.pkl",
            "3b69410c6a5fd6e03f09012905168be3712373a094a776f7e58fcd0670d2138a",
            3_568_521,
        ),
    ]
}


# --------------------------------------------------------------------------------------------
# helpers


def split_indices(
    n: int, valid_fraction: float, test_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Disjoint sorted index sets ``(train, valid, test)`` covering ``range(n)``.

    ``round(n * test_fraction)`` test and ``round(n * valid_fraction)`` validation indices are
    drawn by a permutation seeded by ``seed`` (independent of the global RNG); the rest is train.

    :raises ConfigError: when the fractions leave no training point.
    """
    n_test, n_valid = round(n * test_fraction), round(n * valid_fraction)
    if n - n_test - n_valid <= 0:
        raise ConfigError(
            f"data.valid_fraction={valid_fraction} and data.test_fraction={test_fraction} leave "
            f"no training points out of {n}"
        )
    perm = torch.randperm(n, generator=derived_generator(seed, _SPLIT_STREAM))  # (n,)
    test, valid, train = perm[:n_test], perm[n_test : n_test + n_valid], perm[n_test + n_valid :]
    return train.sort().values, valid.sort().values, test.sort().values


def _flatten(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], -1)  # (N, D)


def _carve(x, y: torch.Tensor | None, cfg: DataConfig) -> tuple[dict, dict[str, torch.Tensor]]:
    """Split one set of points (a tensor or an array, and labels) into train/valid/test by the
    config's fractions."""
    idx = dict(zip(SPLITS, split_indices(x.shape[0], cfg.valid_fraction, cfg.test_fraction,
                                         cfg.split_seed)))
    xs = {s: x[i.numpy() if isinstance(x, np.ndarray) else i] for s, i in idx.items()}
    ys = {s: y[i] for s, i in idx.items()} if y is not None else {}
    return xs, ys


def _cache_write_npy(path: Path, array: np.ndarray) -> None:
    """Save ``array`` to ``path`` atomically; an unwritable cache is not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    except OSError as err:
        note(f"could not cache {str(path)!r} ({err.strerror or err}); the next load parses "
             "again")


# --------------------------------------------------------------------------------------------
# binarized MNIST


def load_amat_cached(file: RemoteFile, dim: int) -> np.ndarray:
    """An ``.amat`` file as a ``(N, dim)`` uint8 array, parsed once then read from a ``.npy`` copy.

    The copy lives at ``<cache>/<relpath>.<sha256[:16]>.u8.npy``: keyed by the source file's
    checksum, so a different file never reuses it.
    """
    path = file.resolve()
    cached = cache_dir() / f"{file.relpath}.{file.sha256[:16]}.u8.npy"
    if cached.is_file():
        try:
            array = np.load(cached, allow_pickle=False)
            if array.dtype == np.uint8 and array.ndim == 2 and array.shape[1] == dim:
                return array
        except (ValueError, OSError, EOFError):
            pass  # a damaged cache: parse again and overwrite it
    array = read_amat(path, dim)
    _cache_write_npy(cached, array)
    return array


@DATASETS.register("binarized_mnist")
def build_binarized_mnist(cfg: DataConfig) -> DataSplits:
    """Statically binarized MNIST of Larochelle & Murray (2011): 50k/10k/10k × 784, no labels."""
    _binary_only(cfg)
    xs = {
        s: torch.from_numpy(
            load_amat_cached(FILES[f"binarized_mnist/binarized_mnist_{s}.amat"], 784)
        ).to(torch.float32)  # (N, 784)
        for s in SPLITS
    }
    return DataSplits(**xs, name="binarized_mnist", image_shape=(28, 28), binary=True, levels=2)


# --------------------------------------------------------------------------------------------
# MNIST grey levels

_MNIST_TRAIN = 50_000  # the first 50k of the 60k training images train, the last 10k validate


def _mnist_pair(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 28, 28)`` uint8 and labels ``(N,)`` of ``mnist/<prefix>-*-ubyte.gz``."""
    images_file = FILES[f"mnist/{prefix}-images-idx3-ubyte.gz"]
    labels_file = FILES[f"mnist/{prefix}-labels-idx1-ubyte.gz"]
    images_path, labels_path = images_file.resolve(), labels_file.resolve()
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{str(images_path)!r}: expected uint8 images (N, 28, 28), "
                        f"got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.shape != images.shape[:1] or labels.max() > 9:
        raise DataError(f"{str(labels_path)!r}: expected {images.shape[0]} uint8 labels in 0..9, "
                        f"got {labels.dtype} {labels.shape}")
    return images, labels


@DATASETS.register("mnist")
def build_mnist(cfg: DataConfig) -> DataSplits:
    """MNIST grey levels k/255 with int64 labels: train/valid = first 50k/last 10k of the 60k
    training images, test = the 10k test images.

    Without the training files (absent locally, and no download possible) the 10k test images
    are split by ``data.valid_fraction`` / ``data.test_fraction`` instead, with a note.
    """
    test_x, test_y = _mnist_pair("t10k")
    try:
        train_x, train_y = _mnist_pair("train")
    except DataUnavailableError as err:
        why = ("downloads are disabled by VAELAB_OFFLINE=1" if "VAELAB_OFFLINE" in str(err)
               else "they could not be downloaded")
        note(
            f"the MNIST training files (mnist/train-*-ubyte.gz) are not here and {why}, so "
            "train/valid/test are carved out "
            f"of the 10,000 test images by data.valid_fraction={cfg.valid_fraction}, "
            f"data.test_fraction={cfg.test_fraction}, data.split_seed={cfg.split_seed}; results "
            "are not comparable with the standard split"
        )
        xs, ys = _carve(_flatten(test_x), torch.from_numpy(test_y).to(torch.int64), cfg)
    else:
        x = _flatten(train_x)  # (60000, 784)
        y = torch.from_numpy(train_y).to(torch.int64)  # (60000,)
        n = _MNIST_TRAIN
        xs = {"train": x[:n], "valid": x[n:], "test": _flatten(test_x)}
        ys = {"train": y[:n], "valid": y[n:], "test": torch.from_numpy(test_y).to(torch.int64)}
    return _packaged(xs, cfg, "mnist", "MNIST", image_shape=(28, 28), labels=ys)


# --------------------------------------------------------------------------------------------
# Frey faces


@DATASETS.register("frey_faces")
def build_frey_faces(cfg: DataConfig) -> DataSplits:
    """Frey faces: 1965 grey-level images of 28×20 (k/255), split by the config's fractions."""
    path = FILES["frey_faces/freyfaces.pkl"].resolve()
    obj = load_numpy_pickle(path)
    array = obj[0] if isinstance(obj, (list, tuple)) and len(obj) == 1 else obj
    if not (isinstance(array, np.ndarray) and array.dtype == np.uint8 and array.ndim == 2
            and array.shape[1] == 560):
        raise DataError(f"{str(path)!r}: expected a one-element list holding a (N, 560) uint8 "
                        f"array, got {type(obj).__name__}")
    xs, _ = _carve(array, None, cfg)  # (N, 560) each
    return _packaged(xs, cfg, "frey_faces", "Frey faces", image_shape=(28, 20))


# --------------------------------------------------------------------------------------------
# the user's arrays


def _points(array: np.ndarray, where: str) -> tuple[np.ndarray, tuple[int, int] | None]:
    """``(N, D)`` or ``(N, H, W)`` → ``(N, D)`` and the image shape."""
    if array.ndim in (2, 3) and (array.shape[0] == 0 or math.prod(array.shape[1:]) == 0):
        raise DataError(f"{where}: no data (shape {array.shape}); every point needs D > 0 values")
    if array.ndim == 3:
        return _flatten(array), (array.shape[1], array.shape[2])
    if array.ndim == 2:
        side = math.isqrt(array.shape[1])
        return array, ((side, side) if side > 1 and side * side == array.shape[1] else None)
    raise DataError(f"{where}: expected shape (N, D) or (N, H, W), got {array.shape}")


_ARRAY_SUFFIXES = (".npy", ".npz", ".csv", ".h5ad")


def _read_arrays(path: Path) -> tuple[dict[str, np.ndarray], str | None]:
    """The arrays of the user's file by key (``{"": array}`` for a single one) and, for a table
    whose layout says it is not an image, ``"table"``."""
    if path.suffix == ".csv":
        array, _ = read_csv(path)
        return {"": array}, "table"
    if path.suffix == ".h5ad":
        matrix, where = read_h5ad(path)
        note(f"{str(path)!r}: read the AnnData {where} matrix, {matrix.shape[0]} cells × "
             f"{matrix.shape[1]} genes")
        return {"": matrix}, "table"
    return read_array_file(path), None


@DATASETS.register("array")
@reads_path
def build_array(cfg: DataConfig) -> DataSplits:
    """The user's file at ``data.path``: ``.npy``, ``.npz``, ``.csv`` or ``.h5ad``.

    A ``.npz`` holding arrays ``train`` and optionally ``valid`` / ``test`` uses them, carving a
    missing validation or test split out of ``train`` by the config's fractions; a single array
    (``.npy``, a one-array ``.npz``, a CSV table, the count matrix of an AnnData file) is split
    by the fractions. Arrays are ``(N, D)`` (a square D is taken for an image, except from a
    CSV or AnnData table) or ``(N, H, W)``. A CSV file holds numeric columns, with or without a
    header row (:func:`~vaelab.data.formats.read_csv`); ``.h5ad`` needs the ``anndata`` extra
    (:func:`~vaelab.data.formats.read_h5ad`). The numbers are read as ``data.values`` says
    (:func:`~vaelab.data.values.read_values`, ``auto`` saying what it decided); NaN and
    infinity are refused.
    """
    if cfg.path is None:
        raise ConfigError("data.path: the 'array' data set needs data.path, a .npy, .npz, .csv "
                          "or .h5ad file")
    path = Path(cfg.path).expanduser()
    if path.suffix not in _ARRAY_SUFFIXES:
        raise ConfigError(f"data.path: expected a .npy, .npz, .csv or .h5ad file, got "
                          f"{cfg.path!r}")
    if not path.is_file():
        raise ConfigError(f"data.path: file {cfg.path!r} does not exist")
    arrays, layout = _read_arrays(path)
    found = [s for s in SPLITS if s in arrays]
    keys = {s: s for s in found}  # split → key in the file
    if found:
        if "train" not in found:
            raise DataError(f"{str(path)!r}: has {found} but no 'train' array")
        extra = sorted(set(arrays) - set(SPLITS))
        if extra:
            note(f"{str(path)!r}: ignoring arrays {extra}; read: {found}")
    elif len(arrays) != 1:
        raise DataError(f"{str(path)!r}: holds arrays {sorted(arrays)}; expected one array, or "
                        "arrays named train (required), valid and test")
    else:
        ((key, array),) = arrays.items()
        found, keys, arrays = ["train"], {"train": key}, {"train": array}

    points, where, shapes = {}, {}, set()
    for s in found:
        where[s] = f"{str(path)!r}[{keys[s]!r}]" if keys[s] else repr(str(path))
        points[s], image_shape = _points(arrays[s], where[s])
        shapes.add((points[s].shape[1], None if layout == "table" else image_shape))
    if len(shapes) != 1:
        raise DataError(f"{str(path)!r}: the arrays differ in shape: {sorted(map(str, shapes))}")
    ((_, image_shape),) = shapes
    read = read_values(points, cfg.values, where)
    xs = read.tensors

    missing = [s for s in SPLITS if s not in xs]
    if missing:
        carved = dict(zip(SPLITS, split_indices(
            xs["train"].shape[0],
            cfg.valid_fraction if "valid" in missing else 0.0,
            cfg.test_fraction if "test" in missing else 0.0,
            cfg.split_seed,
        )))
        train = xs["train"]
        for s in SPLITS:
            if s == "train" or s in missing:
                xs[s] = train[carved[s]]
    binary = read.kind == "binary" or all(check_binary(x) for x in xs.values())
    return DataSplits(**xs, name="array", image_shape=image_shape, binary=binary,
                      levels=2 if binary else read.levels, values=read.kind)


# --------------------------------------------------------------------------------------------
# data sets that ship inside a package: scikit-learn's digits and breast cancer


def _packaged(xs: dict[str, np.ndarray], cfg: DataConfig, name: str, what: str, *,
              image_shape: tuple[int, int] | None = None,
              labels: dict[str, torch.Tensor] | None = None, default: str = "auto") -> DataSplits:
    """Splits of a built-in data set, read as ``data.values`` says (``auto``: the data set's own
    reading ``default``, silently)."""
    values = default if cfg.values == "auto" else cfg.values
    where = {s: f"data set {name!r} ({what})" for s in xs}
    read = read_values(xs, values, where, say=cfg.values != "auto")
    binary = read.kind == "binary"
    return DataSplits(**read.tensors, name=name, image_shape=image_shape, binary=binary,
                      levels=read.levels, labels=labels or {}, values=read.kind)


def _sklearn_datasets(name: str):
    try:
        from sklearn import datasets
    except ImportError:
        raise missing_extra(f"data.name = {name!r} (bundled with scikit-learn)", "sklearn",
                            "scikit-learn") from None
    return datasets


@DATASETS.register("digits")
def build_digits(cfg: DataConfig) -> DataSplits:
    """scikit-learn's 1797 handwritten digits, 8×8 images of counts 0–16 (the pixels counted
    in each 4×4 block of a 32×32 bitmap) with their labels, split by the config's fractions.
    ``data.values``: ``counts`` (``auto``), ``levels`` (17 levels k/16) or ``real``."""
    bunch = _sklearn_datasets("digits").load_digits()
    x = np.asarray(bunch.data, dtype=np.float64)  # (1797, 64), integers 0..16
    xs, ys = _carve(x, torch.from_numpy(np.asarray(bunch.target)).to(torch.int64), cfg)
    return _packaged(xs, cfg, "digits", "scikit-learn digits", image_shape=(8, 8), labels=ys,
                     default="counts")


@DATASETS.register("breast_cancer")
def build_breast_cancer(cfg: DataConfig) -> DataSplits:
    """scikit-learn's Wisconsin diagnostic breast cancer table: 569 × 30 real-valued features
    (radius, texture, ... of cell nuclei; ranges from 1e-3 to 4e3, so standardize them), labels
    0 = malignant, 1 = benign, split by the config's fractions."""
    bunch = _sklearn_datasets("breast_cancer").load_breast_cancer()
    x = np.asarray(bunch.data, dtype=np.float64)  # (569, 30)
    xs, ys = _carve(x, torch.from_numpy(np.asarray(bunch.target)).to(torch.int64), cfg)
    return _packaged(xs, cfg, "breast_cancer", "scikit-learn breast cancer", labels=ys,
                     default="real")


def _binary_only(cfg: DataConfig) -> None:
    if cfg.values not in ("auto", "levels"):
        raise ConfigError(f"data.values = {cfg.values!r}: data set {cfg.name!r} is binary; "
                          "leave data.values = 'auto'")


# --------------------------------------------------------------------------------------------
# synthetic


@DATASETS.register("synthetic")
def build_synthetic(cfg: DataConfig) -> DataSplits:
    r"""400/100/100 binary points of dimension 64 (8×8) from a fixed linear-Bernoulli model.

    .. math:: z \sim \mathcal{N}(0, I_4), \quad x \sim \mathrm{Bernoulli}(\sigma(W z + b)),

    with :math:`W_{ij} \sim \mathcal{N}(0, 2^2)` and :math:`b_i \sim \mathcal{N}(0, 1)` drawn
    from ``data.split_seed``: a smoke-test data set with real latent structure, built in
    milliseconds. ``data.path`` is ignored.
    """
    _binary_only(cfg)
    g = derived_generator(cfg.split_seed, _SYNTHETIC_STREAM)
    latent_dim, dim = 4, 64
    w = 2.0 * torch.randn(dim, latent_dim, generator=g)  # (D, 4)
    b = torch.randn(dim, generator=g)  # (D,)
    xs = {}
    for s, n in zip(SPLITS, (400, 100, 100)):
        z = torch.randn(n, latent_dim, generator=g)  # (n, 4)
        probs = torch.sigmoid(z @ w.T + b)  # (n, D)
        xs[s] = torch.bernoulli(probs, generator=g)  # (n, D)
    return DataSplits(**xs, name="synthetic", image_shape=(8, 8), binary=True, levels=2)


# --------------------------------------------------------------------------------------------
# entry point


def _binarize_static(splits: DataSplits, seed: int) -> DataSplits:
    """One seeded Bernoulli draw x' ~ Bernoulli(x) per split (a no-op on binary data)."""
    if splits.binary:
        return splits
    xs = {}
    for i, s in enumerate(SPLITS):
        x = splits.split(s)
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ConfigError(
                f"data.binarize='static' needs values in [0, 1]; data set {splits.name!r} "
                f"split {s!r} spans [{x.min().item():g}, {x.max().item():g}]"
            )
        xs[s] = torch.bernoulli(x, generator=derived_generator(seed, _STATIC_BINARIZE_STREAM, i))
    return splits.replace(**xs, binary=True, levels=2, values="binary")


def _limit(splits: DataSplits, limit: int, rule: str) -> DataSplits:
    """Keep ``limit`` points (and labels) of each split, chosen by
    :func:`~vaelab.data.subsets.subset_indices`."""
    index = {s: subset_indices(splits.split(s).shape[0], limit, rule) for s in SPLITS}
    xs = {s: splits.split(s)[index[s]].clone() for s in SPLITS}
    labels = {s: y[index[s]].clone() for s, y in splits.labels.items()}
    return splits.replace(**xs, labels=labels)


def load_dataset(cfg: DataConfig) -> DataSplits:
    """Load the data set ``cfg.name``, binarize it statically if asked, keep ``cfg.limit`` points.

    Static binarization draws once, from ``cfg.split_seed``, on the full splits (before the
    limit), so a limited smoke run sees a subset of the full run's data, spread evenly over each
    split (``data.subset``). Dynamic binarization and
    dequantization happen per batch, see :class:`vaelab.data.preprocess.Preprocessor`.

    :param cfg: the ``[data]`` section.
    :returns: the splits, float32 ``(N, D)``.
    :raises ConfigError: unknown ``data.name`` (with the valid choices), or options that do not
        fit the data.
    :raises DataError: a missing, corrupt or unacceptable file.

    Example::

        splits = load_dataset(DataConfig(name="synthetic", limit=50))
    """
    # a resolved [data] carries its entry; a section written by hand is looked up here, once
    entry = cfg.entry if cfg.entry is not None else DATASETS.entry(cfg.name, key="data.name")
    splits = entry.builder(cfg)
    if cfg.binarize == "static":
        splits = _binarize_static(splits, cfg.split_seed)
    if cfg.limit is not None:
        splits = _limit(splits, cfg.limit, cfg.subset)
    return splits
