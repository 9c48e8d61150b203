"""Checkpoint files: atomic writes, content checksums, and a refusal of files that would run code.

Every file is written to a temporary file in the same folder, flushed, fsynced and renamed into
place, so a crash never leaves a truncated file under the real name. Every checkpoint carries a
SHA-256 of its content (tensors byte for byte, plain data by value, :func:`content_digest`),
verified on load: a file with flipped bytes is named as corrupt instead of loading silently.

Damage is told from hostility by the checksums, first: ``torch.save`` writes a zip archive
whose every member (the pickle stream ``data.pkl`` included) carries a CRC-32, checked before
anything is unpickled. A file whose bytes fail a CRC is *corrupt* (a reader falls back to an
older commit); only an intact file whose pickle asks for Python objects is *refused* as one
that loading would have to run code for.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from vaelab.config import json_safe

__all__ = [
    "CorruptCheckpointError",
    "atomic_write_bytes",
    "atomic_write_text",
    "content_digest",
    "fsync_dir",
    "json_safe",
    "load_checkpoint",
    "read_metrics",
    "save_checkpoint",
    "write_jsonl",
]

#: the key under which a checkpoint stores the digest of everything else
DIGEST_KEY = "sha256"
#: temporary files are named ``.NAME.<random>.tmp`` beside the file they become
TMP_SUFFIX = ".tmp"


_UMASK = os.umask(0)
os.umask(_UMASK)


class CorruptCheckpointError(ValueError):
    """A checkpoint file is unreadable, truncated or fails its checksum."""


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 → what open() would have given
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename is None:  # name the file being written
            raise OSError(err.errno, err.strerror or str(err), str(path)) from None
        cause = err.__cause__ or err.__context__  # torch's zip writer wraps the OSError
        if isinstance(err, RuntimeError) and isinstance(cause, OSError):
            raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from None
        if isinstance(err, RuntimeError) and "No space left" in str(err):  # torch's zip writer
            raise OSError(28, "No space left on device", str(path)) from None
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def content_digest(obj: Any) -> str:
    """SHA-256 of a checkpoint's content: tensors by dtype, shape and bytes; containers in order;
    other values by ``repr``. Independent of how ``torch.save`` lays the file out."""
    h = hashlib.sha256()

    def feed(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(o, dict):
            h.update(b"D%d" % len(o))
            for k in o:
                feed(k)
                feed(o[k])
        elif isinstance(o, (list, tuple)):
            h.update(b"L%d" % len(o))
            for v in o:
                feed(v)
        else:
            h.update(f"V{type(o).__name__}:{o!r}".encode())

    feed(obj)
    return h.hexdigest()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save(state + its digest)`` to a temporary file in the same folder, fsync, rename."""
    state = {k: v for k, v in state.items() if k != DIGEST_KEY}
    _atomic(path, lambda f: torch.save({**state, DIGEST_KEY: content_digest(state)}, f))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors and plain data only) and
    verify its digest (files written by vaelab 0.1.0 carry none and load unverified).

    :raises FileNotFoundError: no file at ``path``.
    :raises CorruptCheckpointError: unreadable, truncated, or its content fails the checksum.
    :raises ValueError: the file holds objects that unpickling would have to run code for.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    damaged = _failed_crc(path)
    if damaged:
        raise CorruptCheckpointError(
            f"checkpoint {str(path)!r} is corrupt: its member {damaged!r} fails its CRC-32")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise ValueError(
                f"checkpoint {str(path)!r} is refused: it holds Python objects that loading "
                "would run code to rebuild; vaelab checkpoints hold tensors and plain data only"
            ) from None
        raise CorruptCheckpointError(f"checkpoint {str(path)!r} is corrupt: {err}") from None
    except Exception as err:  # noqa: BLE001 - any other failure to parse means a damaged file
        raise CorruptCheckpointError(
            f"checkpoint {str(path)!r} is unreadable or corrupt: {str(err).splitlines()[0]}"
        ) from None
    if not isinstance(state, dict):
        raise CorruptCheckpointError(f"checkpoint {str(path)!r} is not a vaelab checkpoint")
    digest = state.pop(DIGEST_KEY, None)
    if digest is not None and digest != content_digest(state):
        raise CorruptCheckpointError(
            f"checkpoint {str(path)!r} is corrupt: its content fails its SHA-256 checksum"
        )
    return state


def _failed_crc(path: Path) -> str | None:
    """The first member of the zip archive ``torch.save`` wrote whose bytes fail their CRC-32,
    or None (intact; or not a zip archive at all, which ``torch.load`` then judges)."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip()
    except zipfile.BadZipFile:
        return None
    except Exception as err:  # noqa: BLE001 - a damaged directory or header: a damaged file
        return f"(archive: {str(err).splitlines()[0] if str(err) else type(err).__name__})"


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(json_safe(r), allow_nan=False) + "\n"
                                    for r in rows))


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The per-epoch rows of ``run_dir/metrics.jsonl`` (``[]`` when the run has none yet)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
