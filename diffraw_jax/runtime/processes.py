"""Is a process alive? (the stale rules of the workdir lock and of ``diffraw``'s temporary files).

Imports only the standard library.
"""
from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True when a process with id ``pid`` runs on this host (or cannot be probed: permission),
    False when there is none."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True
