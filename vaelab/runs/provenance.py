"""Which code a run ran: vaelab's version and the git commit of its source tree.

Every ``metrics.jsonl`` row records the code that trained that epoch (``"code"``), and a
recipe's ``reproduce/result.json`` the code that scored it, so a run resumed across versions
says so, and a results page never has to be told by hand which commit made a figure. The commit
is read, in order, from

1. ``vaelab/_version.py``, which ``git archive`` fills in (``export-subst``): a frozen snapshot of
   the repository, as long runs use;
2. git itself, where the package sits in a checkout of this repository (its parent has
   ``.git`` and ``setup.cfg``), with ``modified`` saying whether ``vaelab/`` differs from the
   commit;
3. nothing: an installed wheel, or no git; ``commit`` is then ``None``.
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

from vaelab._version import COMMIT, __version__

__all__ = ["code_identity", "code_label", "identify"]

_HEX40 = re.compile(r"[0-9a-f]{40}")


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_identity() -> dict[str, str | bool | None]:
    """``{"version", "commit", "modified"}`` of the vaelab being run (see the module docstring);
    ``modified`` is ``None`` where it cannot be known (a snapshot, no git)."""
    return identify(COMMIT, Path(__file__).resolve().parent.parent)


def identify(archived: str, package: Path) -> dict[str, str | bool | None]:
    """:func:`code_identity` of a package folder ``package`` whose ``_version.COMMIT`` reads
    ``archived``."""
    out: dict[str, str | bool | None] = {"version": __version__, "commit": None,
                                         "modified": None}
    if _HEX40.fullmatch(archived):
        out["commit"] = archived
        return out
    root = package.parent
    if (root / ".git").exists() and (root / "setup.cfg").is_file():
        commit = _git(root, "rev-parse", "HEAD")
        if commit and _HEX40.fullmatch(commit):
            out["commit"] = commit
            status = _git(root, "status", "--porcelain", "--", package.name)
            out["modified"] = None if status is None else bool(status)
    return out


def code_label() -> str:
    """One short string for a ``metrics.jsonl`` row: ``VERSION+COMMIT12`` (``+modified`` where
    the package differs from the commit), or the version alone where no commit is known."""
    ident = code_identity()
    if not ident["commit"]:
        return str(ident["version"])
    label = f"{ident['version']}+{str(ident['commit'])[:12]}"
    return label + ("+modified" if ident["modified"] else "")
