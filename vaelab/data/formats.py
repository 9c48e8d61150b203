r"""Readers of raw file formats: Larochelle's ``.amat`` text, IDX, NumPy pickles, ``.npy``/``.npz``,
``.csv`` tables and AnnData ``.h5ad`` files (through the ``anndata`` extra).

Each reader validates the layout and raises :class:`~vaelab.data.errors.DataError` naming the file
(and the line or field) on anything unexpected, instead of returning silently wrong numbers.

.. note::
   A pickle runs code while it loads. :func:`load_numpy_pickle` uses
   :class:`RestrictedUnpickler`, which resolves only the three globals NumPy array reconstruction
   needs and refuses every other one, so a crafted file cannot call ``os.system`` and the like.
"""

from __future__ import annotations

import csv
import gzip
import io
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from vaelab.data.errors import DataError, missing_extra

__all__ = [
    "RestrictedUnpickler",
    "load_numpy_pickle",
    "read_amat",
    "read_array_file",
    "read_csv",
    "read_h5ad",
    "read_idx",
]


# --------------------------------------------------------------------------------------------
# .amat: one data point a line, D characters '0'/'1' separated by single spaces


def read_amat(path: str | Path, dim: int) -> np.ndarray:
    r"""Parse a binary ``.amat`` file (Larochelle & Murray 2011) into a ``(N, dim)`` uint8 array.

    Each line is exactly ``dim`` characters ``0``/``1`` separated by single spaces and ended by
    ``\n``, so every line is ``2 * dim`` bytes and the digits sit at the even byte offsets: the
    whole file is parsed by one reshape of the raw bytes, with no per-line Python work
    (about 0.1 s for the 78 MB binarized MNIST training file).

    :param path: the ``.amat`` file.
    :param dim: characters per line (784 for binarized MNIST).
    :returns: values in {0, 1}, dtype uint8, shape ``(N, dim)``.
    :raises DataError: naming the file and the first bad line, on a wrong line length or a
        character other than ``0``/``1`` (digits) or a single space (separators).
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raw += b"\n"  # tolerate a missing final newline
    row = 2 * dim  # bytes per line: dim digits, dim - 1 spaces, one '\n'
    if not raw or len(raw) % row:
        _diagnose_amat(path, raw, dim)
    lines = np.frombuffer(raw, dtype=np.uint8).reshape(-1, row)  # (N, 2 * dim)
    bits = lines[:, 0::2] - np.uint8(ord("0"))  # (N, dim), new array; any other char wraps > 1
    ok = (bits <= 1).all()
    ok = ok and (lines[:, 1:-1:2] == ord(" ")).all() and (lines[:, -1] == ord("\n")).all()
    if not ok:
        _diagnose_amat(path, raw, dim)
    return bits


def _diagnose_amat(path: Path, raw: bytes, dim: int) -> None:
    """Raise a :class:`DataError` naming the first malformed line of an ``.amat`` file."""
    if not raw:
        raise DataError(f"{str(path)!r} is empty; expected lines of {dim} '0'/'1' values")
    expected = " ".join(["0"] * dim)
    for number, line in enumerate(raw.split(b"\n")[:-1], start=1):
        if len(line) != len(expected):
            raise DataError(
                f"{str(path)!r} line {number}: {len(line)} bytes, expected {len(expected)} "
                f"({dim} '0'/'1' values separated by single spaces); the file is corrupt"
            )
        bad = [i for i, c in enumerate(line) if c not in (b"01" if i % 2 == 0 else b" ")]
        if bad:
            i = bad[0]
            raise DataError(
                f"{str(path)!r} line {number}, column {i + 1}: unexpected character "
                f"{bytes([line[i]])!r}; expected {'0 or 1' if i % 2 == 0 else 'a single space'}"
            )
    raise DataError(f"{str(path)!r} is not a valid .amat file of {dim} values a line")


# --------------------------------------------------------------------------------------------
# IDX (LeCun's MNIST format), optionally gzip-compressed

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` compressed or not) into an array of its declared shape.

    The header is two zero bytes, a type code, the number of dimensions ``k``, then ``k``
    big-endian uint32 sizes; the body must hold exactly the product of the sizes.

    :raises DataError: naming the file on a bad magic number, an unknown type code, a truncated
        or oversized body, or a corrupt gzip stream.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataError(f"{str(path)!r} is not a valid gzip file: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"{str(path)!r}: bad IDX magic number {raw[:4].hex() or '(empty)'}; expected "
            f"00 00 <type code> <number of dims>"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{str(path)!r}: truncated IDX header ({len(raw)} bytes)")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{str(path)!r}: IDX header declares shape {shape} ({expected} bytes in all), but the "
            f"file holds {len(raw)} bytes; the file is corrupt"
        )
    body = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return body.astype(dtype.newbyteorder("="))  # native byte order, a writable copy


# --------------------------------------------------------------------------------------------
# NumPy arrays in (Python 2) pickles


def _reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct as fn  # NumPy >= 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


#: the globals an ``ndarray`` pickle names (protocols 0-4), resolved here without any import
#: machinery. A Python-2 pickle of an array needs exactly these; ``freyfaces.pkl`` names
#: ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and ``numpy.dtype``.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild NumPy arrays and plain containers, and nothing else.

    :meth:`find_class` admits only the exact globals of :data:`_ALLOWED_GLOBALS`; any other
    global (``os.system``, ``builtins.eval``, a NumPy scalar, ...) raises :class:`DataError`
    before it is resolved, so nothing it names is ever called. Strings of Python-2 pickles are
    decoded as ``latin1``, which is how NumPy's array bytes round-trip.

    :param file: a binary file object.
    :param source: the file name used in error messages.
    """

    def __init__(self, file: Any, *, source: str = "<pickle>"):
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in _ALLOWED_GLOBALS)
            raise DataError(
                f"{self.source}: refusing to unpickle global {module}.{name}; only NumPy array "
                f"reconstruction is allowed ({allowed})"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self.source}: refusing to unpickle a persistent id {pid!r}")


def load_numpy_pickle(path: str | Path) -> Any:
    """Load a pickle of NumPy arrays in containers with :class:`RestrictedUnpickler`.

    :raises DataError: naming the file on a refused global, an object array, or a corrupt stream.
    """
    path = Path(path)
    with open(path, "rb") as f:
        try:
            obj = RestrictedUnpickler(f, source=repr(str(path))).load()
        except DataError:
            raise
        except Exception as err:  # UnpicklingError, EOFError, ValueError from a bad ndarray state
            raise DataError(f"{str(path)!r} is not a valid pickle of NumPy arrays: {err}") from err
    _reject_object_arrays(obj, path)
    return obj


def _reject_object_arrays(obj: Any, path: Path) -> None:
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        raise DataError(f"{str(path)!r}: refusing an object array (dtype {obj.dtype})")
    if isinstance(obj, (list, tuple)):
        for item in obj:
            _reject_object_arrays(item, path)
    if isinstance(obj, dict):
        for item in obj.values():
            _reject_object_arrays(item, path)


# --------------------------------------------------------------------------------------------
# .npy / .npz


def read_array_file(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a ``.npz`` archive by key, or of a ``.npy`` file as ``{"": array}``.

    Loaded with ``allow_pickle=False``: an object array is refused, never unpickled.

    :raises DataError: naming the file when it is unreadable or holds object arrays.
    """
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                return {key: loaded[key] for key in loaded.files}
        return {"": loaded}
    except (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile) as err:
        # ValueError covers "Object arrays cannot be loaded when allow_pickle=False"
        raise DataError(f"cannot read array file {str(path)!r}: {err}") from err



# --------------------------------------------------------------------------------------------
# .csv: a table of numeric columns, with or without a header row

_DELIMITERS = (",", ";", "\t")


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def read_csv(path: str | Path) -> tuple[np.ndarray, list[str] | None]:
    """A CSV table of numbers as a float64 array ``(N, D)`` and its column names.

    The delimiter is the one of ``,`` ``;`` and tab that the first line holds most of. The first
    line is a header when any of its fields is not a number. Every other field must be a
    number (``nan`` parses, and is refused later by :func:`vaelab.data.values.read_values`).

    :returns: the values and the header's names (``None`` without a header).
    :raises DataError: naming the file, and the row and column of the first field that is not
        a number (with the column's name), or a row of another length.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{str(path)!r} is not UTF-8 text (byte {err.start})") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f"{str(path)!r} is empty; expected a table of numbers")
    delimiter = max(_DELIMITERS, key=lines[0].count)
    first = next(csv.reader([lines[0]], delimiter=delimiter))
    header = None if all(_is_number(f) for f in first) else [f.strip() for f in first]
    body = lines[1:] if header is not None else lines
    if not body:
        raise DataError(f"{str(path)!r} has a header and no rows")
    try:
        array = np.loadtxt(io.StringIO("\n".join(body)), delimiter=delimiter, dtype=np.float64,
                           ndmin=2, quotechar='"')
    except ValueError as err:
        raise DataError(_csv_error(path, body, delimiter, header, err)) from None
    if header is not None and array.shape[1] != len(header):
        raise DataError(f"{str(path)!r}: the header names {len(header)} columns, the rows hold "
                        f"{array.shape[1]}")
    return array, header


def _csv_error(path: Path, body: list[str], delimiter: str, header: list[str] | None,
               err: ValueError) -> str:
    """The first field that is not a number (or row of another length), in one line."""
    offset = 2 if header is not None else 1  # the file's line number of body[0]
    width = None
    for i, row in enumerate(csv.reader(body, delimiter=delimiter)):
        width = len(row) if width is None else width
        if len(row) != width:
            return (f"{str(path)!r} line {i + offset}: {len(row)} fields, the rows before it "
                    f"have {width}")
        for j, field in enumerate(row):
            if not _is_number(field):
                name = f" ({header[j]!r})" if header is not None and j < len(header) else ""
                return (f"{str(path)!r} line {i + offset}, column {j + 1}{name}: {field!r} is "
                        "not a number; vaelab reads tables of numeric columns only")
    return f"{str(path)!r} is not a table of numbers: {err}"


# --------------------------------------------------------------------------------------------
# .h5ad (AnnData): single-cell count matrices, through the optional ``anndata`` package


def read_h5ad(path: str | Path) -> tuple[np.ndarray, str]:
    """The count matrix of an AnnData file, dense ``(cells, genes)``, and where it was found.

    Reads ``layers["counts"]`` when the file has it (where raw counts are kept once ``X`` holds
    normalized values), else ``X``; a sparse matrix is made dense.

    :returns: the matrix and ``"layers['counts']"`` or ``"X"``.
    :raises MissingExtraError: ``anndata`` is not installed (``pip install 'vaelab[anndata]'``).
    :raises DataError: naming the file when it cannot be read.
    """
    path = Path(path)
    try:
        import anndata
    except ImportError:
        raise missing_extra(f"reading {str(path)!r} (.h5ad)", "anndata", "anndata") from None
    try:
        adata = anndata.read_h5ad(path)
    except Exception as err:  # h5py's OSError, KeyError of a file that is not AnnData, ...
        raise DataError(f"cannot read .h5ad file {str(path)!r}: {err}") from None
    where = "layers['counts']" if "counts" in adata.layers else "X"
    matrix = adata.layers["counts"] if where != "X" else adata.X
    if matrix is None:
        raise DataError(f"{str(path)!r}: the AnnData file has no X matrix")
    if hasattr(matrix, "toarray"):  # scipy.sparse
        matrix = matrix.toarray()
    return np.asarray(matrix), where
