r"""How the numbers of a file are read: ``data.values = "auto" | "levels" | "counts" | "real"``.

:func:`read_values` turns the arrays of one data set (all its splits at once, so that they are
read the same way) into float32 tensors and says which kind of data they are:

==========  =====================================================  ===========================
values      accepts                                                gives
==========  =====================================================  ===========================
``levels``  integers 0..L−1 (bool: L = 2; uint8: L = 256; other    k / (L − 1) in [0, 1]
            integers: L = max + 1)
``counts``  non-negative integers (any dtype; at most 2^24, which  the counts as they are
            float32 holds exactly)
``real``    any finite number                                      the numbers as they are
``auto``    decided by dtype and range, with a note saying what    one of the above, or binary
            was decided: bool or only 0/1 → binary; uint8 → 8-bit  data (levels, L = 2)
            levels; other non-negative integers → counts;
            anything else → real
==========  =====================================================  ===========================

NaN and infinite values (also float64 values beyond float32's range) are refused in every
reading, naming the first one's row and column.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vaelab.data.errors import DataError
from vaelab.notes import note

__all__ = ["KINDS", "Values", "read_values"]

#: the kinds of data :func:`read_values` returns (``DataSplits.values``)
KINDS = ("binary", "levels", "counts", "real")
#: the largest count float32 holds exactly
_MAX_COUNT = 2**24


@dataclass
class Values:
    """The arrays as float32 tensors and what they hold."""

    #: split (or key) → ``(N, D)`` float32
    tensors: dict[str, torch.Tensor]
    #: one of :data:`KINDS`
    kind: str
    #: L for ``levels`` (2 for ``binary``), else ``None``
    levels: int | None


def _stats(arrays: dict[str, np.ndarray]) -> tuple[float, float, bool, bool]:
    """(min, max, every value an integer, every value 0 or 1) over all arrays."""
    lo, hi, integral, binary = np.inf, -np.inf, True, True
    for a in arrays.values():
        if a.size == 0:
            continue
        lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
        if a.dtype.kind == "f":
            integral = integral and bool((a == np.round(a)).all())
        binary = binary and bool(((a == 0) | (a == 1)).all())
    if lo > hi:  # no values at all
        lo = hi = 0.0
    return lo, hi, integral, binary


def _first_bad(a: np.ndarray, mask: np.ndarray) -> str:
    r, c = (int(i[0]) + 1 for i in np.nonzero(mask)[:2])
    return f"row {r}, column {c} (from 1): {float(a[r - 1, c - 1])}"


def _check_numbers(arrays: dict[str, np.ndarray], where: dict[str, str]) -> None:
    for s, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise DataError(f"{where[s]}: unsupported dtype {a.dtype}; vaelab reads numbers "
                            "(bool, integer or float)")
        if a.dtype.kind == "f":
            with np.errstate(over="ignore"):  # beyond float32's range: inf, refused here
                bad = ~np.isfinite(a.astype(np.float32))
            if bad.any():
                raise DataError(f"{where[s]}: {int(bad.sum())} values are NaN or infinite (in "
                                f"float32), e.g. at {_first_bad(a, bad)}; remove or impute them")


def _auto_kind(first: str, dtypes: set[np.dtype], stats: tuple[float, float, bool, bool],
               say: bool) -> str:
    """The kind ``data.values = "auto"`` reads (see the module docstring), with a note saying
    what it decided when ``say``."""
    lo, hi, integral, binary = stats
    is_bool = dtypes == {np.dtype(np.bool_)}
    is_u8 = dtypes == {np.dtype(np.uint8)}
    dtype = "/".join(sorted(str(d) for d in dtypes))
    others = "set data.values = 'levels', 'counts' or 'real' to read them otherwise"
    if is_bool or binary:
        if say:
            extra = ", not as 8-bit grey levels" if is_u8 else ""
            note(f"{first}: {dtype} values are all 0 or 1: read as binary data{extra} "
                 f"(data.values = 'auto'; {others})")
        return "binary"
    if is_u8:
        if say:
            note(f"{first}: uint8 values read as 8-bit grey levels k/255 in [0, 1] "
                 f"(data.values = 'auto'; {others})")
        return "levels"
    if integral and lo >= 0:
        if say:
            note(f"{first}: {dtype} values read as counts 0..{hi:.0f} (data.values = "
                 f"'auto'; 'levels' reads them as {hi + 1:.0f} levels k/{hi:.0f}, 'real' as "
                 "real numbers)")
        return "counts"
    if say:
        note(f"{first}: {dtype} values read as real numbers in [{lo:.4g}, {hi:.4g}] "
             f"(data.values = 'auto'; {others})")
    return "real"


def _check_kind(first: str, values: str, kind: str,
                stats: tuple[float, float, bool, bool]) -> None:
    """Refuse data that ``kind`` cannot read: negative or non-integer levels or counts, counts
    beyond float32's exact integers."""
    lo, hi, integral, _ = stats
    if kind in ("levels", "counts", "binary") and not (integral and lo >= 0):
        what = "negative values" if lo < 0 else "non-integer values"
        hint = ("choose data.values = 'real'" if kind != "levels" else
                "levels are integers 0..L-1 (data already in [0, 1] are read with "
                "data.values = 'real')")
        raise DataError(f"{first}: data.values = {values!r} reads non-negative integers, but the "
                        f"data has {what} (the data span [{lo:.4g}, {hi:.4g}]); {hint}")
    if kind == "counts" and hi > _MAX_COUNT:
        raise DataError(f"{first}: counts up to {hi:.0f} exceed 2^24, the largest integer "
                        "float32 holds exactly")


def read_values(
    arrays: dict[str, np.ndarray],
    values: str,
    where: dict[str, str],
    *,
    say: bool = True,
) -> Values:
    """Read the ``(N, D)`` arrays of one data set as ``values`` says (see the module docstring).

    :param arrays: split (or key) → array ``(N, D)``, all read the same way.
    :param values: ``auto``, ``levels``, ``counts`` or ``real`` (``data.values``).
    :param where: split → the file (and key) named in messages.
    :param say: print a note saying how ``auto`` read the data (and how ``levels`` chose L).
    :raises DataError: non-numbers, NaN or infinite values, or values the reading refuses
        (negative or non-integer counts or levels), naming the file and a value.
    """
    _check_numbers(arrays, where)
    first = where[next(iter(arrays))] if arrays else "the data"
    dtypes = {a.dtype for a in arrays.values()}
    is_bool = dtypes == {np.dtype(np.bool_)}
    is_u8 = dtypes == {np.dtype(np.uint8)}
    stats = _stats(arrays)  # (lo, hi, integral, binary)
    hi = stats[1]
    dtype = "/".join(sorted(str(d) for d in dtypes))

    kind = _auto_kind(first, dtypes, stats, say) if values == "auto" else values
    _check_kind(first, values, kind, stats)

    levels: int | None = None
    divide = 1.0  # level k → k / (L - 1)
    if kind == "binary":
        levels = 2
    elif kind == "levels":
        levels = 256 if is_u8 else 2 if is_bool else max(2, int(hi) + 1)
        divide = float(levels - 1)
        if levels == 2:
            kind = "binary"
        if say and values == "levels" and not (is_u8 or is_bool or levels == 2):
            note(f"{first}: {dtype} values read as {levels} levels k/{levels - 1} in [0, 1] "
                 "(L = the largest value + 1)")
    tensors = {}
    for s, a in arrays.items():
        x = torch.from_numpy(np.array(a, dtype=np.float32))  # a copy, never a view of ``a``
        tensors[s] = x.div_(divide) if divide != 1.0 else x
    return Values(tensors, kind, levels)
