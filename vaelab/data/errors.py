"""Errors raised by :mod:`vaelab.data` for problems with files and their contents.

Config-level problems (an unknown data set name, a missing ``data.path``, options that do not fit
the data) raise :class:`vaelab.registry.ConfigError`; problems with the bytes on disk or on the
network raise :class:`DataError` or one of its subclasses. Both are :class:`ValueError` subclasses.
"""

from __future__ import annotations

__all__ = ["ChecksumError", "DataError", "DataUnavailableError", "MissingExtraError"]


class DataError(ValueError):
    """A data file is missing, unreadable, corrupt, or holds values the data set cannot accept.

    The message always names the file and, for downloadable files, the URL and how to point
    ``VAELAB_DATA`` at a local copy.
    """


class DataUnavailableError(DataError):
    """A file is neither available locally nor downloadable (offline, or ``VAELAB_OFFLINE=1``).

    Loaders with an optional file (the MNIST training set) catch this one and fall back; a
    :class:`ChecksumError` is never caught that way.
    """


class ChecksumError(DataError):
    """A file's SHA-256 (or byte size) differs from the published one."""


class MissingExtraError(DataError):
    """Reading a format or a data set needs an optional dependency that is not installed; the
    message names the ``pip install 'vaelab[EXTRA]'`` that provides it."""


def missing_extra(what: str, extra: str, module: str) -> MissingExtraError:
    """The one-line error for ``what`` needing ``module`` from the extra ``extra``."""
    return MissingExtraError(
        f"{what} needs the optional package {module!r}, which is not installed: "
        f"pip install 'vaelab[{extra}]'"
    )
