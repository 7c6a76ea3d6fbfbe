"""Grant change notifications: revocations and limit changes reach every cache at once.

In-process listeners always; with Redis configured, a bridge also publishes to and listens
on a channel so other instances hear it (scale-out).
"""

from __future__ import annotations

from collections.abc import Callable

Listener = Callable[[str], None]


class GrantEvents:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def publish(self, grant_id: str) -> None:
        for listener in list(self._listeners):
            listener(grant_id)


GRANT_CHANGES = GrantEvents()
