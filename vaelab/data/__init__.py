"""Data sets, file resolution, preprocessing and batching for vaelab.

* :func:`load_dataset` turns a ``[data]`` config into :class:`DataSplits` (flattened float32
  train/valid/test tensors), choosing the data set from the :data:`DATASETS` registry;
* :func:`resolve_file` finds a published file in ``$VAELAB_DATA``, the cache, or downloads it,
  always checking its SHA-256;
* :func:`read_values` reads the numbers of a file as ``data.values`` says (levels, counts,
  real values, or decided by dtype and range);
* :class:`Preprocessor` applies dynamic binarization, dequantization or standardization per
  batch;
* :func:`iterate_batches` yields mini-batches in an order fixed by ``(seed, epoch)``.

Example::

    from vaelab.config import DataConfig
    from vaelab.data import Preprocessor, iterate_batches, load_dataset

    cfg = DataConfig(name="mnist", binarize="dynamic")
    splits = load_dataset(cfg)
    pre = Preprocessor(cfg, splits)
    g = torch.Generator().manual_seed(0)
    for x in iterate_batches(splits.train, 100, shuffle=True, seed=0, epoch=0):
        x = pre.train_batch(x, g)  # (100, 784), values in {0, 1}
"""

from vaelab.data.batching import batch_indices, iterate_batches, num_batches
from vaelab.data.datasets import DATASETS, FILES, load_dataset, split_indices
from vaelab.data.errors import ChecksumError, DataError, DataUnavailableError, MissingExtraError
from vaelab.data.files import RemoteFile, resolve_file
from vaelab.data.preprocess import Preprocessor, bits_per_dim, check_binary
from vaelab.data.splits import SPLITS, DataSplits
from vaelab.data.subsets import common_positions, spread_indices, subset_indices
from vaelab.data.values import read_values

__all__ = [
    "DATASETS",
    "FILES",
    "ChecksumError",
    "DataError",
    "DataSplits",
    "SPLITS",
    "common_positions",
    "spread_indices",
    "subset_indices",
    "DataUnavailableError",
    "MissingExtraError",
    "Preprocessor",
    "RemoteFile",
    "batch_indices",
    "bits_per_dim",
    "check_binary",
    "iterate_batches",
    "load_dataset",
    "num_batches",
    "read_values",
    "resolve_file",
    "split_indices",
]
