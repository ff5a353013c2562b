"""Sign-in sessions of the status pages: a random identifier in the cookie, the token it stands
for kept here, so signing out ends the session on the server, not only in the browser.

The cookie carries no token and nothing derived from one; a copied cookie stops working at
sign-out, after ``lifetime`` seconds, and when the node restarts (everyone signs in again).
"""

from __future__ import annotations

import secrets
import threading
import time

__all__ = ["Sessions"]


class Sessions:
    """Open sessions: identifier → (token, expiry).

    Parameters
    ----------
    lifetime:
        Seconds a session lasts after sign-in.
    capacity:
        The most sessions kept; beyond it the one closest to expiry is dropped (sign-ins need
        a valid token, so this bounds memory, not who may sign in).
    """

    def __init__(self, lifetime: float, capacity: int = 10_000) -> None:
        self.lifetime = lifetime
        self.capacity = capacity
        self._lock = threading.Lock()
        self._open: dict[str, tuple[str, float]] = {}

    def open(self, token: str) -> str:
        """A new session for ``token``; returns the cookie value."""
        identifier = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._open = {k: v for k, v in self._open.items() if v[1] > now}
            while len(self._open) >= self.capacity:
                del self._open[min(self._open, key=lambda k: self._open[k][1])]
            self._open[identifier] = (token, now + self.lifetime)
        return identifier

    def token(self, identifier: str) -> str | None:
        """The token of an open, unexpired session, or None."""
        with self._lock:
            entry = self._open.get(identifier)
            if entry is None:
                return None
            if entry[1] <= time.monotonic():
                del self._open[identifier]
                return None
            return entry[0]

    def close(self, identifier: str) -> None:
        """End a session (sign-out); unknown identifiers are ignored."""
        with self._lock:
            self._open.pop(identifier, None)
