"""The slide locks this process holds, and the SIGTERM handler that releases them.

SLURM sends SIGTERM before it requeues or cancels a job (and SIGKILL after `KillWait`); a
requeued task on another host must find the slides free at once, not after the lock timeout.
`slideflow.io.locks.SlideLock` registers itself here while held; the handler releases every
registered lock, then exits with the usual 128 + signal status, so the cleanups on the way out
(temporary files, the run's summary) still run.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

log = logging.getLogger("slideflow")

#: id -> lock (objects with `release(wait=False)`) for the locks this process holds
_HELD: dict[int, Any] = {}


def held(lock: Any) -> None:
    """Register a lock just acquired (and install the handler where possible)."""
    _HELD[id(lock)] = lock
    install_sigterm_handler()


def released(lock: Any) -> None:
    """Forget a lock just released."""
    _HELD.pop(id(lock), None)


def release_all() -> int:
    """Release every lock this process holds; returns how many."""
    locks = list(_HELD.values())
    for lock in locks:
        with contextlib.suppress(Exception):
            lock.release(wait=False)
    return len(locks)


def _on_sigterm(signum: int, frame: Any) -> None:
    """Free this process's slides at once, then exit 128 + signum (cleanups run)."""
    n = release_all()
    if n:
        log.warning("SIGTERM: released %d slide lock(s) held by this process", n)
    raise SystemExit(128 + signum)


def install_sigterm_handler() -> bool:
    """Install `_on_sigterm` when SIGTERM still has its default action and this is the main
    thread (Python runs signal handlers there only); True when it is installed."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return signal.getsignal(signal.SIGTERM) is _on_sigterm
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm:
        return True
    if current not in (signal.SIG_DFL, None):
        return False  # the application handles SIGTERM itself: leave it alone
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True
