"""One line on stderr for what the user should know but need not act on (``vaelab: note: ...``).

Notes say what vaelab assumed or repaired (a data type read as grey levels, a stale lock taken
over, a damaged checkpoint passed over); errors are raised, warnings are for code.
"""

from __future__ import annotations

import os
import sys

__all__ = ["note"]


def note(message: str) -> None:
    """Print ``vaelab: note: MESSAGE`` on stderr (under torchrun, by the process of rank 0
    only: the others hold the same state and would repeat it)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"vaelab: note: {message}", file=sys.stderr)
