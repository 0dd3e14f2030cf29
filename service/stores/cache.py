"""The decoded sessions a store process remembers: decoding a state record costs more than
reading it, so the latest decoded version of recently used sessions is kept (bounded, LRU).
The stored version decides whether an entry is still current."""

from __future__ import annotations

import threading
from collections import OrderedDict

from service.stores.base import Session


class SessionCache:
    """A thread-safe LRU of the newest decoded ``Session`` per id."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def get(self, session_id: str, version: object = None) -> Session | None:
        """The remembered session; with ``version``, only when it is that version."""
        with self._lock:
            found = self._sessions.get(session_id)
        if found is None or (version is not None and found.version != version):
            return None
        return found

    def put(self, session: Session) -> None:
        with self._lock:
            self._sessions[session.id] = session
            self._sessions.move_to_end(session.id)
            if len(self._sessions) > self._size:
                self._sessions.popitem(last=False)

    def drop(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)
