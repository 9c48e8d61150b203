r"""Find a data file locally, or download it once into a cache, always checking its SHA-256.

:func:`resolve_file` looks for ``relpath`` (e.g. ``"mnist/t10k-images-idx3-ubyte.gz"``) in order:

1. ``$VAELAB_DATA/<relpath>``, when the environment variable ``VAELAB_DATA`` is set (a folder of
   local copies, e.g. on a machine without internet access);
2. ``<cache>/<relpath>``, where ``<cache>`` is ``$VAELAB_CACHE`` or ``~/.cache/vaelab``;
3. a download from the canonical URL into a temporary file in the cache folder, verified, then
   moved into place with an atomic :func:`os.replace` (so an interrupted or corrupt download never
   appears under ``relpath``). ``VAELAB_OFFLINE=1`` forbids this step.

Every file is checked against its published SHA-256 (and byte size). Hashing a 78 MB file costs a
fraction of a second, so a successful check is remembered in a marker,
``<cache>/.verified/<relpath>.sha256-ok``, holding the file's path, size and modification time; the
hash is recomputed only when one of those changes. Markers live in the cache folder because
``VAELAB_DATA`` may be read-only.

Example::

    path = resolve_file(
        "mnist/t10k-labels-idx1-ubyte.gz",
        "https://storage.googleapis.com/cvdf-datasets/mnist/t10k-labels-idx1-ubyte.gz",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        4542,
    )
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from vaelab.data.errors import ChecksumError, DataError, DataUnavailableError
from vaelab.notes import note

__all__ = [
    "ENV_CACHE",
    "ENV_DATA",
    "ENV_OFFLINE",
    "RemoteFile",
    "cache_dir",
    "data_dir",
    "is_offline",
    "resolve_file",
    "sha256_file",
]

log = logging.getLogger(__name__)

ENV_DATA = "VAELAB_DATA"
ENV_CACHE = "VAELAB_CACHE"
ENV_OFFLINE = "VAELAB_OFFLINE"

_CHUNK = 1 << 20  # bytes read per step when hashing or downloading
_TIMEOUT_S = 60.0  # socket timeout of a download


@dataclass(frozen=True)
class RemoteFile:
    """A published data file: where it lives under a data folder, where to get it, its checksum."""

    relpath: str
    url: str
    sha256: str
    size: int | None = None

    def resolve(self) -> Path:
        """:func:`resolve_file` on this file."""
        return resolve_file(self.relpath, self.url, self.sha256, self.size)


# --------------------------------------------------------------------------------------------
# environment


def data_dir() -> Path | None:
    """The folder of local copies named by ``$VAELAB_DATA``, or ``None`` when unset or empty."""
    value = os.environ.get(ENV_DATA, "").strip()
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """The download cache: ``$VAELAB_CACHE`` if set, else ``~/.cache/vaelab``."""
    value = os.environ.get(ENV_CACHE, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "vaelab"


def is_offline() -> bool:
    """Whether ``$VAELAB_OFFLINE`` forbids downloads (``1``, ``true``, ``yes`` or ``on``)."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes", "on")


# --------------------------------------------------------------------------------------------
# hashing and verification markers


def sha256_file(path: str | Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _marker_path(relpath: str) -> Path:
    return cache_dir() / ".verified" / f"{relpath}.sha256-ok"


def _marker_record(path: Path, sha256: str) -> dict[str, object]:
    st = path.stat()
    return {
        "path": str(path.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": sha256,
    }


def _marker_ok(path: Path, relpath: str, sha256: str) -> bool:
    try:
        stored = json.loads(_marker_path(relpath).read_text())
        return stored == _marker_record(path, sha256)
    except (OSError, ValueError):
        return False


def _write_marker(path: Path, relpath: str, sha256: str) -> None:
    """Remember that ``path`` (at its current size and mtime) has checksum ``sha256``."""
    marker = _marker_path(relpath)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=marker.parent, prefix=f".{marker.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(_marker_record(path, sha256), f)
        os.replace(tmp, marker)
    except OSError as err:  # an unwritable cache only costs a re-hash next time
        log.debug("could not write verification marker %s: %s", marker, err)


def _hint(relpath: str) -> str:
    here = data_dir()
    note = ""
    if here is not None and not (here / relpath).is_file():
        note = f" ({ENV_DATA} is set to {str(here)!r}, but {str(here / relpath)!r} does not exist.)"
    return (
        f"To use a local copy, put the file at /path/to/data/{relpath} and run "
        f"`export {ENV_DATA}=/path/to/data`.{note}"
    )


def _check(path: Path, relpath: str, url: str, sha256: str, size: int | None) -> str | None:
    """``None`` when ``path`` matches ``size`` and ``sha256``, else the actual SHA-256."""
    if _marker_ok(path, relpath, sha256):
        return None
    actual = sha256_file(path)
    if actual == sha256.lower() and (size is None or path.stat().st_size == size):
        _write_marker(path, relpath, sha256.lower())
        return None
    return actual


def _mismatch(path: Path, relpath: str, url: str, sha256: str, size: int | None, actual: str,
              what: str) -> ChecksumError:
    got_size = path.stat().st_size if path.exists() else None
    sizes = ""
    if size is not None and got_size != size:
        sizes = f"; expected {size} bytes, got {got_size}"
    return ChecksumError(
        f"data file {relpath!r} at {str(path)!r} (canonical URL {url}) fails its checksum: "
        f"expected SHA-256 {sha256}, got {actual}{sizes}. {what} {_hint(relpath)}"
    )


# --------------------------------------------------------------------------------------------
# download


def _download(relpath: str, url: str, sha256: str, size: int | None, dest: Path) -> None:
    """Stream ``url`` into a temporary file next to ``dest``, verify it, move it into place."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as err:
        raise DataError(
            f"cannot download data file {relpath!r} from {url} (expected SHA-256 {sha256}): the "
            f"cache folder {str(dest.parent)!r} is not writable ({err}); set {ENV_CACHE} to a "
            f"writable folder. {_hint(relpath)}"
        ) from err
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else size
                    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                              desc=f"downloading {relpath}", leave=False) as bar:
                        while chunk := response.read(_CHUNK):
                            out.write(chunk)
                            h.update(chunk)
                            bar.update(len(chunk))
            except (OSError, http.client.HTTPException, ValueError) as err:
                # URLError and socket timeouts are OSErrors; ValueError: a malformed URL
                raise DataUnavailableError(
                    f"data file {relpath!r} is not available locally and could not be downloaded "
                    f"from {url} ({err}); expected SHA-256 {sha256}. {_hint(relpath)}"
                ) from err
        actual = h.hexdigest()
        if actual != sha256.lower() or (size is not None and tmp.stat().st_size != size):
            raise _mismatch(tmp, relpath, url, sha256, size, actual,
                            "The download was deleted.")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_marker(dest, relpath, sha256.lower())
    log.info("downloaded %s to %s", url, dest)


# --------------------------------------------------------------------------------------------
# resolution


def _check_relpath(relpath: str) -> None:
    p = PurePosixPath(relpath)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"relpath must be a relative path inside a data folder, got {relpath!r}")


def resolve_file(relpath: str, url: str, sha256: str, size: int | None = None) -> Path:
    """The local path of a verified copy of a published data file, downloading it if needed.

    :param relpath: the file's path inside a data folder, e.g. ``"frey_faces/freyfaces.pkl"``.
    :param url: the canonical URL (``http(s)://`` or ``file://``).
    :param sha256: the published hex SHA-256.
    :param size: the published size in bytes, or ``None`` to skip the size check.
    :returns: ``$VAELAB_DATA/<relpath>`` if it exists, else ``<cache>/<relpath>`` (downloaded
        into the cache first when absent).
    :raises ChecksumError: a file in ``VAELAB_DATA`` or a fresh download fails its checksum (the
        download is deleted). A corrupt file in the cache is deleted and downloaded again.
    :raises DataUnavailableError: the file is absent and cannot be downloaded (offline,
        ``VAELAB_OFFLINE=1``, unreachable URL).
    :raises DataError: the cache folder is not writable.

    Every message names the file, the URL, the expected SHA-256 and how to point ``VAELAB_DATA``
    at a local copy.
    """
    _check_relpath(relpath)
    sha256 = sha256.lower()
    local = data_dir()
    if local is not None and (local / relpath).is_file():
        path = local / relpath
        actual = _check(path, relpath, url, sha256, size)
        if actual is not None:
            raise _mismatch(path, relpath, url, sha256, size, actual,
                            f"Replace the copy in {ENV_DATA} with an intact one.")
        return path

    cached = cache_dir() / relpath
    if cached.is_file():
        actual = _check(cached, relpath, url, sha256, size)
        if actual is None:
            return cached
        note(f"cached data file {str(cached)!r} fails its checksum (expected SHA-256 {sha256}, "
             f"got {actual}); deleting it and downloading {url} again")
        cached.unlink(missing_ok=True)

    if is_offline():
        places = [str(cached)] + ([str(local / relpath)] if local is not None else [])
        raise DataUnavailableError(
            f"data file {relpath!r} is not available locally (looked in {', '.join(places)}) and "
            f"downloads are disabled by {ENV_OFFLINE}=1; its canonical URL is {url}, expected "
            f"SHA-256 {sha256}. {_hint(relpath)}"
        )
    _download(relpath, url, sha256, size, cached)
    return cached
